"""Reads a serial port (or any pyserial URL) and cuts the stream into records.

```yaml
sources:
  gps:
    type: serial
    port: /dev/ttyUSB0          # or socket://10.0.0.7:4001, rfc2217://10.0.0.7:2217
    baudrate: 4800
    framing: nmea               # line | regex | fixed | nmea
    topic: "gps/{sentence}"     # default serial/{source}
  scale:
    type: serial
    port: /dev/ttyACM0
    baudrate: 9600
    parity: E
    bytesize: 7
    framing: regex
    pattern: '^(?P<status>ST|US),(?P<mode>GS|NT),\\s*(?P<weight>[-+0-9.]+)\\s*(?P<unit>\\w+)'
```

Port keys: `port`, `baudrate` (9600), `bytesize` (5-8, default 8), `parity`
(N, E, O, M, S), `stopbits` (1, 1.5, 2), `flow_control` (none, rtscts,
dsrdtr, xonxoff).

Framing:
- `line`: each line up to `terminator` (default "\\n"; "\\r\\n" and "\\r" work
  too) becomes a FlowFile whose content is the line (surrounding whitespace
  removed unless `strip: false`). With `encoding` (utf-8; `binary` to accept
  any bytes), a line that is not valid text is garbage; a line in another
  encoding (`latin-1`, `cp1252` ...) is stored as UTF-8 text.
- `regex`: each line is searched with `pattern`; its named groups become the
  fields of a JSON object (numbers as numbers unless `convert: false`).
- `fixed`: records of `length` bytes, content as received; with `sync` (hex,
  e.g. "aa55") each record must start with those bytes and anything between
  records is garbage.
- `nmea`: NMEA 0183 sentences (`$...*hh`); the checksum is verified
  (`require_checksum: true`), and GGA, RMC, GLL, VTG, GSA, ZDA and HDT are
  parsed into named fields (lat/lon in signed decimal degrees, time, date,
  speed, satellites ...); other sentences keep their `fields` as a list.
  Content: `{"talker": "GP", "sentence": "GGA", "lat": 48.1173, ..., "raw": "$GPGGA,..."}`.

`topic` may use `{source}` and, with nmea, `{talker}` and `{sentence}`.
FlowFiles carry the attribute `serial.port` (and `nmea.talker`,
`nmea.sentence`).

Bad input never stops the source: garbage bytes, undecodable text, lines
that do not match, bad NMEA checksums and lines longer than `max_length`
(4096 bytes) go to the dead-letter table with the reason, keeping the raw
bytes as they came (only the terminator removed: surrounding whitespace and
NUL bytes stay). A line over `max_length` keeps only its first `max_length`
bytes (attribute `content.truncated: max_length`): `edge-stream dead-letters
replay` leaves it, since sent on it would pass for the reading. With `nmea`,
spaces and tabs around a sentence and blank lines are layout; any other byte
outside `$...*hh` (a NUL before the `$`, say) is garbage and becomes a dead
letter of its own, next to the sentence.
An adapter that is unplugged (or a port missing at start) is noticed (the read
or the open fails) and logged once as a warning; the engine tries to open it
again at the backoff's pace (0.5 s doubling up to 30 s), each attempt logged at
debug level only and shown in the status (`last_error`, `serial.state`
`missing`), and it is logged at info level ("opened ...") once it is back.
"""

from __future__ import annotations

import asyncio
import codecs
import errno
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import serial

from gateway.config.model import Claim, SourceConfig, serial_claim
from gateway.config.schema import Doc, Range, Size
from gateway.core.component import Context, Message, Source
from gateway.core.errors import MissingError, PermanentError, RetryableError
from gateway.core.flowfile import CONTENT_TRUNCATED, FlowFile
from gateway.core.topics import template_fields, validate_topic
from gateway.sources._serial_framing import (
    FixedFramer,
    LineFramer,
    NmeaFramer,
    Record,
    RegexFramer,
)

READ_CHUNK = 65536
MAX_BAUDRATE = 2**31 - 1  # what the serial driver's call takes (a C int)
THREAD_POLL = 0.2  # seconds a blocking read in a thread waits before looking again


