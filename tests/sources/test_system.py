"""The system source, against a fake /proc and /sys tree and against this machine's own."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway import registry
from gateway.config.schema import Problems, build_dataclass
from gateway.core.clock import Clock
from gateway.core.component import Context
from gateway.core.errors import PermanentError
from gateway.sources.system import SystemSource

pytestmark = pytest.mark.unit

MEMINFO = """MemTotal:        4000000 kB
MemFree:          500000 kB
MemAvailable:    3000000 kB
Buffers:          100000 kB
Cached:          1000000 kB
SwapTotal:       1000000 kB
SwapFree:         750000 kB
HugePages_Total:       0
"""


class FixedClock(Clock):
    def now_ns(self) -> int:
        return 1_714_564_800_000_000_000

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        pass


def config(**options: Any) -> Any:
    entry = registry.find("source", "system")
    assert entry is not None and entry.cls is SystemSource
    problems = Problems()
    cfg = build_dataclass(entry.config, {"type": "system", **options}, (), problems)
    assert not problems.items, problems.items
    return cfg


def fake_root(tmp_path: Path, stat: str = "cpu  100 0 100 800 0 0 0 0 0 0\n") -> Path:
    root = tmp_path / "root"
    proc = root / "proc"
    proc.mkdir(parents=True)
    (proc / "stat").write_text(stat + "cpu0 1 2 3 4\nintr 5\n")
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "loadavg").write_text("0.42 0.35 0.30 1/234 5678\n")
    (proc / "uptime").write_text("86400.50 300000.00\n")
    thermal = root / "sys" / "class" / "thermal"
    for zone, kind, temp in [(0, "cpu-thermal", "48312"), (1, "gpu-thermal", "51000")]:
        (thermal / f"thermal_zone{zone}").mkdir(parents=True)
        (thermal / f"thermal_zone{zone}" / "type").write_text(kind + "\n")
        (thermal / f"thermal_zone{zone}" / "temp").write_text(temp + "\n")
    (thermal / "thermal_zone2").mkdir()  # a zone that cannot be read is skipped
    (thermal / "cooling_device0").mkdir()
    return root


def make(tmp_path: Path, root: Path | str = "/", **options: Any) -> SystemSource:
    ctx = Context(
        name="host", kind="source", gateway_id="pi-01", data_dir=str(tmp_path), clock=FixedClock()
    )
    return SystemSource(config(**options), ctx, root=str(root))


async def test_reading_from_a_fake_proc(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    source = make(tmp_path, root)
    assert source.mode == "poll" and source.interval == 10.0
    await source.connect()
    # 300 busy of 1000 jiffies since the baseline: 30 %.
    (root / "proc" / "stat").write_text("cpu  200 50 250 1400 100 0 0 0 0 0\n")
    (flowfile,) = await source.poll()
    assert flowfile.topic == "system/pi-01"
    assert flowfile.created == FixedClock().now_ns()
    reading = json.loads(flowfile.content)
    disk = os.statvfs(tmp_path)
    used = disk.f_blocks - disk.f_bfree
    assert reading == {
        "cpu_percent": 30.0,
        "cpu_count": os.cpu_count(),
        "load_1m": 0.42,
        "load_5m": 0.35,
        "load_15m": 0.30,
        "memory_total_bytes": 4_096_000_000,
        "memory_available_bytes": 3_072_000_000,
        "memory_used_percent": 25.0,
        "swap_total_bytes": 1_024_000_000,
        "swap_used_bytes": 256_000_000,
        "disk_path": str(tmp_path),
        "disk_total_bytes": disk.f_blocks * disk.f_frsize,
        "disk_free_bytes": pytest.approx(disk.f_bavail * disk.f_frsize, rel=0.01),
        "disk_used_percent": pytest.approx(100 * used / (used + disk.f_bavail), abs=1),
        "temperature_c": 51.0,
        "temperatures_c": {"cpu-thermal": 48.312, "gpu-thermal": 51.0},
        "uptime_s": 86400.5,
    }

    # The next reading covers only the time since the previous one: 100 % busy.
    (root / "proc" / "stat").write_text("cpu  300 50 250 1400 100 0 0 0 0 0\n")
    (flowfile,) = await source.poll()
    assert json.loads(flowfile.content)["cpu_percent"] == 100.0


async def test_first_poll_without_a_baseline_uses_the_time_since_boot(tmp_path: Path) -> None:
    source = make(tmp_path, fake_root(tmp_path))
    (flowfile,) = await source.poll()  # no connect(): 200 busy of 1000 since boot
    assert json.loads(flowfile.content)["cpu_percent"] == 20.0


async def test_missing_files_give_null(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    source = make(tmp_path / "not" / "yet" / "there", empty)
    await source.connect()
    reading = json.loads((await source.poll())[0].content)
    for key in ("cpu_percent", "load_1m", "memory_total_bytes", "memory_used_percent",
                "swap_used_bytes", "uptime_s"):  # fmt: skip
        assert reading[key] is None, key
    assert "temperature_c" not in reading and "temperatures_c" not in reading
    # A data directory that does not exist yet reports the disk that is to hold it.
    assert reading["disk_path"] == str(tmp_path)
    assert reading["disk_total_bytes"] > 0
    assert source.status() == {}


async def test_a_disk_path_that_does_not_exist(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the nearest existing parent's disk ('/' for an unmounted /mnt/usb) was
    # reported, silently. Now: null values under the path asked for, the reason in the
    # status, one warning in the log, one info when it is back.
    usb = tmp_path / "usb"
    source = make(tmp_path, fake_root(tmp_path), disk_path=str(usb))
    await source.connect()
    with caplog.at_level("INFO"):
        for _ in range(3):
            reading = json.loads((await source.poll())[0].content)
            assert reading["disk_path"] == str(usb)
            assert reading["disk_total_bytes"] is None and reading["disk_free_bytes"] is None
            assert reading["disk_used_percent"] is None
        problem = f"disk_path {str(usb)!r} cannot be read: No such file or directory"
        assert source.status() == {"disk_error": problem}
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert [r.getMessage() for r in warnings] == [
            f"source host: {problem}; the disk_* values are null"
        ]

        usb.mkdir()
        reading = json.loads((await source.poll())[0].content)
        assert reading["disk_path"] == str(usb) and reading["disk_total_bytes"] > 0
        assert source.status() == {}
        assert [r.getMessage() for r in caplog.records if r.levelname == "INFO"] == [
            f"source host: disk_path {str(usb)!r} can be read again"
        ]


async def test_old_kernel_without_memavailable(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    (root / "proc" / "meminfo").write_text(
        "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n"
    )
    reading = make(tmp_path, root).read_all()
    assert reading["memory_available_bytes"] == 400 * 1024
    assert reading["memory_used_percent"] == 60.0
    assert reading["swap_total_bytes"] is None


async def test_this_machine(tmp_path: Path) -> None:
    source = make(tmp_path, interval="2s")
    assert source.interval == 2.0
    await source.connect()
    reading = json.loads((await source.poll())[0].content)
    assert reading["cpu_percent"] is None or 0 <= reading["cpu_percent"] <= 100
    assert reading["memory_total_bytes"] > reading["memory_available_bytes"] > 0
    assert reading["uptime_s"] > 0
    assert reading["load_1m"] >= 0
    assert reading["disk_total_bytes"] >= reading["disk_free_bytes"] > 0


async def test_gateway_id_that_makes_no_topic(tmp_path: Path) -> None:
    ctx = Context(name="host", kind="source", gateway_id="pi/#")
    source = SystemSource(config(), ctx, root=str(fake_root(tmp_path)))
    with pytest.raises(PermanentError, match="gateway id 'pi/#'"):
        await source.connect()


def test_config() -> None:
    assert config(interval="5m").interval == 300.0
    entry = registry.find("source", "system")
    assert entry is not None
    problems = Problems()
    build_dataclass(
        entry.config, {"type": "system", "interval": "50ms", "intervall": 1}, (), problems
    )
    assert problems.items == [
        (("intervall",), "unknown key (did you mean 'interval'?)"),
        (("interval",), "must be between 100ms and 100 years"),
    ]
    problems = Problems()  # it crashed the source at every restart (ValueError)
    build_dataclass(entry.config, {"type": "system", "disk_path": "/da\0ta"}, (), problems)
    assert problems.items == [(("disk_path",), "'/da\\x00ta' cannot hold a NUL character")]
