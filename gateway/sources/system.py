"""Reports the gateway's own health (CPU, load, memory, disk, temperature, uptime) as JSON.

Every `interval` it reads Linux's /proc and /sys (no extra packages) and
emits one FlowFile on the topic `system/<gateway id>` with a flat JSON
object, so that each key can be routed, filtered or mapped to a column:

  {"cpu_percent": 12.5, "cpu_count": 4,
   "load_1m": 0.42, "load_5m": 0.35, "load_15m": 0.30,
   "memory_total_bytes": 3978051584, "memory_available_bytes": 3011231744,
   "memory_used_percent": 24.3, "swap_total_bytes": 104853504, "swap_used_bytes": 0,
   "disk_path": "/var/lib/edge-stream", "disk_total_bytes": 31164203008,
   "disk_free_bytes": 25482014720, "disk_used_percent": 18.2,
   "temperature_c": 48.3, "temperatures_c": {"cpu-thermal": 48.3},
   "uptime_s": 86400.5}

`cpu_percent` is the busy share of all CPUs since the previous reading (the
first reading covers the time since the source connected, or since boot if
that time is too short to measure). `temperature_c` is the hottest thermal
zone and `temperatures_c` lists each zone by its type; both are absent on
machines without thermal zones. A value the kernel does not offer is null.
`disk_*` describe the file system holding `disk_path`; the free space is what
an unprivileged process may still use. A `disk_path` that cannot be read (it does
not exist: a mount point's folder removed, a typing error) gives null `disk_*`
values under that `disk_path`, never another disk's figures; the source's status
shows why as `disk_error`, and the log says it once as a warning (and once, as
info, when the path can be read again). A mount point whose disk is not mounted is
an empty folder of the disk holding it: that disk's figures are what it shows.

Keys
  type: system
  interval: 10s            how often to read (default 10s)
  schedule: "*/5 * * * *"  or read at these times (cron, UTC); jitter, missed: see below
  disk_path: /data         whose file system to report (default: gateway.data_dir)

`schedule`, `jitter` and `missed` work as for every polled source (README,
"Schedules"): a cron schedule instead of the interval, a random delay, and what
to do about poll times that passed.

Example
  sources:
    host: {type: system, interval: 30s}
  routes:
    health: {match: "system/#", sinks: [warehouse]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from gateway.config.model import ScheduleKeys, SourceConfig
from gateway.config.schema import Doc, Duration, Range, Valid
from gateway.core.component import Context, Source
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile
from gateway.core.schedule import INTERVAL_MAX
from gateway.core.topics import validate_topic


def _path_problem(path: str | None) -> str | None:
    if path is not None and "\0" in path:  # os.statvfs would raise ValueError
        return f"{path!r} cannot hold a NUL character"
    return None


@dataclass(frozen=True, kw_only=True)
class SystemSourceConfig(ScheduleKeys, SourceConfig):
    """Keys of the `system` source."""

    interval: Annotated[
        Duration,
        Doc("How often to read the gateway's health.", example="10s"),
        Range(0.1, INTERVAL_MAX, "must be between 100ms and 100 years"),
    ] = 10.0
    disk_path: Annotated[
        Annotated[str | None, Valid(_path_problem)],
        Doc(
            "Whose file system the `disk_*` values describe (default: `gateway.data_dir`);"
            " one that cannot be read gives null values and `disk_error` in the status."
        ),
    ] = None

    def check(self) -> Iterator[tuple[str, str]]:
        yield from self.schedule_problems(self.interval)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # absent on this kernel or board; the value is reported as null
        return None


def _cpu_times(text: str | None) -> tuple[int, int] | None:
    """(busy, total) jiffies from the `cpu` line of /proc/stat."""
    if not text or not text.startswith("cpu "):
        return None
    fields = [int(x) for x in text.split("\n", 1)[0].split()[1:9]]
    # user nice system idle iowait irq softirq steal; guest time is already in user.
    total = sum(fields)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


def _meminfo(text: str | None) -> dict[str, int]:
    """/proc/meminfo as bytes by name."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _percent(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 1) if whole > 0 else None


