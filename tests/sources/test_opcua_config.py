"""The `opcua` source's config checks and its value conversions (no server)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua import ua

from gateway.config.schema import Problems, build_dataclass
from gateway.sources.opcua import OpcuaSourceConfig
from gateway.sources.opcua.values import convert, float32, plain

pytestmark = pytest.mark.unit

VT = ua.VariantType


def problems_of(raw: dict[str, Any]) -> list[str]:
    problems = Problems()
    build_dataclass(OpcuaSourceConfig, {"type": "opcua", **raw}, (), problems)
    return [".".join(map(str, path)) + ": " + msg for path, msg in problems.items]


def test_a_valid_config_has_no_problems() -> None:
    raw = {
        "url": "opc.tcp://h:4840",
        "nodes": {"a": {"node": "ns=2;s=A"}, "b": {"path": "2:P/2:B"}},
    }
    assert problems_of(raw) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"url": "http://h", "nodes": {"a": {"node": "i=1"}}}, "url: 'http://h' must read opc.tcp"),
        ({"url": "opc.tcp://h", "nodes": {"a": {"node": "ns=2;x=1"}}}, "not an OPC UA node id"),
        ({"url": "opc.tcp://h", "nodes": {"a": {"node": "i=1", "path": "2:A"}}}, "not both"),
        ({"url": "opc.tcp://h", "nodes": {"a": {}}}, "nodes.a.node: give `node` (a node id) or"),
        ({"url": "opc.tcp://h", "nodes": {"a b": {"node": "i=1"}}}, "names use letters"),
        # passed the check, then asyncua's struct.error came out of each connect (a
        # traceback): a namespace index is 0..65535, a numeric id 0..4294967295
        (
            {"url": "opc.tcp://h", "nodes": {"a": {"node": "ns=70000;s=T"}}},
            "nodes.a.node: namespace index 70000 is out of range (0..65535)",
        ),
        (
            {"url": "opc.tcp://h", "nodes": {"a": {"node": "ns=2;i=4294967296"}}},
            "nodes.a.node: numeric id 4294967296 is out of range (0..4294967295)",
        ),
        (
            {"url": "opc.tcp://h", "nodes": {"a": {"path": "2:Plant/99999999:T"}}},
            "nodes.a.path: namespace index 99999999 is out of range (0..65535)",
        ),
        # passed the check, then the gateway died at start with a traceback
        ({"url": "opc.tcp://h:99999", "nodes": {"a": {"node": "i=1"}}}, "from 1 to 65535"),
        ({"url": "opc.tcp://:4840", "nodes": {"a": {"node": "i=1"}}}, "names no host"),
        # check-config ended in a traceback
        ({"url": "opc.tcp://[::1:4840", "nodes": {"a": {"node": "i=1"}}}, "not a valid URL"),
        (  # passed the check, then the source crashed with a traceback at each start
            {
                "url": "opc.tcp://h",
                "nodes": {"a": {"node": "i=1"}},
                "writeback": {"url": "mqtt://u:pw@h:99999"},
            },
            "writeback.url: 'mqtt://u:***@h:99999' is not an mqtt://host:port",
        ),
        # the password was shown in /api/status (server.url)
        ({"url": "opc.tcp://u:pw@h:4840", "nodes": {"a": {"node": "i=1"}}}, "not in the url"),
        (
            {
                "url": "opc.tcp://h",
                "nodes": {"a": {"node": "i=1"}},
                "security_policy": "Basic256Sha256",
            },
            "needs `server_certificate`",
        ),
        # without security_policy these were ignored: an unsigned, unencrypted channel
        (
            {"url": "opc.tcp://h", "nodes": {"a": {"node": "i=1"}}, "security_mode": "Sign"},
            "security_mode: only used with security_policy: Basic256Sha256; without it",
        ),
        (
            {
                "url": "opc.tcp://h",
                "nodes": {"a": {"node": "i=1"}},
                "security_mode": "SignAndEncrypt",
                "certificate": "c.pem",
                "private_key": "k.pem",
                "server_certificate": "s.der",
            },
            "server_certificate: only used with security_policy: Basic256Sha256",
        ),
        (
            {"url": "opc.tcp://h", "nodes": {"a": {"node": "i=1"}}, "password": "x"},
            "needs a `username`",
        ),
        (
            {
                "url": "opc.tcp://h",
                "nodes": {"a": {"node": "i=1"}},
                "writeback": {"topic": "x/set"},
            },
            "needs {node}",
        ),
        # the server's deadband filter is for subscribed nodes: on a polled one it was
        # taken and ignored, every value sent
        (
            {"url": "opc.tcp://h", "mode": "poll", "nodes": {"a": {"node": "i=1", "deadband": 1}}},
            "nodes.a.deadband: applied by the server to subscribed nodes only",
        ),
        (
            {"url": "opc.tcp://h", "nodes": {"a": {"node": "i=1", "mode": "poll", "deadband": 1}}},
            "nodes.a.deadband: applied by the server to subscribed nodes only",
        ),
        (
            {
                "url": "opc.tcp://h",
                "mode": "poll",
                "nodes": {"a": {"node": "i=1", "sampling_interval": "100ms"}},
            },
            "nodes.a.sampling_interval: how often the server samples a subscribed node",
        ),
        # taken and ignored: each key reads nodes of one mode only
        (
            {"url": "opc.tcp://h", "nodes": {"a": {"node": "i=1"}}, "schedule": "* * * * *"},
            "schedule: applies to polled nodes, and every node here is subscribed",
        ),
        (
            {"url": "opc.tcp://h", "nodes": {"a": {"node": "i=1"}}, "jitter": "1s"},
            "jitter: applies to polled nodes, and every node here is subscribed",
        ),
        (
            {
                "url": "opc.tcp://h",
                "mode": "poll",
                "nodes": {"a": {"node": "i=1"}},
                "queue_size": 10,
            },
            "queue_size: applies to subscribed nodes, and every node here is polled",
        ),
        (
            {
                "url": "opc.tcp://h",
                "nodes": {"a": {"node": "i=1", "mode": "poll"}},
                "sampling_interval": "50ms",
            },
            "sampling_interval: applies to subscribed nodes, and every node here is polled",
        ),
        # sent in milliseconds as a UInt32: 50d made every connect a struct.error traceback
        (
            {"url": "opc.tcp://h", "nodes": {"a": {"node": "i=1"}}, "timeout": "50d"},
            "timeout: must be between 100ms and 1h",
        ),
        # taken: a connection gone silent was never checked (it is the check's wait too)
        (
            {"url": "opc.tcp://h", "nodes": {"a": {"node": "i=1"}}, "watchdog": "100000h"},
            "watchdog: must be between 100ms and 1h",
        ),
    ],
)
def test_config_mistakes_are_named(raw: dict[str, Any], expected: str) -> None:
    assert any(expected in p for p in problems_of(raw)), problems_of(raw)


def test_conversions_for_write_back() -> None:
    assert convert("on", VT.Boolean, False) is True
    assert convert(12.0, VT.Int16, False) == 12
    assert convert("0x10", VT.UInt16, False) == 16
    assert convert(-128, VT.SByte, False) == -128 and convert(127.0, VT.SByte, False) == 127
    assert convert(0, VT.Byte, False) == 0 and convert("0xff", VT.Byte, False) == 255
    assert convert([0, 255], VT.Byte, True) == [0, 255]
    assert convert([1, 2.5], VT.Double, True) == [1.0, 2.5]
    assert convert("AQID", VT.ByteString, False) == b"\x01\x02\x03"
    assert convert("2030-01-02T03:04:05Z", VT.DateTime, False) == datetime(
        2030, 1, 2, 3, 4, 5, tzinfo=UTC
    )
    for value, vtype, array, message in [
        (1.5, VT.Int32, False, "expected an integer"),
        (-1, VT.UInt32, False, "out of range"),
        (-129, VT.SByte, False, r"-129 is out of range for SByte \(-128\.\.127\)"),
        (128, VT.SByte, False, "out of range for SByte"),
        (-1, VT.Byte, False, r"-1 is out of range for Byte \(0\.\.255\)"),
        (256, VT.Byte, False, "out of range for Byte"),
        ("0x100", VT.Byte, False, "256 is out of range for Byte"),
        (1.5, VT.Byte, False, r"expected an integer \(Byte\)"),
        (True, VT.Double, False, "expected a number"),
        (5, VT.String, False, "expected a string"),
        ("%%", VT.ByteString, False, "base64"),
        (1, VT.Double, True, "expected a JSON array"),
        # an integer beyond a float raised OverflowError out of the write (no result);
        # text that float() reads as NaN or an infinity was written to the server
        (10**400, VT.Double, False, "out of range for Double"),
        (-(10**400), VT.Float, False, "out of range for Float"),
        ("NaN", VT.Double, False, "not a finite number"),
        ("-Infinity", VT.Float, False, "not a finite number"),
        ("1e999", VT.Double, False, "not a finite number"),
        (["1", "inf"], VT.Double, True, "not a finite number"),
    ]:
        with pytest.raises(ValueError, match=message):
            convert(value, vtype, array)


def test_values_as_json() -> None:
    assert plain(b"\x00\xff") == "AP8="
    assert plain(float("nan")) is None and plain([1.0, math.inf]) == [1.0, None]
    assert plain(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00.000Z"
    assert float32(0.10000000149011612) == 0.1


def test_the_percent_deadband_after_an_infinity_or_nan() -> None:
    # After an infinite value every later value was held back for good (|x - inf| <= inf
    # * percent holds), and a node that stays NaN was sent at every poll (NaN compares
    # false), though what is sent (null) is the same.
    from gateway.core.component import Context
    from gateway.sources.opcua import OpcuaSource

    problems = Problems()
    config = build_dataclass(
        OpcuaSourceConfig,
        {"type": "opcua", "url": "opc.tcp://127.0.0.1:4840",
         "nodes": {"t": {"node": "ns=2;s=T", "mode": "poll", "deadband_percent": 10}}},
        (), problems,
    )  # fmt: skip
    assert not problems
    source = OpcuaSource(config, Context(name="line1", kind="source"))
    state = source.nodes["t"]

    def sent(x: float) -> bool:
        value = ua.DataValue(ua.Variant(x, ua.VariantType.Double))
        return source._message(state, value) is not None

    assert [sent(x) for x in (20.0, 21.0, 25.0)] == [True, False, True]
    assert [sent(x) for x in (math.inf, math.inf, 25.0, 25.5)] == [True, False, True, False]
    assert [sent(x) for x in (math.nan, math.nan, math.nan, 25.0)] == [True, False, False, True]
    assert [sent(x) for x in (-math.inf, 30.0)] == [True, True]


def test_a_nodes_own_topic_is_a_template_too() -> None:
    # it was used as written: "plant/{node}/value" was published on "plant/{node}/value"
    from gateway.core.component import Context
    from gateway.sources.opcua import OpcuaSource

    nodes = {"t": {"node": "ns=2;s=T", "topic": "plant/{source}/{node}/v{{1}}"}}
    problems = Problems()
    config = build_dataclass(
        OpcuaSourceConfig, {"type": "opcua", "url": "opc.tcp://h:4840", "nodes": nodes}, (),
        problems,
    )  # fmt: skip
    assert not problems.items
    source = OpcuaSource(config, Context(name="line1", kind="source"))
    assert source.nodes["t"].topic == "plant/line1/t/v{1}"
    assert problems_of({"url": "opc.tcp://h", "nodes": {"t": {"node": "i=1", "topic": "p/{x}"}}})
