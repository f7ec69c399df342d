"""The Modbus source against a real pymodbus server (the PLC), over TCP and RTU on a socat pty.

Each test builds the source from plain config data, connects it and calls
`read()` as the engine would; what counts is what reached the server (its
request log, its registers) and what came out of `read()`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from gateway.config.schema import Problems, build_dataclass
from gateway.core.component import Context, Message
from gateway.sources.modbus import ModbusSource, ModbusSourceConfig
from tests.sources.late_device import LateDevice, PtyServer, TcpServer
from tests.sources.modbus_plc import PlcStore, layout, serve_rtu, serve_tcp, serve_udp
from tests.sources.socat_pair import SocatPair

pytestmark = pytest.mark.integration

WAIT = 30.0  # generous: the machine may be loaded


def make_config(raw: dict[str, Any]) -> ModbusSourceConfig:
    problems = Problems()
    config = build_dataclass(ModbusSourceConfig, {"type": "modbus", **raw}, (), problems)
    assert not problems, problems.items
    return config  # type: ignore[no-any-return]


def make_source(raw: dict[str, Any], name: str = "plant", **ctx: Any) -> ModbusSource:
    return ModbusSource(make_config(raw), Context(name=name, kind="source", **ctx))


def problems_of(raw: dict[str, Any]) -> list[str]:
    problems = Problems()
    build_dataclass(ModbusSourceConfig, {"type": "modbus", **raw}, (), problems)
    return [".".join(map(str, path)) + ": " + msg for path, msg in problems.items]


def values(messages: list[Message]) -> dict[str, Any]:
    """topic -> decoded value (the last one per topic)."""
    return {m.flowfile.topic: json.loads(m.flowfile.content)["value"] for m in messages}


class Pump:
    """Calls read() in the background as the engine would, keeping what comes out."""

    def __init__(self, source: ModbusSource) -> None:
        self.source = source
        self.messages: list[Message] = []
        self.batches = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Pump:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        while True:
            batch = await self.source.read()
            self.messages.extend(batch)
            self.batches += 1
            self._changed.set()

    async def until(self, check: Callable[[list[Message]], bool], what: str) -> None:
        async with asyncio.timeout(WAIT):
            while not check(self.messages):
                if self._task is not None and self._task.done():
                    self._task.result()
                self._changed.clear()
                await self._changed.wait()

    def topic(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(m.flowfile.content) for m in self.messages if m.flowfile.topic == topic]


@pytest.fixture
async def plc() -> Any:
    store = PlcStore(units=(1,))
    server, port = await serve_tcp(store)
    store.port = port  # type: ignore[attr-defined]
    store.server = server  # type: ignore[attr-defined]
    yield store
    await store.server.shutdown()  # type: ignore[attr-defined] # (a test may have replaced it)


# ---- values -------------------------------------------------------------------------

ORDERS = {"ABCD": ("big", "big"), "CDAB": ("big", "little"), "BADC": ("little", "big"),
          "DCBA": ("little", "little"), "ABCDEFGH": ("big", "big"),
          "GHEFCDAB": ("big", "little"), "BADCFEHG": ("little", "big"),
          "HGFEDCBA": ("little", "little")}  # fmt: skip
WIDE = [("int32", "i", -123456789), ("uint32", "I", 4000000000), ("float32", "f", -12.75),
        ("int64", "q", -9876543210123), ("uint64", "Q", 18000000000000000000),
        ("float64", "d", 1234.5678)]  # fmt: skip


async def test_every_type_and_order_decodes(plc: PlcStore) -> None:
    registers: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    address = 0

    def put(name: str, regs: list[int], spec: dict[str, Any], value: Any) -> None:
        nonlocal address
        plc.set(1, "holding", address, regs)
        registers[name] = {"address": address, **spec}
        expected[f"modbus/plc1/{name}"] = value
        address += len(regs)

    for type_name, code, value in WIDE:
        for order, (byte_order, word_order) in ORDERS.items():
            if (len(order) == 8) != (code in "qQd"):
                continue
            regs = layout(code, value, order)
            # the same value twice: once with byte_order/word_order, once with the alias
            put(
                f"{type_name}_{order}",
                regs,
                {"type": type_name, "byte_order": byte_order, "word_order": word_order},
                value,
            )
            alias = {"type": type_name, "order": order}
            put(f"{type_name}_{order}_alias", regs, alias, value)
    put("int16", [0xFF85], {"type": "int16"}, -123)
    put("int16_le", [0x85FF], {"type": "int16", "byte_order": "little"}, -123)
    put("uint16", [0xFF85], {"type": "uint16"}, 65413)
    put("scaled", [215], {"type": "int16", "scale": 0.1, "unit": "°C"}, 21.5)
    put("offset", [1234], {"type": "uint16", "scale": 0.01, "offset": -10}, 2.34)
    put("text", [0x4142, 0x4344, 0x4500], {"type": "string(6)"}, "ABCDE")
    put("text_le", [0x4241, 0x4443, 0x0045], {"type": "string(6)", "byte_order": "little"}, "ABCDE")
    put("flags", [0b1010], {"type": "bool", "bit": 1}, True)
    registers["flag0"] = {"address": address - 1, "type": "bool", "bit": 0}
    expected["modbus/plc1/flag0"] = False
    plc.set(1, "input", 7, layout("f", 3.25, "CDAB"))
    registers["in_f"] = {"table": "input", "address": 7, "type": "float32", "order": "CDAB"}
    expected["modbus/plc1/in_f"] = 3.25
    plc.set(1, "coil", 3, [True, False, True])
    plc.set(1, "discrete", 100, [True])
    for i, v in enumerate([True, False, True]):
        registers[f"coil{i}"] = {"table": "coil", "address": 3 + i, "type": "bool"}
        expected[f"modbus/plc1/coil{i}"] = v
    registers["di"] = {"table": "discrete", "address": 100, "type": "bool"}
    expected["modbus/plc1/di"] = True
    # a coil or discrete input without a type is a bool: it was refused ('use type bool,
    # not uint16', a type never written)
    registers["coil_untyped"] = {"table": "coil", "address": 5}
    expected["modbus/plc1/coil_untyped"] = True
    registers["di_untyped"] = {"table": "discrete", "address": 100}
    expected["modbus/plc1/di_untyped"] = True

    source = make_source(
        {"url": f"tcp://127.0.0.1:{plc.port}", "interval": "1h", "registers": registers},  # type: ignore[attr-defined]
        name="plc1",
    )
    await source.connect()
    try:
        async with asyncio.timeout(WAIT):
            messages = await source.read()
    finally:
        await source.close()
    got = values(messages)
    assert got == expected
    assert len(messages) == len(expected)
    # planned: the holding values are contiguous (address registers): ceil(address / 125)
    # requests, plus one each for the input register, the coils and the discrete input
    holding = plc.reads(fc=3)
    assert len(holding) == math.ceil(address / 125)
    assert [r[1:] for r in plc.reads(fc=4)] == [(4, 7, 2)]
    assert [r[1:] for r in plc.reads(fc=1)] == [(1, 3, 3)]
    assert [r[1:] for r in plc.reads(fc=2)] == [(2, 100, 1)]
    scaled = next(m for m in messages if m.flowfile.topic == "modbus/plc1/scaled")
    body = json.loads(scaled.flowfile.content)
    assert body["raw"] == [215] and body["unit"] == "°C" and body["ts"].endswith("Z")
    address_text = str(registers["scaled"]["address"])
    assert scaled.flowfile.attributes == {"device": "plc1", "register": "scaled", "unit_id": "1",
                                          "table": "holding", "address": address_text}  # fmt: skip
    wide = json.loads(
        next(m for m in messages if m.flowfile.topic.endswith("uint32_CDAB")).flowfile.content
    )
    assert wide["raw"] == layout("I", 4000000000, "CDAB")
    coil = json.loads(
        next(m for m in messages if m.flowfile.topic.endswith("coil0")).flowfile.content
    )
    assert coil["raw"] == [True]


async def test_planner_request_count_at_the_server(plc: PlcStore) -> None:
    registers = {
        "a": {"address": 1, "type": "uint16"},  # address_base 1: protocol address 0
        "b": {"address": 2, "type": "int32"},  # 1..2, contiguous with a
        "c": {"address": 12, "type": "uint16"},  # hole of 8 <= max_gap: same request
        "d": {"address": 101, "type": "uint16"},  # hole of 88: a new request
        **{f"w{i}": {"address": 201 + 2 * i, "type": "float32"} for i in range(70)},  # 140 regs
        "slow": {"address": 51, "type": "uint16", "interval": "1h"},  # its own group
        "i1": {"table": "input", "address": 1, "type": "uint16"},
        "i2": {"table": "input", "address": 3, "type": "uint16"},
    }
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "address_base": 1,  # type: ignore[attr-defined]
                          "interval": "1h", "max_gap": 10, "registers": registers})  # fmt: skip
    await source.connect()
    try:
        async with asyncio.timeout(WAIT):
            messages = await source.read()
    finally:
        await source.close()
    reads = sorted(r[1:] for r in plc.requests)
    assert reads == sorted([
        (3, 0, 12),  # a, b, c (with a hole of 8 read along)
        (3, 50, 1),  # slow, at its own interval
        (3, 100, 1),  # d
        (3, 200, 124),  # 62 float32: as many as fit without splitting one
        (3, 324, 16),  # the other 8
        (4, 0, 3),  # i1, i2 and the register between
    ])  # fmt: skip
    assert len(messages) == len(registers)
    assert source.requests == 6


async def test_filled_hole_refused_by_the_device_is_split(plc: PlcStore) -> None:
    plc.set(1, "holding", 0, [10, 11, 12, 13, 14, 15])
    plc.holes[1] = {2, 3}  # these addresses do not exist on this device
    registers = {"r0": {"address": 0}, "r1": {"address": 1}, "r4": {"address": 4},
                 "r5": {"address": 5}}  # fmt: skip
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "interval": "50ms",  # type: ignore[attr-defined]
                          "registers": registers})  # fmt: skip
    await source.connect()
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(values(ms)) == 4, "values after the split")
    finally:
        await source.close()
    assert values(pump.messages) == {"modbus/plant/r0": 10, "modbus/plant/r1": 11,
                                     "modbus/plant/r4": 14, "modbus/plant/r5": 15}  # fmt: skip
    assert plc.requests[0][1:] == (3, 0, 6)
    assert {r[1:] for r in plc.requests[1:3]} == {(3, 0, 2), (3, 4, 2)}
    assert source.status()["devices"]["plant"]["state"] == "online"


async def test_a_register_the_device_lacks_does_not_take_its_neighbours_with_it(
    plc: PlcStore,
) -> None:
    """Contiguous values share one read; a device that lacks one of them refuses the
    whole read (illegal data address). The read was refused on every poll, and its
    good values were never sent: it is now read value by value, and only the missing
    one is named in `last_error`."""
    plc.set(1, "holding", 0, [10, 11, 12, 13])
    plc.holes[1] = {2}
    registers = {"r0": {"address": 0}, "r1": {"address": 1}, "ghost": {"address": 2},
                 "r3": {"address": 3}}  # fmt: skip
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "interval": "50ms",  # type: ignore[attr-defined]
                          "registers": registers})  # fmt: skip
    await source.connect()
    device = source.status()["devices"]["plant"]
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(values(ms)) == 3, "the three good values")
    finally:
        await source.close()
    assert values(pump.messages) == {"modbus/plant/r0": 10, "modbus/plant/r1": 11,
                                     "modbus/plant/r3": 13}  # fmt: skip
    assert device["state"] == "online"
    assert device["last_error"] and device["last_error"].startswith("ghost: "), device
    assert plc.requests[0][1:] == (3, 0, 4)
    # halved, then halved again: r0 and r1 still in one read
    assert {(3, 0, 2), (3, 2, 1), (3, 3, 1)} <= {r[1:] for r in plc.requests}
    assert (3, 0, 1) not in {r[1:] for r in plc.requests}


async def test_two_registers_the_device_lacks_one_in_each_half_leave_the_rest_read(
    plc: PlcStore,
) -> None:
    """Both halves of a refused read refused in a poll where nothing answered is a device
    refusing everything; with a part answered it lacks what it refused. Taken for the
    whole block refused, two typos in a register map (one in each half) had the block
    put back whole for good: no value of it was read again."""
    plc.set(1, "holding", 0, list(range(8)))
    plc.holes[1] = {1, 6}
    registers = {f"r{a}": {"address": a} for a in range(8)}
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "interval": "50ms",  # type: ignore[attr-defined]
                          "registers": registers})  # fmt: skip
    await source.connect()
    device = source.status()["devices"]["plant"]
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(values(ms)) == 6, "the six good values")
    finally:
        await source.close()
    assert set(values(pump.messages)) == {f"modbus/plant/r{a}" for a in (0, 2, 3, 4, 5, 7)}
    assert device["last_error"] and "r1" in device["last_error"] and "r6" in device["last_error"]
    assert "r0" not in device["last_error"]


async def test_a_device_refusing_every_read_for_a_while_is_read_as_planned_once_it_answers(
    plc: PlcStore,
) -> None:
    """A meter still booting (or a TCP gateway answering exception 2 for an absent
    unit) refuses every read. Each refused read was halved, at every poll, for good:
    500 values were read 4, 8, 16 ... 500 requests a poll, and stayed at 500 once the
    device answered; last_error said nothing while it halved. Once it answers, its
    parts are read whole again: as planned."""
    plc.set(1, "holding", 0, list(range(500)))
    plc.holes[1] = set(range(500))
    regs = {f"r{a}": {"address": a} for a in range(500)}
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "interval": "20ms",  # type: ignore[attr-defined]
                          "registers": regs})  # fmt: skip
    planned = {(3, 0, 125), (3, 125, 125), (3, 250, 125), (3, 375, 125)}
    await source.connect()
    device = source.status()["devices"]["plant"]
    try:
        async with Pump(source) as pump:
            async with asyncio.timeout(WAIT):
                while len(plc.requests) < 60:  # about 12 polls refused
                    await asyncio.sleep(0.01)
                    if len(plc.requests) > 4:  # the first poll is over: it says why
                        assert device["last_error"], device
                        assert "illegal data address" in device["last_error"]
            assert device["state"] == "online"
            refusal = device["last_error"]
            assert refusal and refusal.startswith("r0, r1, "), refusal
            plc.holes[1] = set()
            await pump.until(lambda ms: len(values(ms)) == 500, "every value")
            seen = len(plc.requests)
            async with asyncio.timeout(WAIT):
                while len(plc.requests) < seen + 8:  # noqa: ASYNC110 - two more polls
                    await asyncio.sleep(0.01)
            asked = [r[1:] for r in plc.requests[seen:]]
    finally:
        await source.close()
    assert set(asked) == planned, asked
    assert device["last_error"] is None and device["previous_error"] == refusal


class _Refuses:
    """A PLC's holes that are there while `now(request)` says so: the request being
    answered is the last one logged."""

    def __init__(self, plc: PlcStore, now: Callable[[tuple[int, int, int, int]], bool]) -> None:
        self.plc = plc
        self.now = now

    def __bool__(self) -> bool:
        return True

    def __contains__(self, address: object) -> bool:
        return self.now(self.plc.requests[-1])


async def _first_reads(plc: PlcStore, source: ModbusSource, n: int) -> list[tuple[int, int]]:
    async with Pump(source), asyncio.timeout(WAIT):
        while len(plc.requests) < n:  # noqa: ASYNC110 - a refusal wakes no read()
            await asyncio.sleep(0.01)
    return [r[2:] for r in plc.requests[:n]]


async def test_a_split_whose_parts_all_answer_is_read_whole_again(plc: PlcStore) -> None:
    # Refused once (the device not ready yet), the read was halved for good.
    plc.set(1, "holding", 0, [10, 11, 12, 13])
    plc.holes[1] = _Refuses(plc, lambda r: len(plc.requests) == 1)  # type: ignore[assignment]
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "interval": "20ms",  # type: ignore[attr-defined]
                          "registers": {f"r{a}": {"address": a} for a in range(4)}})  # fmt: skip
    await source.connect()
    device = source.status()["devices"]["plant"]
    try:
        reads = await _first_reads(plc, source, 6)
    finally:
        await source.close()
    assert reads == [(0, 4), (0, 2), (2, 2), (0, 4), (0, 4), (0, 4)]
    assert device["last_error"] is None
    assert device["previous_error"].startswith("r0, r1, r2, r3: "), device


async def test_a_device_refusing_long_reads_keeps_them_split(plc: PlcStore) -> None:
    # A device answering exception 2 to a read longer than it takes: put together
    # again, the read is refused again, so it stays in parts rather than flip at
    # each poll.
    plc.set(1, "holding", 0, [10, 11, 12, 13])
    plc.holes[1] = _Refuses(plc, lambda r: r[3] > 2)  # type: ignore[assignment]
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "interval": "20ms",  # type: ignore[attr-defined]
                          "registers": {f"r{a}": {"address": a} for a in range(4)}})  # fmt: skip
    await source.connect()
    try:
        reads = await _first_reads(plc, source, 12)
    finally:
        await source.close()
    assert reads == [(0, 4), (0, 2), (2, 2), (0, 4)] + [(0, 2), (2, 2)] * 4


async def test_a_refused_register_answered_again_is_no_error_any_more(
    plc: PlcStore, caplog: pytest.LogCaptureFixture
) -> None:
    """`last_error` is what is wrong now: once the device answers a read it refused
    (its register map was fixed), the refusal moves to `previous_error`."""
    plc.set(1, "holding", 0, [10])
    plc.set(1, "holding", 50, [50])
    plc.holes[1] = {50}
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "interval": "50ms",  # type: ignore[attr-defined]
                          "registers": {"ok": {"address": 0}, "bad": {"address": 50}}})  # fmt: skip
    await source.connect()
    device = source.status()["devices"]["plant"]
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(ms) >= 2, "two polls")
            refusal = device["last_error"]
            assert refusal and "bad" in refusal and "illegal data address" in refusal
            plc.holes[1] = set()
            await pump.until(lambda ms: "modbus/plant/bad" in values(ms), "bad answered")
    finally:
        await source.close()
    assert device["state"] == "online"
    assert device["last_error"] is None and device["previous_error"] == refusal
    said = [r.getMessage() for r in caplog.records if "(bad)" in r.getMessage()]
    assert said[-1].endswith("device plant answers holding 50+1 (bad) again"), said


async def test_a_device_refusing_every_read_is_online_and_says_what_it_refuses(
    plc: PlcStore,
) -> None:
    # It stayed "unknown" though it answers (exception 2 to each read).
    plc.holes[1] = {50, 300}
    regs = {"flow": {"address": 50}, "level": {"address": 300}}
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "interval": "50ms",  # type: ignore[attr-defined]
                          "registers": regs})  # fmt: skip
    await source.connect()
    device = source.status()["devices"]["plant"]
    try:
        async with Pump(source) as pump:
            async with asyncio.timeout(WAIT):
                # read() returns nothing to wake us (no values): look at the status
                while device["errors"] < 4:  # noqa: ASYNC110 - both reads refused, twice
                    await asyncio.sleep(0.02)
            assert device["state"] == "online"
            error = device["last_error"]
            assert error and error.count("illegal data address") == 2, error
            assert error.startswith("flow: ") and "; level: " in error, error
            assert device["last_poll"] and device["last_ok"] is None  # answered, no values
            plc.holes[1] = {300}  # flow's address exists now: only level is refused
            await pump.until(lambda ms: "modbus/plant/flow" in values(ms), "flow answered")
            assert device["last_error"].startswith("level: "), device["last_error"]
            assert "flow" not in device["last_error"]
    finally:
        await source.close()
    assert {r[1:] for r in plc.requests} >= {(3, 50, 1), (3, 300, 1)}
    assert set(values(pump.messages)) == {"modbus/plant/flow"}


async def test_groups_keep_their_own_intervals(plc: PlcStore) -> None:
    registers = {
        "fast": {"address": 0, "interval": "100ms"},
        "slow": {"address": 50, "interval": "1s"},
    }
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "registers": registers})  # type: ignore[attr-defined]
    await source.connect()
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(pump.topic("modbus/plant/slow")) >= 3, "3 slow polls")
    finally:
        await source.close()
    fast = len(plc.reads(fc=3)) - len([r for r in plc.requests if r[2] == 50])
    slow = len([r for r in plc.requests if r[2] == 50])
    assert slow >= 3
    assert fast >= 4 * slow  # nominally 10x; polls missed under load are skipped, not bunched


async def test_report_by_exception(plc: PlcStore) -> None:
    registers = {
        "tick": {"address": 0},  # always sent: each read() returns one poll
        "same": {"address": 1, "on_change": True},
        "abs": {"address": 2, "type": "int16", "deadband": 5},
        "pct": {"address": 3, "deadband_percent": 10},
        "beat": {"address": 4, "on_change": True, "heartbeat": "400ms"},
    }
    plc.set(1, "holding", 0, [0, 7, 100, 100, 1])
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "interval": "20ms",  # type: ignore[attr-defined]
                          "registers": registers})  # fmt: skip
    await source.connect()

    async def poll() -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            return {k.rsplit("/", 1)[1]: v for k, v in values(await source.read()).items()}

    try:
        first = await poll()
        assert first == {"tick": 0, "same": 7, "abs": 100, "pct": 100, "beat": 1}
        plc.set(1, "holding", 0, [1, 7, 104, 109, 1])  # abs +4 (< 5), pct +9% (< 10%)
        second = await poll()
        if "beat" in second:  # the machine was slow enough for the heartbeat; poll again
            second = await poll()
        assert set(second) == {"tick"}
        plc.set(1, "holding", 0, [2, 8, 106, 111, 1])  # same changed, abs +6, pct +11%
        third = await poll()
        assert third.keys() >= {"tick", "same", "abs", "pct"}
        assert (third["same"], third["abs"], third["pct"]) == (8, 106, 111)
        plc.set(1, "holding", 1, [8, 94])  # abs -12 from 106
        assert (await poll())["abs"] == 94
        # heartbeat: "beat" never changes, but is sent again after 400 ms of silence
        loop = asyncio.get_running_loop()
        start = loop.time()
        while "beat" not in await poll():
            pass
        assert loop.time() - start >= 0.3
    finally:
        await source.close()


async def test_a_value_that_stays_nan_is_not_sent_again_on_change(plc: PlcStore) -> None:
    # A float register holding NaN (a sensor unplugged: 0x7FC00000) with on_change or a
    # deadband was sent at every poll: NaN differs from NaN in Python, so each poll's
    # `null` counted as a change, though the value sent (null) was the same.
    nan = layout("f", math.nan, "ABCD")
    registers = {
        "tick": {"address": 0},  # always sent: each read() returns one poll
        "temp": {"address": 1, "type": "float32", "on_change": True},
        "flow": {"address": 3, "type": "float64", "deadband": 0.5},
    }
    plc.set(1, "holding", 0, [0, *nan, *layout("d", math.nan, "ABCDEFGH")])
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "interval": "20ms",  # type: ignore[attr-defined]
                          "registers": registers})  # fmt: skip
    await source.connect()

    async def poll() -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            return {k.rsplit("/", 1)[1]: v for k, v in values(await source.read()).items()}

    try:
        assert await poll() == {"tick": 0, "temp": None, "flow": None}
        for tick in (1, 2, 3):
            plc.set(1, "holding", 0, [tick])
            assert await poll() == {"tick": tick}
        plc.set(1, "holding", 0, [4, *layout("f", 21.5, "ABCD")])  # the sensor is back
        assert await poll() == {"tick": 4, "temp": 21.5}
        plc.set(1, "holding", 0, [5, *nan])  # and gone again: said once
        assert await poll() == {"tick": 5, "temp": None}
        plc.set(1, "holding", 0, [6])
        assert await poll() == {"tick": 6}
    finally:
        await source.close()


async def test_per_device_emit(plc: PlcStore) -> None:
    plc.set(1, "holding", 0, [215, *layout("f", 2.5, "ABCD")])
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "emit": "per_device",  # type: ignore[attr-defined]
                          "registers": {"t": {"address": 0, "scale": 0.1},
                                        "f": {"address": 1, "type": "float32"}}},
                         name="boiler")  # fmt: skip
    await source.connect()
    try:
        async with asyncio.timeout(WAIT):
            (message,) = await source.read()
    finally:
        await source.close()
    assert message.flowfile.topic == "modbus/boiler"
    body = json.loads(message.flowfile.content)
    assert body["device"] == "boiler" and body["values"] == {"t": 21.5, "f": 2.5}
    assert message.flowfile.attributes == {"device": "boiler", "unit_id": "1"}


async def test_per_device_emit_is_one_flowfile_per_poll_whatever_the_intervals(
    plc: PlcStore,
) -> None:
    """Values with their own `interval` are another request group; at a poll where several
    groups of the device are due, they came out as one FlowFile each."""
    plc.set(1, "holding", 0, [7, 8])
    plc.set(1, "input", 100, [9])
    source = make_source({"url": f"tcp://127.0.0.1:{plc.port}", "emit": "per_device",  # type: ignore[attr-defined]
                          "interval": "1s",
                          "registers": {"fast": {"address": 0},
                                        "slow": {"address": 1, "interval": "10s"},
                                        "other": {"table": "input", "address": 100}}},
                         name="boiler")  # fmt: skip
    await source.connect()
    try:
        async with asyncio.timeout(WAIT):
            messages = await source.read()
    finally:
        await source.close()
    assert [json.loads(m.flowfile.content)["values"] for m in messages] == [
        {"fast": 7, "other": 9, "slow": 8}
    ]


async def test_udp_and_rtu_over_tcp_transports() -> None:
    store = PlcStore(units=(1, 2))
    store.set(1, "holding", 0, [11])
    store.set(2, "holding", 0, [22])
    udp_server, udp_port = await serve_udp(store)
    rtu_server, rtu_port = await serve_tcp(store, rtu_framing=True)
    one = {"v": {"address": 0}}
    source = make_source({"devices": {
        "viaudp": {"url": f"udp://127.0.0.1:{udp_port}", "unit": 1, "registers": one},
        "viartu": {"url": f"rtu+tcp://127.0.0.1:{rtu_port}", "unit": 2, "registers": one},
    }})  # fmt: skip
    await source.connect()
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(values(ms)) == 2, "both devices")
    finally:
        await source.close()
        await udp_server.shutdown()
        await rtu_server.shutdown()
    assert values(pump.messages) == {"modbus/viaudp/v": 11, "modbus/viartu/v": 22}


# ---- RTU on a pty -------------------------------------------------------------------


@pytest.fixture
def line(tmp_path: Path) -> Iterator[SocatPair]:
    pair = SocatPair(tmp_path, "gateway", "plc").start()
    yield pair
    pair.stop()


def rtu_config(line: SocatPair, **extra: Any) -> dict[str, Any]:
    url = f"rtu://{line.a}?baudrate=115200"
    regs = {"r0": {"address": 0}, "r1": {"address": 1}, "s": {"address": 2, "type": "int32"}}
    return {
        "interval": "100ms",
        "timeout": "300ms",
        "retries": 0,
        "backoff_max": "1s",
        "devices": {"m1": {"url": url, "unit": 1, "registers": regs},
                    "m2": {"url": url, "unit": 2, "registers": regs}},
        **extra,
    }  # fmt: skip


async def test_two_units_on_one_rtu_line(line: SocatPair) -> None:
    store = PlcStore(units=(1, 2))
    store.set(1, "holding", 0, [101, 102, *layout("i", -5, "ABCD")])
    store.set(2, "holding", 0, [201, 202, *layout("i", 70000, "ABCD")])
    server = await serve_rtu(store, line.b)
    source = make_source(rtu_config(line, frame_delay="15ms"))
    await source.connect()
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(pump.topic("modbus/m2/s")) >= 10, "10 polls of m2")
    finally:
        await source.close()
        await server.shutdown()
    assert {v["value"] for v in pump.topic("modbus/m1/r0")} == {101}
    assert {v["value"] for v in pump.topic("modbus/m1/s")} == {-5}
    assert {v["value"] for v in pump.topic("modbus/m2/r1")} == {202}
    assert {v["value"] for v in pump.topic("modbus/m2/s")} == {70000}
    devices = source.status()["devices"]
    assert devices["m1"]["errors"] == 0 and devices["m2"]["errors"] == 0
    assert devices["m1"]["state"] == devices["m2"]["state"] == "online"
    assert store.max_busy == 1  # never two requests on the line at once
    assert {r[2:] for r in store.requests} == {(0, 4)}  # one request per device and poll
    # the line is kept silent for frame_delay between an answer and the next request
    gaps = [b - a for a, b in zip(store.times, store.times[1:], strict=False)]
    assert min(gaps) >= 0.015


async def test_silent_unit_goes_offline_and_the_other_keeps_flowing(line: SocatPair) -> None:
    store = PlcStore(units=(1, 2))
    server = await serve_rtu(store, line.b)
    source = make_source(rtu_config(line))
    await source.connect()
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(pump.topic("modbus/m2/r0")) >= 2, "m2 answering")
            store.muted.add(2)
            devices = source.status()["devices"]
            await pump.until(lambda ms: devices["m2"]["state"] == "offline", "m2 offline")
            assert "no valid answer" in devices["m2"]["last_error"]
            # pymodbus's "No response received after 0 retries", its own retries being
            # off, read as if the device's retries had not been taken
            assert devices["m2"]["last_error"].endswith("no valid answer within 0.3s")
            before = len(pump.topic("modbus/m1/r0"))
            m2_before = len(pump.topic("modbus/m2/r0"))
            await pump.until(
                lambda ms: len(pump.topic("modbus/m1/r0")) >= before + 15, "m1 flowing"
            )
            assert len(pump.topic("modbus/m2/r0")) == m2_before
            assert devices["m1"]["state"] == "online"
            # back: m2 is polled again within its backoff (at most 1 s here)
            store.muted.discard(2)
            await pump.until(lambda ms: len(pump.topic("modbus/m2/r0")) > m2_before, "m2 back")
            assert devices["m2"]["state"] == "online"
    finally:
        await source.close()
        await server.shutdown()
    # while m2 was silent, it was asked rarely (backoff), m1 at its pace
    assert devices["m2"]["errors"] >= 1


@pytest.mark.parametrize("transport", ["rtu", "rtu+tcp"])
async def test_a_late_answer_is_not_taken_for_the_next_request(
    line: SocatPair, transport: str
) -> None:
    # RTU answers carry no transaction id: the answer to a timed-out request, arriving
    # while the next request waits, looked like its answer (same unit, function and
    # count), and block b was published with block a's values, from then on.
    device = LateDevice(1, {0: 11, 1: 12, 100: 21, 101: 22}, delay=0.3, late=1, late_delay=0.8)
    tcp: TcpServer | None = None
    pty: PtyServer | None = None
    if transport == "rtu":
        pty = PtyServer(device, line.b)
        url = f"rtu://{line.a}?baudrate=115200"
    else:
        tcp = await TcpServer(device).start()
        url = f"rtu+tcp://127.0.0.1:{tcp.port}"
    regs = {"a0": {"address": 0}, "a1": {"address": 1},
            "b0": {"address": 100}, "b1": {"address": 101}}  # fmt: skip
    source = make_source(
        {"url": url, "interval": "100ms", "timeout": "600ms", "retries": 1, "registers": regs},
        name="slow",
    )
    await source.connect()
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(pump.topic("modbus/slow/b1")) >= 3, "3 polls")
    finally:
        await source.close()
        if pty is not None:
            pty.close()
        if tcp is not None:
            await tcp.close()
    published = {
        name: {v["value"] for v in pump.topic(f"modbus/slow/{name}")}
        for name in ("a0", "a1", "b0", "b1")
    }
    assert published == {"a0": {11}, "a1": {12}, "b0": {21}, "b1": {22}}
    # the first request was sent again (retries: 1) and answered; the device stayed online
    assert device.requests[:2] == [(0, 2), (0, 2)]
    assert source.status()["devices"]["slow"]["state"] == "online"


async def settled(check: Callable[[], bool]) -> None:
    """Wait until `check` holds, looking every 10 ms (for states that come with no message)."""
    async with asyncio.timeout(WAIT):
        while not check():  # noqa: ASYNC110 - a status field, no event to wait on
            await asyncio.sleep(0.01)


class GarbledDevice:
    """A Modbus TCP device with a firmware bug: it answers every request with a well
    framed MBAP header and a PDU made by `answer(function, count)`."""

    def __init__(self, answer: Callable[[int, int], bytes]) -> None:
        self.answer = answer
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> GarbledDevice:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                tid, _proto, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                fc, _address, count = struct.unpack(">BHH", pdu[:5])
                body = self.answer(fc, count)
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def _input_registers_answer(fc: int, count: int) -> bytes:
    return bytes([4, 2 * count]) + struct.pack(f">{count}H", *range(7, 7 + count))


def _short_answer(fc: int, count: int) -> bytes:
    return bytes([fc, 2 * count, 0])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # Asked for holding registers (FC 3), the device answers with an input register
        # read (FC 4) of the right size: the values were published as the holding ones.
        (_input_registers_answer, "answer is for function 4, not 3"),
        # An answer too short for its function (FC 3, one byte of data) raised inside
        # pymodbus's data_received: asyncio logged "Fatal error: protocol.data_received()
        # call failed." with a traceback at every poll, and the request waited for its
        # timeout.
        (_short_answer, "no valid answer"),
    ],
)
async def test_a_garbled_answer_is_one_error_not_values_nor_a_traceback(
    answer: Callable[[int, int], bytes], expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    device = await GarbledDevice(answer).start()
    source = make_source(
        {"url": f"tcp://127.0.0.1:{device.port}", "interval": "50ms", "timeout": "60s",
         "retries": 0, "backoff_max": "50ms",
         "registers": {"a": {"address": 0}, "b": {"address": 1}}},
        name="garbled1",
    )  # fmt: skip
    await source.connect()
    status = source.status()["devices"]["garbled1"]
    try:
        async with Pump(source) as pump:
            # within WAIT only if none waited for its 60 s timeout
            await settled(lambda: status["errors"] >= 3)
            assert pump.messages == []
            assert status["state"] == "offline"
            assert expected in status["last_error"], status
    finally:
        await source.close()
        await device.close()
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert tracebacks == []


async def test_tcp_device_lost_and_back(plc: PlcStore, caplog: pytest.LogCaptureFixture) -> None:
    other = PlcStore(units=(1,))
    other.set(1, "holding", 0, [42])
    other_server, other_port = await serve_tcp(other)
    port = plc.port  # type: ignore[attr-defined]
    one = {"v": {"address": 0}}
    source = make_source({
        "interval": "100ms", "timeout": "500ms", "backoff_max": "500ms",
        "devices": {"a": {"url": f"tcp://127.0.0.1:{port}", "registers": one},
                    "b": {"url": f"tcp://127.0.0.1:{other_port}", "registers": one}},
    })  # fmt: skip
    await source.connect()
    devices = source.status()["devices"]
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(pump.topic("modbus/a/v")) >= 2, "a answering")
            await plc.server.shutdown()  # type: ignore[attr-defined]
            await pump.until(lambda ms: devices["a"]["state"] == "offline", "a offline")
            error, error_at = devices["a"]["last_error"], devices["a"]["last_error_at"]
            assert error and error_at
            # the backoff as the config reads it (it printed "up to 0 s" with %.0f)
            offline = [r.getMessage() for r in caplog.records if "is offline" in r.getMessage()]
            assert offline and offline[0].endswith("; retrying with backoff up to 500ms")
            b_before = len(pump.topic("modbus/b/v"))
            await pump.until(lambda ms: len(pump.topic("modbus/b/v")) >= b_before + 10, "b flowing")
            plc.set(1, "holding", 0, [7])
            server, _ = await serve_tcp(plc, port=port)
            plc.server = server  # type: ignore[attr-defined]
            await pump.until(
                lambda ms: any(v["value"] == 7 for v in pump.topic("modbus/a/v")), "a back"
            )
            assert devices["a"]["state"] == "online"
            assert devices["a"]["last_error"] is None  # back online: nothing is wrong now
            assert devices["a"]["previous_error"] and devices["a"]["last_error_at"] >= error_at
            assert devices["b"]["last_error"] is None
    finally:
        await source.close()
        await other_server.shutdown()


async def test_a_bit_without_a_type_is_a_bool(plc: PlcStore) -> None:
    # {address: 30, bit: 3} was refused ("bit selects a bool inside a holding or input
    # register", where it was): the type defaulted to uint16; with bit it is bool, as
    # in a coil
    plc.set(1, "holding", 30, [0b1000])
    plc.set(1, "input", 30, [0b0100])
    port = plc.port  # type: ignore[attr-defined]
    source = make_source({
        "url": f"tcp://127.0.0.1:{port}",
        "registers": {"alarm": {"address": 30, "bit": 3},
                      "low": {"address": 30, "bit": 0},
                      "in2": {"table": "input", "address": 30, "bit": 2}},
    })  # fmt: skip
    await source.connect()
    try:
        assert values(await source.read()) == {
            "modbus/plant/alarm": True,
            "modbus/plant/low": False,
            "modbus/plant/in2": True,
        }
    finally:
        await source.close()


async def test_frame_delay_is_kept_on_a_serial_line_only(plc: PlcStore) -> None:
    # A source-level frame_delay, meant for its RTU devices, slowed every request of
    # its tcp:// devices too (the docs: "on a serial line"): here 3 requests a poll
    plc.requests.clear()
    plc.times.clear()
    port = plc.port  # type: ignore[attr-defined]
    regs = {n: {"address": a} for n, a in (("a", 0), ("b", 10), ("c", 20))}
    source = make_source({
        "frame_delay": "300ms", "max_gap": 0,
        "devices": {"t": {"url": f"tcp://127.0.0.1:{port}", "registers": regs},
                    "r": {"url": "rtu:///nonexistent/ttyUSB9", "registers": regs}},
    })  # fmt: skip
    await source.connect()
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(plc.times) >= 3, "one poll of t")
        gaps = [b - a for a, b in itertools.pairwise(plc.times[:3])]
        assert max(gaps) < 0.2, gaps
    finally:
        await source.close()
    # set where no device has a serial line, it is refused rather than ignored
    one = {"v": {"address": 0}}
    tcp = {"url": "tcp://127.0.0.1:502", "registers": one}
    assert problems_of({"frame_delay": "5ms", "devices": {"t": tcp}}) == [
        "frame_delay: only on a serial line (rtu://, rtu+tcp://): no device has one"
    ]
    assert problems_of({"devices": {"t": {**tcp, "frame_delay": "5ms"}}}) == [
        "devices.t.frame_delay: only on a serial line (rtu://, rtu+tcp://), not tcp://"
    ]
    assert problems_of({"url": "udp://127.0.0.1:502", "registers": one, "frame_delay": "5ms"})
    assert not problems_of({"url": "rtu+tcp://127.0.0.1:502", "registers": one,
                            "frame_delay": "5ms"})  # fmt: skip
    assert problems_of({"devices": {"t": {**tcp, "frame_delay": "100000h"}}})


async def test_a_port_that_cannot_be_opened_says_why(tmp_path: Path) -> None:
    # pymodbus answers False and logs the reason to its own (quieted) logger: the status
    # and the log said "cannot connect to rtu:///dev/ttyUSB0" and no more, the same for
    # an unplugged adapter, a file that is no serial port and a refused connection
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there
    not_a_tty = tmp_path / "not-a-tty"
    not_a_tty.write_bytes(b"")
    one = {"v": {"address": 0}}
    source = make_source({
        "devices": {"gone": {"url": f"rtu://{tmp_path}/ttyUSB9", "registers": one},
                    "file": {"url": f"rtu://{not_a_tty}", "registers": one},
                    "tcp": {"url": f"tcp://127.0.0.1:{port}", "registers": one}},
    })  # fmt: skip
    await source.connect()
    try:
        devices = source.status()["devices"]
        assert devices["gone"]["state"] == "offline"
        assert "No such file or directory" in devices["gone"]["last_error"], devices
        assert "Inappropriate ioctl" in devices["file"]["last_error"], devices
        assert devices["tcp"]["last_error"].endswith(": connection refused"), devices
    finally:
        await source.close()


# ---- write-back ---------------------------------------------------------------------


class MqttProbe:
    """An independent MQTT client (paho, in its own thread) to send commands and see results."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.loop = asyncio.get_running_loop()
        self.received: list[tuple[str, bytes, bool]] = []
        self.changed = asyncio.Event()
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="modbus-probe")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect(host, int(port))
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        item = (msg.topic, bytes(msg.payload), bool(msg.retain))
        self.loop.call_soon_threadsafe(self._add, item)

    def _add(self, item: tuple[str, bytes, bool]) -> None:
        self.received.append(item)
        self.changed.set()

    async def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert await asyncio.to_thread(self.subscribed.wait, WAIT)

    async def command(self, topic: str, payload: Any) -> dict[str, Any]:
        """Publish a command and wait for its result."""
        seen = len(self.received)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=1)
        async with asyncio.timeout(WAIT):
            while True:
                for t, p, _ in self.received[seen:]:
                    if t == topic + "/result":
                        return json.loads(p)  # type: ignore[no-any-return]
                self.changed.clear()
                await self.changed.wait()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_write_back_verified_at_the_server(plc: PlcStore, mosquitto: Any) -> None:
    registers = {
        "setpoint": {"address": 10, "type": "int16", "scale": 0.1, "writable": True},
        "limit": {"address": 20, "type": "float32", "order": "CDAB", "writable": True},
        "total": {"address": 30, "type": "uint32", "writable": True},
        "pump": {"table": "coil", "address": 5, "type": "bool", "writable": True},
        "enable": {"address": 40, "type": "bool", "bit": 2, "writable": True},
        "label": {"address": 50, "type": "string(4)", "writable": True},
        "measured": {"address": 60, "type": "int16"},
    }
    plc.set(1, "holding", 40, [0b1001])
    source = make_source(
        {"url": f"tcp://127.0.0.1:{plc.port}", "interval": "200ms", "registers": registers,  # type: ignore[attr-defined]
         "writeback": {"enabled": True, "url": mosquitto.url, "client_id": "wb-test"}},
        name="plc1",
    )  # fmt: skip
    probe = MqttProbe(mosquitto.url)
    await probe.subscribe("modbus/plc1/#")
    await source.connect()
    table = plc.tables[1]
    try:
        async with Pump(source):
            base = "modbus/plc1"
            result = await probe.command(f"{base}/setpoint/set", 21.5)
            assert result["ok"] is True and result["value"] == 21.5 and result["raw"] == [215]
            assert table["holding"][10] == 215
            assert plc.writes[-1][1] == 6  # FC 6 for one register

            result = await probe.command(f"{base}/limit/set", {"value": -12.75, "id": "req-7"})
            assert result["ok"] is True and result["id"] == "req-7" and result["value"] == -12.75
            assert table["holding"][20:22] == layout("f", -12.75, "CDAB")
            assert plc.writes[-1][1] == 16  # FC 16 for two

            assert (await probe.command(f"{base}/total/set", 4000000000))["ok"] is True
            assert table["holding"][30:32] == layout("I", 4000000000, "ABCD")

            result = await probe.command(f"{base}/pump/set", True)
            assert result["ok"] is True and result["value"] is True
            assert table["coil"][5] is True
            assert plc.writes[-1][1] == 5  # FC 5

            result = await probe.command(f"{base}/enable/set", "on")
            assert result["ok"] is True and result["value"] is True
            assert table["holding"][40] == 0b1101  # only bit 2 changed

            assert (await probe.command(f"{base}/label/set", b"AB1"))["ok"] is True
            assert table["holding"][50:52] == [0x4142, 0x3100]

            writes = len(plc.writes)
            refused = await probe.command(f"{base}/measured/set", 5)
            assert refused["ok"] is False and "not writable" in refused["error"]
            too_big = await probe.command(f"{base}/setpoint/set", 5000)
            assert too_big["ok"] is False and "out of range" in too_big["error"]
            unknown = await probe.command(f"{base}/nothing/set", 1)
            assert unknown["ok"] is False and "no register" in unknown["error"]
            assert len(plc.writes) == writes  # none of these reached the device

            # the device's state is published, retained
            status = [json.loads(p) for t, p, _ in probe.received if t == f"{base}/status"]
            assert status and status[-1]["state"] == "online"
    finally:
        probe.close()
        await source.close()


