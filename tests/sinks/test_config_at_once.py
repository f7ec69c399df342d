"""Every sink's config reports every problem at once: a key that fails (a wrong type, a
value not among the choices, a dsn that cannot be read) hides none of the problems that
the sink's own check finds in its other keys, and makes none up about them."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import registry
from gateway.config import reference
from tests.sinks.contract import config_problems

pytestmark = pytest.mark.unit

SINKS = [entry for entry in registry.entries() if entry.kind == "sink"]

# No key of any type takes this: a mapping whose one key no schema knows, holding a list.
WRONG = {"no_such_key": ["x"]}


def sample(entry: Any) -> dict[str, Any]:
    keys = reference.sample(entry.config, entry.type)
    del keys["type"]
    return keys


@pytest.mark.parametrize("entry", SINKS, ids=lambda e: e.type)
def test_a_key_that_fails_is_the_only_problem_of_a_valid_sample(entry: Any) -> None:
    base = sample(entry)
    assert config_problems(entry.type, "s", **base)[1] == []
    names = [name for name in reference.fields(entry.config)[1] if name != "type"]
    for name in names:
        # the key itself, or an item of it when it is a list or a mapping, is wrong
        for wrong in (WRONG, [WRONG], {"k": WRONG}):
            _, problems = config_problems(entry.type, "s", **{**base, name: wrong})
            assert problems, (name, wrong)
            assert all(p.startswith(f"sinks.s.{name}") for p in problems), (name, problems)


CASES = {
    "postgres": ({"dsn": "postgresql://u:pw@db:99999/x"}, {"table": "read-ings"}),
    "mysql": ({"dsn": "mysql://u:pw@db:99999/x"}, {"table": "read-ings"}),
    "redis": ({"mode": "streams"}, {"key": "{topc}"}),
    "file": ({"format": "cvs"}, {"rotate_bytes": 100}),
    "mqtt": ({"retain": "maybe"}, {"url": "http://x"}),
    "http": ({"mode": "eachh"}, {"url": "ftp://x"}),
    "amqp": ({"durable": "maybe"}, {"routing_key": "{nope}"}),
    "nats": ({"timeout": "soon"}, {"subject": "a.{nope}"}),
}


@pytest.mark.parametrize("entry", SINKS, ids=lambda e: e.type)
def test_a_key_that_fails_hides_no_problem_of_another_key(entry: Any) -> None:
    failing, checked = CASES[entry.type]
    _, problems = config_problems(entry.type, "s", **{**sample(entry), **failing, **checked})
    keys = sorted({p.split(":")[0].removeprefix("sinks.s.") for p in problems})
    assert keys == sorted([*failing, *checked]), problems


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_bad_dsn_hides_no_other_problem_of_a_sql_sink(kind: str) -> None:
    # Before: only the dsn's problem was reported; the table and columns were not checked.
    dsn = f"{'postgresql' if kind == 'postgres' else 'mysql'}://gw:s3cret-pw@db:99999/x"
    for keys, last in (
        ({"table": "read-ings", "columns": {"t": {"from": "field.t", "type": "doubel"}}},
         "columns.t.type"),
        ({"table": 5, "columns": {"t": "tpoic"}}, "columns.t"),  # a wrong type is None
    ):  # fmt: skip
        _, problems = config_problems(kind, "db", dsn=dsn, **keys)
        assert [p.split(":")[0] for p in problems] == [
            "sinks.db.dsn",
            "sinks.db.table",
            f"sinks.db.{last}",
        ], problems
        assert not any("s3cret-pw" in p for p in problems)
