"""Polls Modbus TCP, UDP and RTU devices with planned block reads; writes back from MQTT.

```yaml
sources:
  plant:
    type: modbus
    interval: 1s                 # defaults for every device below (each may override)
    timeout: 500ms
    devices:
      plc1:
        url: tcp://10.0.0.5:502
        unit: 1
        registers:
          temperature: {address: 0, type: int16, scale: 0.1, unit: "°C"}
          energy:      {address: 10, type: uint32, word_order: little, interval: 10s}
          setpoint:    {address: 20, type: float32, order: CDAB, writable: true}
          pump_on:     {table: coil, address: 0, type: bool, writable: true}
          alarm:       {address: 30, type: bool, bit: 3, on_change: true, heartbeat: 5m}
      meter3:
        url: rtu:///dev/ttyUSB0?baudrate=19200&parity=E&stopbits=1&bytesize=8
        unit: 3
        registers:
          power: {table: input, address: 0, type: float32, deadband_percent: 1}
      meter4:                    # same port: one request at a time, in turn
        url: rtu:///dev/ttyUSB0?baudrate=19200&parity=E&stopbits=1&bytesize=8
        unit: 4
        registers: {power: {table: input, address: 0, type: float32}}
    writeback: {enabled: true}   # commands on modbus/<device>/<register>/set
```

A single device can also be written flat, as in `plc1: {type: modbus, url:
"tcp://10.0.0.5:502", unit: 1, registers: {...}}`; it is then named after the source.

Device URLs: `tcp://host:502`, `udp://host:502`, `rtu+tcp://host:port` (RTU
frames through a serial-to-TCP converter) and
`rtu:///dev/ttyUSB0?baudrate=9600&parity=N&stopbits=1&bytesize=8`. Devices
with the same URL (host and port, or serial port) share one connection and
are asked one request at a time; on a serial line the source keeps the
inter-frame silence (`frame_delay`, default 3.5 characters, 1.75 ms above
19200 baud) between the end of one answer and the next request.

Device keys (each may also be set once for all devices at the source level):
`interval` (1s), `timeout` (1s, per request), `retries` (1: requests sent
again at once before the device counts as failing), `address_base` (0, or 1
when the device's manual counts from 1), `byte_order` and `word_order` (big),
`max_gap` (16: holes of up to this many registers, or 16x as many coils, are
read and thrown away rather than sending another request), `max_registers`
(125) and `max_bits` (2000) per request, `frame_delay`, `write_multiple`
(false: FC 5/6 for one coil/register, true: FC 15/16), `emit` and `backoff_max`.

Register keys: `table` (coil, discrete, holding, input; default holding),
`address`, `type` (bool, int16, uint16, int32, uint32, int64, uint64,
float32, float64, string(N) with N bytes), `bit` (0-15, a bool inside a
holding or input register), `byte_order`/`word_order` or `order` (ABCD,
CDAB, BADC, DCBA and ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA), `scale` and
`offset` (value = raw * scale + offset; integers with a decimal scale are
rounded to the scale's decimals), `precision` (decimals to round to), `unit`,
`interval` (its own poll rate), `writable`, `topic`, and report-by-exception:
`on_change` (send a value only when it differs from the last one sent),
`deadband` and `deadband_percent` (send a number only when it moved more than
this, absolute or in percent of the last value sent; either implies on_change)
and `heartbeat` (send an unchanged value again after this long).

The planner reads the registers of one device, table and interval in as few
requests as possible: contiguous and overlapping values share a request,
holes up to `max_gap` are filled, no request exceeds 125 registers or 2000
bits. A device that refuses a filled block (illegal data address) gets that
block split into its contiguous parts from then on.

Output (`emit: per_value`, the default): one FlowFile per value on
`modbus/<device>/<register>` (`topic` template; `{device}`, `{register}`,
`{unit}`, `{table}`) with content
`{"value": 21.5, "raw": [215], "unit": "°C", "ts": "2024-05-01T12:00:00.123Z"}`
and attributes `device`, `register`, `unit_id`, `table`, `address`. With
`emit: per_device`: one FlowFile per device and poll on `modbus/<device>`
(`device_topic`) with `{"device": ..., "ts": ..., "values": {name: value}}`.

A device that does not answer (after `retries`), whose connection fails, or
that answers with a device-trouble exception (4, 5, 6, 8, 10, 11) is marked
offline and retried after its interval, doubling up to `backoff_max` (30s);
the other devices, on its port or elsewhere, keep their schedule. Its state
(online/offline, last error, last poll, counters) is in the source's status
under `devices`: `last_error` is what is wrong now and is cleared when an
offline device answers again (`previous_error` and `last_error_at` keep the
last one), and with write-back enabled also published retained on
`modbus/<device>/status`.

Write-back (`writeback: {enabled: true}`; also `url`, `topic`, `result_topic`,
`status_topic`, `client_id`, `username`, `password`): the source subscribes to
`modbus/{device}/{register}/set` (`writeback.topic`) on the gateway's broker
(`writeback.url`, default the top-level `mqtt.url`, whose `username`, `password`
and `client_id` prefix then apply unless write-back sets its own). The payload is a JSON
value (`21.5`, `true`, `"text"`) or `{"value": 21.5, "id": "any"}`. Only
registers marked `writable: true` are written: the value is converted to the
register's type, scale and byte order, written (FC 5/6, or 15/16), read back
and compared, and the outcome published on `modbus/{device}/{register}/set/result`
(`writeback.result_topic`, and on an MQTT 5 response topic if the command
has one): `{"ok": true, "value": 21.5, "raw": [...]}` or `{"ok": false,
"error": "..."}`. Commands are carried out by the source's own polling (between two
requests on the device's port, never interleaved with them), so they take effect
while the engine is reading from the source.
"""

