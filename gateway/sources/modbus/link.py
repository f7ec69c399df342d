"""The one place the gateway touches pymodbus (pinned: pymodbus==3.16.1).

pymodbus renames keyword arguments between minor releases (`unit=` became
`slave=` became `device_id=`; client timeouts and retries moved around), so
everything else talks to `Link` here and never imports pymodbus. When the pin
moves, this module and its tests are what to check.

A `Link` is one connection: a TCP or UDP socket, or a serial port carrying RTU
frames (possibly tunnelled over TCP). It sends one request at a time, has no
reconnect logic of its own (the source's scheduler decides when to try again)
and turns every failure into one of two errors: `LinkError` (no usable answer:
timeout, connection lost, garbled frame) or `DeviceException` (the device
answered with a Modbus exception code).

RTU answers carry no transaction id, so after a request went unanswered on an
RTU line (`rtu://`, `rtu+tcp://`) the link keeps the line quiet for one more
reply wait before it raises: a late answer to that request arrives while no
request is waiting, and pymodbus drops it ("received pdu without a
corresponding request") instead of handing it to the next request as its
answer, which would publish one block's values under another block's names.
"""

from __future__ import annotations

import asyncio
import logging
import os
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import pymodbus
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, AsyncModbusUdpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from gateway.core.errors import GatewayError, RetryableError

PINNED_VERSION = "3.16.1"
if pymodbus.__version__ != PINNED_VERSION:  # pragma: no cover - guarded by the pin in pyproject
    raise ImportError(
        f"gateway.sources.modbus needs pymodbus=={PINNED_VERSION}, found {pymodbus.__version__};"
        " its keyword arguments change between releases: check this adapter, then move the pin"
    )

# pymodbus logs every unanswered request at ERROR with a dump of the last frames,
# without saying which component it belongs to. The source reports device trouble
# itself (status page, one log line per state change), so keep pymodbus quiet
# unless someone configured its logger on purpose.
_pymodbus_log = logging.getLogger("pymodbus")
if _pymodbus_log.level == logging.NOTSET:
    _pymodbus_log.setLevel(logging.CRITICAL)

Kind = Literal["tcp", "udp", "rtu", "rtu+tcp"]
Table = Literal["coil", "discrete", "holding", "input"]

# Exception codes that mean "the device (or the gateway in front of it) is not
# working", as opposed to "this request is wrong" (illegal function/address/value).
DEVICE_TROUBLE_CODES = frozenset({4, 5, 6, 8, 10, 11})
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge (busy with a long operation)",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class LinkError(RetryableError):
    """No usable answer: timeout, connection refused or lost, or a garbled frame."""


class DeviceException(GatewayError):
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(f"{what}: exception {code} ({name})")

    @property
    def device_trouble(self) -> bool:
        """True when the code says the device is unwell rather than the request wrong."""
        return self.code in DEVICE_TROUBLE_CODES


@dataclass(frozen=True)
class LinkSpec:
    """Where a device is: parsed from `tcp://`, `udp://`, `rtu://` or `rtu+tcp://` URLs."""

    kind: Kind
    host: str = ""
    port: int = 502
    path: str = ""
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    bytesize: int = 8
    # the serial port with symbolic links resolved (/dev/serial/by-id/... is the
    # /dev/ttyUSB0 it points to): one port, one connection, whichever name a device uses
    real_path: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, str, int]:
        """Devices with the same key share one connection (one request at a time)."""
        if self.kind == "rtu":
            return ("rtu", self.real_path or self.path, 0)
        return (self.kind, self.host, self.port)

    def same_settings(self, other: LinkSpec) -> bool:
        """Whether a device on the same port (same key) may share the connection."""
        return (self.baudrate, self.parity, self.stopbits, self.bytesize) == (
            other.baudrate,
            other.parity,
            other.stopbits,
            other.bytesize,
        )

    @property
    def serial(self) -> bool:
        return self.kind == "rtu"

    @property
    def untagged(self) -> bool:
        """RTU frames (on a serial port or tunnelled over TCP) carry no transaction id:
        an answer cannot be told from the answer to an earlier request."""
        return self.kind in ("rtu", "rtu+tcp")

    @property
    def char_bits(self) -> int:
        """Bits on the wire per byte: start + data + parity + stop."""
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    def silent_interval(self) -> float:
        """The RTU inter-frame gap: 3.5 characters, fixed at 1.75 ms above 19200 baud."""
        if self.baudrate > 19200:
            return 0.00175
        return 3.5 * self.char_bits / self.baudrate

    def describe(self) -> str:
        if self.kind == "rtu":
            return f"rtu://{self.path}"
        return f"{self.kind}://{self.host}:{self.port}"


