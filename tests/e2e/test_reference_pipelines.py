"""The reference pipelines of config/examples/, run by the real gateway process.

MySQL -> file: rows are inserted into MariaDB while the gateway streams them into
rotated CSV files; the gateway is killed with SIGKILL twice on the way; every row is
in the files exactly once.

Redis -> database aggregation: readings are XADDed to a Redis stream while the gateway
aggregates them per device per minute into PostgreSQL; killed with SIGKILL twice with
windows open, the minute rows equal those of an uninterrupted run on the same input
(and those computed here from the readings).
"""

from __future__ import annotations

import csv
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.e2e.harness import wait_for
from tests.sinks.contract import unique_name

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
ROWS = 3000
CHUNK = 25


def csv_rows(data_dir: Path) -> list[dict[str, str]]:
    """The rows of orders.csv.N (oldest first) and orders.csv; read while the gateway
    writes, so a file without its header yet or a line not finished is left out."""

    def age(path: Path) -> int:
        return -int(path.suffix[1:]) if path.suffix != ".csv" else 0

    rows: list[dict[str, str]] = []
    for path in sorted(data_dir.glob("orders.csv*"), key=age):
        text = path.read_text()
        text = text[: text.rfind("\n") + 1]
        if text:
            rows.extend(csv.DictReader(text.splitlines()))
    return rows


class Inserter(threading.Thread):
    """Inserts ROWS orders in chunks, a little at a time, from another connection."""

    def __init__(self, mariadb: Any, table: str) -> None:
        super().__init__(daemon=True)
        self.mariadb = mariadb
        self.table = table
        self.inserted = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.inserted < ROWS:
                values = ", ".join(
                    f"('c{(self.inserted + i) % 7}', {self.inserted + i}.25, NOW(6))"
                    for i in range(CHUNK)
                )
                self.mariadb.execute(
                    f"INSERT INTO `{self.table}` (customer, amount, created_at) VALUES {values}"
                )
                self.inserted += CHUNK
                time.sleep(0.02)
        except BaseException as err:
            self.error = err


