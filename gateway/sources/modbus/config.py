"""The `modbus` source's config: the source, its devices, their registers, write-back.

Strict, frozen dataclasses read by `gateway.config.schema`; `check()` reports
every problem with the key it belongs to. The keys are documented for users in
the package docstring (`gateway.sources.modbus`).
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from gateway.config.model import RETRY_MAX, Claim, SourceConfig, serial_claim
from gateway.config.schema import Doc, Duration, Range
from gateway.core.schedule import INTERVAL_MAX
from gateway.core.topics import template_fields, validate_topic
from gateway.mqtt.urls import url_problem
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
        names = set(template_fields(template))
    except ValueError as err:
        return str(err)
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

    address: Annotated[
        int,
        Doc("The register (or coil) address, counted from `address_base`.", example=0),
        Range(0, 65536, "must be 0..65535 (65536 with address_base: 1)"),
    ]
    table: Annotated[
        Table, Doc("Where the value is: `coil`, `discrete` (input), `holding` or `input` register.")
    ] = "holding"
    type: Annotated[
        str | None,
        Doc(
            "bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, or"
            " string(N) of N bytes (default: bool in a coil or discrete input or with `bit`,"
            " uint16 in a register).",
            example="int16",
        ),
    ] = None
    bit: Annotated[
        int | None, Doc("A bool inside a holding or input register: its bit, 0 to 15.")
    ] = None
    byte_order: Annotated[
        Order | None, Doc("The order of the two bytes in each register (default: the device's).")
    ] = None
    word_order: Annotated[
        Order | None, Doc("The order of the registers of a wider value (default: the device's).")
    ] = None
    order: Annotated[
        OrderAlias | None,
        Doc(
            "Both orders in one: ABCD, CDAB, BADC, DCBA, or for 64 bits ABCDEFGH,"
            " GHEFCDAB, BADCFEHG, HGFEDCBA; not with byte_order or word_order."
        ),
    ] = None
    scale: Annotated[
        float,
        Doc(
            "value = raw * scale + offset; an integer with a decimal scale is rounded to"
            " the scale's decimals.",
            example=0.1,
        ),
    ] = 1.0
    offset: Annotated[float, Doc("Added after `scale`.")] = 0.0
    precision: Annotated[
        int | None,
        Doc(
            "Decimals to round the value to (0: a whole number, written without `.0` up to"
            " 2**53, as a float beyond); an integer type with a whole `scale` and `offset`"
            " stays exact, whatever it says."
        ),
        Range(0, 15, "must be 0..15"),
    ] = None
    unit: Annotated[str | None, Doc("The unit written beside the value, e.g. `°C`.")] = None
    interval: Annotated[
        Duration | None,
        Doc("This value's own poll rate (default: the device's interval)."),
        Range(0.001, INTERVAL_MAX, "must be between 1ms and 100 years"),
    ] = None
    on_change: Annotated[bool, Doc("Send a value only when it differs from the last one sent.")] = (
        False
    )
    deadband: Annotated[
        float,
        Doc(
            "Send a number only when it moved more than this since the last one sent"
            " (implies on_change)."
        ),
    ] = 0.0
    deadband_percent: Annotated[float, Doc("The same in percent of the last value sent.")] = 0.0
    heartbeat: Annotated[
        Duration | None,
        Doc(
            "Send an unchanged value again after this long (with `on_change`, `deadband`"
            " or `deadband_percent`)."
        ),
        # 0 would send every poll: on_change and the deadbands silently undone.
        Range(0, None, "must be more than 0", above=True),
    ] = None
    writable: Annotated[
        bool, Doc("Accept write-back commands for this value (coils and holding registers only).")
    ] = False
    topic: Annotated[
        str | None,
        Doc(
            "This value's topic with `emit: per_value` (default: the source's `topic`):"
            " `{device}`, `{register}`, `{unit}`, `{table}`."
        ),
    ] = None

    @property
    def data_type(self) -> str:
        """The type written, or the table's own: a coil or discrete input holds one bit,
        and so does a register's `bit` (`{address: 30, bit: 3}` was refused, saying that
        bit selects a bool inside a holding register, where it was)."""
        if self.type is not None:
            return self.type
        bits = self.table in ("coil", "discrete") or self.bit is not None
        return "bool" if bits else "uint16"

    def check(self) -> Iterator[tuple[str, str]]:
        try:
            info = codec.parse_type(self.data_type)
        except ValueError as err:
            yield "type", str(err)
            return
        bits = self.table in ("coil", "discrete")
        if bits and info.kind != "bool":
            yield "type", f"a {self.table} holds one bit: use type bool, not {self.data_type}"
        if self.bit is not None:
            if bits:
                yield "bit", f"a {self.table} is one bit: bit is for a holding or input register"
            elif info.kind != "bool":
                yield "bit", f"bit reads a bool (type bool, or no type), not {self.data_type}"
            elif not 0 <= self.bit <= 15:
                yield "bit", "must be 0..15"
        if self.order is not None and (self.byte_order or self.word_order):
            yield "order", "set either order or byte_order/word_order, not both"
        if self.order is not None and len(self.order) == 8 and info.width not in (0, 4):
            yield "order", f"{self.order} is a 64-bit order; {self.data_type} is not 64 bits wide"
        if self.order in ("CDAB", "DCBA") and info.width == 4 and info.kind in ("int", "float"):
            # A word-swapped order on a 64-bit value: CDAB meant GHEFCDAB (every register
            # reversed), not the CDABGHEF some devices use (not read here): say so, rather
            # than guess.
            # ABCD and BADC read one way only (ABCDEFGH, BADCFEHG), and a string's order
            # is per register, whatever its width.
            yield (
                "order",
                f"{self.order} is a 32-bit order and {self.data_type} is 64 bits wide: give the"
                " 8-letter order (GHEFCDAB or HGFEDCBA: every register reversed)",
            )
        if info.kind in ("bool", "string"):
            # taken and ignored: a bool or a text is sent as read
            for key, changed in (
                ("scale", self.scale != 1.0),
                ("offset", self.offset != 0.0),
                ("precision", self.precision is not None),
            ):
                if changed:
                    yield key, f"applies to numbers; {self.data_type} is sent as read"
        if self.scale == 0:
            yield "scale", "must not be 0"
        if self.deadband < 0 or self.deadband_percent < 0:
            yield "deadband", "must not be negative"
        rbe = self.on_change or self.deadband > 0 or self.deadband_percent > 0
        if self.heartbeat is not None and not rbe:
            # taken and ignored: without them every value is sent at every poll
            yield (
                "heartbeat",
                "sends an unchanged value again, with on_change, deadband or"
                " deadband_percent; without them every value is sent at every poll",
            )
        if self.writable and self.table not in ("coil", "holding"):
            yield "writable", f"a {self.table} cannot be written (only coils and holding registers)"
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

    url: Annotated[
        str,
        Doc(
            "`tcp://host:502`, `udp://host:502`, `rtu+tcp://host:port` or"
            " `rtu:///dev/ttyUSB0?baudrate=9600&parity=N&stopbits=1&bytesize=8`; devices"
            " with the same URL share one connection."
        ),
    ]
    unit: Annotated[
        int, Doc("The Modbus unit (slave) id, 0 to 255 (1 to 247 on a serial line).")
    ] = 1
    registers: Annotated[
        dict[str, RegisterConfig],
        Doc("The values to read, by the name that becomes their topic level."),
    ]
    interval: Annotated[
        Duration | None,
        Doc("How often the registers are read. Default: the source's."),
        Range(0.001, INTERVAL_MAX, "must be between 1ms and 100 years"),
    ] = None
    timeout: Annotated[
        Duration | None,
        Doc("How long one request may wait for its answer. Default: the source's."),
        Range(0.001, 60, "must be between 1ms and 60s"),
    ] = None
    retries: Annotated[
        int | None,
        Doc(
            "Requests sent again at once before the device counts as failing. Default:"
            " the source's."
        ),
        Range(0, 10, "must be 0..10"),
    ] = None
    address_base: Annotated[
        Literal[0, 1] | None,
        Doc("0, or 1 when the device's manual counts addresses from 1. Default: the source's."),
    ] = None
    byte_order: Annotated[
        Order | None, Doc("The order of the two bytes in each register. Default: the source's.")
    ] = None
    word_order: Annotated[
        Order | None,
        Doc("The order of the registers of a value wider than one. Default: the source's."),
    ] = None
    max_gap: Annotated[
        int | None,
        Doc(
            "Holes of up to this many registers (or 16 times as many coils) between"
            " values are read and thrown away rather than sending another request."
            " Default: the source's."
        ),
        Range(0, 125, "must be 0..125"),
    ] = None
    max_registers: Annotated[
        int | None,
        Doc("Registers per request, at most. Default: the source's."),
        Range(1, 125, "must be 1..125 (the Modbus limit)"),
    ] = None
    max_bits: Annotated[
        int | None,
        Doc("Coils or discrete inputs per request, at most. Default: the source's."),
        Range(1, 2000, "must be 1..2000 (the Modbus limit)"),
    ] = None
    frame_delay: Annotated[
        Duration | None,
        Doc(
            "On a serial line (rtu://, or rtu+tcp:// through a converter), the silence kept"
            " between an answer and the next request (default on rtu://: 3.5 characters,"
            " 1.75 ms above 19200 baud); tcp:// and udp:// keep none. Default: the source's."
        ),
        Range(0, 60, "must be between 0s and 60s"),
    ] = None
    write_multiple: Annotated[
        bool | None,
        Doc(
            "Write-back with FC 15/16 (write multiple) even for one coil or register,"
            " instead of FC 5/6. Default: the source's."
        ),
    ] = None
    emit: Annotated[
        Emit | None,
        Doc(
            "`per_value`: one FlowFile per value on `topic`; `per_device`: one per device"
            " and poll on `device_topic`, with every value. Default: the source's."
        ),
    ] = None
    backoff_max: Annotated[
        Duration | None,
        Doc(
            "A device that fails is retried after its interval, doubling up to this (at"
            " most 1d). Default: the source's."
        ),
        Range(0.01, RETRY_MAX, "must be between 10ms and 1d"),
    ] = None


@dataclass(frozen=True, kw_only=True)
class WritebackConfig:
    """Write-back commands over MQTT, and retained device status."""

    enabled: Annotated[
        bool,
        Doc("Take write commands from MQTT and publish their results and the devices' status."),
    ] = False
    url: Annotated[
        str | None,
        Doc(
            "The broker (default: the top-level `mqtt.url`, whose username, password and"
            " client id prefix then apply unless set here)."
        ),
    ] = None
    topic: Annotated[
        str,
        Doc(
            "Where commands come: `{device}` and `{register}`, each a whole topic level;"
            ' the payload is a JSON value or `{"value": ..., "id": ...}`.'
        ),
    ] = "modbus/{device}/{register}/set"
    result_topic: Annotated[
        str, Doc("Where the outcome of each command is published: `{device}`, `{register}`.")
    ] = "modbus/{device}/{register}/set/result"
    status_topic: Annotated[
        str | None,
        Doc(
            "Where each device's state is published, retained: `{device}` (needed with"
            " several devices); `null` or `none`"
            " (any case): not published. A stopping source publishes `offline` for each"
            " device; with one device, a last will also leaves `offline` if the gateway is"
            " killed (MQTT allows one will per connection, so with several a killed gateway"
            " leaves their last states)."
        ),
    ] = "modbus/{device}/status"
    client_id: Annotated[
        str | None,
        Doc("The client id (default: derived from `mqtt.client_id` and the source name)."),
    ] = None
    username: Annotated[
        str | None, Doc("The user name (default on the gateway's broker: `mqtt.username`).")
    ] = None
    password: Annotated[str | None, Doc("The password, may be `ENC(...)`; never logged.")] = None

    def __post_init__(self) -> None:
        # YAML reads `none` as text; older docs said "(none: not published)", so configs
        # hold it: it means null (before, every device's status went retained to "none").
        if isinstance(self.status_topic, str) and self.status_topic.lower() == "none":
            object.__setattr__(self, "status_topic", None)

    def check(self) -> Iterator[tuple[str, str]]:
        if self.status_topic is not None and self.status_topic.lower() == "null":
            # a quoted "null" is text: every device's status would go retained to "null"
            yield (
                "status_topic",
                f"{self.status_topic!r} would be a topic; write status_topic: null (no quotes)"
                " to publish no status",
            )
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
        problem = None if self.url is None else url_problem(self.url)
        if problem:  # a bad port passed here and crashed the source at start
            yield "url", problem


@dataclass(frozen=True, kw_only=True)
class ModbusSourceConfig(SourceConfig):
    """Keys of the `modbus` source: devices, or one device written flat."""

    url: Annotated[
        str | None,
        Doc(
            "One device written flat: its URL (see `devices.<name>.url`); the device is"
            " named after the source. Not with `devices`.",
            example="tcp://10.0.0.5:502",
        ),
    ] = None
    unit: Annotated[
        int | None,
        Doc(
            "The flat device's unit id (default 1). With `devices`, 1 or nothing: each"
            " device gives its own `unit`."
        ),
    ] = None
    registers: Annotated[
        dict[str, RegisterConfig],
        Doc(
            "The flat device's registers, by name.",
            example={"temperature": {"address": 0, "type": "int16", "scale": 0.1}},
        ),
    ] = field(default_factory=dict)
    devices: Annotated[
        dict[str, DeviceConfig],
        Doc(
            "The devices, by the name that becomes their topic level; each takes the keys"
            " below and may override the source's settings."
        ),
    ] = field(default_factory=dict)
    interval: Annotated[
        Duration,
        Doc("How often the registers are read. Each device may set its own.", example="1s"),
        Range(0.001, INTERVAL_MAX, "must be between 1ms and 100 years"),
    ] = 1.0
    timeout: Annotated[
        Duration,
        Doc(
            "How long one request may wait for its answer. Each device may set its own."
            " On an RTU line (rtu://, rtu+tcp://) an unanswered request is followed by one"
            " more `timeout` of silence before anything else is sent: RTU answers carry no"
            " transaction id, and a late answer must not be taken for the next request's"
            " (what arrives meanwhile is dropped). Set it above the device's slowest answer."
        ),
        Range(0.001, 60, "must be between 1ms and 60s"),
    ] = 1.0
    retries: Annotated[
        int,
        Doc(
            "Requests sent again at once before the device counts as failing. Each device"
            " may set its own. On an RTU line a request is sent again only after one more"
            " `timeout` of silence (see timeout), so each retry costs two timeouts there."
        ),
        Range(0, 10, "must be 0..10"),
    ] = 1
    address_base: Annotated[
        Literal[0, 1],
        Doc(
            "0, or 1 when the device's manual counts addresses from 1. Each device may set its own."
        ),
    ] = 0
    byte_order: Annotated[
        Order, Doc("The order of the two bytes in each register. Each device may set its own.")
    ] = "big"
    word_order: Annotated[
        Order,
        Doc("The order of the registers of a value wider than one. Each device may set its own."),
    ] = "big"
    max_gap: Annotated[
        int,
        Doc(
            "Holes of up to this many registers (or 16 times as many coils) between"
            " values are read and thrown away rather than sending another request. Each"
            " device may set its own."
        ),
        Range(0, 125, "must be 0..125"),
    ] = 16
    max_registers: Annotated[
        int,
        Doc("Registers per request, at most. Each device may set its own."),
        Range(1, 125, "must be 1..125 (the Modbus limit)"),
    ] = 125
    max_bits: Annotated[
        int,
        Doc("Coils or discrete inputs per request, at most. Each device may set its own."),
        Range(1, 2000, "must be 1..2000 (the Modbus limit)"),
    ] = 2000
    frame_delay: Annotated[
        Duration | None,
        Doc(
            "On a serial line (rtu://, or rtu+tcp:// through a converter), the silence kept"
            " between an answer and the next request (default on rtu://: 3.5 characters,"
            " 1.75 ms above 19200 baud); tcp:// and udp:// keep none. Each device may set"
            " its own."
        ),
        Range(0, 60, "must be between 0s and 60s"),
    ] = None
    write_multiple: Annotated[
        bool,
        Doc(
            "Write-back with FC 15/16 (write multiple) even for one coil or register,"
            " instead of FC 5/6. Each device may set its own."
        ),
    ] = False
    emit: Annotated[
        Emit,
        Doc(
            "`per_value`: one FlowFile per value on `topic`; `per_device`: one per device"
            " and poll on `device_topic`, with every value. Each device may set its own."
        ),
    ] = "per_value"
    backoff_max: Annotated[
        Duration,
        Doc(
            "A device that fails is retried after its interval, doubling up to this (at"
            " most 1d, so that a device back is read within a day). Each device may set its"
            " own."
        ),
        Range(0.01, RETRY_MAX, "must be between 10ms and 1d"),
    ] = 30.0
    topic: Annotated[
        str,
        Doc(
            "The topic of each value with `emit: per_value`: `{device}`, `{register}`,"
            " `{unit}`, `{table}`; `{{` and `}}` for a literal brace."
        ),
    ] = "modbus/{device}/{register}"
    device_topic: Annotated[
        str, Doc("The topic of each device's values with `emit: per_device`: `{device}`, `{unit}`.")
    ] = "modbus/{device}"
    writeback: Annotated[
        WritebackConfig, Doc("Write-back commands over MQTT, and retained device status.")
    ] = field(default_factory=WritebackConfig)

    def device_configs(self, own_name: str) -> dict[str, DeviceConfig]:
        """Every device, the flat form included (named after the source)."""
        if self.url is None:
            return dict(self.devices)
        unit = 1 if self.unit is None else self.unit
        return {own_name: DeviceConfig(url=self.url, unit=unit, registers=self.registers)}

    def setting(self, device: DeviceConfig, key: str) -> Any:
        value = getattr(device, key)
        return getattr(self, key) if value is None else value

    def claims(self) -> list[Claim]:
        """The serial ports of its rtu:// devices (devices of this source share them)."""
        found: dict[tuple[str, str, str], Claim] = {}
        for name, dev in self.device_configs("source").items():
            try:
                spec = parse_link_url(dev.url)
            except ValueError:
                continue
            if spec.serial:
                claim = serial_claim("url" if self.url else f"devices.{name}.url", spec.path)
                found.setdefault(claim.identity, claim)
        return list(found.values())

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
        if self.url is None and self.unit not in (None, 1):
            # Not a default for the devices: they were asked as unit 1, whatever it said.
            # unit: 1 said just that, harmless: an older config keeps loading.
            yield (
                "unit",
                f"unit: {self.unit} at the top level is the flat device's (with url:), not a"
                " default for devices:; set unit on each device instead",
            )
        for key, template, allowed in (
            ("topic", self.topic, _TOPIC_FIELDS),
            ("device_topic", self.device_topic, {"device", "unit"}),
        ):
            problem = _template_problem(template, allowed)
            if problem:
                yield key, problem
        ports: dict[tuple[str, str, int], tuple[str, LinkSpec]] = {}
        units: dict[tuple[str, str, int], dict[int, str]] = {}
        devices = self.device_configs("source")
        lines = 0  # devices on an RTU line
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
            # On a serial line (rtu://, or rtu+tcp:// through a converter to one) 0 is the
            # broadcast address, which no device answers, and 248..255 are reserved.
            on_line = spec.kind in ("rtu", "rtu+tcp")
            if on_line:
                lines += 1
            elif dev.frame_delay or (self.url is not None and self.frame_delay):
                # the silence of a serial line: a tcp:// or udp:// device keeps none
                key = "frame_delay" if self.url is not None else f"{where}frame_delay"
                yield key, f"only on a serial line (rtu://, rtu+tcp://), not {spec.kind}://"
            if not 0 <= dev.unit <= 255 or (on_line and not 1 <= dev.unit <= 247):
                yield f"{where}unit", "unit id must be 0..255 (1..247 on a serial line)"
            other = ports.get(spec.key)
            if other is not None and not other[1].same_settings(spec):
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
            per_device = self.setting(dev, "emit") == "per_device"
            for reg_name, reg in dev.registers.items():
                problem = _name_problem(reg_name)
                if problem:
                    yield f"{where}registers.{reg_name}", problem
                if per_device and reg.topic is not None:
                    # taken and ignored: per_device sends one FlowFile on device_topic
                    yield (
                        f"{where}registers.{reg_name}.topic",
                        "used with emit: per_value only; with per_device the device's values"
                        " go together on device_topic",
                    )
                if reg.address < base:
                    problem = f"{reg.address} is below address_base {base}"
                    yield f"{where}registers.{reg_name}.address", problem
                try:
                    width = max(codec.parse_type(reg.data_type).width, 1)
                except ValueError:
                    continue
                if reg.address - base + width > 65536:
                    yield f"{where}registers.{reg_name}.address", "runs past register 65535"
                if width > self.setting(dev, "max_registers"):
                    problem = f"{reg.data_type} takes {width} registers, more than max_registers"
                    yield f"{where}registers.{reg_name}.type", problem
            taken = units.setdefault(spec.key, {})
            if dev.unit in taken:
                problem = f"unit {dev.unit} on this port is also device {taken[dev.unit]!r}"
                yield f"{where}unit", problem
            taken.setdefault(dev.unit, name)
        status_topic = self.writeback.status_topic if self.writeback.enabled else None
        if status_topic is not None and len(devices) > 1 and "{device}" not in status_topic:
            # each device's retained state replaced the one before: the last one won
            yield (
                "writeback.status_topic",
                f"{status_topic!r} has no {{device}}: the devices' retained states would"
                " replace each other on one topic",
            )
        if self.url is None and self.devices and self.frame_delay and not lines:
            yield "frame_delay", "only on a serial line (rtu://, rtu+tcp://): no device has one"