from __future__ import annotations

import asyncio
import json
import math
import string
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

from gateway.config.model import SourceConfig
from gateway.config.schema import Duration
from gateway.core.component import Context, Message, Source
from gateway.core.errors import RetryableError
from gateway.core.flowfile import FlowFile
from gateway.core.topics import validate_topic
from gateway.sources import _modbus_codec as codec
from gateway.sources._modbus_adapter import (
    DeviceException,
    Link,
    LinkError,
    LinkSpec,
    parse_link_url,
)

Table = Literal["coil", "discrete", "holding", "input"]
Order = Literal["big", "little"]
OrderAlias = Literal["ABCD", "CDAB", "BADC", "DCBA", "ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"]
Emit = Literal["per_value", "per_device"]

_NAME_CHARS = set(string.ascii_letters + string.digits + "_-.")
_TOPIC_FIELDS = {"device", "register", "unit", "table"}


def _name_problem(name: str) -> str | None:
    if not name or not set(name) <= _NAME_CHARS:
        return f"{name!r}: names use letters, digits, '_', '-' and '.' (they become topic levels)"
    return None


def _template_problem(template: str, allowed: set[str]) -> str | None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        return f"{template!r} is not a valid template: {err}"
    unknown = names - allowed
    if unknown:
        return (
            f"{template!r} uses {', '.join(sorted(unknown))};"
            f" available: {', '.join('{' + a + '}' for a in sorted(allowed))}"
        )
    sample = template.format(**{k: "x" for k in names})
    problem = validate_topic(sample)
    if problem:
        return f"{template!r} does not make a valid topic: {problem}"
    return None


@dataclass(frozen=True, kw_only=True)
class RegisterConfig:
    """One value read from a device (see the module documentation for each key)."""

    address: int
    table: Table = "holding"
    type: str = "uint16"
    bit: int | None = None
    byte_order: Order | None = None
    word_order: Order | None = None
    order: OrderAlias | None = None
    scale: float = 1.0
    offset: float = 0.0
    precision: int | None = None
    unit: str | None = None
    interval: Duration | None = None
    on_change: bool = False
    deadband: float = 0.0
    deadband_percent: float = 0.0
    heartbeat: Duration | None = None
    writable: bool = False
    topic: str | None = None

    def check(self) -> Iterator[tuple[str, str]]:
        try:
            info = codec.parse_type(self.type)
        except ValueError as err:
            yield "type", str(err)
            return
        bits = self.table in ("coil", "discrete")
        if bits and info.kind != "bool":
            yield "type", f"a {self.table} holds one bit: use type bool, not {self.type}"
        if self.bit is not None:
            if bits or info.kind != "bool":
                yield "bit", "bit selects a bool inside a holding or input register"
            elif not 0 <= self.bit <= 15:
                yield "bit", "must be 0..15"
        if not 0 <= self.address <= 65536:
            yield "address", "must be 0..65535 (65536 with address_base: 1)"
        if self.order is not None and (self.byte_order or self.word_order):
            yield "order", "set either order or byte_order/word_order, not both"
        if self.order is not None and len(self.order) == 8 and info.width not in (0, 4):
            yield "order", f"{self.order} is a 64-bit order; {self.type} is not 64 bits wide"
        if self.scale == 0:
            yield "scale", "must not be 0"
        if self.deadband < 0 or self.deadband_percent < 0:
            yield "deadband", "must not be negative"
        if self.interval is not None and self.interval < 0.001:
            yield "interval", "must be at least 1ms"
        if self.writable and self.table not in ("coil", "holding"):
            yield "writable", f"a {self.table} cannot be written (only coils and holding registers)"
        if self.precision is not None and not 0 <= self.precision <= 15:
            yield "precision", "must be 0..15"
        if self.topic is not None:
            problem = _template_problem(self.topic, _TOPIC_FIELDS)
            if problem:
                yield "topic", problem


# Keys a device may set and otherwise takes from the source level.
_INHERITED = (
    "interval",
    "timeout",
    "retries",
    "address_base",
    "byte_order",
    "word_order",
    "max_gap",
    "max_registers",
    "max_bits",
    "frame_delay",
    "write_multiple",
    "emit",
    "backoff_max",
)


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """One device: its URL, unit id and registers; other keys default to the source's."""

    url: str
    unit: int = 1
    registers: dict[str, RegisterConfig]
    interval: Duration | None = None
    timeout: Duration | None = None
    retries: int | None = None
    address_base: Literal[0, 1] | None = None
    byte_order: Order | None = None
    word_order: Order | None = None
    max_gap: int | None = None
    max_registers: int | None = None
    max_bits: int | None = None
    frame_delay: Duration | None = None
    write_multiple: bool | None = None
    emit: Emit | None = None
    backoff_max: Duration | None = None


