"""The one place that reaches into gmqtt (pinned in pyproject.toml).

Receiving (Modbus write-back commands): gmqtt sends a PUBACK for a QoS 1/2
message when the message handler returns; `make_client` builds a gmqtt client
whose QoS 1/2 deliveries call one plain function with the packet id, and
`ack`/`ack_many` acknowledge packet ids when the caller is done. The MQTT
source does not use gmqtt at all: see `gateway.mqtt.wire`.

Publishing: `Publisher` sends QoS 1 messages and reports every PUBACK with its
reason code, which gmqtt drops; `ack_promptly` keeps a broker's PUBACKs from
stalling on delayed TCP acknowledgements.

Connecting: `connect_refusal` and `tls_refusal` tell a refusal an operator must
fix (credentials, client id, a TLS certificate) from trouble that may pass.

Every client here has gmqtt's own reconnect loop off: the engine reconnects,
with capped exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

import gmqtt
from gmqtt import Client
from gmqtt.mqtt.handler import MQTTConnectError

from gateway.core.tls import certificate_refusal, error_chain
from gateway.mqtt.wire import ACK_HEADER

# gmqtt reconnects while failed_connections <= reconnect_retries (-1 = forever);
# any other negative number means never.
NO_RECONNECT = -2

Deliver = Callable[[str, bytes, int, dict[str, Any], int | None], None]


def make_client(
    client_id: str, *, clean: bool, deliver: Deliver, session_expiry: int, receive_maximum: int
) -> Client:
    """A gmqtt client (MQTT 5) that hands every delivery to `deliver`.

    `deliver(topic, payload, qos, properties, packet_id)` runs on the event
    loop for each PUBLISH; for QoS 1 and 2 nothing is acknowledged until the
    caller calls `ack(client, packet_id, qos)`.
    """
    client = Client(
        client_id,
        clean_session=clean,
        optimistic_acknowledgement=False,
        session_expiry_interval=session_expiry,
        receive_maximum=receive_maximum,
    )
    client.set_config({"reconnect_retries": NO_RECONNECT})
    handler = client._package_handler

    def qos1(mid: int, payload: bytes, topic: str, properties: dict[str, Any]) -> None:
        deliver(topic, payload, 1, properties, mid)

    def qos2(mid: int, payload: bytes, topic: str, properties: dict[str, Any]) -> None:
        deliver(topic, payload, 2, properties, mid)

    handler._handle_qos_1_publish_packet = qos1
    handler._handle_qos_2_publish_packet = qos2
    client.on_message = lambda _c, topic, payload, qos, props: deliver(
        topic, payload, qos, props, None
    )
    return client


def ack(client: Client, packet_id: int, qos: int) -> None:
    """Acknowledge a QoS 1 (PUBACK) or QoS 2 (PUBREC) delivery on the live connection."""
    ack_many(client, [(packet_id, qos)])


def ack_many(client: Client, acks: list[tuple[int, int]]) -> None:
    """Acknowledge many deliveries with one socket write (one syscall per batch)."""
    data = b"".join(ACK_HEADER[qos] + mid.to_bytes(2, "big") for mid, qos in acks)
    client._connection._protocol.write_data(data)


def is_connected(client: Client) -> bool:
    return bool(client.is_connected)


# --- publishing ---------------------------------------------------------------------------

# What Publisher.connect may raise when the broker cannot be reached or refuses us.
CONNECT_ERRORS: tuple[type[Exception], ...] = (OSError, MQTTConnectError)

# MQTT 5 PUBACK reason codes (spec 3.4.2.1); any other code >= 0x80 is "unspecified".
PUBACK_REASONS = {
    0x80: "Unspecified error",
    0x83: "Implementation specific error",
    0x87: "Not authorized",
    0x90: "Topic Name invalid",
    0x91: "Packet identifier in use",
    0x97: "Quota exceeded",
    0x99: "Payload format invalid",
}


def puback_reason(code: int) -> str:
    """A PUBACK reason code as text: `Not authorized (0x87)`."""
    return f"{PUBACK_REASONS.get(code, 'error')} (0x{code:02x})"


class Publisher(Client):  # type: ignore[misc]
    """A gmqtt client for publishing at QoS 1 that reports every PUBACK with its reason code.

    gmqtt 0.8.0 (pinned) keeps unacknowledged messages to resend them itself after
    its own reconnect, and drops the PUBACK reason code. For a sink the engine
    reconnects and sends the batch again, so both are replaced: `reconnect` does
    nothing, and each PUBACK calls `on_puback(packet_id, reason_code)` (0 = success).
    """

    def __init__(
        self, client_id: str, on_puback: Callable[[int, int], None], **kwargs: Any
    ) -> None:
        super().__init__(client_id, **kwargs)
        self.set_config({"reconnect_retries": NO_RECONNECT})
        handler = self._package_handler
        free_id = handler.id_generator.free_id

        def puback(cmd: int, packet: bytes) -> None:
            mid = int.from_bytes(packet[:2], "big")
            free_id(mid)
            on_puback(mid, packet[2] if len(packet) > 2 else 0)

        # The handler looks packet handlers up by name on itself, so this one is used.
        handler._handle_puback_packet = puback

    async def reconnect(self, delay: bool = False) -> None:
        """The engine reconnects (with backoff); gmqtt's background reconnect stays off."""

    def publish_qos1(self, topic: bytes, payload: bytes, retain: bool, properties: Any) -> int:
        """Send one QoS 1 PUBLISH and return its packet id; nothing is kept for resending.

        UnicodeEncodeError (a property that is no valid text) comes before a packet id
        is taken or anything is sent.
        """
        message = gmqtt.Message(topic, payload, qos=1, retain=retain, **properties)
        mid, _ = self._connection.publish(message)
        return int(mid)

    def closing(self) -> bool:
        """True once the connection is closed or closing (before on_disconnect runs)."""
        return bool(self._connection.is_closing())

    @property
    def receive_maximum(self) -> int:
        """How many QoS 1 messages the broker takes unacknowledged (65535 unless it says)."""
        value = self._package_handler._connack_properties.get("receive_maximum")
        return int(value[0]) if value else 65535

    @property
    def maximum_packet_size(self) -> int | None:
        """The broker's Maximum Packet Size from its CONNACK, if it set one."""
        value = self._package_handler._connack_properties.get("maximum_packet_size")
        return int(value[0]) if value else None

    async def abandon(self) -> OSError | None:
        """Close a connection that never became usable, or broke, without sending anything.

        Returns how the connection ended when it ended in an error (a TLS alert ...),
        else None.
        """
        connection = self._connection
        if connection is None:
            return None
        try:
            # Waiting for the close re-raises how the connection ended.
            await connection.close()
        except OSError as err:
            return err
        return None


