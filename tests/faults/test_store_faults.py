"""Store faults: large payloads under a memory bound, a disk that fills and empties, and
corrupt store files. Each runs the real `edge-stream` process against real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests import servers
from tests.e2e.harness import GatewayProcess, wait_for

pytestmark = pytest.mark.e2e

MEMORY_BOUND_MB = 150
# Idle after the busy spell, memory goes back down: to at most this much above what the
# same gateway took fresh (36 MB when this was set at 80 MB; 58 MB since the console runs
# on aiohttp, with metrics and alerts).
IDLE_SLACK_MB = 44


def publish(port: int, topic: str, first: int, count: int, size: int) -> None:
    """Publish messages `first`..`first + count - 1` at QoS 1, each a JSON object of about
    `size` bytes holding its number, and wait until the broker has acknowledged them all."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex}")
    client.max_inflight_messages_set(20)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        pad = "x" * max(0, size - 40)
        infos = [
            client.publish(topic, json.dumps({"seq": n, "pad": pad}), qos=1)
            for n in range(first, first + count)
        ]
        for info in infos:
            info.wait_for_publish(120)
            assert info.is_published(), "the broker did not acknowledge a publish"
    finally:
        client.disconnect()
        client.loop_stop()


def peak_rss_mb(gw: GatewayProcess) -> float:
    """The gateway's peak resident memory so far (VmHWM in /proc), in MiB."""
    assert gw.proc is not None
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


def rows_and_distinct(pg: servers.Postgres, table: str) -> tuple[int, int]:
    """Rows in `table` and distinct message numbers among them; (0, 0) before it exists."""
    if pg.fetch("SELECT to_regclass($1)", table)[0][0] is None:
        return 0, 0
    count, distinct = pg.fetch(f"SELECT count(*), count(DISTINCT payload->>'seq') FROM {table}")[0]
    return int(count), int(distinct)


def pg_config(mq: servers.Mosquitto, pg: servers.Postgres, table: str) -> dict[str, Any]:
    return {
        "mqtt": {"url": mq.url},
        "sources": {
            "plant": {
                "type": "mqtt",
                "topics": [f"{table}/#"],
                "qos": 1,
            }
        },
        "routes": {"all": {"match": f"{table}/#", "sinks": ["pg"]}},
        "sinks": {"pg": {"type": "postgres", "dsn": pg.dsn, "table": table}},
    }


def large_payloads_stay_under_the_memory_bound(
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    mosquitto: servers.Mosquitto,
    postgres: servers.Postgres,
    count: int,
) -> None:
    """250 KB payloads (under the default max_payload of 256 KiB) published while
    PostgreSQL is down fill the store; once it is back they drain. The gateway's peak RSS
    stays under MEMORY_BOUND_MB throughout, and every message arrives exactly once."""
    table = f"mem{uuid.uuid4().hex[:10]}"
    postgres.stop()
    config = pg_config(mosquitto, postgres, table)
    # the whole outage must fit the store's budget (6,000 x 250 KB is over the default 1GiB)
    config["buffer"] = {"max_bytes": "2GiB"}
    gw = gateway_factory(config)
    gw.start()
    fresh = gw.rss_mb()
    publish(mosquitto.port, f"{table}/big", 0, count, 250_000)
    wait_for(lambda: gw.sink("pg")["depth"] >= count, 300, f"{count} FlowFiles in the store")
    postgres.start()
    wait_for(lambda: rows_and_distinct(postgres, table)[1] >= count, 300, "every row upstream")
    assert rows_and_distinct(postgres, table) == (count, count)
    peak = peak_rss_mb(gw)
    assert peak < MEMORY_BOUND_MB, f"peak RSS {peak:.0f} MB (log: {gw.log_path})"
    bound = fresh + IDLE_SLACK_MB
    wait_for(lambda: gw.rss_mb() < bound, 30, f"RSS under {bound:.0f} MB when idle")
    print(
        f"large payloads: {count} x 250 KB with PostgreSQL down then up, lost 0 duplicated 0,"
        f" peak RSS {peak:.0f} MB, idle {gw.rss_mb():.0f} MB (fresh {fresh:.0f} MB)"
    )


def test_large_payloads_stay_under_the_memory_bound(
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    mosquitto: servers.Mosquitto,
    postgres: servers.Postgres,
) -> None:
    large_payloads_stay_under_the_memory_bound(gateway_factory, mosquitto, postgres, 600)


