"""The `modbus` source at run time: ports, polls, device state and write-back commands.

The user documentation is the package's (`gateway.sources.modbus`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

from gateway.config.units import duration_text
from gateway.core.backoff import Backoff
from gateway.core.component import Context, Message, Source
from gateway.core.errors import RetryableError
from gateway.core.flowfile import FlowFile
from gateway.core.histogram import Buckets
from gateway.mqtt.commands import CommandChannel, TopicTemplate, parse_command
from gateway.sources.modbus import codec
from gateway.sources.modbus.config import ModbusSourceConfig
from gateway.sources.modbus.device import Device, Value
from gateway.sources.modbus.link import DeviceException, Link, LinkError, LinkSpec, quiet_until
from gateway.sources.modbus.planner import Request
from gateway.sources.modbus.scheduler import NEVER, Group, Job, Jobs, next_due, wait

CUT_SHORT = "the source stopped during the write; it may or may not have reached the device"
# Past this many devices, write-back subscribes to the whole command template instead
MAX_DEVICE_FILTERS = 256


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class Write:
    """A write-back command waiting for its port."""

    __slots__ = ("device", "payload", "register", "reply")

    def __init__(
        self,
        device: Device,
        register: Value,
        payload: bytes,
        reply: Callable[[dict[str, Any]], None],
    ) -> None:
        self.device = device
        self.register = register
        self.payload = payload
        self.reply = reply


class Bus:
    """One connection (TCP endpoint or serial port) and the devices behind it."""

    def __init__(self, spec: LinkSpec, frame_delay: float, name: str) -> None:
        self.spec = spec
        self.link = Link(spec, name)
        self.lock = asyncio.Lock()
        self.frame_delay = frame_delay
        self.last_io = 0.0
        self.devices: list[Device] = []
        self.groups: list[Group] = []
        self.writes: deque[Write] = deque()
        self.job: Job[list[Message]] | None = None

    def next_due(self) -> float:
        if self.writes:
            return 0.0
        return next_due(self.groups)


class ModbusSource(Source):
    """Polls Modbus devices on their own schedules; see the module documentation."""

    Config = ModbusSourceConfig
    mode = "stream"
    lost_if_cut = "the devices are not asked for these readings again"

    def __init__(self, config: ModbusSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: ModbusSourceConfig = config
        self._devices = {
            name: Device(name, dev, config) for name, dev in config.device_configs(ctx.name).items()
        }
        self._buses: dict[tuple[str, str, int], Bus] = {}
        for dev in self._devices.values():
            bus = self._buses.get(dev.spec.key)
            if bus is None:
                bus = self._buses[dev.spec.key] = Bus(dev.spec, dev.frame_delay, ctx.name)
            bus.frame_delay = max(bus.frame_delay, dev.frame_delay)
            bus.devices.append(dev)
            bus.groups.extend(Group(dev, interval, reqs) for interval, reqs in dev.plans)
        self._wake = asyncio.Event()
        self._channel: Any = None
        self._channel_retry_at = NEVER
        # write-back connection lost: retried after 1 s, doubling up to 30 s
        self._channel_backoff = Backoff(1.0, 30.0, jitter=False)
        self._channel_job: Job[None] | None = None
        self._jobs = Jobs(self._wake.set)
        self._closed = False
        self.requests = 0
        self._writeback: str | None = None  # the write-back connection, once tried

    def status(self) -> Mapping[str, object]:
        """Each device's state and counters, and the write-back connection."""
        out: dict[str, object] = {
            "devices": {name: dev.status for name, dev in self._devices.items()}
        }
        if self._writeback is not None:
            out["writeback"] = self._writeback
        return out

    def histograms(self) -> Mapping[str, Buckets]:
        """Each device's poll latency (a group's requests, first sent to last answered)."""
        return {name: dev.poll_latency for name, dev in self._devices.items()}

    # ---- lifecycle ------------------------------------------------------

    async def connect(self) -> None:
        """Open every port (a device that is not there is marked offline, not fatal)."""
        self._closed = False
        await self._jobs.start()  # ends what a connection before this one left running
        self._channel_job = None
        for bus in self._buses.values():
            bus.job = None
        clock = self.ctx.clock
        now = clock.monotonic()
        for bus in self._buses.values():
            for g in bus.groups:
                g.due = now
        await asyncio.gather(*(self._open(bus) for bus in self._buses.values()))
        wb = self.config.writeback
        if wb.enabled:
            # on the gateway's broker, what write-back leaves unset comes from `mqtt:`
            shared = wb.url is None
            prefix = self.ctx.mqtt_client_prefix or f"edge-stream-{self.ctx.gateway_id}"

            self._channel = CommandChannel(
                self.ctx,
                url=wb.url or self.ctx.mqtt_url,
                client_id=wb.client_id or f"{prefix}-{self.ctx.name}-wb",
                set_topic=wb.topic,
                result_topic=wb.result_topic,
                fields=("device", "register"),
                username=wb.username or (self.ctx.mqtt_username if shared else None),
                password=wb.password or (self.ctx.mqtt_password if shared else None),
                shared_tls_files=self.ctx.mqtt_tls_files if shared else None,
                submit=self._submit_write,
                will=self._status_will(),
                filters=self._command_filters(wb.topic),
            )
            self._channel_backoff.reset()
            await self._connect_channel()

    def _command_filters(self, template: str) -> list[str] | None:
        """One subscription per device of this source (`modbus/boiler/+/set`), not the
        whole template (`modbus/+/+/set`): two sources on one command topic then each get
        only their own devices' commands (else the one without the device answered each
        command too, with an error, on the result topic the commander reads). A command
        for a device no source has gets no answer. Device names are topic-level safe."""
        if "{device}" not in template or len(self._devices) > MAX_DEVICE_FILTERS:
            return None
        return [
            TopicTemplate(template.replace("{device}", name), ("register",)).filter
            for name in self._devices
        ]

    async def _open(self, bus: Bus) -> None:
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
            delay = self._channel_backoff.next()
            self._channel_retry_at = self.ctx.clock.monotonic() + delay
            self._writeback = f"disconnected: {err}"
            self.ctx.log.warning("%s; write-back retried in %.0f s", err, delay)
            return
        self._channel_backoff.reset()
        self._channel_retry_at = NEVER
        self._writeback = "connected"
        for dev in self._devices.values():
            self._publish_status(dev)

    async def close(self) -> None:
        self._closed = True
        jobs: list[Job[Any]] = [b.job for b in self._buses.values() if b.job is not None]
        if self._channel_job is not None:
            jobs.append(self._channel_job)
        await self._jobs.stop()
        for job in jobs:
            if job.error is not None:
                self.ctx.log.debug("a job ended with %r while closing", job.error)
        for bus in self._buses.values():
            bus.job = None
            bus.link.close()
            while bus.writes:
                bus.writes.popleft().reply({"ok": False, "error": "source is closing"})
        self._channel_job = None
        if self._channel is not None:
            # Not polled any more: say so, retained, instead of the last "online".
            for dev in self._devices.values():
                self._publish_status(dev, stopped="not polled: the source stopped")
            await self._channel.close()
            self._channel = None

    # ---- the scheduler --------------------------------------------------

    async def read(self) -> list[Message]:
        """Poll whatever is due next (ports in parallel) and return its FlowFiles."""
        clock = self.ctx.clock
        while True:
            now = clock.monotonic()
            out: list[Message] = []
            next_at = NEVER
            for bus in self._buses.values():
                job = bus.job
                if job is not None and job.done():
                    bus.job = None
                    out.extend(job.result())  # an unexpected error propagates to the engine
                if bus.job is None:
                    due = bus.next_due()
                    if due <= now:
                        bus.job = self._jobs.spawn(self._run_bus(bus, now))
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
            await wait(clock, self._wake, next_at - now if next_at != NEVER else None)

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
        if self._channel_retry_at == NEVER and not channel.connected:
            self.ctx.log.warning("lost the write-back MQTT connection; reconnecting")
            self._writeback = "disconnected"
            self._channel_retry_at = now
        if self._channel_retry_at <= now:
            self._channel_retry_at = NEVER
            self._channel_job = self._jobs.spawn(self._connect_channel())

    async def _run_bus(self, bus: Bus, now: float) -> list[Message]:
        """Serve pending writes, then poll every group of this port that is due at `now`."""
        out: list[Message] = []
        # emit: per_device: one FlowFile per device and poll, also when the device's
        # values have several intervals and more than one of its groups is due now
        per_device: dict[Device, tuple[list[str], tuple[int, str]]] = {}
        await self._serve_writes(bus)
        for group in bus.groups:
            dev = group.device
            if group.due > now or dev.retry_at > now:
                continue
            started = self.ctx.clock.monotonic()
            group.start(started)
            if dev.emit == "per_device":
                values, stamp = per_device.get(dev, ([], (0, "")))
                answered = await self._poll_group(bus, group, out, values)
                per_device[dev] = values, answered or stamp
            else:
                await self._poll_group(bus, group, out, None)
            if group.device.online:
                group.device.poll_latency.add(self.ctx.clock.monotonic() - started)
        for dev, (values, (created, ts)) in per_device.items():
            if values:
                content = (
                    f'{{"device":{dev.json_name},"ts":"{ts}","values":{{{",".join(values)}}}}}'
                ).encode()
                out.append(
                    Message(FlowFile.create(dev.device_topic, content, dev.device_attrs, created))
                )
        return out

    async def _serve_writes(self, bus: Bus) -> None:
        while bus.writes:
            await self._write(bus, bus.writes.popleft())

    async def _call(self, bus: Bus, dev: Device, op: Callable[[], Awaitable[Any]]) -> Any:
        """One request on the port: exclusive, after the inter-frame gap, retried at once."""
        attempts = dev.retries + 1
        for attempt in range(attempts):
            async with bus.lock:
                if bus.frame_delay:
                    await quiet_until(bus.last_io + bus.frame_delay)
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

    async def _poll_group(
        self, bus: Bus, group: Group, out: list[Message], per_device: list[str] | None
    ) -> tuple[int, str] | None:
        """Poll one group: its values go to `out`, or with `emit: per_device` into
        `per_device` (name:value JSON members). The time of the last answer, if any."""
        dev = group.device
        clock = self.ctx.clock
        link = bus.link
        answered: tuple[int, str] | None = None
        refusals: dict[Request[Value], DeviceException] = {}
        read_ok: set[Request[Value]] = set()
        news = False
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
                # A refusal is an answer: the device is there, its register map is wrong.
                # What to do with it is decided once the poll is over (_replan): the
                # parts of a split all refused are the whole block refused.
                news = self._device_answered(dev, _iso(clock.now_ns())) or news
                refusals[req] = err
                continue
            now = clock.monotonic()
            created = clock.now_ns()
            ts = _iso(created)
            answered = created, ts
            self._device_ok(dev, ts)
            if req.refused is not None:
                self._request_answered(dev, req)
            req.merged = False
            read_ok.add(req)
            self._emit(dev, req, values, now, created, ts, out, per_device)
        # else as planned; a device gone offline mid-poll keeps its plan and its error
        if dev.online and (refusals or any(r.parent is not None for r in read_ok)):
            self._replan(group, refusals, read_ok)
        if news and dev.online:
            self._publish_status(dev)
        return answered

    def _emit(
        self,
        dev: Device,
        req: Request[Value],
        values: list[Any],
        now: float,
        created: int,
        ts: str,
        out: list[Message],
        per_device: list[str] | None,
    ) -> None:
        bits = req.table in ("coil", "discrete")
        buf = b"" if bits else codec.pack(values)
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

    def _publish_status(self, dev: Device, stopped: str | None = None) -> None:
        """With write-back on, publish a device's state on `status_topic`, retained;
        with `stopped`, "offline" for that reason (the source no longer polls it)."""
        topic = self.config.writeback.status_topic
        if self._channel is not None and topic is not None:
            self._channel.publish(
                topic.replace("{device}", dev.name), self._public_state(dev, stopped), retain=True
            )

    def _public_state(self, dev: Device, stopped: str | None = None) -> dict[str, Any]:
        s = dev.status
        return {
            "state": s["state"] if stopped is None else "offline",
            "last_error": s["last_error"] if stopped is None else stopped,
            "last_ok": s["last_ok"],
            "unit": dev.unit,
        }

    def _status_will(self) -> tuple[str, dict[str, Any]] | None:
        """The write-back connection's last will: "offline" on the status topic, if the
        source has one status topic (one device). MQTT gives a connection one will, so
        with several devices a killed gateway leaves their last states (a clean stop
        publishes "offline" for each)."""
        topic = self.config.writeback.status_topic
        if topic is None:
            return None
        topics = {topic.replace("{device}", name): dev for name, dev in self._devices.items()}
        if len(topics) != 1:
            return None
        [(one, dev)] = topics.items()
        return one, {
            "state": "offline",
            "last_error": "not polled: the gateway's connection to the broker ended",
            "last_ok": None,
            "unit": dev.unit,
        }

    def _device_ok(self, dev: Device, ts: str) -> None:
        dev.status["last_ok"] = ts
        if self._device_answered(dev, ts):
            self._publish_status(dev)

    def _device_answered(self, dev: Device, ts: str) -> bool:
        """The device answered (values or a refusal): it is online. True when that is
        news (the caller publishes the status, once its last_error is right)."""
        status = dev.status
        status["last_poll"] = ts
        if dev.online:
            return False
        was_offline = dev.online is False
        dev.online = True
        dev.backoff.reset()
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
        return True

    def _device_failed(self, dev: Device, err: Exception, now: float) -> None:
        dev.status["errors"] += 1
        dev.status["last_error"] = str(err)
        dev.status["last_poll"] = dev.status["last_error_at"] = _iso(self.ctx.clock.now_ns())
        dev.retry_at = now + dev.backoff.next()
        if dev.online is False:
            self.ctx.log.debug("device %s still not answering: %s", dev.name, err)
            return
        dev.online = False
        dev.status["state"] = "offline"
        for v in dev.values.values():
            v.forget()  # on return, every value is sent again
        self.ctx.log.error(
            "device %s (%s unit %d) is offline: %s; retrying with backoff up to %s",
            dev.name,
            dev.spec.describe(),
            dev.unit,
            err,
            duration_text(dev.backoff_max),  # as the config reads it: 500ms, not "0 s"
        )
        self._publish_status(dev)

    def _replan(
        self,
        group: Group,
        refusals: dict[Request[Value], DeviceException],
        read: set[Request[Value]],
    ) -> None:
        """After a poll of `group`: the reads refused in it (`refusals`) and answered
        (`read`) decide its reads for the next poll. A refused read is halved (in
        `_request_refused`) until what the device lacks is read alone, and a split whose
        parts all answered is read whole again: a device that refused everything for a
        while (a meter still booting, a TCP gateway answering exception 2 for an absent
        unit) is read as planned once it answers, not one value at a time for good.
        Refused parts are never put back together: a device refusing both halves may
        lack a register in each (two typos in a map), and its other values are read."""
        dev = group.device
        reqs = group.requests
        for req in (*refusals, *read):
            up = req.parent
            while up is not None:  # its parts were tried: they speak for it now
                up.refused = None
                up = up.parent

        def parts_of(parent: Request[Value]) -> list[Request[Value]]:
            return [r for r in reqs if r.descends_from(parent)]

        def put_back(parent: Request[Value], parts: list[Request[Value]]) -> None:
            i = reqs.index(parts[0])  # the parts of a read are next to each other
            reqs[i : i + len(parts)] = [parent]

        changed = True
        while changed:
            changed = False
            for req in read:
                parent = req.parent
                if parent is None or parent.gapped or parent.split_for_good:
                    continue  # a device that refused the filler still would
                parts = parts_of(parent)
                if all(r in read for r in parts):
                    put_back(parent, parts)
                    read.difference_update(parts)
                    read.add(parent)
                    parent.merged = True
                    self.ctx.log.info(
                        "device %s answers every part of %s %d+%d: reading it whole again",
                        dev.name,
                        parent.table,
                        parent.start,
                        parent.count,
                    )
                    changed = True
                    break
        for req, err in refusals.items():
            self._request_refused(group, req, err)
        if dev.online:
            now_refused = self._refusals(dev)
            status = dev.status
            if now_refused != status["last_error"]:
                if now_refused is None:
                    status["previous_error"], status["last_error"] = status["last_error"], None
                else:
                    status["last_error"] = now_refused
                    status["last_error_at"] = _iso(self.ctx.clock.now_ns())

    def _request_refused(self, group: Group, req: Request[Value], err: DeviceException) -> None:
        dev = group.device
        dev.status["errors"] += 1
        names = ", ".join(v.name for v, _, _ in req.items)
        problem = f"{names}: {err}"
        if err.code == 2 and req.merged:
            # Its parts answered, put together it is refused (a device whose reads are
            # shorter than ours): it stays in parts.
            req.split_for_good = True
        parts = req.split() if err.code == 2 else []
        if len(parts) > 1:
            # The device lacks an address the read covers: the filler between values,
            # or one of the values. Read the runs, or the values, separately: the
            # values it has are read, and a refusal names only the ones it lacks.
            i = group.requests.index(req)
            group.requests[i : i + 1] = parts
            req.refused = problem  # until its parts are read (see _replan, _refusals)
            dev.status["last_error"] = self._refusals(dev)
            dev.status["last_error_at"] = _iso(self.ctx.clock.now_ns())
            self.ctx.log.warning(
                "device %s refused a %s read %s (%s); reading %d parts instead",
                dev.name,
                req.table,
                "with holes" if req.gapped else "of several values",
                err,
                len(parts),
            )
            return
        first = req.refused is None  # said once
        req.refused = problem
        dev.status["last_error"] = self._refusals(dev)
        dev.status["last_error_at"] = _iso(self.ctx.clock.now_ns())
        if first:
            self.ctx.log.error(
                "device %s refuses %s %d+%d (%s): %s; check the register map",
                dev.name,
                req.table,
                req.start,
                req.count,
                names,
                err,
            )

    def _refusals(self, dev: Device) -> str | None:
        """Every read of `dev` it refuses now, "names: error", joined with "; "."""
        found: dict[str, None] = {}  # in order, once each
        for g in self._buses[dev.spec.key].groups:
            if g.device is not dev:
                continue
            for req in g.requests:
                up: Request[Value] | None = req
                while up is not None:  # a read just split is refused until its parts answer
                    if up.refused is not None:
                        found[up.refused] = None
                    up = up.parent
        return "; ".join(found) if found else None

    def _request_answered(self, dev: Device, req: Request[Value]) -> None:
        """A read the device refused is answered again (its register map was fixed)."""
        before = self._refusals(dev)
        req.refused = None
        status = dev.status
        if status["last_error"] == before:
            remaining = self._refusals(dev)
            if remaining is None:
                # What was wrong is over; the page keeps it as history, not as a problem.
                status["previous_error"], status["last_error"] = before, None
            else:
                status["last_error"] = remaining
        names = ", ".join(v.name for v, _, _ in req.items)
        self.ctx.log.warning(
            "device %s answers %s %d+%d (%s) again",
            dev.name,
            req.table,
            req.start,
            req.count,
            names,
        )

    # ---- write-back -----------------------------------------------------

    def _submit_write(
        self, fields: Mapping[str, str], payload: bytes, reply: Callable[[dict[str, Any]], None]
    ) -> str | None:
        device, register = fields["device"], fields["register"]
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
        bus.writes.append(Write(dev, value, payload, reply))
        self._wake.set()
        return None

    async def _write(self, bus: Bus, cmd: Write) -> None:
        dev, v = cmd.device, cmd.register
        result: dict[str, Any] = {}
        try:
            requested, ident = parse_command(cmd.payload)
            if ident is not None:
                result["id"] = ident
            result["requested"] = requested
            result.update(await self._write_value(bus, dev, v, requested))
        except asyncio.CancelledError:
            # The source stops (a reload, a shutdown) under the write: its commander
            # waited for a result that never came (the channel closes after the jobs).
            result.update(ok=False, error=CUT_SHORT, ts=_iso(self.ctx.clock.now_ns()))
            cmd.reply(result)
            raise
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

    async def _write_value(self, bus: Bus, dev: Device, v: Value, requested: Any) -> dict[str, Any]:
        link, addr, unit, timeout = bus.link, v.protocol_address, dev.unit, dev.timeout
        multiple = dev.write_multiple
        if v.table == "coil" or v.bit is not None or v.info.kind == "bool":
            want = codec.as_bool(requested)
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
        value = v.decode(codec.pack(back), back)
        if v.bit is not None:
            ok = bool(back[0] & (1 << v.bit)) == codec.as_bool(requested)
        else:
            ok = list(back) == regs
        return _outcome(ok, value, list(back), regs)


def _outcome(ok: bool, value: Any, raw: list[Any], expected: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": ok, "value": value, "raw": raw}
    if not ok:
        out["error"] = f"read back {raw}, expected {expected}"
    if isinstance(value, float) and not math.isfinite(value):
        out["value"] = None
    return out