@dataclass(frozen=True, kw_only=True)
class SerialSourceConfig(SourceConfig):
    """Keys of the `serial` source (see the module documentation)."""

    port: Annotated[
        str,
        Doc(
            "The serial device, or a pyserial URL (`socket://host:port`, `rfc2217://host:port`).",
            example="/dev/ttyUSB0",
        ),
    ]
    baudrate: Annotated[
        int,
        Doc("Bits per second.", example=9600),
        # beyond a C int pyserial raised OverflowError out of the open (a traceback)
        Range(1, MAX_BAUDRATE, message=f"must be 1 to {MAX_BAUDRATE}"),
    ] = 9600
    bytesize: Annotated[Literal[5, 6, 7, 8], Doc("Data bits per character.")] = 8
    parity: Annotated[
        Literal["N", "E", "O", "M", "S"], Doc("Parity: none, even, odd, mark or space.")
    ] = "N"
    stopbits: Annotated[float, Doc("Stop bits: 1, 1.5 or 2.")] = 1
    flow_control: Annotated[
        Literal["none", "rtscts", "dsrdtr", "xonxoff"],
        Doc("Hardware (RTS/CTS, DSR/DTR) or software (XON/XOFF) flow control."),
    ] = "none"
    framing: Annotated[
        Literal["line", "regex", "fixed", "nmea"],
        Doc(
            "How the stream is cut into records: `line`, `regex` (a line's named groups"
            " become JSON fields), `fixed` (`length` bytes) or `nmea` (NMEA 0183"
            " sentences, parsed).",
            example="line",
        ),
    ] = "line"
    terminator: Annotated[
        str, Doc("The end of a line (`line` and `regex` framing); `\\r\\n` and `\\r` work too.")
    ] = "\n"
    strip: Annotated[bool, Doc("`line` framing: remove the whitespace around a line.")] = True
    encoding: Annotated[
        str,
        Doc(
            "The text encoding of lines (`line` and `regex` framing, e.g. `latin-1`), stored"
            " as UTF-8; a line that is not valid text is garbage. `binary` accepts any bytes"
            " and keeps them as they came."
        ),
    ] = "utf-8"
    pattern: Annotated[
        str | None,
        Doc(
            "`regex` framing: a regular expression with named groups, searched in each"
            " line; a line that does not match is a dead letter."
        ),
    ] = None
    convert: Annotated[
        bool,
        Doc(
            "`regex` framing: numbers in the groups (ASCII digits, a point, an exponent)"
            " become JSON numbers."
        ),
    ] = True
    length: Annotated[
        int | None, Doc("`fixed` framing: the record length in bytes (at most `max_length`).")
    ] = None
    sync: Annotated[
        str | None,
        Doc(
            "`fixed` framing: hex bytes each record starts with (e.g. `aa55`); anything"
            " between records is garbage."
        ),
    ] = None
    require_checksum: Annotated[
        bool, Doc("`nmea` framing: a sentence without a valid `*hh` checksum is a dead letter.")
    ] = True
    max_length: Annotated[
        Size,
        Doc(
            "Longer lines go to the dead letters with their first `max_length` bytes,"
            " marked `content.truncated: max_length` (a replay leaves them). The terminator"
            " does not count, nor, with `\\n`, the `\\r` of a line ended `\\r\\n`."
        ),
        Range(16, 1 << 20, "must be between 16 bytes and 1MiB"),
    ] = 4096
    topic: Annotated[
        str,
        Doc(
            "The FlowFiles' topic: `{source}`, and with `nmea` also `{talker}` and"
            " `{sentence}`; `{{` and `}}` for a literal brace."
        ),
    ] = "serial/{source}"

    def claims(self) -> list[Claim]:
        if not self.port or "://" in self.port:  # socket://, rfc2217://: a server's
            return []
        return [serial_claim("port", self.port)]

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.port:
            yield "port", "name the serial device (/dev/ttyUSB0) or a pyserial URL"
        elif "\x00" in self.port:
            yield "port", "a serial device's path holds no NUL character"
        else:
            problem = _network_port_problem(self.port)
            if problem:
                yield "port", problem
        if self.stopbits not in (1, 1.5, 2):
            yield "stopbits", "must be 1, 1.5 or 2"
        terminator = b"\n"
        if not self.terminator:
            yield "terminator", "must not be empty"
        else:
            try:
                terminator = _unescape(self.terminator)
            except (UnicodeDecodeError, UnicodeEncodeError) as err:  # "\\x", "€"
                yield (
                    "terminator",
                    f"'{self.terminator}' is no byte string ({err.reason}): write bytes as"
                    " characters or escapes such as \\r, \\n, \\t or \\x1e",
                )
        if self.encoding != "binary":
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                yield "encoding", f"unknown encoding {self.encoding!r} (or 'binary')"
            else:
                try:  # hex, base64, rot13 ...: codecs, but no text encodings (bytes.decode
                    b"a".decode(self.encoding, "replace")  # refuses them: the source crashed)
                    # a character's bytes, not counting a mark the encoding writes first
                    # (utf-8-sig's BOM)
                    width = len("aa".encode(self.encoding, "replace")) - len(
                        "a".encode(self.encoding, "replace")
                    )
                except (LookupError, UnicodeError):  # idna, undefined: UnicodeError
                    text = f"{self.encoding!r} is not a text encoding (e.g. utf-8, latin-1)"
                    yield "encoding", text + " or 'binary'"
                else:
                    if width != 1:
                        # UTF-16, UTF-32: lines are cut at the terminator's bytes and then
                        # decoded, so every line after the first began mid-character
                        # and went to the dead letters
                        yield (
                            "encoding",
                            f"{self.encoding!r} writes a character in several bytes, so a line"
                            " cannot be cut at the terminator; use an 8-bit or UTF-8"
                            " encoding, or 'binary'",
                        )
        if self.framing == "regex":
            if not self.pattern:
                yield "pattern", "framing: regex needs a pattern with named groups"
            else:
                try:
                    compiled = re.compile(self.pattern)
                except (re.error, OverflowError, RecursionError) as err:
                    # x{99999999999} is an OverflowError, 500 nested groups a RecursionError
                    why = "groups nested too deeply" if isinstance(err, RecursionError) else err
                    yield "pattern", f"not a valid regular expression: {why}"
                else:
                    if not compiled.groupindex:
                        yield "pattern", "needs named groups, e.g. (?P<weight>[0-9.]+)"
        elif self.pattern is not None:
            yield "pattern", "only used with framing: regex"
        if self.framing == "fixed":
            if self.length is None or not 1 <= self.length <= self.max_length:
                yield "length", "framing: fixed needs length: 1..max_length bytes"
        elif self.length is not None:
            yield "length", "only used with framing: fixed"
        if self.sync is not None:
            try:
                sync = bytes.fromhex(self.sync)
            except ValueError:
                yield "sync", f"{self.sync!r} is not hex bytes, e.g. 'aa55'"
            else:
                if not sync or (self.length is not None and len(sync) > self.length):
                    yield "sync", "must be 1..length bytes"
            if self.framing != "fixed":
                yield "sync", "only used with framing: fixed"
        # A key another framing reads, set away from its default here, would be ignored.
        for key, changed, framings in (
            ("terminator", terminator != b"\n", ("line", "regex")),
            ("encoding", self.encoding != "utf-8", ("line", "regex")),
            ("strip", not self.strip, ("line",)),
            ("convert", not self.convert, ("regex",)),
            ("require_checksum", not self.require_checksum, ("nmea",)),
        ):
            if changed and self.framing not in framings:
                yield key, f"only used with framing: {' or '.join(framings)}"
        allowed = {"source", "talker", "sentence"} if self.framing == "nmea" else {"source"}
        try:
            names = set(template_fields(self.topic))
        except ValueError as err:
            yield "topic", str(err)
            return
        if names - allowed:
            yield (
                "topic",
                (
                    f"{self.topic!r} uses {', '.join(sorted(names - allowed))};"
                    f" available: {', '.join('{' + a + '}' for a in sorted(allowed))}"
                ),
            )
        else:
            problem = validate_topic(self.topic.format(**{n: "x" for n in names}))
            if problem:
                yield "topic", f"{self.topic!r} does not make a valid topic: {problem}"


