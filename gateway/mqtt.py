"""The one place that reaches into gmqtt (pinned in pyproject.toml).

gmqtt sends a PUBACK for a QoS 1/2 message when the message handler returns;
Edge Stream needs to send it later, after the store commits the batch holding
the message, without a task per message. `connect_client` builds a gmqtt
client whose QoS 1/2 deliveries call one plain function with the packet id,
and returns functions that acknowledge a packet id on the live connection.
It also turns gmqtt's own reconnect loop off: the engine reconnects, with
capped exponential backoff and jitter.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from gmqtt import Client

# gmqtt reconnects while failed_connections <= reconnect_retries (-1 = forever);
# any other negative number means never.
NO_RECONNECT = -2

Deliver = Callable[[str, bytes, int, dict[str, Any], int | None], None]


def parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) from mqtt://host:port or mqtts://host:port."""
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r} is not an mqtt://host:port or mqtts://host:port URL")
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


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


# PUBACK (0x40) and PUBREC (0x50) with remaining length 2: success needs no reason code.
_ACK_HEADER = {1: b"\x40\x02", 2: b"\x50\x02"}


def ack_many(client: Client, acks: list[tuple[int, int]]) -> None:
    """Acknowledge many deliveries with one socket write (one syscall per batch)."""
    data = b"".join(_ACK_HEADER[qos] + mid.to_bytes(2, "big") for mid, qos in acks)
    client._connection._protocol.write_data(data)


def pause_reading(client: Client) -> None:
    """Stop reading from the socket: TCP back-pressure, so the broker holds the rest.

    Mosquitto 2.0 does not keep to the client's Receive Maximum once
    acknowledgements flow (it was seen sending tens of thousands of unacked
    messages with a limit of 100), so the gateway bounds its intake itself.
    """
    connection = client._connection
    if connection is not None and not connection._transport.is_closing():
        connection._transport.pause_reading()
        # asyncio's StreamReader resumes a transport it paused itself as soon as its
        # buffer drains; make it forget that, so the pause holds until resume_reading.
        reader = connection._protocol._stream_reader
        if reader is not None:
            reader._paused = False


def resume_reading(client: Client) -> None:
    connection = client._connection
    if connection is not None and not connection._transport.is_closing():
        connection._transport.resume_reading()


def is_connected(client: Client) -> bool:
    return bool(client.is_connected)


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context
