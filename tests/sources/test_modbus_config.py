"""Modbus source config checks that need no device: what check-config says, once, with
the key it is about."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.schema import Problems, build_dataclass
from gateway.sources.modbus import ModbusSourceConfig

pytestmark = pytest.mark.unit

ONE = {"x": {"address": 0}}


def problems_of(raw: dict[str, Any]) -> list[str]:
    problems = Problems()
    build_dataclass(ModbusSourceConfig, {"type": "modbus", **raw}, (), problems)
    return [".".join(map(str, path)) + ": " + msg for path, msg in problems.items]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # 0 is the broadcast address on a serial line: accepted, then never answered
        ({"url": "rtu:///dev/ttyS0", "unit": 0, "registers": ONE},
         "unit: unit id must be 0..255 (1..247 on a serial line)"),
        ({"url": "rtu+tcp://127.0.0.1:4001", "unit": 0, "registers": ONE},
         "unit: unit id must be 0..255 (1..247 on a serial line)"),
        ({"devices": {"m": {"url": "rtu:///dev/ttyS0", "unit": 0, "registers": ONE}}},
         "devices.m.unit: unit id must be 0..255 (1..247 on a serial line)"),
        # was "is not a valid device URL: invalid literal for int() with base 10: 'abc'"
        ({"url": "rtu:///dev/ttyS0?baudrate=abc", "registers": ONE},
         "url: 'rtu:///dev/ttyS0?baudrate=abc': baudrate must be a whole number, not 'abc'"),
        ({"url": "rtu:///dev/ttyS0?stopbits=1.5", "registers": ONE},
         "url: 'rtu:///dev/ttyS0?stopbits=1.5': stopbits must be a whole number, not '1.5'"),
        # a digit to str.isdigit, not to int(): was "invalid literal for int()"
        ({"url": "rtu:///dev/ttyS0?baudrate=\u00b2", "registers": ONE},
         "url: 'rtu:///dev/ttyS0?baudrate=\u00b2': baudrate must be a whole number, not '\u00b2'"),
        # the last one was taken, without a word
        ({"url": "rtu:///dev/ttyS0?baudrate=9600&parity=E&baudrate=19200", "registers": ONE},
         "url: 'rtu:///dev/ttyS0?baudrate=9600&parity=E&baudrate=19200': baudrate is given"
         " twice (9600 and 19200); keep one"),
        # read as the relative path dev/ttyUSB0: offline for good, and no claim on the port
        ({"url": "rtu://dev/ttyUSB0?baudrate=19200", "registers": ONE},
         "url: 'rtu://dev/ttyUSB0?baudrate=19200': the serial port needs its full path, e.g."
         " rtu:///dev/ttyUSB0 (three slashes)"),
        # port 0 was taken as "no port" and polled 502
        ({"url": "tcp://127.0.0.1:0", "registers": ONE},
         "url: 'tcp://127.0.0.1:0': the port must be 1 to 65535 (default 502)"),
        # was said twice
        ({"url": "tcp://127.0.0.1:5020", "registers": {}},
         "registers: list at least one register"),
        # heartbeat 0 sent every poll: on_change and the deadbands silently undone
        ({"url": "tcp://127.0.0.1:5020",
          "registers": {"x": {"address": 0, "on_change": True, "heartbeat": 0}}},
         "registers.x.heartbeat: must be more than 0"),
        # taken and ignored: per_device sends the device's values on device_topic
        ({"url": "tcp://127.0.0.1:5020", "emit": "per_device",
          "registers": {"x": {"address": 0, "topic": "y/{register}"}}},
         "registers.x.topic: used with emit: per_value only; with per_device the device's"
         " values go together on device_topic"),
        ({"emit": "per_device", "devices": {"m": {"url": "tcp://127.0.0.1:5020",
          "emit": "per_value", "registers": {"x": {"address": 0, "topic": "y/{register}"}}},
          "n": {"url": "tcp://127.0.0.1:5020", "unit": 2,
                "registers": {"x": {"address": 0, "topic": "y/{register}"}}}}},
         "devices.n.registers.x.topic: used with emit: per_value only; with per_device the"
         " device's values go together on device_topic"),
        # taken and ignored: a bool or a text is sent as read
        ({"url": "tcp://127.0.0.1:5020",
          "registers": {"x": {"address": 0, "bit": 3, "scale": 0.1}}},
         "registers.x.scale: applies to numbers; bool is sent as read"),
        ({"url": "tcp://127.0.0.1:5020",
          "registers": {"x": {"address": 0, "type": "string(4)", "precision": 1}}},
         "registers.x.precision: applies to numbers; string(4) is sent as read"),
        ({"url": "tcp://127.0.0.1:5020",
          "registers": {"x": {"table": "coil", "address": 0, "offset": 1}}},
         "registers.x.offset: applies to numbers; bool is sent as read"),
        # taken and ignored: without report-by-exception every value is sent each poll
        ({"url": "tcp://127.0.0.1:5020",
          "registers": {"x": {"address": 0, "heartbeat": "5m"}}},
         "registers.x.heartbeat: sends an unchanged value again, with on_change, deadband or"
         " deadband_percent; without them every value is sent at every poll"),
        # each device's retained state replaced the one before on one topic
        ({"writeback": {"enabled": True, "status_topic": "plant/status"},
          "devices": {"m": {"url": "tcp://127.0.0.1:5020", "registers": ONE},
                      "n": {"url": "tcp://127.0.0.1:5020", "unit": 2, "registers": ONE}}},
         "writeback.status_topic: 'plant/status' has no {device}: the devices' retained"
         " states would replace each other on one topic"),
        # a quoted "null" is text: every device's status went retained to topic "null"
        ({"url": "tcp://127.0.0.1:5020", "registers": ONE, "writeback": {"status_topic": "null"}},
         "writeback.status_topic: 'null' would be a topic; write status_topic: null (no quotes)"
         " to publish no status"),
    ],
)  # fmt: skip
def test_a_problem_is_said_once_with_its_key(raw: dict[str, Any], expected: str) -> None:
    assert problems_of(raw) == [expected]


def test_waits_of_years_are_refused() -> None:
    # backoff_max: 100000h was taken, so a device that was offline a while was tried
    # again years later; interval had no bound, where every other polled source's is
    assert problems_of(
        {"url": "tcp://127.0.0.1:5020", "registers": ONE, "backoff_max": "100000h"}
    ) == ["backoff_max: must be between 10ms and 1d"]
    assert problems_of(
        {"devices": {"m": {"url": "tcp://127.0.0.1:5020", "registers": ONE,
                           "backoff_max": "2d", "interval": "36501d"}}}
    ) == [
        "devices.m.interval: must be between 1ms and 100 years",
        "devices.m.backoff_max: must be between 10ms and 1d",
    ]  # fmt: skip
    assert problems_of(
        {"url": "tcp://127.0.0.1:5020", "interval": 1e12,
         "registers": {"x": {"address": 0, "interval": "36501d"}}}
    ) == [
        "registers.x.interval: must be between 1ms and 100 years",
        "interval: must be between 1ms and 100 years",
    ]  # fmt: skip
    assert (
        problems_of(
            {"url": "tcp://127.0.0.1:5020", "registers": ONE, "backoff_max": "1d", "interval": "1d"}
        )
        == []
    )


def test_a_null_status_topic_publishes_no_status() -> None:
    raw = {"url": "tcp://127.0.0.1:5020", "registers": ONE, "writeback": {"status_topic": None}}
    assert problems_of(raw) == []


@pytest.mark.parametrize("written", ["none", "None", "NONE"])
def test_a_status_topic_of_none_as_text_is_null(written: str) -> None:
    # The older docs said "(none: not published)", and YAML reads `none` as text: such a
    # config was refused since a change of the same day (before it, every device's status
    # went retained to the topic "none"). It now means null, quietly.
    raw = {
        "type": "modbus",
        "url": "tcp://127.0.0.1:5020",
        "registers": ONE,
        "writeback": {"enabled": True, "status_topic": written},
    }
    problems = Problems()
    config = build_dataclass(ModbusSourceConfig, raw, (), problems)
    assert problems.items == []
    assert config.writeback.status_topic is None


def test_unit_0_stays_valid_over_tcp() -> None:
    assert problems_of({"url": "tcp://127.0.0.1:5020", "unit": 0, "registers": ONE}) == []
    assert problems_of({"url": "rtu:///dev/ttyS0", "unit": 247, "registers": ONE}) == []


def test_a_top_level_unit_1_beside_devices_still_loads() -> None:
    # Refused since a top-level unit is no default for devices:, though unit: 1 said what
    # every device was asked as anyway: a config that loaded for years was refused.
    devices = {"m": {"url": "tcp://127.0.0.1:5020", "unit": 3, "registers": ONE}}
    assert problems_of({"unit": 1, "devices": devices}) == []
    assert problems_of({"unit": 2, "devices": devices}) == [
        "unit: unit: 2 at the top level is the flat device's (with url:), not a default for"
        " devices:; set unit on each device instead"
    ]


def test_two_sources_on_one_command_topic_need_devices_of_their_own() -> None:
    # Each command reached both sources; the one without the device answered it too,
    # {"ok": false, "error": "no device named 'b1'"}, on the result topic the commander
    # reads. Each now subscribes to its own devices, so they may share the topic (a
    # config that ran before); a device name in both would be written by both.
    from gateway.config.load import load_data
    from gateway.core.errors import ConfigError

    def config(b_device: str, b_topic: str | None = None) -> dict[str, Any]:
        wb_b: dict[str, Any] = {"enabled": True}
        if b_topic:
            wb_b["topic"] = b_topic
        return {
            "gateway": {"id": "t", "data_dir": "/nonexistent-edge-stream"},
            "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "sources": {
                "a": {"type": "modbus", "devices": {"a1": {"url": "tcp://10.0.0.1:502",
                      "registers": ONE}}, "writeback": {"enabled": True}},
                "b": {"type": "modbus", "devices": {b_device: {"url": "tcp://10.0.0.2:502",
                      "registers": ONE}}, "writeback": wb_b},
            },
            "web": {"enabled": False},
        }  # fmt: skip

    load_data(config("b1"), environ={})  # devices of their own: fine
    with pytest.raises(ConfigError) as raised:
        load_data(config("a1"), environ={})
    assert (
        str(raised.value)
        .splitlines()[-1]
        .endswith(
            "sources.b.writeback.topic: commands on 'modbus/+/+/set' at 127.0.0.1:1883 for"
            " device 'a1' would be written by source 'a' too: give each source its own command"
            " topic, e.g. 'b/{device}/{register}/set', or the devices other names"
        )
    )
    load_data(config("a1", "b/{device}/{register}/set"), environ={})  # its own topic: fine
