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
are asked one request at a time (a serial port belongs to one source: a second
source, Modbus or serial, naming it is refused by the config check); on a
serial line the source keeps the inter-frame silence (`frame_delay`, default
3.5 characters, 1.75 ms above 19200 baud; with `rtu+tcp://` none unless set)
between the end of one answer and the next request; `tcp://` and `udp://`
devices keep none (a source-level `frame_delay` is for its RTU devices, and
one that no device can use is refused). RTU answers (`rtu://`, `rtu+tcp://`) carry no transaction
id, so after an unanswered request the line stays quiet for one more `timeout`
and whatever arrives then is dropped: a device slower than `timeout` costs
polls, never a late answer published under the next request's registers.

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
float32, float64, string(N) with N bytes; default bool in a coil or discrete
input or with `bit`, uint16 in a register), `bit` (0-15, a bool inside a
holding or input register), `byte_order`/`word_order` or `order` (ABCD,
CDAB, BADC, DCBA and ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA), `scale` and
`offset` (numbers only; value = raw * scale + offset; integers with a decimal
scale are rounded to the scale's decimals), `precision` (numbers only; decimals
to round to; 0: a whole number), `unit`,
`interval` (its own poll rate), `writable`, `topic` (its own, with `emit:
per_value`), and report-by-exception:
`on_change` (send a value only when it differs from the last one sent),
`deadband` and `deadband_percent` (send a number only when it moved more than
this, absolute or in percent of the last value sent; either implies on_change)
and `heartbeat` (with one of those three: send an unchanged value again after
this long).

The planner reads the registers of one device, table and interval in as few
requests as possible: contiguous and overlapping values share a request,
holes up to `max_gap` are filled, no request exceeds 125 registers or 2000
bits. A device that refuses a filled block (illegal data address) gets that
block split into its contiguous parts from then on, and a contiguous block it
refuses halved (again at each refusal) until a register the device lacks is
read alone: it is named alone in `last_error`, and the values beside it are
still read, in few requests. A block whose parts are all refused in one poll is
refused whole (a meter still booting, a TCP gateway answering exception 2 for
an absent unit): it is read whole again, halved again only after a few polls,
and a split whose parts all answer is read whole again, so a device that
refused everything for a while is read as planned once it answers.

Output (`emit: per_value`, the default): one FlowFile per value on
`modbus/<device>/<register>` (`topic` template; `{device}`, `{register}`,
`{unit}`, `{table}`) with content
`{"value": 21.5, "raw": [215], "unit": "°C", "ts": "2024-05-01T12:00:00.123Z"}`
and attributes `device`, `register`, `unit_id`, `table`, `address`. With
`emit: per_device`: one FlowFile per device and poll on `modbus/<device>`
(`device_topic`) with `{"device": ..., "ts": ..., "values": {name: value}}`: every
value read at that poll, whatever its `interval` (a 10s value joins the 1s values
every tenth poll).

A device that does not answer (after `retries`), whose connection fails (its
serial port or host name does not exist, too: a reload is not rolled back for it), or
that answers with a device-trouble exception (4, 5, 6, 8, 10, 11) is marked
offline and retried after its interval, doubling up to `backoff_max` (30s, at most 1d);
the other devices, on its port or elsewhere, keep their schedule. Its state
(online/offline, last error, last poll, counters) is in the source's status
under `devices`: `last_error` is what is wrong now and is cleared when an
offline device answers again, or a read the device refused (illegal data address:
check the register map; a device that refuses reads answers, so it is online, with
every refused read named in `last_error`) is answered again (`previous_error` and `last_error_at`
keep the last one), and with write-back enabled also published retained on
`modbus/<device>/status` (`{"state", "last_error", "last_ok", "unit"}`). When the
source stops, each device's status becomes `"state": "offline"`; a source with one
device also leaves it as its connection's last will, so a killed gateway leaves
`offline` too (one will per MQTT connection: with several devices, only a clean stop
does).

Write-back (`writeback: {enabled: true}`; also `url`, `topic`, `result_topic`,
`status_topic`, `client_id`, `username`, `password`): the source subscribes to
`modbus/{device}/{register}/set` (`writeback.topic`) on the gateway's broker
(`writeback.url`, default the top-level `mqtt.url`, whose `username`, `password`
and `client_id` prefix then apply unless write-back sets its own). The source
subscribes for its own devices only (`modbus/boiler/+/set`), so several Modbus
sources share the command topic; a device name in two of them is refused by the
config check (give one source its own topic, e.g. `line2/{device}/{register}/set`),
and a command for a device no source has gets no answer. The payload is a JSON
value (`21.5`, `true`, `"text"`) or `{"value": 21.5, "id": "any"}`; `NaN`,
`Infinity` and numbers beyond a float are refused (not JSON, no setting). Only
registers marked `writable: true` are written: the value is converted to the
register's type, scale and byte order, written (FC 5/6, or 15/16), read back
and compared, and the outcome published on `modbus/{device}/{register}/set/result`
(`writeback.result_topic`, and on an MQTT 5 response topic if the command
has one): `{"ok": true, "value": 21.5, "raw": [...]}` or `{"ok": false,
"error": "..."}`. Commands are carried out by the source's own polling (between two
requests on the device's port, never interleaved with them), so they take effect
while the engine is reading from the source; one under way when the
source stops (a reload, a shutdown) is answered `"ok": false`, "the source stopped
during the write", as it may or may not have been written.

Inside: `config` (the keys above), `planner` (which reads cover the values),
`scheduler` (when each group is due; the jobs polling each port), `device`
(values, decoders, report-by-exception, online state), `codec` (data types and
byte orders), `link` (pymodbus, reached only there, at a pinned version) and
`source` (`ModbusSource`); write-back's MQTT connection is `gateway.mqtt.commands`,
shared with the OPC UA source.
"""

from gateway.sources.modbus.config import (
    DeviceConfig,
    ModbusSourceConfig,
    RegisterConfig,
    WritebackConfig,
)
from gateway.sources.modbus.source import ModbusSource

__all__ = [
    "DeviceConfig",
    "ModbusSource",
    "ModbusSourceConfig",
    "RegisterConfig",
    "WritebackConfig",
]