def test_mysql_to_file_survives_two_kills_with_every_row_once(
    mariadb: Any, gateway_factory: Any
) -> None:
    table = unique_name()
    mariadb.execute(
        f"CREATE TABLE `{table}` (id INT AUTO_INCREMENT PRIMARY KEY, customer VARCHAR(20),"
        " amount DECIMAL(10,2), created_at DATETIME(6))"
    )
    config = yaml.safe_load((EXAMPLES / "mysql-to-file.yaml").read_text())
    del config["gateway"]["data_dir"]  # the test's folder
    source = config["sources"]["orders"]
    source.update(dsn=mariadb.dsn, table=table, interval="100ms", page_size=40)
    config["sinks"]["orders_csv"]["rotate_bytes"] = "32KiB"  # many files on the way
    gw = gateway_factory(config)
    gw.start()
    inserter = Inserter(mariadb, table)
    inserter.start()
    data = gw.data_dir
    for kill_at in (ROWS // 4, ROWS // 2):
        wait_for(lambda n=kill_at: len(csv_rows(data)) >= n, 60, f"{kill_at} rows in the files")
        gw.kill()
        gw.start()
    inserter.join(120)
    assert inserter.error is None and inserter.inserted == ROWS
    wait_for(lambda: len(csv_rows(data)) >= ROWS, 60, "every row in the files")
    time.sleep(1.0)  # a repeat would show by now
    assert gw.stop() == 0
    rows = csv_rows(data)
    order_ids = [int(r["order_id"]) for r in rows]
    assert sorted(order_ids) == list(range(1, ROWS + 1)), "every row, none twice"
    assert order_ids == sorted(order_ids), "in the order of the table, across the files"
    assert len({r["id"] for r in rows}) == ROWS
    first = rows[0]
    assert first["customer"] == "c0" and first["amount"] == "0.25"
    assert len(list(data.glob("orders.csv.*"))) >= 2, "rotated on the way"
    assert gw.starts == 3


DEVICES = 3
READINGS = 1800  # one every 0.5 s of event time: 15 minutes, 45 minute rows
T0 = 1_714_560_000  # a whole minute (2024-05-01T10:40:00Z)


def reading(i: int) -> dict[str, str]:
    """Reading i, as text like any Redis stream field."""
    return {
        "device": f"d{i % DEVICES}",
        "ts": f"{T0 + i * 0.5}",
        "temp": f"{20 + (i * 7 % 50) / 10}",
    }


def expected_rows() -> list[tuple[Any, ...]]:
    """(device, minute start in s, count, avg, min, max) computed from the readings."""
    groups: dict[tuple[str, int], list[float]] = {}
    for i in range(READINGS):
        r = reading(i)
        minute = int(float(r["ts"])) // 60 * 60
        groups.setdefault((r["device"], minute), []).append(float(r["temp"]))
    return sorted(
        (device, minute, len(v), sum(v) / len(v), min(v), max(v))
        for (device, minute), v in groups.items()
    )


class Feeder(threading.Thread):
    """XADDs readings[first:last] in small chunks, `pause` seconds apart, up to `limit`:
    the test raises it stage by stage, so a kill always finds the feeder paused
    mid-stream with minutes still open, however slow the machine."""

    def __init__(self, url: str, key: str, first: int, last: int, pause: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.key, self.first, self.last = key, first, last
        self.pause = pause
        self.sent = first
        self.limit = last
        self.raised = threading.Event()
        self.error: BaseException | None = None

    def feed_up_to(self, limit: int) -> None:
        self.limit = limit
        self.raised.set()

    def run(self) -> None:
        try:
            while self.sent < self.last:
                if self.sent >= self.limit:
                    self.raised.wait(1.0)
                    self.raised.clear()
                    continue
                pipe = self.client.pipeline(transaction=False)
                end = min(self.sent + 10, self.limit)
                for i in range(self.sent, end):
                    pipe.xadd(self.key, reading(i))  # type: ignore[arg-type]
                pipe.execute()
                self.sent = end
                time.sleep(self.pause)
        except BaseException as err:
            self.error = err


def aggregation_run(
    redis_url: str, postgres: Any, gateway_factory: Any, folder: Path, kills: int
) -> list[tuple[Any, ...]]:
    """Feed every reading (then one far ahead that closes every minute) through the
    example pipeline, killing the gateway `kills` times with windows open; the rows."""
    key, table = unique_name(), unique_name()
    config = yaml.safe_load((EXAMPLES / "redis-aggregation.yaml").read_text())
    config["gateway"]["data_dir"] = str(folder / key)  # a store of its own
    config["sources"]["readings"].update(url=redis_url, key=key, block="100ms")
    config["sinks"]["warehouse"].update(dsn=postgres.dsn, table=table)
    gw = gateway_factory(config)
    gw.start()
    feeder = Feeder(redis_url, key, 0, READINGS, pause=0.02 if kills else 0.0)
    stage = READINGS // (kills + 1)
    feeder.limit = stage
    feeder.start()

    def rows() -> list[tuple[Any, ...]]:
        try:
            return postgres.fetch(  # type: ignore[no-any-return]
                f"SELECT device, extract(epoch FROM minute)::bigint, readings, temp_avg,"
                f" temp_min, temp_max FROM {table} ORDER BY 1, 2"
            )
        except Exception:  # the sink has not created the table yet
            return []

    for k in range(kills):
        # kill mid-stream: the feeder paused at the end of this stage, its minutes done
        # but the last (within the allowed lateness), the current ones open
        done = DEVICES * (stage * (k + 1) // 120 - 1)  # 120 readings a minute
        wait_for(lambda done=done: len(rows()) >= done, 60, f"{done} minute rows")
        gw.kill()
        gw.start()
        feeder.feed_up_to(READINGS if k == kills - 1 else stage * (k + 2))
    feeder.feed_up_to(READINGS)
    feeder.join(120)
    assert feeder.error is None and feeder.sent == READINGS
    Feeder(redis_url, key, READINGS, READINGS).client.xadd(
        key, {"device": "end", "ts": str(T0 + 100_000), "temp": "0"}
    )
    want = DEVICES * 15
    wait_for(lambda: len(rows()) >= want, 60, f"{want} minute rows")
    time.sleep(1.0)  # a row too many would show by now
    assert gw.stop() == 0
    assert gw.starts == kills + 1
    return rows()


def test_redis_to_postgres_aggregation_gives_the_same_minutes_when_killed(
    redis: Any, postgres: Any, gateway_factory: Any, tmp_path: Path
) -> None:
    killed = aggregation_run(redis.url, postgres, gateway_factory, tmp_path, kills=2)
    calm = aggregation_run(redis.url, postgres, gateway_factory, tmp_path, kills=0)
    assert killed == calm, "the minute rows of the killed run differ from the calm run's"
    want = expected_rows()
    assert len(killed) == len(want) == DEVICES * 15
    for got, exp in zip(killed, want, strict=True):
        assert got[:3] == exp[:3], (got, exp)
        assert all(math.isclose(g, e, rel_tol=1e-9) for g, e in zip(got[3:], exp[3:], strict=True))