@pytest.mark.long
def test_large_payloads_stay_under_the_memory_bound_long(
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    mosquitto: servers.Mosquitto,
    postgres: servers.Postgres,
) -> None:
    """The figure of issue 8: 6,000 messages of 250 KB (1.16 GB RSS before the fix)."""
    large_payloads_stay_under_the_memory_bound(gateway_factory, mosquitto, postgres, 6000)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "is empty (0 bytes)"), (b"\x00garbage" * 512, "is not a SQLite database")],
)
def test_a_damaged_store_file_stops_the_start_until_it_is_reset(
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    mosquitto: servers.Mosquitto,
    tmp_path: Path,
    content: bytes,
    problem: str,
) -> None:
    """A store.db that exists but is no store: one clear line, exit code 1, the file left
    alone; `edge-stream store reset` moves it aside and the next start is empty."""
    out = tmp_path / "out.jsonl"
    gw = gateway_factory(
        {
            "mqtt": {"url": mosquitto.url},
            "sources": {"plant": {"type": "mqtt", "topics": ["damaged/#"], "qos": 1}},
            "routes": {"all": {"match": "damaged/#", "sinks": ["file"]}},
            "sinks": {"file": {"type": "file", "path": str(out)}},
        }
    )
    gw.store_path.parent.mkdir(parents=True)
    gw.store_path.write_bytes(content)
    cli = [sys.executable, "-m", "gateway.cli"]
    run = subprocess.run(
        [*cli, "run", "-c", str(gw.config_path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert str(gw.store_path) in lines[0] and problem in lines[0]
    assert "edge-stream store reset" in lines[0]
    assert gw.store_path.read_bytes() == content
    reset = subprocess.run(
        [*cli, "store", "reset", "-c", str(gw.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    aside = list(gw.store_path.parent.glob("store.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content, reset.stdout
    gw.start()
    publish(mosquitto.port, "damaged/1", 0, 3, 100)
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 3, 30, "3 lines")
    assert gw.stop() == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs (the tests run as root); unmounted at the end whatever happened."""
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(path: Path) -> None:
    """Write zeros to `path` until the file system has no room left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 512):  # then what is left, smaller than a chunk
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_a_full_disk_stops_intake_but_not_delivery(
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    mosquitto: servers.Mosquitto,
    postgres: servers.Postgres,
    small_disk: Path,
) -> None:
    """data_dir on 20 MB, PostgreSQL down: publishing fills the disk, then a filler file
    takes the rest. With PostgreSQL back, delivery moves its cursors and purges although
    the disk is full; once the filler goes, intake resumes by itself, and every message
    arrives exactly once."""
    table = f"disk{uuid.uuid4().hex[:10]}"
    count = 2000
    config = pg_config(mosquitto, postgres, table)
    config["gateway"] = {"data_dir": str(small_disk / "data")}
    postgres.stop()
    gw = gateway_factory(config)
    gw.start()
    publish(mosquitto.port, f"{table}/x", 0, count, 10_000)  # 20 MB for a 20 MB disk
    disk = wait_for(
        lambda: gw.status()["store"]["disk"]["full"] and gw.status()["store"]["disk"],
        60,
        "the store to say the disk is full",
    )
    assert disk["free_bytes"] < 8 << 20 and disk["store_bytes"] > 0
    assert "disk full" in gw.log_path.read_text()
    stored = gw.sink("pg")["depth"]
    assert 0 < stored < count, "intake paused before everything was in"
    filler = small_disk / "filler"
    fill(filler)
    postgres.start()
    wait_for(lambda: rows_and_distinct(postgres, table)[1] >= stored, 120, "the stored rows")
    wait_for(lambda: gw.sink("pg")["depth"] == 0, 60, "the sink's cursor to move")
    filler.unlink()
    try:
        wait_for(lambda: rows_and_distinct(postgres, table)[1] >= count, 240, "every row")
    except AssertionError as err:
        raise AssertionError(f"{err}\nstatus: {gw.status()}\n{gw.log()}") from None
    assert rows_and_distinct(postgres, table) == (count, count)
    wait_for(lambda: not gw.status()["store"]["disk"]["full"], 30, "intake to resume")
    assert "cannot rollback" not in gw.log_path.read_text()