def ack_promptly(client: Client) -> None:
    """Have the kernel acknowledge each TCP segment from the broker at once (Linux).

    Call it once the client is connected. A broker with Nagle's algorithm on
    (Mosquitto's default: set_tcp_nodelay false) holds further PUBACKs back until its
    previous ones are acknowledged at the TCP level, and a publisher waiting for
    PUBACKs sends nothing an acknowledgement could ride on, so the kernel delays it
    up to 40 ms: waiting for a batch's PUBACKs stalled in 40 ms steps (2k instead of
    25k messages/s). Setting TCP_QUICKACK after each read (the kernel clears it
    again) sends the pending acknowledgement right away. Does nothing where the
    option does not exist.
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    connection = client._connection
    if quickack is None or connection is None:
        return
    sock = connection._transport.get_extra_info("socket")
    if sock is None:
        return
    protocol = connection._protocol
    received = protocol.data_received

    def data_received(data: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        received(data)

    # The transport calls its protocol's data_received, so the instance attribute wins.
    protocol.data_received = data_received


# --- refusals -----------------------------------------------------------------------------

# CONNACK codes that retrying cannot fix: MQTT 3.1.1 (unacceptable protocol version,
# identifier rejected, bad user name or password, not authorized) and MQTT 5 (malformed
# packet, protocol error, unsupported protocol version, client identifier not valid, bad
# user name or password, not authorized, banned, bad authentication method, packet too
# large, retain or QoS not supported, use another server, server moved). The others
# (server unavailable or busy, quota or rate exceeded, unspecified) may pass.
REFUSED_FOR_GOOD = frozenset(
    {1, 2, 4, 5, 0x81, 0x82, 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C, 0x95, 0x9A, 0x9B, 0x9C, 0x9D}
)


def connect_refusal(err: BaseException) -> str | None:
    """Why the broker refuses us until an operator acts, from a connect error; else None.

    A CONNACK code in REFUSED_FOR_GOOD (Mosquitto answers a wrong password with 0x87
    Not authorized under MQTT 5, 5 under 3.1.1), a broker certificate we do not trust,
    or a TLS alert refusing our client certificate.
    """
    for cause in error_chain(err):
        if isinstance(cause, MQTTConnectError):
            code = cause._code
            if code in REFUSED_FOR_GOOD:
                return f"{cause.message} (CONNACK code {code:#04x})"
            return None
        refusal = certificate_refusal(cause)
        if refusal:
            return refusal
    return None


async def tls_refusal(host: str, port: int, context: ssl.SSLContext, wait: float) -> str | None:
    """Whether a TLS server refuses our certificate, asked on a connection of its own.

    With TLS 1.3 a server checks the client certificate after the handshake looks done
    to the client, and its alert races with the client's first packet: the connection
    mostly ends in a bare reset, which says nothing. A connection that sends nothing
    receives the alert if there is one, at most `wait` seconds later. None if there is
    none (or the server cannot be reached).
    """
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            try:
                await reader.read(1)  # the alert, or nothing until the timeout
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except ssl.SSLError as err:
        return connect_refusal(err)
    except (OSError, TimeoutError):
        pass
    return None
