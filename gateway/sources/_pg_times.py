"""PostgreSQL's date and time types for the `postgres` source, in asyncpg's tuple form.

asyncpg's own codecs raise ValueError for what Python's datetime cannot hold (a date
BC or past 9999, `infinity`, a time of 24:00), and the source crashed on such a row
at every poll. Read as text, those came through, but a range (`tstzrange`,
`daterange`), multirange or composite type holding one could not be read at all: the
driver reads their parts only in binary. So they are read in binary through the
tuple form (a count of days or microseconds from 2000-01-01, PostgreSQL's own):
Python's value when it can hold it, else the text PostgreSQL writes for it in ISO
DateStyle (`0044-03-15 BC`, `10000-01-01 00:00:00`, `infinity`, `24:00:00+02`; a
`timestamptz` in UTC, `+00`). A cursor value of such text is written back the same way,
and kept as text when a stored position is read again (see `written`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

_EPOCH = dt.datetime(2000, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=dt.UTC)
_EPOCH_DAY = _EPOCH.toordinal()
_DAY_US = 86_400_000_000
_CYCLE_DAYS = 146_097  # 400 Gregorian years, which repeat exactly
_DATE_INFINITY = 2**31 - 1
_DATE_MINUS_INFINITY = -(2**31)
_INFINITY = 2**63 - 1
_MINUS_INFINITY = -(2**63)
_TEXT = re.compile(
    r"(?P<y>\d{4,})-(?P<m>\d\d)-(?P<d>\d\d)"
    r"(?:[ T](?P<H>\d\d):(?P<M>\d\d)(?::(?P<S>\d\d)(?:\.(?P<f>\d{1,6}))?)?)?"
    r"(?P<tz>[+-]\d\d(?::?\d\d){0,2}|Z)?(?P<bc> BC)?"
)


def _civil(days: int) -> tuple[int, int, int]:
    """Year (0 is 1 BC, -1 2 BC...), month and day of `days` after 2000-01-01."""
    cycles, ordinal = divmod(days + _EPOCH_DAY - 1, _CYCLE_DAYS)
    date = dt.date.fromordinal(ordinal + 1)
    return date.year + 400 * cycles, date.month, date.day


def _days(year: int, month: int, day: int) -> int:
    """The inverse of `_civil`."""
    cycles, year = divmod(year - 1, 400)
    return dt.date(year + 1, month, day).toordinal() + cycles * _CYCLE_DAYS - _EPOCH_DAY


def _date_text(days: int) -> str:
    year, month, day = _civil(days)
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d} BC"
    return f"{year:04d}-{month:02d}-{day:02d}"


def _clock_text(us: int) -> str:
    seconds, fraction = divmod(us, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    return text + f".{fraction:06d}".rstrip("0") if fraction else text


def _zone_text(east: int) -> str:
    sign = "-" if east < 0 else "+"
    minutes, second = divmod(abs(east), 60)
    hour, minute = divmod(minutes, 60)
    text = f"{sign}{hour:02d}"
    if minute or second:
        text += f":{minute:02d}"
    return text + f":{second:02d}" if second else text


def _stamp_text(us: int, zone: str) -> str:
    if us == _INFINITY:
        return "infinity"
    if us == _MINUS_INFINITY:
        return "-infinity"
    days, rest = divmod(us, _DAY_US)
    date = _date_text(days)
    bc = date.endswith(" BC")
    return f"{date.removesuffix(' BC')} {_clock_text(rest)}{zone}{' BC' if bc else ''}"


# -- decoders: asyncpg's tuple -> a Python value, or PostgreSQL's text ---------------------


def _decode_date(value: tuple[int]) -> dt.date | str:
    (days,) = value
    if days == _DATE_INFINITY:
        return "infinity"
    if days == _DATE_MINUS_INFINITY:
        return "-infinity"
    try:
        return dt.date.fromordinal(days + _EPOCH_DAY)
    except (ValueError, OverflowError):
        return _date_text(days)


def _decode_timestamp(value: tuple[int]) -> dt.datetime | str:
    (us,) = value
    try:
        if abs(us) < _INFINITY:
            return _EPOCH + dt.timedelta(microseconds=us)
    except OverflowError:
        pass
    return _stamp_text(us, "")


def _decode_timestamptz(value: tuple[int]) -> dt.datetime | str:
    (us,) = value
    try:
        if abs(us) < _INFINITY:
            # from an aware epoch: 0.7 µs a value, where a replace(tzinfo=) after took 1.9
            return _EPOCH_UTC + dt.timedelta(microseconds=us)
    except OverflowError:
        pass
    return _stamp_text(us, "+00")


def _decode_time(value: tuple[int]) -> dt.time | str:
    (us,) = value
    if us >= _DAY_US:
        return _clock_text(us)  # 24:00:00
    seconds, fraction = divmod(us, 1_000_000)
    return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60, fraction)


def _decode_timetz(value: tuple[int, int]) -> dt.time | str:
    us, west = value
    if us >= _DAY_US:
        return _clock_text(us) + _zone_text(-west)
    time = _decode_time((us,))
    assert isinstance(time, dt.time)
    return time.replace(tzinfo=dt.timezone(dt.timedelta(seconds=-west)))


# -- encoders: a cursor value -> asyncpg's tuple ----------------------------------------------


def _parsed(text: str) -> tuple[int, int, int | None]:
    """Days from 2000-01-01, microseconds into the day and the offset east in seconds
    (None: none written) of the text of a date, a timestamp or a timestamptz."""
    m = _TEXT.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is no date or time PostgreSQL writes")
    year = int(m["y"])
    days = _days(1 - year if m["bc"] else year, int(m["m"]), int(m["d"]))
    us = (int(m["H"] or 0) * 3600 + int(m["M"] or 0) * 60 + int(m["S"] or 0)) * 1_000_000
    us += int((m["f"] or "0").ljust(6, "0"))
    zone = m["tz"]
    if zone is None:
        return days, us, None
    if zone == "Z":
        return days, us, 0
    parts = [int(p) for p in re.findall(r"\d\d", zone)]
    east = parts[0] * 3600 + (parts[1] * 60 if len(parts) > 1 else 0) + sum(parts[2:])
    return days, us, -east if zone[0] == "-" else east


def _encode_date(value: Any) -> tuple[int]:
    if value == "infinity":
        return (_DATE_INFINITY,)
    if value == "-infinity":
        return (_DATE_MINUS_INFINITY,)
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return (value.toordinal() - _EPOCH_DAY,)
    return (_parsed(str(value))[0],)


def _stamp(value: Any, utc: bool) -> tuple[int]:
    if value == "infinity":
        return (_INFINITY,)
    if value == "-infinity":
        return (_MINUS_INFINITY,)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None and utc:
            value = value.astimezone(dt.UTC)
        value = value.replace(tzinfo=None)
        delta = value - _EPOCH
        return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds,)
    if isinstance(value, dt.date):
        return ((value.toordinal() - _EPOCH_DAY) * _DAY_US,)
    days, us, east = _parsed(str(value))
    return (days * _DAY_US + us - ((east or 0) * 1_000_000 if utc else 0),)


def _encode_timestamp(value: Any) -> tuple[int]:
    return _stamp(value, utc=False)


def _encode_timestamptz(value: Any) -> tuple[int]:
    return _stamp(value, utc=True)


def _clock_us(value: Any) -> tuple[int, int | None]:
    if isinstance(value, dt.time):
        us = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000
        offset = value.utcoffset()
        return us + value.microsecond, None if offset is None else int(offset.total_seconds())
    try:
        _, us, east = _parsed(f"2000-01-01 {str(value).strip()}")
    except ValueError:
        raise ValueError(f"{value!r} is no time PostgreSQL writes") from None
    return us, east


def _encode_time(value: Any) -> tuple[int]:
    return (_clock_us(value)[0],)


def _encode_timetz(value: Any) -> tuple[int, int]:
    us, east = _clock_us(value)
    return us, -(east or 0)


# name -> (encoder, decoder), for Connection.set_type_codec(format="tuple")
CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "date": (_encode_date, _decode_date),
    "timestamp": (_encode_timestamp, _decode_timestamp),
    "timestamptz": (_encode_timestamptz, _decode_timestamptz),
    "time": (_encode_time, _decode_time),
    "timetz": (_encode_timetz, _decode_timetz),
}


def written(text: str, sample: Any) -> bool:
    """True when `text`, a stored cursor value, is the text a decoder writes for a value of
    the type of `sample` (a value of its column) that Python cannot hold: the encoder takes
    it back as that value. Read as Python's type, it failed, and the position was dropped."""
    if isinstance(sample, dt.datetime):
        name = "timestamp" if sample.tzinfo is None else "timestamptz"
    elif isinstance(sample, dt.date):
        name = "date"
    elif isinstance(sample, dt.time):
        name = "time" if sample.tzinfo is None else "timetz"
    else:
        return False
    encoder, decoder = CODECS[name]
    try:
        return bool(decoder(encoder(text)) == text)
    except (ValueError, OverflowError):
        return False
