"""The reference pipelines of config/examples/, run by the real gateway process.

MySQL -> file: rows are inserted into MariaDB while the gateway streams them into
rotated CSV files; the gateway is killed with SIGKILL twice on the way; every row is
in the files exactly once.
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from typing import Any

import pytest
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