async def quiet_until(deadline: float) -> None:
    """Keep the line silent until `deadline` (time.monotonic), precisely.

    This is wire timing, not scheduling, so it uses real time rather than the
    injected clock. The loop's timers wake up to a millisecond late (epoll counts
    whole milliseconds), which at 115200 baud would cost half the 1.75 ms gap
    again per request; so sleep until a millisecond before, then yield to other
    tasks until the gap is over (at most ~1 ms of CPU per request).
    """
    remaining = deadline - time.monotonic()
    if remaining > 0.0015:
        await asyncio.sleep(remaining - 0.001)
    while time.monotonic() < deadline:  # noqa: ASYNC110 - precision, see above
        await asyncio.sleep(0)


_SERIAL_KEYS = {"baudrate", "parity", "stopbits", "bytesize"}
MAX_BAUDRATE = 2**31 - 1  # what the serial driver's call takes (a C int)


def parse_link_url(url: str) -> LinkSpec:
    """Parse a device URL; raise ValueError with a message a person can act on."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("tcp", "udp", "rtu+tcp"):
            if not parts.hostname:
                raise ValueError(f"{url!r} has no host; write {scheme}://host:port")
            if parts.query or parts.path not in ("", "/"):
                raise ValueError(f"{url!r}: a {scheme} URL is just {scheme}://host:port")
            if parts.port == 0:
                raise ValueError(f"{url!r}: the port must be 1 to 65535 (default 502)")
            return LinkSpec(kind=scheme, host=parts.hostname, port=parts.port or 502)  # type: ignore[arg-type]
        if scheme == "rtu":
            path = (parts.netloc + parts.path) if parts.netloc else parts.path
            if not path:
                raise ValueError(
                    f"{url!r} has no serial port; write rtu:///dev/ttyUSB0?baudrate=9600"
                )
            if not path.startswith("/"):
                # rtu://dev/ttyUSB0 named "dev/ttyUSB0", opened relative to the working
                # folder: never there, and not seen as the port /dev/ttyUSB0 by the claims
                raise ValueError(
                    f"{url!r}: the serial port needs its full path, e.g."
                    " rtu:///dev/ttyUSB0 (three slashes)"
                )
            if "\x00" in path:
                raise ValueError(f"{url!r}: a serial port's path holds no NUL character")
            options: dict[str, Any] = {}
            for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
                if key not in _SERIAL_KEYS:
                    known = ", ".join(sorted(_SERIAL_KEYS))
                    raise ValueError(f"{url!r}: unknown serial option {key!r} (use {known})")
                if key != "parity" and not (value.isascii() and value.isdigit()):
                    raise ValueError(f"{url!r}: {key} must be a whole number, not {value!r}")
                if key in options and options[key] != value:
                    # the last one was taken, without a word
                    raise ValueError(
                        f"{url!r}: {key} is given twice ({options[key]} and {value}); keep one"
                    )
                options[key] = value
            spec = LinkSpec(
                kind="rtu",
                path=path,
                real_path=os.path.realpath(path),
                baudrate=int(options.get("baudrate", 9600)),
                parity=str(options.get("parity", "N")).upper(),  # type: ignore[arg-type]
                stopbits=int(options.get("stopbits", 1)),
                bytesize=int(options.get("bytesize", 8)),
            )
            if spec.parity not in ("N", "E", "O"):
                raise ValueError(f"{url!r}: parity must be N, E or O")
            if spec.stopbits not in (1, 2) or spec.bytesize not in (7, 8):
                raise ValueError(f"{url!r}: stopbits must be 1 or 2 and bytesize 7 or 8")
            if not 0 < spec.baudrate <= MAX_BAUDRATE:
                # beyond a C int pyserial raised OverflowError out of the open (a traceback)
                raise ValueError(f"{url!r}: baudrate must be 1 to {MAX_BAUDRATE}")
            return spec
    except ValueError as err:
        if str(err).startswith(repr(url)):
            raise
        raise ValueError(f"{url!r} is not a valid device URL: {err}") from err
    raise ValueError(
        f"{url!r}: unknown scheme {parts.scheme!r}; use tcp://, udp://, rtu:// or rtu+tcp://"
    )


def _fail_garbled_answers(manager: Any) -> None:
    """Make an answer pymodbus cannot decode fail the request waiting for it.

    pymodbus raises ModbusIOException ("Unable to decode request") out of the protocol's
    data_received for a well framed answer whose PDU does not parse (an FC 3 answer one
    byte short, say): asyncio then logs "Fatal error: protocol.data_received() call
    failed." with a traceback and drops the connection, and the request waits for its
    timeout. Here the answer is dropped, with the rest of what was received, and the
    request fails at once with that error (a LinkError for the source, one line).
    """
    callback_data = manager.callback_data

    def checked(data: bytes, addr: Any = None) -> int:
        try:
            used: int = callback_data(data, addr)
        except ModbusException as err:
            future = manager.response_future
            if not future.done():
                future.set_exception(err)
            return len(data)
        return used

    manager.callback_data = checked


def _connect_problem(err: BaseException | None, wait: float) -> str:
    """Why a connection could not be opened, as ": ..." (or nothing, unknown)."""
    if err is None:
        return ""
    if isinstance(err, TimeoutError):  # pymodbus waits `wait` for the socket or port
        return f": no connection within {wait:g}s"
    if isinstance(err, ConnectionError) and err.errno:  # not "Connect call failed (...)"
        return f": {os.strerror(err.errno).lower()}"
    return f": {err.strerror or err}" if isinstance(err, OSError) else f": {err}"


async def _open_error(spec: LinkSpec, wait: float) -> BaseException | None:
    """Why the port or socket of `spec` cannot be opened, found by opening it once more
    (after a failed connect only): pymodbus's connect() answers False and logs the reason
    to its own logger, kept quiet, so the source said "cannot connect to
    rtu:///dev/ttyUSB0" and no more, for an unplugged adapter, a port the gateway's user
    may not open (not in the dialout group) and a refused connection alike."""
    try:
        if spec.kind == "rtu":
            await asyncio.to_thread(_open_serial, spec.path)  # blocking calls, a few
        elif spec.kind in ("tcp", "rtu+tcp"):
            async with asyncio.timeout(min(wait, 1.0)):  # refused or reset: at once
                _, writer = await asyncio.open_connection(spec.host, spec.port)
            writer.close()
    except (OSError, TimeoutError, termios.error) as err:
        if isinstance(err, termios.error):  # (errno, text), no OSError
            return OSError(err.args[0], err.args[1])
        return err
    return None


def _open_serial(path: str) -> None:
    """Open `path` as a serial port and close it: raises what keeps it from being one."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        termios.tcgetattr(fd)  # ENOTTY: a file that is no serial port
    finally:
        os.close(fd)