async def test_two_sources_on_one_command_topic_answer_only_for_their_devices(
    plc: PlcStore, mosquitto: Any
) -> None:
    """Both subscribed to modbus/+/+/set: the source without the device answered each
    command too, {"ok": false, "error": "no device named ..."}, on the same result topic."""
    registers = {"setpoint": {"address": 10, "type": "int16", "writable": True}}
    sources = [writeback_source(plc, mosquitto, name, registers) for name in ("plc1", "plc2")]
    probe = MqttProbe(mosquitto.url)
    await probe.subscribe("modbus/#")
    for source in sources:
        await source.connect()
    try:
        async with Pump(sources[0]), Pump(sources[1]):
            result = await probe.command("modbus/plc2/setpoint/set", 7)
            assert result["ok"] is True and plc.tables[1]["holding"][10] == 7
            await probe.command("modbus/plc1/setpoint/set", 8)  # a later command, answered
            results = [
                json.loads(p) for t, p, _ in probe.received if t.endswith("/setpoint/set/result")
            ]
            assert [r["ok"] for r in results] == [True, True], results
    finally:
        probe.close()
        for source in sources:
            await source.close()


def writeback_source(
    plc: PlcStore, mosquitto: Any, name: str, registers: dict[str, Any], **keys: Any
) -> ModbusSource:
    """A source polling `plc` every 200 ms that takes write-back commands on `mosquitto`."""
    writeback = {"enabled": True, "url": mosquitto.url, "client_id": f"wb-{name}"}
    url = f"tcp://127.0.0.1:{plc.port}"  # type: ignore[attr-defined]
    raw = {"url": url, "interval": "200ms", "registers": registers, "writeback": writeback}
    return make_source({**raw, **keys}, name=name)