@dataclass(frozen=True, kw_only=True)
class WritebackConfig:
    """Write-back commands over MQTT, and retained device status."""

    enabled: bool = False
    url: str | None = None
    topic: str = "modbus/{device}/{register}/set"
    result_topic: str = "modbus/{device}/{register}/set/result"
    status_topic: str | None = "modbus/{device}/status"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None

    def check(self) -> Iterator[tuple[str, str]]:
        for key in ("topic", "result_topic", "status_topic"):
            template = getattr(self, key)
            if template is None:
                continue
            allowed = {"device"} if key == "status_topic" else {"device", "register"}
            problem = _template_problem(template, allowed)
            if problem:
                yield key, problem
        for part in self.topic.split("/"):
            if "{" in part and part not in ("{device}", "{register}"):
                yield "topic", "{device} and {register} must each be a whole topic level"
        if "{device}" not in self.topic or "{register}" not in self.topic:
            yield "topic", "the command topic needs both {device} and {register}"
        if self.url is not None and not self.url.startswith(("mqtt://", "mqtts://")):
            yield "url", f"{self.url!r} must be mqtt://host:port or mqtts://host:port"


@dataclass(frozen=True, kw_only=True)
class ModbusSourceConfig(SourceConfig):
    """Keys of the `modbus` source: devices, or one device written flat."""

    url: str | None = None
    unit: int = 1
    registers: dict[str, RegisterConfig] = field(default_factory=dict)
    devices: dict[str, DeviceConfig] = field(default_factory=dict)
    interval: Duration = 1.0
    timeout: Duration = 1.0
    retries: int = 1
    address_base: Literal[0, 1] = 0
    byte_order: Order = "big"
    word_order: Order = "big"
    max_gap: int = 16
    max_registers: int = 125
    max_bits: int = 2000
    frame_delay: Duration | None = None
    write_multiple: bool = False
    emit: Emit = "per_value"
    backoff_max: Duration = 30.0
    topic: str = "modbus/{device}/{register}"
    device_topic: str = "modbus/{device}"
    writeback: WritebackConfig = field(default_factory=WritebackConfig)

    def device_configs(self, own_name: str) -> dict[str, DeviceConfig]:
        """Every device, the flat form included (named after the source)."""
        if self.url is None:
            return dict(self.devices)
        return {own_name: DeviceConfig(url=self.url, unit=self.unit, registers=self.registers)}

    def setting(self, device: DeviceConfig, key: str) -> Any:
        value = getattr(device, key)
        return getattr(self, key) if value is None else value

    def check(self) -> Iterator[tuple[str, str]]:
        if self.url is None and not self.devices:
            yield (
                "",
                "give either devices: {name: {url: ..., registers: ...}} or url: and registers:",
            )
        if self.url is not None and self.devices:
            yield "url", "give either url: (one device) or devices:, not both"
        if self.url is None and self.registers:
            yield "registers", "registers at the top level need url: (or move them under devices:)"
        if self.url is not None and not self.registers:
            yield "registers", "list at least one register"
        for key, template, allowed in (
            ("topic", self.topic, _TOPIC_FIELDS),
            ("device_topic", self.device_topic, {"device", "unit"}),
        ):
            problem = _template_problem(template, allowed)
            if problem:
                yield key, problem
        yield from self._check_settings("", self)
        ports: dict[tuple[str, str, int], tuple[str, LinkSpec]] = {}
        units: dict[tuple[str, str, int], dict[int, str]] = {}
        devices = self.device_configs("source")
        for name, dev in devices.items():
            where = "" if self.url is not None else f"devices.{name}."
            problem = _name_problem(name)
            if problem and self.url is None:
                yield f"devices.{name}", problem
            try:
                spec = parse_link_url(dev.url)
            except ValueError as err:
                yield f"{where}url", str(err)
                continue
            if not 0 <= dev.unit <= 255 or (spec.serial and dev.unit > 247):
                yield f"{where}unit", "unit id must be 0..255 (1..247 on a serial line)"
            if dev.url is not self.url:
                yield from self._check_settings(where, dev)
            other = ports.get(spec.key)
            if other is not None and other[1] != spec:
                yield (
                    f"{where}url",
                    (
                        f"device {other[0]!r} uses the same port with other settings"
                        f" ({other[1].describe()}); devices sharing a port need the same settings"
                    ),
                )
            ports.setdefault(spec.key, (name, spec))
            if not dev.registers:
                yield f"{where}registers", "list at least one register"
            base = self.setting(dev, "address_base")
            for reg_name, reg in dev.registers.items():
                problem = _name_problem(reg_name)
                if problem:
                    yield f"{where}registers.{reg_name}", problem
                if reg.address < base:
                    problem = f"{reg.address} is below address_base {base}"
                    yield f"{where}registers.{reg_name}.address", problem
                try:
                    width = max(codec.parse_type(reg.type).width, 1)
                except ValueError:
                    continue
                if reg.address - base + width > 65536:
                    yield f"{where}registers.{reg_name}.address", "runs past register 65535"
                if width > self.setting(dev, "max_registers"):
                    problem = f"{reg.type} takes {width} registers, more than max_registers"
                    yield f"{where}registers.{reg_name}.type", problem
            taken = units.setdefault(spec.key, {})
            if dev.unit in taken:
                problem = f"unit {dev.unit} on this port is also device {taken[dev.unit]!r}"
                yield f"{where}unit", problem
            taken.setdefault(dev.unit, name)

    def _check_settings(self, where: str, obj: Any) -> Iterator[tuple[str, str]]:
        if obj.interval is not None and obj.interval < 0.001:
            yield f"{where}interval", "must be at least 1ms"
        if obj.timeout is not None and not 0.001 <= obj.timeout <= 60:
            yield f"{where}timeout", "must be between 1ms and 60s"
        if obj.retries is not None and not 0 <= obj.retries <= 10:
            yield f"{where}retries", "must be 0..10"
        if obj.max_gap is not None and not 0 <= obj.max_gap <= 125:
            yield f"{where}max_gap", "must be 0..125"
        if obj.max_registers is not None and not 1 <= obj.max_registers <= 125:
            yield f"{where}max_registers", "must be 1..125 (the Modbus limit)"
        if obj.max_bits is not None and not 1 <= obj.max_bits <= 2000:
            yield f"{where}max_bits", "must be 1..2000 (the Modbus limit)"
        if obj.backoff_max is not None and obj.backoff_max < 0.01:
            yield f"{where}backoff_max", "must be at least 10ms"