class SystemSource(Source):
    """Polls /proc and /sys for the gateway's health; one FlowFile per poll."""

    Config = SystemSourceConfig
    mode = "poll"
    lost_if_cut = "readings are not taken again"

    def __init__(self, config: SystemSourceConfig, ctx: Context, *, root: str = "/") -> None:
        """`root` is where /proc and /sys are looked up (tests point it at a fake tree)."""
        super().__init__(config, ctx)
        self.config: SystemSourceConfig = config
        self.interval = config.interval
        self.schedule = config.poll_schedule(config.interval)
        self.topic = f"system/{ctx.gateway_id}"
        self._proc = Path(root, "proc")
        self._thermal = Path(root, "sys", "class", "thermal")
        self._disk_path = config.disk_path or ctx.data_dir
        self._last_cpu: tuple[int, int] | None = None
        self._disk_error: str | None = None  # why disk_path cannot be read; logged once

    def status(self) -> dict[str, object]:
        return {} if self._disk_error is None else {"disk_error": self._disk_error}

    async def connect(self) -> None:
        problem = validate_topic(self.topic)
        if problem:
            raise PermanentError(
                f"gateway id {self.ctx.gateway_id!r} makes no valid topic: {problem}"
            )
        # The baseline for the first cpu_percent; /proc reads are tiny and fast.
        self._last_cpu = _cpu_times(_read(self._proc / "stat"))

    async def poll(self) -> list[FlowFile]:
        reading = self.read_all()
        content = json.dumps(reading, separators=(",", ":")).encode()
        return [FlowFile.create(self.topic, content, {}, self.ctx.clock.now_ns())]

    def read_all(self) -> dict[str, Any]:
        """One reading, as the dict that becomes the FlowFile's JSON content."""
        out: dict[str, Any] = {}
        out.update(self._cpu())
        out.update(self._load())
        out.update(self._memory())
        out.update(self._disk())
        out.update(self._temperatures())
        uptime = _read(self._proc / "uptime")
        out["uptime_s"] = float(uptime.split()[0]) if uptime else None
        return out

    def _cpu(self) -> dict[str, Any]:
        now = _cpu_times(_read(self._proc / "stat"))
        before, self._last_cpu = self._last_cpu, now
        percent = None
        if now is not None:
            busy, total = now
            if before is not None and now[1] - before[1] > 0:
                busy, total = now[0] - before[0], now[1] - before[1]
            percent = _percent(busy, total)
        return {"cpu_percent": percent, "cpu_count": os.cpu_count()}

    def _load(self) -> dict[str, Any]:
        text = _read(self._proc / "loadavg")
        values: list[float | None] = [float(x) for x in text.split()[:3]] if text else []
        values += [None] * (3 - len(values))
        return {"load_1m": values[0], "load_5m": values[1], "load_15m": values[2]}

    def _memory(self) -> dict[str, Any]:
        mem = _meminfo(_read(self._proc / "meminfo"))
        total = mem.get("MemTotal")
        available = mem.get("MemAvailable")
        if available is None and "MemFree" in mem:  # kernels before 3.14
            available = mem["MemFree"] + mem.get("Buffers", 0) + mem.get("Cached", 0)
        swap_total = mem.get("SwapTotal")
        swap_free = mem.get("SwapFree")
        return {
            "memory_total_bytes": total,
            "memory_available_bytes": available,
            "memory_used_percent": (
                _percent(total - available, total)
                if total is not None and available is not None
                else None
            ),
            "swap_total_bytes": swap_total,
            "swap_used_bytes": (
                swap_total - swap_free if swap_total is not None and swap_free is not None else None
            ),
        }

    def _disk(self) -> dict[str, Any]:
        path = Path(self._disk_path).absolute()
        if self.config.disk_path is None:  # data_dir may not exist yet: the disk to hold it
            while not path.exists() and path != path.parent:
                path = path.parent
        out: dict[str, Any] = {
            "disk_path": str(path),
            "disk_total_bytes": None,
            "disk_free_bytes": None,
            "disk_used_percent": None,
        }
        try:
            st = os.statvfs(path)
        except OSError as err:
            # Null values under the path asked for: not its parent's disk's figures.
            problem = f"disk_path {str(path)!r} cannot be read: {err.strerror or err}"
            if problem != self._disk_error:
                self.ctx.log.warning("%s; the disk_* values are null", problem)
            self._disk_error = problem
            return out
        if self._disk_error is not None:
            self.ctx.log.info("disk_path %r can be read again", str(path))
            self._disk_error = None
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        free = st.f_bavail * st.f_frsize
        out["disk_total_bytes"] = st.f_blocks * st.f_frsize
        out["disk_free_bytes"] = free
        # As df shows it: the reserved blocks count neither as used nor as free.
        out["disk_used_percent"] = _percent(used, used + free)
        return out

    def _temperatures(self) -> dict[str, Any]:
        zones: dict[str, float] = {}
        for zone in sorted(self._thermal.glob("thermal_zone*")):
            raw = _read(zone / "temp")
            if raw is None or not raw.strip().lstrip("-").isdigit():
                continue  # some zones refuse reads (EINVAL/ENODATA) when idle
            name = (_read(zone / "type") or zone.name).strip() or zone.name
            if name in zones:
                name = f"{name}-{zone.name.removeprefix('thermal_zone')}"
            zones[name] = int(raw) / 1000.0
        if not zones:
            return {}
        return {"temperature_c": max(zones.values()), "temperatures_c": zones}