def _network_port_problem(port: str) -> str | None:
    """Why a socket:// or rfc2217:// port cannot be opened, or None. Without a port
    number pyserial failed at every retry with "'<=' not supported between instances
    of 'int' and 'NoneType'"; a bad one was retried for ever too."""
    scheme, sep, _ = port.partition("://")
    if not sep or scheme.lower() not in ("socket", "rfc2217"):
        return None
    try:
        parts = urlsplit(port)
        number = parts.port
    except ValueError as err:
        return f"{port!r} is not a {scheme}://host:port URL: {err}"
    if not parts.hostname or number is None or not 0 < number < 65536:
        return f"{port!r}: write {scheme}://host:port, with a port from 1 to 65535"
    # pyserial's options; another (a typo) failed each open, retried quietly for ever
    # with "Could not open port ...: 'debug|info|warning|error'"
    known = _URL_OPTIONS[scheme.lower()]
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in known:
            return f"{port!r}: unknown option {key!r} ({scheme}:// takes {', '.join(known)})"
        if key == "logging" and value not in _LOG_LEVELS:
            return f"{port!r}: logging must be one of {', '.join(_LOG_LEVELS)}"
        if key == "timeout" and not _SECONDS.fullmatch(value):
            return f"{port!r}: timeout must be a number of seconds, not {value!r}"
    return None