_pack_cache: dict[int, Callable[..., bytes]] = {}


def _pack(regs: list[int]) -> bytes:
    n = len(regs)
    pack = _pack_cache.get(n)
    if pack is None:
        pack = _pack_cache[n] = struct.Struct(f">{n}H").pack
    return pack(*regs)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


async def _quiet_until(deadline: float) -> None:
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


_NEVER = float("inf")
_UNSET: Any = object()


class _Value:
    """One configured register at run time: how to decode it and what was last sent."""

    __slots__ = (
        "address",
        "attrs",
        "bit",
        "byte_order",
        "config",
        "deadband",
        "decode",
        "device",
        "heartbeat",
        "info",
        "json_name",
        "last",
        "last_sent",
        "name",
        "percent",
        "protocol_address",
        "rbe",
        "table",
        "topic",
        "unit_json",
        "width",
        "word_order",
    )

    def __init__(self, device: _Device, name: str, cfg: RegisterConfig, source_cfg: Any) -> None:
        self.device = device
        self.name = name
        self.config = cfg
        self.table = cfg.table
        self.info = codec.parse_type(cfg.type)
        self.bit = cfg.bit
        self.width = max(self.info.width, 1)
        if cfg.order is not None:
            self.byte_order, self.word_order = codec.ORDER_ALIASES[cfg.order]
        else:
            self.byte_order = cfg.byte_order or device.byte_order
            self.word_order = cfg.word_order or device.word_order
        self.address = cfg.address
        self.protocol_address = cfg.address - device.address_base
        self.decode = self.decoder_at(0)
        fmt = {"device": device.name, "register": name, "unit": device.unit, "table": cfg.table}
        self.topic = (cfg.topic or source_cfg.topic).format(**fmt)
        self.attrs = {
            "device": device.name,
            "register": name,
            "unit_id": str(device.unit),
            "table": cfg.table,
            "address": str(cfg.address),
        }
        self.unit_json = json.dumps(cfg.unit, ensure_ascii=False)
        self.json_name = json.dumps(name, ensure_ascii=False)
        self.rbe = cfg.on_change or cfg.deadband > 0 or cfg.deadband_percent > 0
        self.deadband = cfg.deadband
        self.percent = cfg.deadband_percent / 100.0
        self.heartbeat = cfg.heartbeat if cfg.heartbeat is not None else _NEVER
        self.last: Any = _UNSET
        self.last_sent = 0.0

    def changed(self, value: Any, now: float) -> bool:
        """Report-by-exception: True when `value` is to be sent (and remembered as sent)."""
        last = self.last
        if last is not _UNSET and now - self.last_sent < self.heartbeat:
            if value == last:
                return False
            if (
                isinstance(value, int | float)
                and isinstance(last, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and math.isfinite(last)
            ):
                delta = abs(value - last)
                if delta <= self.deadband or delta <= self.percent * abs(last):
                    return False
        self.last = value
        self.last_sent = now
        return True

    def decoder_at(self, offset: int) -> Callable[[bytes, Any], Any]:
        """The decoder for this value at `offset` registers (bits) into a block."""
        cfg = self.config
        return codec.make_decoder(
            self.info,
            offset,
            bits=self.table in ("coil", "discrete"),
            bit=cfg.bit,
            byte_order=self.byte_order,
            word_order=self.word_order,
            scale=cfg.scale,
            add=cfg.offset,
            precision=cfg.precision,
        )


class _Request:
    """One planned read: a block of one table, and the values decoded from it."""

    __slots__ = ("count", "gapped", "items", "refused", "runs", "start", "table")

    def __init__(self, table: Table, block: codec.Block, values: list[_Value]) -> None:
        self.table = table
        self.start = block.start
        self.count = block.length
        self.runs = block.runs
        self.gapped = len(block.runs) > 1
        self.refused = False
        # (value, offset in the block, decoder) for each value in the block
        self.items = [
            (v, v.protocol_address - block.start, v.decoder_at(v.protocol_address - block.start))
            for v in values
        ]


class _Group:
    """The requests of one device polled at one interval."""

    __slots__ = ("device", "due", "interval", "requests")

    def __init__(self, device: _Device, interval: float, requests: list[_Request]) -> None:
        self.device = device
        self.interval = interval
        self.requests = requests
        self.due = 0.0

    def start(self, now: float) -> None:
        """A poll begins at `now`: keep to the interval grid, or re-anchor it when a whole
        interval was missed (device backoff, a busy line), so missed polls are skipped
        rather than run back to back."""
        if now - self.due >= self.interval:
            self.due = now
        self.due += self.interval


class _Device:
    """A device at run time: settings, planned groups and online state."""

    def __init__(self, name: str, cfg: DeviceConfig, source_cfg: ModbusSourceConfig) -> None:
        self.name = name
        self.unit = cfg.unit

        def get(key: str) -> Any:
            return source_cfg.setting(cfg, key)

        self.interval = float(get("interval"))
        self.timeout = float(get("timeout"))
        self.retries = int(get("retries"))
        self.address_base = int(get("address_base"))
        self.byte_order = get("byte_order")
        self.word_order = get("word_order")
        self.write_multiple = bool(get("write_multiple"))
        self.emit = get("emit")
        self.backoff_max = float(get("backoff_max"))
        delay = get("frame_delay")
        self.spec = parse_link_url(cfg.url)
        if delay is None:
            delay = self.spec.silent_interval() if self.spec.serial else 0.0
        self.frame_delay = float(delay)
        self.values = {n: _Value(self, n, r, source_cfg) for n, r in cfg.registers.items()}
        max_gap = int(get("max_gap"))
        limits = {"reg": int(get("max_registers")), "bit": int(get("max_bits"))}
        by_key: dict[tuple[float, str], list[_Value]] = {}
        for v in self.values.values():
            interval = float(v.config.interval) if v.config.interval else self.interval
            by_key.setdefault((interval, v.table), []).append(v)
        groups: dict[float, list[_Request]] = {}
        for (interval, table), vals in sorted(by_key.items()):
            bits = table in ("coil", "discrete")
            spans = [(v.protocol_address, v.width) for v in vals]
            blocks = codec.plan(
                spans, limits["bit" if bits else "reg"], max_gap * 16 if bits else max_gap
            )
            reqs = groups.setdefault(interval, [])
            for block in blocks:
                reqs.append(_Request(table, block, [vals[i] for i in block.items]))  # type: ignore[arg-type]
        self.groups = [_Group(self, interval, reqs) for interval, reqs in sorted(groups.items())]
        self.device_topic = source_cfg.device_topic.format(device=name, unit=cfg.unit)
        self.device_attrs = {"device": name, "unit_id": str(cfg.unit)}
        self.json_name = json.dumps(name, ensure_ascii=False)
        self.min_interval = min(g.interval for g in self.groups) if self.groups else self.interval
        # state
        self.online: bool | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.status: dict[str, Any] = {
            "url": self.spec.describe(),
            "unit": self.unit,
            "state": "unknown",
            "last_error": None,
            "last_error_at": None,
            "previous_error": None,
            "last_poll": None,
            "last_ok": None,
            "requests": 0,
            "errors": 0,
            "values": 0,
        }


class _Write:
    """A write-back command waiting for its port."""

    __slots__ = ("device", "payload", "register", "reply")

    def __init__(
        self,
        device: _Device,
        register: _Value,
        payload: bytes,
        reply: Callable[[dict[str, Any]], None],
    ) -> None:
        self.device = device
        self.register = register
        self.payload = payload
        self.reply = reply


class _Bus:
    """One connection (TCP endpoint or serial port) and the devices behind it."""

    def __init__(self, spec: LinkSpec, frame_delay: float, name: str) -> None:
        self.spec = spec
        self.link = Link(spec, name)
        self.lock = asyncio.Lock()
        self.frame_delay = frame_delay
        self.last_io = 0.0
        self.devices: list[_Device] = []
        self.groups: list[_Group] = []
        self.writes: deque[_Write] = deque()
        self.job: asyncio.Task[list[Message]] | None = None

    def next_due(self) -> float:
        if self.writes:
            return 0.0
        best = _NEVER
        for g in self.groups:
            due = max(g.due, g.device.retry_at)
            if due < best:
                best = due
        return best


class ModbusSource(Source):
    """Polls Modbus devices on their own schedules; see the module documentation."""

    Config = ModbusSourceConfig
    mode = "stream"

    def __init__(self, config: ModbusSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: ModbusSourceConfig = config
        self._devices = {
            name: _Device(name, dev, config)
            for name, dev in config.device_configs(ctx.name).items()
        }
        self._buses: dict[tuple[str, str, int], _Bus] = {}
        for dev in self._devices.values():
            bus = self._buses.get(dev.spec.key)
            if bus is None:
                bus = self._buses[dev.spec.key] = _Bus(dev.spec, dev.frame_delay, ctx.name)
            bus.frame_delay = max(bus.frame_delay, dev.frame_delay)
            bus.devices.append(dev)
            bus.groups.extend(dev.groups)
        self._wake = asyncio.Event()
        self._channel: Any = None
        self._channel_retry_at = _NEVER
        self._channel_failures = 0
        self._channel_job: asyncio.Task[None] | None = None
        self._closed = False
        self.requests = 0
        ctx.status["devices"] = {name: dev.status for name, dev in self._devices.items()}

    # ---- lifecycle ------------------------------------------------------

    async def connect(self) -> None:
        """Open every port (a device that is not there is marked offline, not fatal)."""
        self._closed = False
        clock = self.ctx.clock
        now = clock.monotonic()
        for bus in self._buses.values():
            for g in bus.groups:
                g.due = now
        await asyncio.gather(*(self._open(bus) for bus in self._buses.values()))
        wb = self.config.writeback
        if wb.enabled:
            from gateway.sources._modbus_mqtt import SideChannel

            # on the gateway's broker, what write-back leaves unset comes from `mqtt:`
            shared = wb.url is None
            prefix = self.ctx.mqtt_client_prefix or f"edge-stream-{self.ctx.gateway_id}"

            self._channel = SideChannel(
                self.ctx,
                url=wb.url or self.ctx.mqtt_url,
                client_id=wb.client_id or f"{prefix}-{self.ctx.name}-wb",
                set_topic=wb.topic,
                result_topic=wb.result_topic,
                status_topic=wb.status_topic,
                username=wb.username or (self.ctx.mqtt_username if shared else None),
                password=wb.password or (self.ctx.mqtt_password if shared else None),
                submit=self._submit_write,
            )
            self._channel_failures = 0
            await self._connect_channel()

    async def _open(self, bus: _Bus) -> None:
        timeout = max(d.timeout for d in bus.devices)
        try:
            await bus.link.connect(max(timeout, 1.0))
        except LinkError as err:
            now = self.ctx.clock.monotonic()
            for dev in bus.devices:
                self._device_failed(dev, err, now)

    async def _connect_channel(self) -> None:
        channel = self._channel
        try:
            await channel.connect()
        except RetryableError as err:
            self._channel_failures += 1
            delay = min(30.0, 2.0 ** min(self._channel_failures - 1, 5))
            self._channel_retry_at = self.ctx.clock.monotonic() + delay
            self.ctx.status["writeback"] = f"disconnected: {err}"
            self.ctx.log.warning("%s; write-back retried in %.0f s", err, delay)
            return
        self._channel_failures = 0
        self._channel_retry_at = _NEVER
        self.ctx.status["writeback"] = "connected"
        for dev in self._devices.values():
            channel.publish_status(dev.name, self._public_state(dev))

    async def close(self) -> None:
        self._closed = True
        jobs: list[asyncio.Task[Any]] = [b.job for b in self._buses.values() if b.job is not None]
        if self._channel_job is not None:
            jobs.append(self._channel_job)
        for job in jobs:
            job.cancel()
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(result, Exception):
                self.ctx.log.debug("a job ended with %r while closing", result)
        for bus in self._buses.values():
            bus.job = None
            bus.link.close()
            while bus.writes:
                bus.writes.popleft().reply({"ok": False, "error": "source is closing"})
        self._channel_job = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # ---- the scheduler --------------------------------------------------

    async def read(self) -> list[Message]:
        """Poll whatever is due next (ports in parallel) and return its FlowFiles."""
        clock = self.ctx.clock
        while True:
            now = clock.monotonic()
            out: list[Message] = []
            next_at = _NEVER
            for bus in self._buses.values():
                job = bus.job
                if job is not None and job.done():
                    bus.job = None
                    out.extend(job.result())  # an unexpected error propagates to the engine
                if bus.job is None:
                    due = bus.next_due()
                    if due <= now:
                        bus.job = asyncio.create_task(self._run_bus(bus, now))
                        bus.job.add_done_callback(self._job_done)
                    elif due < next_at:
                        next_at = due
            self._check_channel(now)
            if self._channel_retry_at < next_at:
                next_at = self._channel_retry_at
            if out:
                return out
            self._wake.clear()
            if any(b.job is not None and b.job.done() for b in self._buses.values()):
                continue
            await self._wait(next_at - now if next_at != _NEVER else None)

    def _job_done(self, _task: asyncio.Task[Any]) -> None:
        self._wake.set()

    async def _wait(self, delay: float | None) -> None:
        """Sleep on the injected clock until `delay` passes or something wakes us."""
        waiter = asyncio.ensure_future(self._wake.wait())
        if delay is None:
            await waiter
            return
        sleeper = asyncio.ensure_future(self.ctx.clock.sleep(max(delay, 0.0)))
        try:
            await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()

    def _check_channel(self, now: float) -> None:
        channel = self._channel
        if channel is None:
            return
        job = self._channel_job
        if job is not None:
            if not job.done():
                return
            self._channel_job = None
            job.result()
        if self._channel_retry_at == _NEVER and not channel.connected:
            self.ctx.log.warning("lost the write-back MQTT connection; reconnecting")
            self.ctx.status["writeback"] = "disconnected"
            self._channel_retry_at = now
        if self._channel_retry_at <= now:
            self._channel_retry_at = _NEVER
            self._channel_job = asyncio.create_task(self._connect_channel())
            self._channel_job.add_done_callback(self._job_done)

    async def _run_bus(self, bus: _Bus, now: float) -> list[Message]:
        """Serve pending writes, then poll every group of this port that is due at `now`."""
        out: list[Message] = []
        await self._serve_writes(bus)
        for group in bus.groups:
            dev = group.device
            if group.due > now or dev.retry_at > now:
                continue
            group.start(self.ctx.clock.monotonic())
            await self._poll_group(bus, group, out)
        return out

    async def _serve_writes(self, bus: _Bus) -> None:
        while bus.writes:
            await self._write(bus, bus.writes.popleft())

    async def _call(self, bus: _Bus, dev: _Device, op: Callable[[], Awaitable[Any]]) -> Any:
        """One request on the port: exclusive, after the inter-frame gap, retried at once."""
        attempts = dev.retries + 1
        for attempt in range(attempts):
            async with bus.lock:
                if bus.frame_delay:
                    await _quiet_until(bus.last_io + bus.frame_delay)
                self.requests += 1
                dev.status["requests"] += 1
                try:
                    if not bus.link.connected:
                        await bus.link.connect(max(dev.timeout, 1.0))
                    return await op()
                except LinkError:
                    if attempt + 1 == attempts:
                        raise
                finally:
                    if bus.frame_delay:
                        bus.last_io = time.monotonic()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _poll_group(self, bus: _Bus, group: _Group, out: list[Message]) -> None:
        dev = group.device
        clock = self.ctx.clock
        link = bus.link
        per_device: list[str] | None = [] if dev.emit == "per_device" else None
        created, ts = 0, ""
        for req in list(group.requests):
            if bus.writes:
                await self._serve_writes(bus)
            try:
                values = await self._call(
                    bus,
                    dev,
                    partial(link.read, req.table, req.start, req.count, dev.unit, dev.timeout),
                )
            except LinkError as err:
                self._device_failed(dev, err, clock.monotonic())
                break
            except DeviceException as err:
                if err.device_trouble:
                    self._device_failed(dev, err, clock.monotonic())
                    break
                self._request_refused(group, req, err)
                continue
            now = clock.monotonic()
            created = clock.now_ns()
            ts = _iso(created)
            self._device_ok(dev, ts)
            self._emit(dev, req, values, now, created, ts, out, per_device)
        if per_device:
            content = (
                f'{{"device":{dev.json_name},"ts":"{ts}","values":{{{",".join(per_device)}}}}}'
            ).encode()
            out.append(
                Message(FlowFile.create(dev.device_topic, content, dev.device_attrs, created))
            )

    def _emit(
        self,
        dev: _Device,
        req: _Request,
        values: list[Any],
        now: float,
        created: int,
        ts: str,
        out: list[Message],
        per_device: list[str] | None,
    ) -> None:
        bits = req.table in ("coil", "discrete")
        buf = b"" if bits else _pack(values)
        scalar = codec.json_scalar
        create = FlowFile.create
        sent = 0
        for v, off, decode in req.items:
            value = decode(buf, values)
            if v.rbe and not v.changed(value, now):
                continue
            sent += 1
            if per_device is not None:
                per_device.append(f"{v.json_name}:{scalar(value)}")
                continue
            if bits:
                raw = "true" if values[off] else "false"
            elif v.width == 1:
                raw = str(values[off])
            else:
                raw = ",".join(map(str, values[off : off + v.width]))
            content = (
                f'{{"value":{scalar(value)},"raw":[{raw}],"unit":{v.unit_json},"ts":"{ts}"}}'
            ).encode()
            out.append(Message(create(v.topic, content, v.attrs, created)))
        dev.status["values"] += sent

    # ---- device state ---------------------------------------------------

    def _public_state(self, dev: _Device) -> dict[str, Any]:
        s = dev.status
        return {
            "state": s["state"],
            "last_error": s["last_error"],
            "last_ok": s["last_ok"],
            "unit": dev.unit,
        }

    def _device_ok(self, dev: _Device, ts: str) -> None:
        status = dev.status
        status["last_poll"] = status["last_ok"] = ts
        if dev.online:
            return
        was_offline = dev.online is False
        dev.online = True
        dev.failures = 0
        dev.retry_at = 0.0
        status["state"] = "online"
        if was_offline:
            # What kept it offline is over; the page keeps it as history, not as a problem.
            status["previous_error"], status["last_error"] = status["last_error"], None
            self.ctx.log.warning("device %s is answering again", dev.name)
        else:
            self.ctx.log.info(
                "device %s (%s unit %d) is online", dev.name, dev.spec.describe(), dev.unit
            )
        if self._channel is not None:
            self._channel.publish_status(dev.name, self._public_state(dev))

    def _device_failed(self, dev: _Device, err: Exception, now: float) -> None:
        dev.failures += 1
        dev.status["errors"] += 1
        dev.status["last_error"] = str(err)
        dev.status["last_poll"] = dev.status["last_error_at"] = _iso(self.ctx.clock.now_ns())
        delay = min(dev.backoff_max, dev.min_interval * 2.0 ** min(dev.failures - 1, 20))
        dev.retry_at = now + delay
        if dev.online is False:
            self.ctx.log.debug("device %s still not answering: %s", dev.name, err)
            return
        dev.online = False
        dev.status["state"] = "offline"
        for v in dev.values.values():
            v.last = _UNSET  # on return, every value is sent again
        self.ctx.log.error(
            "device %s (%s unit %d) is offline: %s; retrying with backoff up to %.0f s",
            dev.name,
            dev.spec.describe(),
            dev.unit,
            err,
            dev.backoff_max,
        )
        if self._channel is not None:
            self._channel.publish_status(dev.name, self._public_state(dev))

    def _request_refused(self, group: _Group, req: _Request, err: DeviceException) -> None:
        dev = group.device
        dev.status["errors"] += 1
        names = ", ".join(v.name for v, _, _ in req.items)
        if req.gapped and err.code == 2:
            # The device refuses the filler between values: read the runs separately.
            i = group.requests.index(req)
            spans = [(v.protocol_address, v.width) for v, _, _ in req.items]
            block = codec.Block(req.start, req.count, tuple(range(len(spans))), req.runs)
            values = [v for v, _, _ in req.items]
            parts = [
                _Request(req.table, b, [values[j] for j in b.items])
                for b in codec.split_runs(spans, block)
            ]
            group.requests[i : i + 1] = parts
            self.ctx.log.warning(
                "device %s refused a %s read with holes (%s); reading %d parts instead",
                dev.name,
                req.table,
                err,
                len(parts),
            )
            return
        dev.status["last_error"] = f"{names}: {err}"
        dev.status["last_error_at"] = _iso(self.ctx.clock.now_ns())
        if not req.refused:
            req.refused = True
            self.ctx.log.error(
                "device %s refuses %s %d+%d (%s): %s; check the register map",
                dev.name,
                req.table,
                req.start,
                req.count,
                names,
                err,
            )

    # ---- write-back -----------------------------------------------------

    def _submit_write(
        self, device: str, register: str, payload: bytes, reply: Callable[[dict[str, Any]], None]
    ) -> str | None:
        dev = self._devices.get(device)
        if dev is None:
            return f"no device named {device!r}"
        value = dev.values.get(register)
        if value is None:
            return f"device {device!r} has no register named {register!r}"
        if not value.config.writable:
            return f"{device}/{register} is not writable (set writable: true in the config)"
        if self._closed:
            return "source is closing"
        bus = self._buses[dev.spec.key]
        bus.writes.append(_Write(dev, value, payload, reply))
        self._wake.set()
        return None

    async def _write(self, bus: _Bus, cmd: _Write) -> None:
        dev, v = cmd.device, cmd.register
        result: dict[str, Any] = {}
        try:
            requested, ident = _parse_command(cmd.payload)
            if ident is not None:
                result["id"] = ident
            result["requested"] = requested
            result.update(await self._write_value(bus, dev, v, requested))
        except ValueError as err:
            result.update(ok=False, error=str(err))
        except (LinkError, DeviceException) as err:
            result.update(ok=False, error=str(err))
        result["ts"] = _iso(self.ctx.clock.now_ns())
        if result["ok"]:
            self.ctx.log.info("wrote %r to %s/%s", result.get("value"), dev.name, v.name)
        else:
            self.ctx.log.warning("write to %s/%s failed: %s", dev.name, v.name, result["error"])
        cmd.reply(result)

    async def _write_value(
        self, bus: _Bus, dev: _Device, v: _Value, requested: Any
    ) -> dict[str, Any]:
        link, addr, unit, timeout = bus.link, v.protocol_address, dev.unit, dev.timeout
        multiple = dev.write_multiple
        if v.table == "coil" or v.bit is not None or v.info.kind == "bool":
            want = _as_bool(requested)
            if v.table == "coil":
                await self._call(
                    bus, dev, lambda: link.write_coil(addr, want, unit, timeout, multiple)
                )
                back = await self._call(bus, dev, lambda: link.read("coil", addr, 1, unit, timeout))
                ok = bool(back[0]) == want
                return _outcome(ok, bool(back[0]), [bool(back[0])], want)
            if v.bit is None:
                regs = [1 if want else 0]
            else:
                # Read-modify-write under the port lock, so no poll or write of ours
                # interleaves; the device itself may still change other bits meanwhile.
                # Read-modify-write: this port's job is the only one talking to it, so
                # no poll or write of ours comes in between (the device itself may).
                current = await self._call(
                    bus, dev, lambda: link.read("holding", addr, 1, unit, timeout)
                )
                mask = 1 << v.bit
                regs = [(current[0] | mask) if want else (current[0] & ~mask & 0xFFFF)]
        else:
            regs = codec.encode(
                v.info,
                requested,
                byte_order=v.byte_order,
                word_order=v.word_order,
                scale=v.config.scale,
                add=v.config.offset,
            )
        await self._call(
            bus, dev, lambda: link.write_registers(addr, regs, unit, timeout, multiple)
        )
        back = await self._call(
            bus, dev, lambda: link.read("holding", addr, len(regs), unit, timeout)
        )
        value = v.decode(_pack(back), back)
        if v.bit is not None:
            ok = bool(back[0] & (1 << v.bit)) == _as_bool(requested)
        else:
            ok = list(back) == regs
        return _outcome(ok, value, list(back), regs)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "1", "0"):
        return value.lower() in ("true", "on", "1")
    raise ValueError(f"expected true or false, got {value!r}")


def _parse_command(payload: bytes) -> tuple[Any, Any]:
    """(value, id) from a JSON value or {"value": ..., "id": ...}; bare text is a string."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        try:
            return payload.decode("utf-8"), None
        except UnicodeDecodeError as err:
            raise ValueError("payload is neither JSON nor UTF-8 text") from err
    if isinstance(data, dict):
        if "value" not in data:
            raise ValueError('a JSON object needs a "value" key')
        return data["value"], data.get("id")
    return data, None


def _outcome(ok: bool, value: Any, raw: list[Any], expected: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": ok, "value": value, "raw": raw}
    if not ok:
        out["error"] = f"read back {raw}, expected {expected}"
    if isinstance(value, float) and not math.isfinite(value):
        out["value"] = None
    return out
