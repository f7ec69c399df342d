"""OPC UA values to JSON and JSON back to OPC UA values (write-back), without I/O.

A value's JSON: Boolean → true/false; the integer types → numbers; Float and Double →
numbers (NaN and infinities → null); String → a string (bytes that are not UTF-8 each
as U+FFFD); DateTime → an ISO 8601 UTC
string (`2024-05-01T12:00:00.000Z`); ByteString → base64 text; an array → a JSON
array of its elements. Any other type becomes its text (`str()`), so nothing is lost
silently, but only the types above are tested.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from datetime import UTC, datetime
from typing import Any

import orjson
from asyncua import ua

VT = ua.VariantType
INT_RANGES: dict[VT, tuple[int, int]] = {
    VT.SByte: (-(2**7), 2**7 - 1),
    VT.Byte: (0, 2**8 - 1),
    VT.Int16: (-(2**15), 2**15 - 1),
    VT.UInt16: (0, 2**16 - 1),
    VT.Int32: (-(2**31), 2**31 - 1),
    VT.UInt32: (0, 2**32 - 1),
    VT.Int64: (-(2**63), 2**63 - 1),
    VT.UInt64: (0, 2**64 - 1),
}
FLOATS = (VT.Float, VT.Double)


def iso(ts: datetime | None) -> str | None:
    """An aware or naive-UTC datetime as `2024-05-01T12:00:00.123Z` (None stays None)."""
    if ts is None:
        return None
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts.isoformat(timespec="milliseconds") + "Z"


def iso_now() -> str:
    """Now, as `iso` writes it."""
    return iso(datetime.now(UTC)) or ""


def plain(value: Any) -> Any:
    """A Python value from asyncua as a JSON-ready one (see the module documentation)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return value if value.isascii() else text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return text(str(value))


def text(value: str) -> str:
    """`value` as UTF-8 can hold it. asyncua decodes a String with surrogateescape, so
    a server's bytes that are not UTF-8 (a PLC's latin-1 "°" as 0xB0) came as lone
    surrogates, which no JSON encoder writes: the value was lost without a word when
    subscribed, and a polled source crashed at each poll. Each such byte becomes
    U+FFFD, as a Modbus string's do."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            data = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate no byte stands for
            data = value.encode("utf-8", "replace")
        return data.decode("utf-8", "replace")
    return value


def float32(value: Any) -> Any:
    """A Float (32-bit) as the shortest decimal that is the same float32: 0.1, not
    0.10000000149011612 (what widening it to a Python float shows)."""
    if isinstance(value, list):
        return [float32(v) for v in value]
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == packed:
            return short
    return value


def status_name(code: ua.StatusCode) -> str:
    """`Good`, `BadNodeIdUnknown`, ... (the hex value when the name is unknown)."""
    try:
        return str(code.name)
    except (AttributeError, KeyError):
        return f"0x{code.value:08X}"


def encode(dv: ua.DataValue) -> tuple[bytes, str]:
    """The FlowFile content for one DataValue, and its type's name."""
    variant = dv.Value
    vtype = variant.VariantType.name if variant is not None else "Null"
    status = dv.StatusCode
    value = variant.Value if variant is not None else None
    if vtype == "Float":
        value = float32(value)
    body = {
        "value": plain(value),
        "type": vtype,
        "source_ts": iso(dv.SourceTimestamp),
        "server_ts": iso(dv.ServerTimestamp),
        "status": status_name(status) if status is not None else "Good",
        "status_code": status.value if status is not None else 0,
    }
    return orjson.dumps(body), vtype


def numeric(value: Any) -> float | None:
    """A number to compare for the percent deadband, or None (not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def convert(requested: Any, vtype: VT, array: bool) -> Any:
    """`requested` (from JSON) as a Python value asyncua writes as `vtype`; ValueError
    says why it cannot be."""
    if array:
        if not isinstance(requested, list):
            raise ValueError(f"expected a JSON array of {vtype.name}, got {requested!r}")
        return [convert(v, vtype, False) for v in requested]
    if isinstance(requested, list):
        raise ValueError(f"expected one {vtype.name}, got an array")
    if vtype == VT.Boolean:
        if isinstance(requested, bool):
            return requested
        if isinstance(requested, int | float) and requested in (0, 1):
            return bool(requested)
        if isinstance(requested, str) and requested.lower() in (
            "true",
            "false",
            "on",
            "off",
            "1",
            "0",
        ):
            return requested.lower() in ("true", "on", "1")
        raise ValueError(f"expected true or false, got {requested!r}")
    if vtype in INT_RANGES:
        low, high = INT_RANGES[vtype]
        number: Any = requested
        if isinstance(number, str):
            try:
                number = int(number, 0)
            except ValueError as err:
                raise ValueError(f"expected an integer ({vtype.name}), got {requested!r}") from err
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValueError(f"expected an integer ({vtype.name}), got {requested!r}")
        if isinstance(number, float):
            if not number.is_integer():
                raise ValueError(f"expected an integer ({vtype.name}), got {requested!r}")
            number = int(number)
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range for {vtype.name} ({low}..{high})")
        return number
    if vtype in FLOATS:
        if isinstance(requested, bool):
            raise ValueError(f"expected a number ({vtype.name}), got {requested!r}")
        try:
            result = float(requested)
        except OverflowError as err:  # an integer beyond a float: JSON allows 10**400
            raise ValueError(f"{requested} is out of range for {vtype.name}") from err
        except (TypeError, ValueError) as err:
            raise ValueError(f"expected a number ({vtype.name}), got {requested!r}") from err
        if not math.isfinite(result):
            # JSON has no NaN or Infinity (the command parser refuses them), but text
            # such as "NaN" or "1e999" reads as one: no setting means it
            raise ValueError(f"{requested!r} is not a finite number; send a finite number")
        if vtype == VT.Float and abs(result) > 3.4028234663852886e38:
            raise ValueError(f"{result} is out of range for Float")
        return result
    if vtype == VT.String:
        if not isinstance(requested, str):
            raise ValueError(f"expected a string, got {requested!r}")
        return requested
    if vtype == VT.DateTime:
        if not isinstance(requested, str):
            raise ValueError(f"expected an ISO 8601 date and time, got {requested!r}")
        try:
            ts = datetime.fromisoformat(requested.replace("Z", "+00:00"))
        except ValueError as err:
            raise ValueError(f"expected an ISO 8601 date and time, got {requested!r}") from err
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    if vtype == VT.ByteString:
        if not isinstance(requested, str):
            raise ValueError(f"expected base64 text, got {requested!r}")
        try:
            return base64.b64decode(requested, validate=True)
        except binascii.Error as err:
            raise ValueError(f"expected base64 text, got {requested!r}") from err
    raise ValueError(f"writing {vtype.name} values is not supported")


def same(written: Any, back: Any, vtype: VT) -> bool:
    """Whether the value read back is the value written (Float compared at its precision)."""
    if isinstance(written, list) and isinstance(back, list):
        return len(written) == len(back) and all(
            same(w, b, vtype) for w, b in zip(written, back, strict=True)
        )
    if vtype == VT.Float and isinstance(written, float) and isinstance(back, float):
        return math.isclose(written, back, rel_tol=1e-6) or written == back
    if vtype == VT.DateTime and isinstance(written, datetime) and isinstance(back, datetime):
        a = written.astimezone(UTC).replace(tzinfo=None)
        b = back.astimezone(UTC).replace(tzinfo=None) if back.tzinfo else back
        return abs((a - b).total_seconds()) < 1e-6
    return bool(written == back)
