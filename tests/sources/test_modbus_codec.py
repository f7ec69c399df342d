"""Modbus data types, byte/word orders and the request planner, as pure functions."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from gateway.sources.modbus import codec, planner
from tests.sources.modbus_plc import layout as regs_for

pytestmark = pytest.mark.unit


def decode(type_name: str, regs: list[int], **kw: Any) -> Any:
    info = codec.parse_type(type_name)
    fn = codec.make_decoder(info, 1, bits=False, **kw)
    padded = [0xDEAD, *regs, 0xBEEF]  # the value sits inside a larger block
    return fn(struct.pack(f">{len(padded)}H", *padded), padded)


ORDERS_32 = {"ABCD": ("big", "big"), "CDAB": ("big", "little"),
             "BADC": ("little", "big"), "DCBA": ("little", "little")}  # fmt: skip
ORDERS_64 = {"ABCDEFGH": ("big", "big"), "GHEFCDAB": ("big", "little"),
             "BADCFEHG": ("little", "big"), "HGFEDCBA": ("little", "little")}  # fmt: skip

CASES_32 = [("int32", "i", -123456789), ("uint32", "I", 3000000000), ("float32", "f", 1.5),
            ("float32", "f", -273.25)]  # fmt: skip
CASES_64 = [("int64", "q", -1234567890123456789), ("uint64", "Q", 0x0102030405060708),
            ("float64", "d", 6.02214076e23)]  # fmt: skip


@pytest.mark.parametrize("order", ORDERS_32)
@pytest.mark.parametrize(("type_name", "code", "value"), CASES_32)
def test_32_bit_orders(order: str, type_name: str, code: str, value: Any) -> None:
    byte_order, word_order = ORDERS_32[order]
    regs = regs_for(code, value, order)
    got = decode(type_name, regs, byte_order=byte_order, word_order=word_order)
    assert got == value
    info = codec.parse_type(type_name)
    assert codec.encode(info, value, byte_order=byte_order, word_order=word_order) == regs


@pytest.mark.parametrize("order", ORDERS_64)
@pytest.mark.parametrize(("type_name", "code", "value"), CASES_64)
def test_64_bit_orders(order: str, type_name: str, code: str, value: Any) -> None:
    byte_order, word_order = ORDERS_64[order]
    regs = regs_for(code, value, order)
    assert decode(type_name, regs, byte_order=byte_order, word_order=word_order) == value
    info = codec.parse_type(type_name)
    assert codec.encode(info, value, byte_order=byte_order, word_order=word_order) == regs


def test_known_vectors() -> None:
    # float32 1.0 is 0x3F800000
    assert regs_for("f", 1.0, "ABCD") == [0x3F80, 0x0000]
    assert regs_for("f", 1.0, "CDAB") == [0x0000, 0x3F80]
    assert regs_for("f", 1.0, "BADC") == [0x803F, 0x0000]
    assert regs_for("f", 1.0, "DCBA") == [0x0000, 0x803F]
    assert regs_for("Q", 0x0102030405060708, "GHEFCDAB") == [0x0708, 0x0506, 0x0304, 0x0102]
    assert regs_for("Q", 0x0102030405060708, "BADCFEHG") == [0x0201, 0x0403, 0x0605, 0x0807]
    assert decode("float32", [0x0000, 0x3F80], byte_order="big", word_order="little") == 1.0
    assert decode("uint64", [0x0807, 0x0605, 0x0403, 0x0201],
                  byte_order="little", word_order="little") == 0x0102030405060708  # fmt: skip


@pytest.mark.parametrize(
    ("type_name", "regs", "byte_order", "expected"),
    [
        ("int16", [0xFFFE], "big", -2),
        ("int16", [0x7FFF], "big", 32767),
        ("uint16", [0xFFFE], "big", 65534),
        ("int16", [0xFEFF], "little", -2),
        ("uint16", [0x3412], "little", 0x1234),
        ("bool", [0], "big", False),
        ("bool", [7], "big", True),
    ],
)
def test_16_bit(type_name: str, regs: list[int], byte_order: str, expected: Any) -> None:
    assert decode(type_name, regs, byte_order=byte_order) == expected


def test_bits_in_a_register() -> None:
    assert decode("bool", [0b1000], bit=3) is True
    assert decode("bool", [0b1000], bit=2) is False
    assert decode("bool", [0x8000], bit=15) is True


def test_strings() -> None:
    regs = [int.from_bytes(pair, "big") for pair in (b"HE", b"LL", b"O\0")]
    assert decode("string(6)", regs) == "HELLO"
    swapped = [int.from_bytes(pair, "big") for pair in (b"EH", b"LL", b"\0O")]
    assert decode("string(6)", swapped, byte_order="little") == "HELLO"
    assert decode("string(3)", regs) == "HEL"
    info = codec.parse_type("string(6)")
    assert codec.encode(info, "HELLO") == regs
    assert codec.encode(info, "HELLO", byte_order="little") == swapped
    with pytest.raises(ValueError, match="longer"):
        codec.encode(info, "HELLO WORLD")


def test_scale_offset_and_float32_rounding() -> None:
    assert decode("int16", [215], scale=0.1) == 21.5
    assert decode("int16", [3], scale=0.1) == 0.3  # not 0.30000000000000004
    assert decode("uint16", [1234], scale=0.01, add=-10) == 2.34
    assert decode("uint16", [12], scale=10, add=5) == 125
    assert isinstance(decode("uint16", [12], scale=10, add=5), int)
    assert decode("float32", regs_for("f", 23.4, "ABCD")) == 23.4
    assert decode("float32", regs_for("f", 0.1, "ABCD")) == 0.1
    assert decode("float64", regs_for("d", 0.1, "ABCDEFGH")) == 0.1
    assert decode("float32", regs_for("f", 2.0, "ABCD"), scale=0.5, precision=2) == 1.0
    assert math.isnan(decode("float32", regs_for("f", math.nan, "ABCD")))
    assert codec.json_scalar(math.nan) == "null"
    assert codec.json_scalar(math.inf) == "null"


def test_precision_keeps_integers_exact_and_zero_decimals_whole() -> None:
    # An integer register with a precision went through a float: the largest uint64
    # came out as 1.8446744073709552e19, and precision: 0 wrote 215 as 215.0.
    top = decode("uint64", [0xFFFF] * 4, precision=0)
    assert top == 2**64 - 1 and isinstance(top, int)
    assert codec.json_scalar(decode("uint16", [215], precision=0)) == "215"
    assert codec.json_scalar(decode("int32", [0xFFFF, 0xFFFE], scale=10, precision=1)) == "-20"
    assert codec.json_scalar(decode("uint16", [215], scale=0.1, precision=0)) == "22"
    assert codec.json_scalar(decode("float32", regs_for("f", 23.4, "ABCD"), precision=0)) == "23"
    assert math.isnan(decode("float32", regs_for("f", math.nan, "ABCD"), precision=0))
    assert decode("float32", regs_for("f", math.inf, "ABCD"), precision=0) == math.inf
    assert decode("uint16", [215], scale=0.1, precision=2) == 21.5


def test_precision_zero_keeps_a_float_beyond_2_to_the_53_a_float() -> None:
    # a float32 3e30 came out as a 31-digit integer, a float64 1e300 as 301 digits
    big = decode("float32", regs_for("f", 3e30, "ABCD"), precision=0)
    assert isinstance(big, float) and big == 3e30  # as float32 reads are written
    huge = decode("float64", regs_for("d", -1e300, "ABCDEFGH"), precision=0)
    assert isinstance(huge, float) and huge == -1e300
    assert codec.json_scalar(huge) == "-1e+300"
    edge = decode("float64", regs_for("d", 2.0**53 - 1, "ABCDEFGH"), precision=0)
    assert edge == 2**53 - 1 and isinstance(edge, int)
    assert isinstance(decode("float64", regs_for("d", 2.0**53, "ABCDEFGH"), precision=0), float)
    assert decode("float32", regs_for("f", 22.4, "ABCD"), precision=0) == 22


def test_encode_scaling_and_ranges() -> None:
    int16 = codec.parse_type("int16")
    assert codec.encode(int16, 21.5, scale=0.1) == [215]
    assert codec.encode(int16, -2) == [0xFFFE]
    with pytest.raises(ValueError, match="out of range"):
        codec.encode(int16, 40000)
    with pytest.raises(ValueError, match="out of range"):
        codec.encode(codec.parse_type("uint16"), -1)
    with pytest.raises(ValueError, match="expected a number"):
        codec.encode(int16, "12")
    with pytest.raises(ValueError, match="expected a number"):
        codec.encode(int16, True)


def test_type_names() -> None:
    assert codec.parse_type("string(10)").width == 5
    assert codec.parse_type("string(9)").width == 5
    for bad in ("int8", "string(0)", "string(999)", "float"):
        with pytest.raises(ValueError):
            codec.parse_type(bad)


def test_planner_merges_runs_and_fills_small_gaps() -> None:
    spans = [(0, 1), (1, 2), (3, 1), (10, 1), (40, 2), (41, 1)]
    blocks = planner.plan(spans, max_count=125, max_gap=8)
    assert [(b.start, b.length) for b in blocks] == [(0, 11), (40, 2)]
    assert blocks[0].runs == ((0, 4), (10, 1))
    assert sorted(blocks[0].items) == [0, 1, 2, 3]
    assert planner.plan(spans, max_count=125, max_gap=0)[0].length == 4
    assert len(planner.plan(spans, max_count=125, max_gap=100)) == 1


def test_planner_never_exceeds_the_request_limit() -> None:
    spans = [(a, 1) for a in range(300)] + [(300, 2)]
    blocks = planner.plan(spans, max_count=125, max_gap=10)
    assert [(b.start, b.length) for b in blocks] == [(0, 125), (125, 125), (250, 52)]
    assert sum(len(b.items) for b in blocks) == len(spans)
    # a two-register value never straddles two requests
    spans = [(a, 2) for a in range(0, 300, 2)]
    for b in planner.plan(spans, max_count=125, max_gap=0):
        assert b.length <= 125
        assert all(spans[i][0] + 2 <= b.start + b.length for i in b.items)
    bits = planner.plan([(a, 1) for a in range(0, 5000, 2)], max_count=2000, max_gap=16)
    assert all(b.length <= 2000 for b in bits)
    assert len(bits) == 3


def test_split_runs() -> None:
    spans = [(0, 2), (5, 1), (6, 1), (20, 1)]
    (block,) = planner.plan(spans, max_count=125, max_gap=20)
    parts = planner.split_runs(spans, block)
    assert [(p.start, p.length, p.items) for p in parts] == [(0, 2, (0,)), (5, 2, (1, 2)),
                                                              (20, 1, (3,))]  # fmt: skip


class _Reg:
    """What the planner needs of a value (see planner.Readable)."""

    def __init__(self, address: int, width: int = 1) -> None:
        self.table = "holding"
        self.protocol_address = address
        self.width = width
        self.interval = 1.0

    def decoder_at(self, offset: int) -> Any:
        return lambda buf, values: values[offset]


def test_a_contiguous_read_is_split_in_halves_by_value() -> None:
    # A refused read without holes is halved (values that overlap stay together): the
    # value the device lacks is found in a few polls, the others read in few requests.
    regs = [_Reg(a) for a in range(8)] + [_Reg(2, 2)]  # a uint32 over 2 and 3
    ((_, (req,)),) = planner.plan_requests(regs, max_registers=125, max_bits=2000, max_gap=0)
    halves = req.split()
    assert [(r.start, r.count, len(r.items)) for r in halves] == [(0, 4, 5), (4, 4, 4)]
    assert [(r.start, r.count) for r in halves[1].split()] == [(4, 2), (6, 2)]
    (one,) = halves[1].split()[0].split()[0].split()
    assert (one.start, one.count) == (4, 1)
    pair = planner.plan_requests([_Reg(0, 2), _Reg(1)], max_registers=125, max_bits=2000,
                                 max_gap=0)[0][1][0]  # fmt: skip
    assert len(pair.split()) == 1  # overlapping: nothing to split
