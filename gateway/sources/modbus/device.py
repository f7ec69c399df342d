"""Devices and their values at run time: settings, decoders, report-by-exception, state.

A `Device` is built from its config once, when the source is built: its
settings (the device's own or the source's), its `Value`s with their decoders
and topics, and its planned requests. The scheduler and the source keep its
online state, backoff and counters here, and `status` is what the status page
shows for it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gateway.core.backoff import Backoff
from gateway.core.histogram import LATENCY_BOUNDS, Buckets
from gateway.sources.modbus import codec
from gateway.sources.modbus.config import DeviceConfig, ModbusSourceConfig, RegisterConfig
from gateway.sources.modbus.link import parse_link_url
from gateway.sources.modbus.planner import Request, plan_requests

UNSET: Any = object()  # a value not sent yet (or to be sent again whatever it is)


class Value:
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
        "interval",
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

    def __init__(
        self, device: Device, name: str, cfg: RegisterConfig, source_cfg: ModbusSourceConfig
    ) -> None:
        self.device = device
        self.name = name
        self.config = cfg
        self.table = cfg.table
        self.info = codec.parse_type(cfg.data_type)
        self.bit = cfg.bit
        self.width = max(self.info.width, 1)
        if cfg.order is not None:
            self.byte_order, self.word_order = codec.ORDER_ALIASES[cfg.order]
        else:
            self.byte_order = cfg.byte_order or device.byte_order
            self.word_order = cfg.word_order or device.word_order
        self.address = cfg.address
        self.interval = float(cfg.interval) if cfg.interval else device.interval
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
        self.heartbeat = cfg.heartbeat if cfg.heartbeat is not None else math.inf
        self.last: Any = UNSET
        self.last_sent = 0.0

    def changed(self, value: Any, now: float) -> bool:
        """Report-by-exception: True when `value` is to be sent (and remembered as sent)."""
        last = self.last
        if last is not UNSET and now - self.last_sent < self.heartbeat:
            # NaN != NaN, but both are sent as null: a register that stays NaN (a sensor
            # unplugged) is unchanged
            if value == last or (value != value and last != last):
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

    def forget(self) -> None:
        """Send the next value whatever it is (the device was away)."""
        self.last = UNSET

    def decoder_at(self, offset: int) -> codec.Decoder:
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


class Device:
    """A device at run time: settings, planned requests and online state."""

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
        if delay is None or not self.spec.untagged:
            # a source's frame_delay is for its devices on a serial line (rtu://, and
            # rtu+tcp:// through a converter); it slowed every tcp:// request beside them
            delay = self.spec.silent_interval() if self.spec.serial else 0.0
        self.frame_delay = float(delay)
        self.values = {n: Value(self, n, r, source_cfg) for n, r in cfg.registers.items()}
        self.plans: list[tuple[float, list[Request[Value]]]] = plan_requests(
            self.values.values(),
            max_registers=int(get("max_registers")),
            max_bits=int(get("max_bits")),
            max_gap=int(get("max_gap")),
        )
        self.device_topic = source_cfg.device_topic.format(device=name, unit=cfg.unit)
        self.device_attrs = {"device": name, "unit_id": str(cfg.unit)}
        self.json_name = json.dumps(name, ensure_ascii=False)
        self.min_interval = min(i for i, _ in self.plans) if self.plans else self.interval
        # state
        self.online: bool | None = None
        # offline: retried after its shortest interval, doubling up to backoff_max
        self.backoff = Backoff(self.min_interval, self.backoff_max, jitter=False)
        self.retry_at = 0.0
        self.poll_latency = Buckets(LATENCY_BOUNDS)  # seconds per poll of one group, for /metrics
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
