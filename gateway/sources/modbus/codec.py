"""Modbus data types: decoding and encoding register values, pure functions, no I/O.

A value occupies one bit (coils, discrete inputs, or one bit of a register) or
`width` 16-bit registers. Multi-register values are decoded from the big-endian
bytes of the block that was read: `byte_order` says whether each register holds
its two bytes high-first ("big") or swapped ("little"), `word_order` whether the
most significant register comes first ("big") or last ("little"). For a 32-bit
value with bytes A (most significant) to D:

    byte big,    word big    ABCD        byte little, word little  DCBA
    byte big,    word little CDAB        byte little, word big     BADC

and likewise ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA for 64-bit values.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

# name -> (registers, struct code)
NUMERIC_TYPES: dict[str, tuple[int, str]] = {
    "int16": (1, "h"),
    "uint16": (1, "H"),
    "int32": (2, "i"),
    "uint32": (2, "I"),
    "int64": (4, "q"),
    "uint64": (4, "Q"),
    "float32": (2, "f"),
    "float64": (4, "d"),
}
_STRING = re.compile(r"^string\((\d+)\)$")
MAX_STRING = 240
TYPE_NAMES = ("bool", *NUMERIC_TYPES, "string(N)")

ORDER_ALIASES: dict[str, tuple[str, str]] = {
    "ABCD": ("big", "big"),
    "CDAB": ("big", "little"),
    "BADC": ("little", "big"),
    "DCBA": ("little", "little"),
    "ABCDEFGH": ("big", "big"),
    "GHEFCDAB": ("big", "little"),
    "BADCFEHG": ("little", "big"),
    "HGFEDCBA": ("little", "little"),
}


class TypeInfo(NamedTuple):
    kind: str  # "bool", "int", "float" or "string"
    width: int  # registers (0 for a bool, which needs one bit or one register)
    code: str  # struct code, "" for bool and string
    length: int  # characters for string(N)


def parse_type(name: str) -> TypeInfo:
    """TypeInfo for a type name; raise ValueError listing the valid names."""
    if name == "bool":
        return TypeInfo("bool", 0, "", 0)
    if name in NUMERIC_TYPES:
        width, code = NUMERIC_TYPES[name]
        return TypeInfo("float" if code in "fd" else "int", width, code, 0)
    m = _STRING.match(name)
    if m:
        length = int(m.group(1))
        if not 1 <= length <= MAX_STRING:
            raise ValueError(f"string length must be 1..{MAX_STRING}, got {length}")
        return TypeInfo("string", (length + 1) // 2, "", length)
    raise ValueError(f"unknown type {name!r} (one of {', '.join(TYPE_NAMES)})")


def _swap_words(buf: bytes, start: int, width: int) -> bytes:
    """The `width` registers at byte offset `start`, in reverse register order."""
    return b"".join(buf[start + 2 * i : start + 2 * i + 2] for i in range(width - 1, -1, -1))


def _swap_bytes(data: bytes) -> bytes:
    out = bytearray(len(data))
    out[0::2] = data[1::2]
    out[1::2] = data[0::2]
    return bytes(out)


def _decimals(x: float) -> int:
    exponent = Decimal(repr(x)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _short_float32(v: float) -> float:
    """The shortest decimal that is the same float32: 23.4, not 23.399999618530273."""
    if v != v or v in (math.inf, -math.inf):
        return v
    for digits in (6, 7, 8):
        short = float(f"{v:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == v:
            return short
    return v


Decoder = Callable[[bytes, Sequence[Any]], Any]


_EXACT = 2.0**53  # every integer below it is exactly a float


def make_decoder(
    info: TypeInfo,
    offset: int,
    *,
    bits: bool,
    bit: int | None = None,
    byte_order: str = "big",
    word_order: str = "big",
    scale: float = 1.0,
    add: float = 0.0,
    precision: int | None = None,
) -> Decoder:
    """A function (block_bytes, block_values) -> value for one value in a block.

    `offset` is the position in the block in registers (bits for bit tables);
    `block_bytes` are the block's registers packed big-endian, `block_values`
    the registers (or bits) as the device returned them.
    """
    if bits:
        return lambda buf, values: bool(values[offset])
    if info.kind == "bool":
        if bit is None:
            return lambda buf, values: values[offset] != 0
        mask = 1 << bit
        return lambda buf, values: bool(values[offset] & mask)
    start = 2 * offset
    if info.kind == "string":
        end = start + 2 * info.width
        length = info.length
        if byte_order == "big":
            return lambda buf, values: (
                buf[start:end][:length].split(b"\x00", 1)[0].decode("utf-8", "replace")
            )
        return lambda buf, values: (
            _swap_bytes(buf[start:end])[:length].split(b"\x00", 1)[0].decode("utf-8", "replace")
        )

    width, code = info.width, info.code
    raw: Decoder
    if width == 1 and byte_order == "big":
        if code == "H":
            raw = lambda buf, values: values[offset]  # noqa: E731
        else:
            raw = lambda buf, values: (  # noqa: E731
                values[offset] - 0x10000 if values[offset] & 0x8000 else values[offset]
            )
    elif width == 1 or byte_order == word_order:
        # ABCD reads as is; DCBA is the whole value reversed, i.e. little-endian.
        unpack_from = struct.Struct((">" if byte_order == "big" else "<") + code).unpack_from
        raw = lambda buf, values: unpack_from(buf, start)[0]  # noqa: E731
    else:
        # CDAB: registers reversed give ABCD. BADC: registers reversed give DCBA,
        # which is ABCD read little-endian. Same for the 64-bit orders.
        unpack = struct.Struct(("<" if byte_order == "little" else ">") + code).unpack
        raw = lambda buf, values: unpack(_swap_words(buf, start, width))[0]  # noqa: E731

    if code == "f":
        base = raw
        raw = lambda buf, values: _short_float32(base(buf, values))  # noqa: E731
    if info.kind == "int" and float(scale).is_integer() and float(add).is_integer():
        # An integer stays an exact integer (a uint64 beyond 2**53 too): no decimals to
        # round to, whatever `precision` says (through a float it was 18446744073709551615
        # read as 1.8446744073709552e19, and precision: 0 wrote 215 as 215.0).
        if scale == 1.0 and add == 0.0:
            return raw
        iscale, iadd = int(scale), int(add)
        return lambda buf, values: raw(buf, values) * iscale + iadd
    if scale == 1.0 and add == 0.0 and precision is None:
        return raw
    if precision is None:
        precision = max(_decimals(scale), _decimals(add)) if info.kind == "int" else None
    if precision is None:
        return lambda buf, values: raw(buf, values) * scale + add
    if precision == 0:
        # no decimals: an integer (22, not 22.0) while a float holds it exactly; beyond
        # 2**53 a float is whole anyway, and stays one (a float32 3e30 is not written as
        # a 31-digit integer, nor a float64 1e300 as 301 digits); NaN and infinities too
        def whole(buf: bytes, values: Sequence[Any]) -> Any:
            x = raw(buf, values) * scale + add
            return round(x) if abs(x) < _EXACT else x

        return whole
    digits = precision
    return lambda buf, values: round(raw(buf, values) * scale + add, digits)


def encode(
    info: TypeInfo,
    value: Any,
    *,
    byte_order: str = "big",
    word_order: str = "big",
    scale: float = 1.0,
    add: float = 0.0,
) -> list[int]:
    """Registers for an engineering value (a decoder's inverse); ValueError if it cannot fit."""
    if info.kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        data = value.encode("utf-8")
        if len(data) > info.length:
            raise ValueError(f"{value!r} is longer than {info.length} bytes")
        data = data.ljust(2 * info.width, b"\x00")
        if byte_order == "little":
            data = _swap_bytes(data)
        return list(struct.unpack(f">{info.width}H", data))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        raw = (value - add) / scale if (scale != 1.0 or add != 0.0) else value
        if info.kind == "float":
            raw = float(raw)
    except OverflowError as err:  # an integer beyond a float (JSON allows 10**400)
        raise ValueError(f"{value!r} is out of range for this register") from err
    if isinstance(raw, float) and not math.isfinite(raw):
        # finite as sent, infinite once unscaled: a device must not get Infinity
        raise ValueError(f"{value!r} is out of range for this register (scale {scale:g})")
    code = info.code
    if info.kind == "int":
        if isinstance(raw, float):
            raw = round(raw)
        bits = 16 * info.width
        if code.isupper():
            lo, hi = 0, (1 << bits) - 1
        else:
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if not lo <= raw <= hi:
            raise ValueError(f"{value!r} is out of range for this register ({lo}..{hi} raw)")
    else:
        if code == "f" and abs(raw) > 3.4028234663852886e38:
            raise ValueError(f"{value!r} is out of range for float32")
    data = struct.pack(">" + code, raw)
    if byte_order == "little":
        data = _swap_bytes(data)
    regs = list(struct.unpack(f">{info.width}H", data))
    if word_order == "little":
        regs.reverse()
    return regs


def json_scalar(value: Any) -> str:
    """A value as JSON text; NaN and infinities (not JSON) become null."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "null"
    if value is None:
        return "null"
    return json.dumps(value, ensure_ascii=False)


_pack_cache: dict[int, Callable[..., bytes]] = {}


def pack(regs: Sequence[int]) -> bytes:
    """Registers as the big-endian bytes the decoders read."""
    n = len(regs)
    packer = _pack_cache.get(n)
    if packer is None:
        packer = _pack_cache[n] = struct.Struct(f">{n}H").pack
    return packer(*regs)


def as_bool(value: Any) -> bool:
    """A write-back value for a coil or bit: true/false, 1/0, on/off; else ValueError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "1", "0"):
        return value.lower() in ("true", "on", "1")
    raise ValueError(f"expected true or false, got {value!r}")