class Link:
    """One connection to one or more Modbus devices; one request at a time.

    The caller serialises requests (the source holds a per-port lock around
    each call) and sets the timeout per request, since devices sharing a serial
    line may answer at different speeds.
    """

    def __init__(self, spec: LinkSpec, name: str = "modbus") -> None:
        self.spec = spec
        self._name = name
        self._client: Any = None

    def _make_client(self, timeout: float) -> Any:
        # reconnect_delay=0: pymodbus must not reconnect behind our back (its own
        # retry loop would sleep); retries=0: the caller counts retries per device.
        common: dict[str, Any] = {
            "name": self._name,
            "reconnect_delay": 0,
            "timeout": timeout,
            "retries": 0,
        }
        spec = self.spec
        client: Any
        if spec.kind == "tcp":
            client = AsyncModbusTcpClient(spec.host, port=spec.port, **common)
        elif spec.kind == "rtu+tcp":
            client = AsyncModbusTcpClient(
                spec.host, port=spec.port, framer=FramerType.RTU, **common
            )
        elif spec.kind == "udp":
            client = AsyncModbusUdpClient(spec.host, port=spec.port, **common)
        else:
            client = AsyncModbusSerialClient(
                spec.path,
                baudrate=spec.baudrate,
                parity=spec.parity,
                stopbits=spec.stopbits,
                bytesize=spec.bytesize,
                **common,
            )
        # pymodbus closes a TCP connection after a few unanswered requests in a row;
        # with several unit ids behind one gateway, one dead unit must not cut the
        # others off, so the source decides when a link is broken.
        client.set_max_no_responses(1 << 30)
        _fail_garbled_answers(client.ctx)
        return client

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    async def connect(self, reply_wait: float) -> None:
        """Open the connection or raise LinkError."""
        self.close()
        self._client = self._make_client(reply_wait)
        started = time.monotonic()
        try:
            ok = await self._client.connect()
        except (OSError, ModbusException) as err:
            self.close()
            raise LinkError(f"cannot connect to {self.spec.describe()}: {err}") from err
        if not ok or not self._client.connected:
            self.close()
            if time.monotonic() - started >= reply_wait * 0.9:
                # it waited out the whole time: no answer, and no second wait for the
                # reason with the bus held
                why = _connect_problem(TimeoutError(), reply_wait)
            else:
                why = _connect_problem(await _open_error(self.spec, reply_wait), reply_wait)
            raise LinkError(f"cannot connect to {self.spec.describe()}{why}")

    def close(self) -> None:
        """Close the connection; safe to call at any time."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _drain(self, reply_wait: float) -> None:
        """After an unanswered request on an RTU line: let its late answer arrive unasked.

        The caller holds the port, so nothing is sent meanwhile; what arrives finds no
        request waiting and is dropped by pymodbus (and a partial frame is cleared when
        the next request is sent). Wire timing, so real time, not the injected clock.
        """
        if self.spec.untagged and self.connected:
            await asyncio.sleep(reply_wait)

    async def _execute(self, call: Any, what: str, reply_wait: float, function: int) -> Any:
        client = self._client
        if client is None or not client.connected:
            raise LinkError(f"{self.spec.describe()} is not connected")
        # The wait for the answer uses the transaction manager's copy of the
        # connection parameters; set it per request (devices on one line differ).
        client.ctx.comm_params.timeout_connect = reply_wait
        try:
            response = await call(client)
        except ModbusException as err:
            if not client.connected:
                self.close()
            else:
                await self._drain(reply_wait)
            detail = str(err)
            # pymodbus's "No response received after 0 retries, continue with next
            # request" (its own retries are off: the source's are counted per device)
            # read as if retries: 1 had not been taken
            why = "" if "No response received" in detail else f" ({detail})"
            raise LinkError(f"{what}: no valid answer within {reply_wait:g}s{why}") from err
        except (TimeoutError, OSError) as err:
            self.close()
            raise LinkError(f"{what}: connection lost ({err})") from err
        answered = int(response.function_code) & 0x7F
        if answered != function:
            # well framed, but not an answer to this request (a device's firmware bug, a
            # gateway mixing up requests): its values are not this request's values
            await self._drain(reply_wait)
            raise LinkError(f"{what}: the answer is for function {answered}, not {function}")
        if response.isError():
            raise DeviceException(int(response.exception_code), what)
        return response

    async def read(
        self, table: Table, address: int, count: int, unit: int, reply_wait: float
    ) -> list[int] | list[bool]:
        """Read `count` registers or bits starting at protocol address `address`."""
        what = f"unit {unit} {table} {address}+{count}"
        if table == "holding":
            r = await self._execute(
                lambda c: c.read_holding_registers(address, count=count, device_id=unit),
                what,
                reply_wait,
                3,
            )
            values: list[Any] = r.registers
        elif table == "input":
            r = await self._execute(
                lambda c: c.read_input_registers(address, count=count, device_id=unit),
                what,
                reply_wait,
                4,
            )
            values = r.registers
        elif table == "coil":
            r = await self._execute(
                lambda c: c.read_coils(address, count=count, device_id=unit), what, reply_wait, 1
            )
            values = r.bits[:count]
        else:
            r = await self._execute(
                lambda c: c.read_discrete_inputs(address, count=count, device_id=unit),
                what,
                reply_wait,
                2,
            )
            values = r.bits[:count]
        # A late answer to an earlier, timed-out request can look like an answer to
        # this one on a serial line (RTU frames carry no transaction id).
        if len(values) != count:
            await self._drain(reply_wait)
            raise LinkError(f"{what}: answer carries {len(values)} values, expected {count}")
        return values

    async def write_registers(
        self, address: int, values: Sequence[int], unit: int, reply_wait: float, multiple: bool
    ) -> None:
        """Write holding registers: FC 6 for one register unless `multiple`, else FC 16."""
        what = f"unit {unit} write holding {address}+{len(values)}"
        if len(values) == 1 and not multiple:
            await self._execute(
                lambda c: c.write_register(address, values[0], device_id=unit),
                what,
                reply_wait,
                6,
            )
        else:
            await self._execute(
                lambda c: c.write_registers(address, list(values), device_id=unit),
                what,
                reply_wait,
                16,
            )

    async def write_coil(
        self, address: int, value: bool, unit: int, reply_wait: float, multiple: bool
    ) -> None:
        """Write one coil: FC 5, or FC 15 when `multiple`."""
        what = f"unit {unit} write coil {address}"
        if multiple:
            await self._execute(
                lambda c: c.write_coils(address, [value], device_id=unit), what, reply_wait, 15
            )
        else:
            await self._execute(
                lambda c: c.write_coil(address, value, device_id=unit), what, reply_wait, 5
            )
