"""The `modbus` source's config: the source, its devices, their registers, write-back.

Strict, frozen dataclasses read by `gateway.config.schema`; `check()` reports
every problem with the key it belongs to. The keys are documented for users in
the package docstring (`gateway.sources.modbus`).
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.config.model import SourceConfig
from gateway.config.schema import Duration
from gateway.core.topics import validate_topic
from gateway.sources.modbus import codec
from gateway.sources.modbus.link import LinkSpec, parse_link_url

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
