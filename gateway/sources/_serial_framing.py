"""Cutting a serial byte stream into records: lines, regex matches, fixed records, NMEA 0183.

Pure functions and small stateful splitters, no I/O. Every framer takes bytes
with `feed()` and returns `Record`s: content for a FlowFile, or a `reject`
reason with the offending bytes (garbage, bad checksum, over-long line) for
the dead-letter table.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple


class Record(NamedTuple):
    content: bytes
    reject: str | None = None
    talker: str = ""
    sentence: str = ""
    # the key whose limit cut the content (a dead letter of a part of the input only)
    truncated: str = ""


class LineSplitter:
    """Splits at `terminator`; a line longer than `max_length` is cut and flagged."""

    def __init__(self, terminator: bytes, max_length: int) -> None:
        self.terminator = terminator
        self.max_length = max_length
        # With "\n", a device ending its lines "\r\n" leaves a \r on each, which every
        # framing takes for the end of the line (strip, the regex's strip, NMEA's CR):
        # it does not count against `max_length` either.
        self._cr = terminator == b"\n"
        self._end = b"\r\n" if self._cr else terminator
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """(line, too_long) for each complete line in the stream so far."""
        buf = self._buf
        buf += data
        term, tlen, limit = self.terminator, len(self.terminator), self.max_length
        out: list[tuple[bytes, bool]] = []
        pos = 0
        while True:
            i = buf.find(term, pos)
            if i < 0:
                break
            line = bytes(buf[pos:i])
            pos = i + tlen
            if self._discarding:
                self._discarding = False  # the tail of a line already reported as too long
                continue
            if len(line) - (self._cr and line.endswith(b"\r")) > limit:
                out.append((line[:limit], True))
            else:
                out.append((line, False))
        del buf[:pos]
        # Past `limit`, the line is too long unless what is past it may be the start of the
        # terminator (a line of exactly `limit` bytes whose \r\n straddles two reads).
        if len(buf) > limit and not self._end.startswith(bytes(buf[limit:])):
            if not self._discarding:
                out.append((bytes(buf[:limit]), True))
                self._discarding = True
            keep = tlen - 1  # a terminator may straddle two reads
            del buf[: len(buf) - keep]
        return out


def too_long(line: bytes, limit: int) -> Record:
    """The dead letter of a line over `max_length`: its first bytes, marked as cut."""
    reason = (
        f"line longer than max_length ({limit} bytes) without a terminator;"
        " the first bytes are kept, the rest of the line is dropped"
    )
    return Record(line, reason, truncated="max_length")


class LineFramer:
    """`framing: line` — each line as text in `encoding`, stored as UTF-8 (`binary`: as it
    came)."""

    def __init__(self, terminator: bytes, max_length: int, encoding: str, strip: bool) -> None:
        self.lines = LineSplitter(terminator, max_length)
        self.encoding = None if encoding == "binary" else encoding
        # A line in another encoding (latin-1, cp1252 ...) is written as UTF-8 text, as the
        # regex framing's fields are: kept in its own bytes, every sink would see binary.
        self.transcode = self.encoding is not None and codecs.lookup(self.encoding).name != "utf-8"
        self.strip = strip

    def feed(self, data: bytes) -> list[Record]:
        out: list[Record] = []
        for line, long in self.lines.feed(data):
            if long:
                out.append(too_long(line, self.lines.max_length))
                continue
            content = line.strip() if self.strip else line
            if not content:
                continue
            problem = _undecodable(content, self.encoding)
            # A dead letter keeps the line as it came, surrounding bytes included.
            if problem:
                out.append(Record(line, problem))
            elif self.transcode and self.encoding:
                out.append(Record(content.decode(self.encoding).encode("utf-8")))
            else:
                out.append(Record(content))
        return out


def _undecodable(data: bytes, encoding: str | None) -> str | None:
    if encoding is None:
        return None
    try:
        data.decode(encoding)
    except UnicodeDecodeError as err:
        bad = data[err.start]
        return f"not {encoding} text (byte 0x{bad:02x} at {err.start}): garbage on the line?"
    return None


# A number as a device prints one: ASCII digits, a point, an exponent. int() and float()
# also read "1_000" as 1000 and other scripts' digits ("١٢" as 12): such text stays text.
_PLAIN_NUMBER = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*", re.ASCII)


def _number(text: str) -> Any:
    if not _PLAIN_NUMBER.fullmatch(text):
        return text
    try:
        return int(text)
    except ValueError:
        pass
    value = float(text)
    return value if math.isfinite(value) else text


class RegexFramer:
    """`framing: regex` — each line matched against `pattern`; named groups become JSON fields."""

    def __init__(
        self,
        terminator: bytes,
        max_length: int,
        encoding: str,
        pattern: str,
        convert: bool,
    ) -> None:
        self.lines = LineSplitter(terminator, max_length)
        self.encoding = "latin-1" if encoding == "binary" else encoding
        self.pattern = re.compile(pattern)
        self.convert = convert

    def feed(self, data: bytes) -> list[Record]:
        out: list[Record] = []
        for line, long in self.lines.feed(data):
            if long:
                out.append(too_long(line, self.lines.max_length))
                continue
            try:
                text = line.decode(self.encoding)
            except UnicodeDecodeError:
                out.append(Record(line, _undecodable(line, self.encoding)))
                continue
            text = text.strip("\r\n")
            if not text.strip():
                continue
            m = self.pattern.search(text)
            if m is None:
                out.append(Record(line, f"line does not match pattern {self.pattern.pattern!r}"))
                continue
            groups = m.groupdict()
            if self.convert:
                groups = {k: (_number(v) if v is not None else None) for k, v in groups.items()}
            out.append(Record(json.dumps(groups, ensure_ascii=False).encode()))
        return out


class FixedFramer:
    """`framing: fixed` — records of `length` bytes, optionally starting with `sync` bytes."""

    def __init__(self, length: int, sync: bytes | None) -> None:
        self.length = length
        self.sync = sync or None
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Record]:
        buf = self._buf
        buf += data
        out: list[Record] = []
        pos, n, sync = 0, self.length, self.sync
        if sync is None:
            while len(buf) - pos >= n:
                out.append(Record(bytes(buf[pos : pos + n])))
                pos += n
            del buf[:pos]
            return out
        while True:
            i = buf.find(sync, pos)
            if i < 0:
                keep = max(pos, len(buf) - (len(sync) - 1))
                if keep > pos:
                    out.append(Record(bytes(buf[pos:keep]), _garbage(keep - pos)))
                pos = keep
                break
            if i > pos:
                out.append(Record(bytes(buf[pos:i]), _garbage(i - pos)))
                pos = i
            if len(buf) - i < n:
                break
            out.append(Record(bytes(buf[i : i + n])))
            pos = i + n
        del buf[:pos]
        return out


def _garbage(count: int) -> str:
    return f"{count} bytes outside any record (no sync marker): garbage on the line?"


# ---- NMEA 0183 ------------------------------------------------------------


# Spaces and tabs around a sentence are layout, not data; anything else (NUL included)
# outside `$...*hh` is garbage and goes to the dead letters as it came.
BLANK = b" \t"


def nmea_checksum(body: bytes) -> int:
    """XOR of the bytes between `$` and `*`."""
    value = 0
    for b in body:
        value ^= b
    return value


# NMEA numbers are plain decimals. float() and int() also take "nan", "inf", "1e999"
# (which json.dumps writes as NaN and Infinity: not JSON) and "0_8" (8): garbage.
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_INTEGER = re.compile(r"[-+]?\d+")
_TIME = re.compile(r"\d{6}(?:\.\d+)?")  # hhmmss, and maybe .ss


def _f(s: str) -> float | None:
    if not s:
        return None
    if not _DECIMAL.fullmatch(s):
        raise ValueError(f"bad number {s!r}")
    return _finite(float(s), s)


def _finite(value: float, s: str) -> float:
    # 400 digits are a plain decimal, but beyond a float: float() makes them inf
    if not math.isfinite(value):
        raise ValueError(f"bad number {s[:16]!r}... ({len(s)} characters, beyond a float)")
    return value


def _i(s: str) -> int | None:
    if not s:
        return None
    if not _INTEGER.fullmatch(s):
        raise ValueError(f"bad integer {s!r}")
    return int(s)


def _coord(value: str, hemisphere: str) -> float | None:
    """ddmm.mmmm / dddmm.mmmm plus N/S/E/W -> signed decimal degrees."""
    if not value:
        return None
    if not _DECIMAL.fullmatch(value):
        raise ValueError(f"bad coordinate {value!r}")
    dot = value.find(".")
    head = dot if dot >= 0 else len(value)
    degrees = _finite(float(value[: head - 2]) + float(value[head - 2 :]) / 60.0, value)
    return round(-degrees if hemisphere in ("S", "W") else degrees, 7)


def _time(s: str) -> str | None:
    """hhmmss(.ss) -> hh:mm:ss(.ss)."""
    if not s:
        return None
    if not _TIME.fullmatch(s) or int(s[0:2]) > 23 or int(s[2:4]) > 59 or int(s[4:6]) > 60:
        raise ValueError(f"bad time {s!r}")
    return f"{s[0:2]}:{s[2:4]}:{s[4:]}"


def _date(s: str) -> str | None:
    """ddmmyy -> 20yy-mm-dd (NMEA years 80-99 are 19xx)."""
    if not s:
        return None
    if len(s) != 6 or not s.isdigit() or not 1 <= int(s[0:2]) <= 31 or not 1 <= int(s[2:4]) <= 12:
        raise ValueError(f"bad date {s!r}")
    yy = int(s[4:6])
    return f"{1900 + yy if yy >= 80 else 2000 + yy}-{s[2:4]}-{s[0:2]}"


def _gga(f: list[str]) -> dict[str, Any]:
    return {
        "time": _time(f[0]),
        "lat": _coord(f[1], f[2]),
        "lon": _coord(f[3], f[4]),
        "fix_quality": _i(f[5]),
        "satellites": _i(f[6]),
        "hdop": _f(f[7]),
        "altitude_m": _f(f[8]),
        "geoid_separation_m": _f(f[10]) if len(f) > 10 else None,
    }


def _rmc(f: list[str]) -> dict[str, Any]:
    time, date = _time(f[0]), _date(f[8])
    out = {
        "time": time,
        "valid": f[1] == "A",
        "lat": _coord(f[2], f[3]),
        "lon": _coord(f[4], f[5]),
        "speed_knots": _f(f[6]),
        "course_deg": _f(f[7]),
        "date": date,
    }
    if time and date:
        out["datetime"] = f"{date}T{time}Z"
    if len(f) > 10 and f[9]:
        variation = _f(f[9]) or 0.0
        out["magnetic_variation_deg"] = -variation if f[10] == "W" else variation
    return out


def _gll(f: list[str]) -> dict[str, Any]:
    return {
        "lat": _coord(f[0], f[1]),
        "lon": _coord(f[2], f[3]),
        "time": _time(f[4]) if len(f) > 4 else None,
        "valid": (f[5] == "A") if len(f) > 5 else None,
    }


def _vtg(f: list[str]) -> dict[str, Any]:
    return {
        "course_true_deg": _f(f[0]),
        "course_magnetic_deg": _f(f[2]),
        "speed_knots": _f(f[4]),
        "speed_kmh": _f(f[6]),
    }


def _gsa(f: list[str]) -> dict[str, Any]:
    return {
        "mode": f[0] or None,
        "fix_type": _i(f[1]),
        "satellites": [_i(s) for s in f[2:14] if s],
        "pdop": _f(f[14]),
        "hdop": _f(f[15]),
        "vdop": _f(f[16]),
    }


def _zda(f: list[str]) -> dict[str, Any]:
    time = _time(f[0])
    day, month, year = _i(f[1]), _i(f[2]), _i(f[3])
    if (day is not None and not 1 <= day <= 31) or (month is not None and not 1 <= month <= 12):
        raise ValueError(f"bad date {f[1]}/{f[2]}")
    if year is not None and not 1000 <= year <= 9999:
        raise ValueError(f"bad year {f[3]!r}")
    out: dict[str, Any] = {"time": time, "day": day, "month": month, "year": year}
    if time and day and month and year:
        out["datetime"] = f"{year:04d}-{month:02d}-{day:02d}T{time}Z"
    return out


def _hdt(f: list[str]) -> dict[str, Any]:
    return {"heading_deg": _f(f[0])}


PARSERS: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "GGA": _gga,
    "RMC": _rmc,
    "GLL": _gll,
    "VTG": _vtg,
    "GSA": _gsa,
    "ZDA": _zda,
    "HDT": _hdt,
}


def parse_sentence(line: bytes, require_checksum: bool = True) -> list[Record]:
    """Records for one line: any leading garbage, the sentence (parsed, or rejected), any
    trailing garbage; every byte of the line other than blanks around the sentence is kept."""
    out: list[Record] = []
    start = -1
    for marker in (b"$", b"!"):
        i = line.find(marker)
        if i >= 0 and (start < 0 or i < start):
            start = i
    if start < 0:
        return [Record(line, "not an NMEA sentence (no $ or !): garbage on the line?")]
    if line[:start].strip(BLANK):
        out.append(Record(line[:start], f"{start} bytes before the NMEA sentence: garbage?"))
    sentence = line[start:]
    star = sentence.rfind(b"*")
    after = b""
    if star >= 0:
        sentence, after = sentence[: star + 3], sentence[star + 3 :]
    else:
        sentence = sentence.rstrip(BLANK)
    out.append(_sentence(sentence, star >= 0, require_checksum))
    if after.strip(BLANK):
        out.append(Record(after, f"{len(after)} bytes after the NMEA checksum: garbage?"))
    return out


def _sentence(sentence: bytes, has_checksum: bool, require_checksum: bool) -> Record:
    """One `$...*hh` sentence: parsed, or rejected with the reason."""
    body = sentence[1:]
    if has_checksum:
        star = body.rfind(b"*")
        given = body[star + 1 :]
        body = body[:star]
        computed = nmea_checksum(body)
        try:
            ok = int(given, 16) == computed and len(given) == 2
        except ValueError:
            ok = False
        if not ok:
            reason = f"bad NMEA checksum: the sentence says {given!r}, computed {computed:02X}"
            return Record(sentence, reason)
    elif require_checksum:
        return Record(sentence, "NMEA sentence without a checksum (*hh)")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return Record(sentence, "non-ASCII bytes in an NMEA sentence")
    fields = text.split(",")
    address = fields[0]
    if address.startswith("P"):
        talker, kind = "P", address[1:]
    else:
        talker, kind = address[:2], address[2:]
    if not address.isalnum() or not kind:
        return Record(sentence, f"bad NMEA address field {address!r}")
    data: dict[str, Any] = {"talker": talker, "sentence": kind}
    parser = PARSERS.get(kind)
    if parser is None:
        data["fields"] = fields[1:]
    else:
        try:
            data.update(parser(fields[1:]))
        except (ValueError, IndexError) as err:
            return Record(sentence, f"malformed {kind} sentence: {err}", talker, kind)
    data["raw"] = sentence.decode("ascii")
    return Record(json.dumps(data).encode(), None, talker, kind)


class NmeaFramer:
    """`framing: nmea` — NMEA 0183 sentences, checksums verified, common ones parsed."""

    def __init__(self, max_length: int, require_checksum: bool) -> None:
        self.lines = LineSplitter(b"\n", max_length)
        self.require_checksum = require_checksum

    def feed(self, data: bytes) -> list[Record]:
        out: list[Record] = []
        for line, long in self.lines.feed(data):
            if long:
                out.append(too_long(line, self.lines.max_length))
                continue
            if line.endswith(b"\r"):
                line = line[:-1]  # the CR of the CR LF that ends every sentence
            if line.strip(BLANK):
                out.extend(parse_sentence(line, self.require_checksum))
        return out
