"""End to end, per sink type: outages under load and kill -9 during delivery.

`make test` runs both scenarios for PostgreSQL and the kill for the file sink too; the
other kinds run in `make faults` (each sink's outage and recovery is also in its
contract suite, and the short kill storm of tests/faults kills every kind in `make test`).

The real `edge-stream run` process takes numbered QoS 1 messages ({"seq": n}) from
Mosquitto and delivers them to each kind of upstream (see upstreams.py). What reached
the upstream is counted by sequence number: PostgreSQL, MariaDB and Redis must hold
every one exactly once; the file and MQTT sinks promise at least once, so there none
may be missing and duplicates are reported, not failed.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import GatewayProcess, Publisher, store_pending, store_write_lock, wait_for
from tests.e2e.upstreams import (
    FileOutput,
    FileUpstream,
    MqttUpstream,
    MysqlUpstream,
    PostgresUpstream,
    RedisUpstream,
    Upstream,
)

pytestmark = pytest.mark.e2e

KINDS = ["postgres", "mysql", "redis", "mqtt", "file"]


def kinds(in_make_test: tuple[str, ...]) -> list[Any]:
    """KINDS as parameters, those not named marked `long` (run by `make faults`)."""
    return [
        kind if kind in in_make_test else pytest.param(kind, marks=pytest.mark.long)
        for kind in KINDS
    ]


# Quick reconnects after an outage, so the tests wait less; the backoff is still exercised.
FAST_RETRY = {"retry": {"initial": "200ms", "max": "2s"}}
OUTAGE_S = 6.0
SAMPLE_S = 1.5  # status samples during the outage: 300 messages apart at 200/s
RSS_SLACK_MB = 30.0


@pytest.fixture
def upstream_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str, str], Upstream]]:
    """`make(kind, name)`: an upstream of that kind, with its own table/stream/topic."""
    made: list[Upstream] = []

    def make(kind: str, name: str) -> Upstream:
        up: Upstream
        if kind == "postgres":
            up = PostgresUpstream(request.getfixturevalue("postgres"), name)
        elif kind == "mysql":
            up = MysqlUpstream(request.getfixturevalue("mariadb"), name)
        elif kind == "redis":
            up = RedisUpstream(request.getfixturevalue("redis"), f"e2e:{name}")
        elif kind == "mqtt":
            up = MqttUpstream(request.getfixturevalue("mosquitto_factory")(), name)
        else:
            up = FileUpstream(tmp_path, name)
        made.append(up)
        return up

    yield make
    for up in made:
        up.close()


def gateway_config(mosquitto: Any, name: str, sinks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "mqtt": {"url": mosquitto.url},
        "sources": {
            "plant": {"type": "mqtt", "topics": [f"{name}/#"], "qos": 1, "client_id": f"gw-{name}"}
        },
        "routes": {"readings": {"match": f"{name}/#", "sinks": list(sinks)}},
        "sinks": {sink: {**keys, **FAST_RETRY} for sink, keys in sinks.items()},
    }


def seqs_of_content(contents: list[bytes]) -> set[int]:
    return {int(json.loads(c)["seq"]) for c in contents}


def check_delivery(up: Upstream, total: int, first: int = 0) -> str:
    """Assert every seq in [first, first+total) arrived (exactly once where promised);
    returns a one-line summary with the duplicates an at-least-once sink produced."""
    seqs = up.seqs()
    counts = Counter(seqs)
    wanted = set(range(first, first + total))
    missing = sorted(wanted - counts.keys())
    stray = sorted(counts.keys() - wanted)
    assert not missing, f"{up.kind}: {len(missing)} sequence numbers missing: {missing[:20]}"
    assert not stray, f"{up.kind}: unexpected sequence numbers {stray[:20]}"
    repeated = {s: n for s, n in counts.items() if n > 1}
    if up.exact:
        assert not repeated, (
            f"{up.kind}: {len(repeated)} sequence numbers arrived more than once, e.g. "
            f"{sorted(repeated.items())[:10]}"
        )
    return f"{up.kind}: {len(seqs)} arrivals, {total} distinct, {len(seqs) - total} duplicates"


def all_arrived(up: Any, total: int, first: int = 0) -> bool:
    return set(range(first, first + total)) <= set(up.seqs())


@pytest.mark.parametrize("kind", kinds(("postgres",)))
def test_outage_under_load_buffers_keeps_the_other_sink_going_and_delivers_once(
    kind: str,
    tmp_path: Path,
    mosquitto: Any,
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    upstream_factory: Callable[[str, str], Upstream],
) -> None:
    name = f"outage_{kind}"
    total, rate = 2000, 200  # 10 s of publishing: the whole outage happens under load
    up = upstream_factory(kind, name)
    # The other sink on the same route: a file, or PostgreSQL when the file is under test.
    other: Any = (
        upstream_factory("postgres", f"{name}_other")
        if kind == "file"
        else FileOutput(tmp_path / "other", "other")
    )
    config = gateway_config(mosquitto, name, {"under_test": up.sink(), "other": other.sink()})
    gw = gateway_factory(config)
    gw.start()

    publisher = Publisher(mosquitto.port, total, topics=10, prefix=name, rate=rate)
    publisher.start()
    wait_for(lambda: up.count() >= 200 and other.count() >= 200, 30, "the first rows in both")
    rss_before = gw.rss_mb()

    up.stop()
    stopped = time.monotonic()
    samples = []  # (seconds into the outage, sent, other's count, other's depth, depth)
    try:
        while (elapsed := time.monotonic() - stopped) < OUTAGE_S:
            # Watching, not synchronising: the outage lasts OUTAGE_S whatever happens.
            time.sleep(min(SAMPLE_S, OUTAGE_S - elapsed))
            sinks = gw.status()["sinks"]
            samples.append(
                (
                    round(time.monotonic() - stopped, 1),
                    publisher.sent,
                    other.count(),
                    sinks["other"]["depth"],
                    sinks["under_test"]["depth"],
                )
            )
        state = gw.sink("under_test")["state"]
    finally:
        up.start()
    report = "\n".join(
        f"  t={s[0]}s sent={s[1]} other={s[2]} (depth {s[3]}) depth={s[4]}" for s in samples
    )
    assert state != "running", f"the {kind} sink did not notice the outage:\n{report}"
    # The other sink kept delivering through the outage, with no backlog of its own...
    loaded = 0
    for before, after in itertools.pairwise(samples):
        if after[1] - before[1] >= 200:  # at least 200 published in between
            loaded += 1
            assert after[2] > before[2], f"the other sink stalled during the outage:\n{report}"
    assert loaded >= len(samples) - 2, f"the load ended early in the outage:\n{report}"
    assert max(s[3] for s in samples) < 1000, f"the other sink fell behind:\n{report}"
    # ...while the sink under test buffered in the store.
    depths = [s[4] for s in samples]
    assert depths == sorted(depths), f"depth should only rise during the outage:\n{report}"
    published_during = samples[-1][1] - samples[0][1]
    assert depths[-1] - depths[0] >= published_during * 0.9, f"store depth:\n{report}"

    publisher.join_checked()
    wait_for(lambda: all_arrived(up, total), 120, f"every seq in {kind} after the outage")
    wait_for(lambda: all_arrived(other, total), 60, "every seq in the other sink")
    wait_for(lambda: all(s["depth"] == 0 for s in gw.status()["sinks"].values()), 60, "depth 0")
    time.sleep(1.0)  # a late duplicate would show now
    summary = check_delivery(up, total)
    check_delivery(other, total)
    rss_after = gw.rss_mb()
    assert rss_after <= rss_before + RSS_SLACK_MB, (
        f"gateway RSS grew from {rss_before:.1f} MiB to {rss_after:.1f} MiB over the outage"
    )
    print(f"{summary}; RSS {rss_before:.1f} -> {rss_after:.1f} MiB\n{report}")
    assert gw.stop() == 0
    # A dead upstream is told in one line at a time, by us: no library's traceback.
    assert "Traceback" not in gw.log(), gw.log()[-3000:]


@pytest.mark.parametrize("kind", kinds(("postgres", "file")))
def test_kill_9_during_delivery_loses_nothing_and_duplicates_nothing(
    kind: str,
    mosquitto: Any,
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    upstream_factory: Callable[[str, str], Upstream],
) -> None:
    name = f"kill_{kind}"
    first_part, second_part = 4000, 4000
    total = first_part + second_part
    up = upstream_factory(kind, name)
    # Small batches: many write -> record cycles for a kill to land in.
    sink = {**up.sink(), "batch": {"max_rows": 100}}
    gw = gateway_factory(gateway_config(mosquitto, name, {"under_test": sink}))
    gw.start()

    # A backlog, built while the upstream is down.
    up.stop()
    publisher = Publisher(mosquitto.port, first_part, topics=10, prefix=name)
    publisher.start()
    publisher.join_checked()
    # (The file sink notices its folder is gone at its next rotation: a few lines still
    # get through before the backlog builds.)
    wait_for(
        lambda: (s := gw.sink("under_test"))["depth"] + s["delivered"] >= first_part,
        60,
        "the backlog in the store",
    )

    # Kill 1, deterministic: a batch is written upstream but its delivery is not yet
    # recorded, because the store's write lock is held; the restart must deliver it
    # again, and the upstream must not take it twice.
    base = gw.sink("under_test")["delivered"]  # upstream already (the file's first lines)
    with store_write_lock(gw.store_path):
        up.start()
        wait_for(lambda: up.count() > base, 60, "a batch upstream while the store is locked")
        gw.kill()
    pending = seqs_of_content(store_pending(gw.store_path, "under_test"))
    already_upstream = pending & set(up.seqs())
    assert already_upstream, "the kill should leave a batch that is upstream and still pending"

    # Kill 2, during the drain of a backlog (made of what is left and a second part
    # published while the gateway runs with its upstream down).
    up.stop()
    gw.start()
    publisher = Publisher(mosquitto.port, second_part, topics=10, prefix=name, first=first_part)
    publisher.start()
    publisher.join_checked()
    wait_for(
        lambda: gw.sink("under_test")["depth"] >= second_part, 60, "the second backlog in the store"
    )
    backlog = gw.sink("under_test")["depth"]
    up.start()
    # Watch the gateway's own figure: a subscriber or a query may lag behind the drain.
    wait_for(
        lambda: gw.sink("under_test")["depth"] <= backlog - 300,
        60,
        "the drain under way",
        interval=0.01,
    )
    gw.kill()
    left = len(store_pending(gw.store_path, "under_test"))
    assert left > 0, "the kill came after the drain ended; it should land during it"

    gw.start()
    wait_for(lambda: all_arrived(up, total), 120, f"every seq in {kind} after two kills")
    wait_for(lambda: gw.sink("under_test")["depth"] == 0, 60, "depth 0")
    time.sleep(1.0)  # a late duplicate would show now
    summary = check_delivery(up, total)
    print(
        f"{summary}; kill 1 left {len(already_upstream)} rows upstream and pending,"
        f" kill 2 left {left} pending"
    )
    assert gw.stop() == 0


def test_a_backlog_is_delivered_oldest_first_once_the_upstream_is_back(
    mosquitto: Any,
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    upstream_factory: Callable[[str, str], Upstream],
) -> None:
    """README, Delivery guarantees: an upstream that is down makes the store grow, and
    the sink "drains oldest first when it is back". The readings of one topic that
    waited in the store reach the upstream broker in the order they were published
    (first arrivals; the MQTT sink is at least once, a repeat may follow)."""
    name = "drain_order"
    up = upstream_factory("mqtt", name)
    gw = gateway_factory(gateway_config(mosquitto, name, {"up": up.sink()}))
    gw.start()
    first = Publisher(mosquitto.port, 10, topics=1, prefix=name)
    first.start()
    first.join_checked()
    wait_for(lambda: all_arrived(up, 10), 30, "the first readings upstream")

    up.stop()
    waiting = 300
    during = Publisher(mosquitto.port, waiting, topics=1, prefix=name, first=10)
    during.start()
    during.join_checked()
    wait_for(
        lambda: (s := gw.sink("up"))["depth"] == waiting and s["state"] != "running",
        30,
        "the readings buffered in the store while the upstream is down",
    )
    up.start()
    wait_for(lambda: all_arrived(up, 10 + waiting), 60, "the backlog upstream")
    arrivals = list(dict.fromkeys(up.seqs()))  # first arrivals, in their order
    assert arrivals == sorted(arrivals), f"not oldest first: {arrivals}"
    assert gw.stop() == 0