_URL_OPTIONS = {
    "socket": ("logging",),
    "rfc2217": ("logging", "ign_set_control", "poll_modem", "timeout"),
}
_LOG_LEVELS = ("debug", "info", "warning", "error")
_SECONDS = re.compile(r"\d+(?:\.\d*)?|\.\d+", re.ASCII)


def _unescape(text: str) -> bytes:
    """The terminator as bytes; YAML may bring "\\r\\n" either escaped or literal."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1")


class SerialSource(Source):
    """A serial port read without blocking the loop, framed into records."""

    Config = SerialSourceConfig
    mode = "stream"
    quiet_retries = True  # an unplugged adapter: one warning, not one every 30 s
    lost_if_cut = "a serial line is not read again"

    def __init__(self, config: SerialSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: SerialSourceConfig = config
        self._serial: Any = None
        self._fd: int | None = None
        self._thread_read: asyncio.Future[bytes] | None = None
        self._framer: Any = None
        self._attrs = {"serial.port": config.port}
        self._topics: dict[tuple[str, str], str] = {}
        self._status: dict[str, Any] = {
            "port": config.port,
            "state": "closed",
            "records": 0,
            "rejected": 0,
            "last_error": None,
        }

    def _make_framer(self) -> Any:
        cfg = self.config
        if cfg.framing == "line":
            return LineFramer(_unescape(cfg.terminator), cfg.max_length, cfg.encoding, cfg.strip)
        if cfg.framing == "regex":
            assert cfg.pattern is not None
            return RegexFramer(
                _unescape(cfg.terminator), cfg.max_length, cfg.encoding, cfg.pattern, cfg.convert
            )
        if cfg.framing == "fixed":
            assert cfg.length is not None
            return FixedFramer(cfg.length, bytes.fromhex(cfg.sync) if cfg.sync else None)
        return NmeaFramer(cfg.max_length, cfg.require_checksum)

    async def connect(self) -> None:
        """Open the port; RetryableError while the device is missing."""
        await self.close()
        cfg = self.config
        try:
            port = serial.serial_for_url(
                cfg.port,
                baudrate=cfg.baudrate,
                bytesize=cfg.bytesize,
                parity=cfg.parity,
                stopbits=int(cfg.stopbits) if cfg.stopbits != 1.5 else 1.5,
                rtscts=cfg.flow_control == "rtscts",
                dsrdtr=cfg.flow_control == "dsrdtr",
                xonxoff=cfg.flow_control == "xonxoff",
                timeout=0,
            )
        except ValueError as err:  # pyserial: settings this port or URL can never take
            raise PermanentError(f"serial port {cfg.port}: {err}") from err
        except (serial.SerialException, OSError) as err:
            self._status.update(state="missing", last_error=str(err))
            if getattr(err, "errno", None) == errno.ENOENT:
                raise MissingError(f"cannot open serial port {cfg.port}: no such device") from err
            raise RetryableError(f"cannot open serial port {cfg.port}: {err}") from err
        self._serial = port
        if isinstance(port, serial.Serial) and hasattr(port, "fd"):
            # A real tty or pty: read its file descriptor without blocking, woken by the loop.
            self._fd = port.fd
            os.set_blocking(port.fd, False)
        else:
            # socket://, rfc2217:// and other URL handlers have no file descriptor the
            # loop can watch (rfc2217 runs its own thread); they are read in a worker
            # thread with a short timeout, one read at a time.
            port.timeout = THREAD_POLL
        self._framer = self._make_framer()
        self._status.update(state="open", last_error=None)
        self.ctx.log.info("opened %s at %d baud (%s framing)", cfg.port, cfg.baudrate, cfg.framing)

    async def read(self) -> list[Message]:
        """Wait for bytes and return the records they complete (rejects included)."""
        while True:
            data = await self._next_chunk()
            if data:
                messages = self._to_messages(self._framer.feed(data))
                if messages:
                    return messages

    async def _next_chunk(self) -> bytes:
        if self._serial is None:
            raise RetryableError(f"serial port {self.config.port} is not open")
        try:
            if self._fd is not None:
                data = await self._read_fd(self._fd)
                if not data:
                    raise OSError("end of file: the device went away")
                return data
            if self._thread_read is None:
                self._thread_read = asyncio.ensure_future(
                    asyncio.to_thread(_blocking_read, self._serial)
                )
            try:
                return await asyncio.shield(self._thread_read)
            finally:
                if self._thread_read.done():
                    self._thread_read = None
        except (OSError, serial.SerialException) as err:
            self._status.update(state="lost", last_error=str(err))
            # No log line here: the engine logs the error it is handed, once.
            raise RetryableError(f"serial port {self.config.port} lost: {err}") from err

    async def _read_fd(self, fd: int) -> bytes:
        loop = asyncio.get_running_loop()
        # pyserial leaves the tty at VMIN=0, so an empty read means "nothing yet" when we
        # just look, and "hung up" only when the loop said the port was readable.
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            data = b""
        if data:
            return data
        ready: asyncio.Future[bytes] = loop.create_future()

        def on_readable() -> None:
            if ready.done():
                return
            try:
                ready.set_result(os.read(fd, READ_CHUNK))
            except BlockingIOError:
                return
            except OSError as err:
                ready.set_exception(err)

        loop.add_reader(fd, on_readable)
        try:
            return await ready
        finally:
            loop.remove_reader(fd)

    def _to_messages(self, records: list[Record]) -> list[Message]:
        out: list[Message] = []
        status = self._status
        create = FlowFile.create
        attrs = self._attrs
        nmea = self.config.framing == "nmea"
        for rec in records:
            topic = self._topic(rec.talker, rec.sentence)
            if rec.reject is not None:
                status["rejected"] += 1
                status["last_error"] = rec.reject
                a = {**attrs, "serial.error": rec.reject}
                if rec.truncated:  # the mark keeps it out of a replay
                    a[CONTENT_TRUNCATED] = rec.truncated
                out.append(Message(create(topic, rec.content, a), reject=rec.reject))
                continue
            status["records"] += 1
            if nmea:
                a = {**attrs, "nmea.talker": rec.talker, "nmea.sentence": rec.sentence}
                out.append(Message(create(topic, rec.content, a)))
            else:
                out.append(Message(create(topic, rec.content, attrs)))
        return out

    def _topic(self, talker: str, sentence: str) -> str:
        key = (talker, sentence)
        topic = self._topics.get(key)
        if topic is None:
            fields = {"source": self.ctx.name, "talker": talker or "invalid",
                      "sentence": sentence or "invalid"}  # fmt: skip
            topic = self.config.topic.format(**fields)
            if len(self._topics) < 1000:
                self._topics[key] = topic
        return topic

    async def close(self) -> None:
        port, self._serial = self._serial, None
        self._fd = None
        pending, self._thread_read = self._thread_read, None
        if pending is not None:
            # Let the worker thread's read (at most THREAD_POLL) end before closing under it.
            try:
                await asyncio.wait_for(asyncio.shield(pending), THREAD_POLL * 5)
            except (TimeoutError, OSError, serial.SerialException):
                pass
        if port is not None:
            try:
                port.close()
            except (OSError, serial.SerialException) as err:
                self.ctx.log.debug("closing %s: %s", self.config.port, err)
            self._status["state"] = "closed"

    def status(self) -> Mapping[str, object]:
        """The port: its state (open, missing, lost, closed), records and rejects."""
        return {"serial": dict(self._status)}


def _blocking_read(port: Any) -> bytes:
    """One read in a worker thread: wait up to the port timeout for a byte, then take the rest."""
    first = port.read(1)
    if not first:
        return b""
    waiting: int = port.in_waiting
    rest: bytes = port.read(min(waiting, READ_CHUNK)) if waiting else b""
    return bytes(first) + rest