def strict_json(payload: bytes) -> Any:
    """JSON as the standard has it: NaN and Infinity are not (Python's json reads them)."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in {payload!r} is not JSON")

    return json.loads(payload, parse_constant=refuse)


async def test_a_nan_or_infinite_write_is_refused_and_the_result_is_json(
    plc: PlcStore, mosquitto: Any
) -> None:
    # The result echoed "requested": NaN (not JSON), and a float register got NaN written.
    registers = {
        "limit": {"address": 20, "type": "float32", "writable": True},
        "setpoint": {"address": 10, "type": "int16", "writable": True},
    }
    source = writeback_source(plc, mosquitto, "nan1", registers)
    probe = MqttProbe(mosquitto.url)
    await probe.subscribe("modbus/nan1/+/set/result")
    await source.connect()
    try:
        async with Pump(source):
            for register, payload in [("limit", b"NaN"), ("setpoint", b"NaN"),
                                      ("limit", b'{"value": Infinity, "id": 7}'),
                                      ("limit", b"-Infinity"), ("limit", b"1e999")]:  # fmt: skip
                seen = len(probe.received)
                result = await probe.command(f"modbus/nan1/{register}/set", payload)
                raw = next(p for t, p, _ in probe.received[seen:] if t.endswith("/result"))
                assert strict_json(raw) == result, raw
                assert result["ok"] is False and "finite number" in result["error"], result
                assert "requested" not in result
            good = await probe.command("modbus/nan1/limit/set", 1.5)
            assert good["ok"] is True and good["value"] == 1.5
    finally:
        probe.close()
        await source.close()
    assert plc.writes == [(1, 16, 20, layout("f", 1.5, "ABCD"))]  # only the finite one


async def test_a_write_beyond_a_float_is_refused_and_the_source_goes_on(
    plc: PlcStore, mosquitto: Any
) -> None:
    # A JSON integer too large for a float (10**400) raised OverflowError in the
    # conversion: no result, and the source's read() failed; a finite value that the
    # scale makes infinite wrote Infinity into the device.
    registers = {
        "limit": {"address": 20, "type": "float32", "writable": True},
        "total": {"address": 24, "type": "float64", "writable": True},
        "setpoint": {"address": 10, "type": "int16", "scale": 0.1, "writable": True},
        "tiny": {"address": 30, "type": "float64", "scale": 1e-300, "writable": True},
    }
    source = writeback_source(plc, mosquitto, "huge1", registers)
    probe = MqttProbe(mosquitto.url)
    await probe.subscribe("modbus/huge1/+/set/result")
    await source.connect()
    try:
        async with Pump(source):
            huge = b"1" + b"0" * 400
            for register, payload in [("limit", huge), ("total", b"-" + huge),
                                      ("setpoint", huge), ("tiny", b"1e10")]:  # fmt: skip
                result = await probe.command(f"modbus/huge1/{register}/set", payload)
                assert result["ok"] is False and "out of range" in result["error"], result
            good = await probe.command("modbus/huge1/limit/set", 2.5)
            assert good["ok"] is True and good["value"] == 2.5
    finally:
        probe.close()
        await source.close()
    assert plc.writes == [(1, 16, 20, layout("f", 2.5, "ABCD"))]  # only the one that fits


async def test_write_to_a_silent_device_reports_the_failure(plc: PlcStore, mosquitto: Any) -> None:
    registers = {"sp": {"address": 1, "writable": True}}
    source = writeback_source(plc, mosquitto, "mute1", registers, timeout="300ms")
    probe = MqttProbe(mosquitto.url)
    await probe.subscribe("modbus/mute1/#")
    await source.connect()
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(ms) >= 1, "first poll")
            plc.muted.add(1)
            result = await probe.command("modbus/mute1/sp/set", 3)
            assert result["ok"] is False and "no valid answer" in result["error"]
    finally:
        probe.close()
        await source.close()


async def test_a_write_under_way_when_the_source_stops_is_answered(
    plc: PlcStore, mosquitto: Any
) -> None:
    # A reload or a stop cancelled the write under way: its commander never got a result
    registers = {"sp": {"address": 1, "writable": True}}
    source = writeback_source(plc, mosquitto, "cut1", registers, timeout="2s")
    probe = MqttProbe(mosquitto.url)
    await probe.subscribe("modbus/cut1/#")
    await source.connect()
    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: len(ms) >= 1, "first poll")
            plc.muted.add(1)
            answer = asyncio.ensure_future(probe.command("modbus/cut1/sp/set", 3))
            # the write is under way: taken from the queue, the device silent for 2s
            [bus] = source._buses.values()
            await settled(lambda: bool(source._channel.pending and not bus.writes))
        await source.close()
        result = await answer
        assert result["ok"] is False and "stopped during the write" in result["error"], result
    finally:
        plc.muted.discard(1)
        probe.close()
        await source.close()


async def test_a_stopped_source_leaves_offline_on_the_status_topics(mosquitto: Any) -> None:
    # The retained status said "online" for ever after the gateway stopped.
    store = PlcStore(units=(1, 2))
    server, port = await serve_tcp(store)
    url = f"tcp://127.0.0.1:{port}"
    one = {"v": {"address": 0}}
    source = make_source(
        {"interval": "200ms",
         "devices": {"d1": {"url": url, "registers": one},
                     "d2": {"url": url, "unit": 2, "registers": one}},
         "writeback": {"enabled": True, "url": mosquitto.url, "client_id": "wb-stop"}},
        name="stop1",
    )  # fmt: skip
    probe = MqttProbe(mosquitto.url)
    await probe.subscribe("modbus/+/status")
    await source.connect()

    def last_state(device: str) -> str | None:
        found = [json.loads(p) for t, p, _ in probe.received if t == f"modbus/{device}/status"]
        return found[-1]["state"] if found else None

    try:
        async with Pump(source) as pump:
            await pump.until(lambda ms: last_state("d1") == last_state("d2") == "online", "online")
    finally:
        await source.close()
        probe.close()
        await server.shutdown()
    # what a client subscribing later is told: retained, offline, and why
    later = MqttProbe(mosquitto.url)
    try:
        await later.subscribe("modbus/+/status")  # (other tests' devices' too)
        mine = {"modbus/d1/status", "modbus/d2/status"}
        async with asyncio.timeout(WAIT):
            while not mine <= {t for t, _, retained in later.received if retained}:
                later.changed.clear()
                await later.changed.wait()
    finally:
        later.close()
    told = [(t, p) for t, p, _ in later.received if t in mine]
    assert len(told) == 2, told
    for topic, payload in told:
        status = json.loads(payload)
        assert status["state"] == "offline", (topic, status)
        assert status["last_error"] == "not polled: the source stopped" and status["last_ok"]


# ---- config ---------------------------------------------------------------------------


def test_one_serial_port_by_two_names_is_one_port(tmp_path: Path) -> None:
    # /dev/serial/by-id/... and the /dev/ttyUSB0 it points to were two ports to the
    # source: two connections on one line sending at once, and neither a unit id used
    # twice nor other line settings were refused
    tty = tmp_path / "ttyUSB0"
    tty.touch()
    by_id = tmp_path / "usb-FTDI_FT232R-if00-port0"
    by_id.symlink_to(tty)
    x = {"x": {"address": 0}}

    def devices(b_url: str, b_unit: int) -> dict[str, Any]:
        return {"devices": {"a": {"url": f"rtu://{tty}?baudrate=9600", "registers": x},
                            "b": {"url": b_url, "unit": b_unit, "registers": x}}}  # fmt: skip

    assert problems_of(devices(f"rtu://{by_id}?baudrate=19200", 2)) == [
        "devices.b.url: device 'a' uses the same port with other settings"
        f" (rtu://{tty}); devices sharing a port need the same settings"
    ]
    assert problems_of(devices(f"rtu://{by_id}?baudrate=9600", 1)) == [
        "devices.b.unit: unit 1 on this port is also device 'a'"
    ]
    source = make_source(devices(f"rtu://{by_id}?baudrate=9600", 2))
    assert len(source._buses) == 1  # one connection, one request at a time


def test_config_problems_name_the_key() -> None:
    tcp = "tcp://127.0.0.1:5020"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"url": tcp, "registers": {"x": {"address": 0, "type": "int8"}}},
         "registers.x.type: unknown type 'int8'"),
        ({"url": tcp, "registers": {"x": {"table": "coil", "address": 0, "type": "int16"}}},
         "registers.x.type: a coil holds one bit"),
        ({"url": tcp, "registers": {"x": {"table": "input", "address": 0, "writable": True}}},
         "registers.x.writable"),
        ({"url": "http://x", "registers": {"x": {"address": 0}}},
         "url: 'http://x': unknown scheme"),
        ({"url": tcp, "registers": {"x": {"address": 0, "order": "CDAB", "byte_order": "big"}}},
         "registers.x.order"),
        # a 32-bit order on a 64-bit value was taken as the 8-letter one with the same
        # byte and word orders (CDAB as GHEFCDAB), not as written
        ({"url": tcp, "registers": {"x": {"address": 0, "type": "float64", "order": "CDAB"}}},
         "registers.x.order: CDAB is a 32-bit order and float64 is 64 bits wide: give the"),
        ({"url": tcp, "registers": {"x": {"address": 0, "bit": 16, "type": "bool"}}},
         "registers.x.bit: must be 0..15"),
        ({"url": tcp, "registers": {"x": {"address": 0, "bit": 16}}},
         "registers.x.bit: must be 0..15"),
        ({"url": tcp, "registers": {"x": {"address": 0, "bit": 1, "type": "uint16"}}},
         "registers.x.bit: bit reads a bool (type bool, or no type), not uint16"),
        ({"url": tcp, "registers": {"x": {"address": 0, "bit": 1, "table": "coil"}}},
         "registers.x.bit: a coil is one bit: bit is for a holding or input register"),
        ({"url": tcp, "registers": {"x/y": {"address": 0}}}, "registers.x/y"),
        # beyond a C int: pyserial's OverflowError came out of connect() as a traceback
        ({"url": "rtu:///dev/ttyS0?baudrate=4000000000", "registers": {"x": {"address": 0}}},
         "url: 'rtu:///dev/ttyS0?baudrate=4000000000': baudrate must be 1 to 2147483647"),
        ({"url": tcp, "topic": "m/{devise}/{register}", "registers": {"x": {"address": 0}}},
         "topic: 'm/{devise}/{register}' uses devise"),
        ({"devices": {"a": {"url": "rtu:///dev/ttyS0?baudrate=9600",
                            "registers": {"x": {"address": 0}}},
                      "b": {"url": "rtu:///dev/ttyS0?baudrate=19200", "unit": 2,
                            "registers": {"x": {"address": 0}}}}},
         "devices.b.url: device 'a' uses the same port with other settings"),
        ({"devices": {"a": {"url": tcp, "registers": {"x": {"address": 0}}},
                      "b": {"url": tcp, "registers": {"x": {"address": 0}}}}},
         "devices.b.unit: unit 1 on this port is also device 'a'"),
        ({"url": tcp, "registers": {"x": {"address": 0}}, "writeback": {"topic": "m/{device}/set"}},
         "writeback.topic: the command topic needs both"),
        ({"url": "rtu:///dev/ttyS0?baud=9600", "registers": {"x": {"address": 0}}},
         "unknown serial option 'baud'"),
        # a top-level unit is the flat device's: with devices: it was silently ignored,
        # each device asked as unit 1
        ({"unit": 3, "devices": {"a": {"url": tcp, "registers": {"x": {"address": 0}}}}},
         "unit: unit: 3 at the top level is the flat device's (with url:), not a default"
         " for devices:; set unit on each device instead"),
        # passed the check, then the source crashed with a traceback at each start
        ({"url": tcp, "registers": {"x": {"address": 0}},
          "writeback": {"url": "mqtt://u:pw@h:99999"}},
         "writeback.url: 'mqtt://u:***@h:99999' is not an mqtt://host:port"),
        # port 0 read as no port: write-back went to the broker on 1883
        ({"url": tcp, "registers": {"x": {"address": 0}}, "writeback": {"url": "mqtt://h:0"}},
         "writeback.url: 'mqtt://h:0' is not an mqtt://host:port"),
        ({"url": tcp, "registers": {"x": {"address": 0}}, "writeback": {"url": "http://u:pw@h"}},
         "writeback.url: 'http://u:***@h' is not an mqtt://host:port"),
        ({"registers": {"x": {"address": 0}}}, "registers at the top level need url"),
        ({"url": tcp, "address_base": 1, "registers": {"x": {"address": 0}}}, "below address_base"),
    ]  # fmt: skip
    for raw, expected in cases:
        found = problems_of(raw)
        assert any(expected in p for p in found), (expected, found)


def test_orders_that_read_one_way_load_on_64_bit_values_and_strings() -> None:
    """The check for CDAB on a float64 refused every 4-letter order on a 4-register
    value: ABCD and BADC on a float64, and BADC on a string(8), which had loaded."""
    tcp = "tcp://127.0.0.1:5020"
    for kind, order in [("float64", "ABCD"), ("uint64", "BADC"), ("string(8)", "BADC"),
                        ("string(7)", "DCBA"), ("float64", "GHEFCDAB")]:  # fmt: skip
        raw = {"url": tcp, "registers": {"x": {"address": 0, "type": kind, "order": order}}}
        assert problems_of(raw) == [], (kind, order)
    raw = {"url": tcp, "registers": {"x": {"address": 0, "type": "int64", "order": "DCBA"}}}
    assert problems_of(raw) == [
        "registers.x.order: DCBA is a 32-bit order and int64 is 64 bits wide: give the"
        " 8-letter order (GHEFCDAB or HGFEDCBA: every register reversed)"
    ]


def test_the_registry_finds_the_source() -> None:
    from gateway import registry

    entry = registry.find("source", "modbus")
    assert entry is not None and entry.cls is ModbusSource and entry.config is ModbusSourceConfig


def test_the_documented_example_is_a_valid_config() -> None:
    import yaml

    import gateway.sources.modbus as module

    assert module.__doc__ is not None
    example = module.__doc__.split("```yaml\n", 1)[1].split("```", 1)[0]
    for name, raw in yaml.safe_load(example)["sources"].items():
        assert problems_of({k: v for k, v in raw.items() if k != "type"}) == [], name
        source = make_source({k: v for k, v in raw.items() if k != "type"}, name=name)
        assert set(source.status()["devices"]) == {"plc1", "meter3", "meter4"}
