"""End to end: every documented alert rule, through the real gateway, as a user sets it up.

One gateway process and its servers serve the whole module (module-scoped `rig`):
PostgreSQL behind a sink, a Mosquitto of its own behind an MQTT source, a pymodbus PLC
(separate process) behind a Modbus source, a webhook receiver, and the shared Mosquitto
as the gateway's broker (its `edge-stream/<id>/alerts`). Each rule is configured as
README and docs/metrics.md say, with `for:` and thresholds short, its condition caused
for real (servers stopped, malformed JSON dead-lettered, nothing published on a topic,
the store filled past its share of a small budget), and each firing and resolved event
must arrive once on MQTT, once at the webhook, and in /api/status.

The tests run in file order on the one gateway: the causes are all made at once, the
alerts checked, the causes undone, the resolutions checked; the dead-letter rule, which
counts over a minute, resolves last.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests import servers
from tests.e2e.harness import GatewayProcess, Watcher, free_port, wait_for
from tests.e2e.upstreams import PostgresUpstream

pytestmark = pytest.mark.e2e

GID = "alertrules"
PLC = Path(__file__).resolve().parents[1] / "sources" / "modbus_plc.py"

# The alerts every cause below must raise, by key (rule:subject).
FIRED = {
    "sink_failing:db",
    "sink_backlog:db",
    "store_budget:store",
    "source_offline:field",
    "source_offline:plc/plc1",
    "quiet_beat:alertrules/beat",
    "bad_input:store",
}


class Plc:
    """The pymodbus PLC as a separate process that can be stopped and started on one port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PLC), "tcp", "--registers", "20", "--tcp-port", str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline(), "the PLC process did not start"

    def stop(self) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc = None


@dataclass
class Rig:
    gw: GatewayProcess
    watcher: Watcher
    hook: servers.HttpReceiver
    pg: PostgresUpstream
    field: servers.Mosquitto
    plc: Plc

    @property
    def topic(self) -> str:
        return f"edge-stream/{GID}/alerts"

    def webhook(self, state: str) -> list[dict[str, Any]]:
        bodies = (json.loads(r["body"]) for r in self.hook.received() if r["path"] == "/hook")
        return [b for b in bodies if b["state"] == state]

    def mqtt(self, state: str) -> list[dict[str, Any]]:
        return self.watcher.alerts(self.topic, state)

    def active(self) -> set[str]:
        return {a["key"] for a in self.gw.status()["alerts"]["active"]}

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        """QoS 1 to the MQTT source's broker, each message acknowledged by it."""
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{GID}")
        client.max_inflight_messages_set(200)
        client.connect("127.0.0.1", self.field.port)
        client.loop_start()
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(30)
        client.disconnect()
        client.loop_stop()


def keys(events: list[dict[str, Any]]) -> list[str]:
    return sorted(e["key"] for e in events)


def wait_keys(rig: Rig, found: Any, wanted: set[str], timeout: float, what: str) -> None:
    """Wait until `found()` holds every key of `wanted`; fail saying which are missing."""
    deadline = time.monotonic() + timeout
    while not (have := set(found())) >= wanted:
        if time.monotonic() > deadline:
            status = rig.gw.status()
            raise AssertionError(
                f"{what}: missing {sorted(wanted - have)} after {timeout:.0f} s; active:"
                f" {sorted(rig.active())}; sinks {status['sinks']}; sources"
                f" {status['sources']}; store {status.get('store')}\n{rig.gw.log()}"
            )
        time.sleep(0.2)


@pytest.fixture(scope="module")
def rig(
    server_workspace: servers.Workspace,
    mosquitto: servers.Mosquitto,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Rig]:
    pg_server = server_workspace.postgres()
    field = server_workspace.mosquitto()
    hook = server_workspace.http_receiver()
    plc = Plc()
    plc.start()
    pg = PostgresUpstream(pg_server, "alert_rule_rows")
    watcher = Watcher(mosquitto.port, GID)
    gw = GatewayProcess(
        tmp_path_factory.mktemp("alert-rules"),
        {
            "gateway": {"id": GID},
            "mqtt": {"url": mosquitto.url},
            "buffer": {"max_bytes": "1MiB"},
            "sources": {
                "field": {"type": "mqtt", "url": field.url, "topics": [f"{GID}/#"], "qos": 1},
                "plc": {
                    "type": "modbus",
                    "interval": "200ms",
                    "backoff_max": "500ms",
                    "devices": {
                        "plc1": {
                            "url": f"tcp://127.0.0.1:{plc.port}",
                            "registers": {"level": {"address": 3}},
                        }
                    },
                },
            },
            "routes": {
                "data": {
                    "match": f"{GID}/data/#",
                    "processors": [{"type": "json"}],
                    "sinks": ["db"],
                }
            },
            "sinks": {"db": {**pg.sink(), "retry": {"initial": "200ms", "max": "1s"}}},
            "status": {"stats_interval": "0s"},
            "alerts": {
                "rules": {
                    # built-in rules changed by name (README: "change or turn off by name")
                    "sink_backlog": {"older_than": "1s"},
                    "sink_failing": {"for": "1s"},
                    "source_offline": {"for": "1s"},
                    "store_budget": {"percent": 20},
                    # ... and one turned off; a rule of one's own watches dead letters
                    "dead_letters": {"enabled": False},
                    "bad_input": {"condition": "dead_letters", "per_minute": 0},
                    "quiet_beat": {"condition": "no_data", "topic": f"{GID}/beat", "for": "2s"},
                },
                "resolve_after": "1s",  # short, as the rules' thresholds
                "webhook": {
                    "url": hook.url + "/hook",
                    "retry": {"initial": "200ms", "max": "1s"},
                },
            },
        },
    )
    try:
        gw.start()
        yield Rig(gw, watcher, hook, pg, field, plc)
    finally:
        gw.close()
        watcher.close()
        plc.stop()
        for server in (hook, field, pg_server):
            server_workspace.discard(server)


def test_check_config_names_the_line_and_key_of_a_bad_alert_rule(tmp_path: Path) -> None:
    cases = {
        "    sink_backlogg: {older_than: 5m}\n": (
            "g.yaml:5: alerts.rules.sink_backlogg",
            "did you mean 'sink_backlog'?",
        ),
        "    sink_failing: {for: soon}\n": (
            "g.yaml:5: alerts.rules.sink_failing.for:",
            "expected a duration",
        ),
        "    store_budget: {percent: 150}\n": (
            "g.yaml:5: alerts.rules.store_budget.percent:",
            "must be between 0 and 100",
        ),
        "    dead_letters: {per_minute: -1}\n": (
            "g.yaml:5: alerts.rules.dead_letters.per_minute:",
            "must be 0 or more",
        ),
        "    sink_backlog: {older_than: 5m, threshold: 3}\n": (
            "g.yaml:5: alerts.rules.sink_backlog.threshold:",
            "unknown key",
        ),
    }
    for rule, expected in cases.items():
        path = tmp_path / "g.yaml"
        path.write_text(
            "gateway: {id: t}\nmqtt: {url: 'mqtt://127.0.0.1:1883'}\nalerts:\n  rules:\n" + rule
        )
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "check-config", "-c", str(path)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
        out = (done.stdout + done.stderr).strip()
        assert done.returncode != 0, out
        assert "Traceback" not in out and len(out.splitlines()) == 1, out
        for part in expected:
            assert part in out, out


def test_every_rule_fires_once_on_mqtt_at_the_webhook_and_in_the_status(rig: Rig) -> None:
    fire_every_rule(rig)


def fire_every_rule(rig: Rig) -> None:
    # a first row proves the sink works; the beat topic stays quiet from the start
    rig.publish([(f"{GID}/data/0", b'{"seq": 0}')])
    wait_for(lambda: rig.pg.count() == 1, 30, "the first row in PostgreSQL")
    wait_for(lambda: rig.gw.status()["sources"]["plc"]["state"] == "running", 20, "the PLC read")

    rig.pg.stop()
    filler = json.dumps({"seq": 1, "pad": "x" * 1000}).encode()
    rig.publish(
        [(f"{GID}/data/bad", b"{not json")]  # dead-lettered by the json processor
        + [(f"{GID}/data/{n}", filler) for n in range(300)]  # > 20% of the 1 MiB budget
    )
    wait_for(lambda: rig.gw.sink("db")["depth"] == 300, 30, "the 300 FlowFiles in the store")
    rig.field.stop()
    rig.plc.stop()

    wait_keys(rig, lambda: keys(rig.webhook("firing")), FIRED, 40, "firing at the webhook")
    wait_keys(rig, lambda: keys(rig.mqtt("firing")), FIRED, 20, "firing on MQTT")
    wait_keys(rig, rig.active, FIRED, 10, "active in /api/status")
    fired = {e["key"]: e for e in rig.webhook("firing")}
    assert fired["sink_backlog:db"]["rule"] == "sink_backlog"
    assert fired["bad_input:store"]["condition"] == "dead_letters"
    assert fired["quiet_beat:alertrules/beat"]["condition"] == "no_data"
    assert fired["source_offline:plc/plc1"]["subject"] == "plc/plc1"
    for event in fired.values():
        assert event["gateway"] == GID and event["state"] == "firing", event
        assert event["resolved_at"] is None and event["message"], event
    # the turned-off built-in rule never fires, though dead letters came
    assert not any(e["rule"] == "dead_letters" for e in rig.webhook("firing"))


def test_every_rule_resolves_once_when_its_cause_is_undone(rig: Rig) -> None:
    resolve_every_rule(rig)


def resolve_every_rule(rig: Rig) -> None:
    rig.pg.start()
    rig.field.start()
    rig.plc.start()
    rig.publish([(f"{GID}/beat", b"{}")])  # one message ends the silence
    resolved = FIRED - {"bad_input:store"}  # counted over a minute: the last test
    wait_keys(rig, lambda: keys(rig.webhook("resolved")), resolved, 60, "resolved at the webhook")
    wait_keys(rig, lambda: keys(rig.mqtt("resolved")), resolved, 20, "resolved on MQTT")
    # (the beat topic, quiet again, may fire anew 2 s after its message)
    assert not rig.active() & (resolved - {"quiet_beat:alertrules/beat"})
    recent = rig.gw.status()["alerts"]["recent"]
    assert resolved <= {e["key"] for e in recent if e["state"] == "resolved"}
    # what waited reached PostgreSQL (not the bad one); the broker stopped right after
    # the commit may redeliver a few messages it was not yet told of, which the source
    # stores again and counts (docs: QoS 1, at least once)
    again = rig.gw.status()["sources"]["field"]["possible_duplicates"]
    wait_for(lambda: rig.pg.count() == 301 + again, 30, "what waited, in PostgreSQL")
    # each once so far
    for state in ("firing", "resolved"):
        for events in (rig.webhook(state), rig.mqtt(state)):
            counted = [k for k in keys(events) if not k.startswith("quiet_beat:")]
            assert counted == sorted(set(counted)), (state, counted)
    # the outages (PostgreSQL, a broker, the PLC) were each told in lines of ours: no
    # library's traceback (asyncpg's pool once logged one per reconnect try)
    assert "Traceback" not in rig.gw.log(), rig.gw.log()[-3000:]


@pytest.mark.long  # a minute of waiting for the dead-letter count to fall: `make faults`
def test_the_dead_letter_alert_resolves_a_minute_later_and_each_event_came_once(
    rig: Rig,
) -> None:
    if not rig.webhook("firing"):  # run alone (`make faults`): the rules fire here first
        fire_every_rule(rig)
        resolve_every_rule(rig)
    done = {"bad_input:store"}
    wait_keys(rig, lambda: keys(rig.webhook("resolved")), done, 90, "resolved at the webhook")
    wait_keys(rig, lambda: keys(rig.mqtt("resolved")), done, 20, "resolved on MQTT")
    assert "bad_input:store" not in rig.active()
    once = sorted(FIRED - {"quiet_beat:alertrules/beat"})
    for state in ("firing", "resolved"):
        for events in (rig.webhook(state), rig.mqtt(state)):
            assert [k for k in keys(events) if not k.startswith("quiet_beat:")] == once, state
    assert not any(e["rule"] == "dead_letters" for e in rig.webhook("firing"))


@pytest.mark.long
def test_a_source_offline_alert_on_the_gateways_own_broker_reaches_mqtt_when_it_is_back(
    gateway_factory: Any, mosquitto_factory: Any, http_receiver: servers.HttpReceiver
) -> None:
    """One broker for everything, as in the README's first config: stopped, the MQTT
    source goes offline and the alert's MQTT event must wait for the broker; it then
    comes promptly (it waited behind a backoff of up to a minute), and once. `long`: 30 s."""
    gid = "alertsolo"
    broker = mosquitto_factory()
    topic = f"edge-stream/{gid}/alerts"
    gw: GatewayProcess = gateway_factory(
        {
            "gateway": {"id": gid},
            "mqtt": {"url": broker.url},
            "sources": {"plant": {"type": "mqtt", "topics": [f"{gid}/#"], "qos": 1}},
            "alerts": {
                "defaults": False,
                "rules": {"source_offline": {"for": "1s"}},
                "webhook": {"url": http_receiver.url + "/hook"},
            },
        }
    )
    gw.start()
    watcher: Watcher | None = None
    try:

        def hooked(state: str) -> list[str]:
            bodies = [json.loads(r["body"]) for r in http_receiver.received()]
            return [b["key"] for b in bodies if b["state"] == state]

        broker.stop()
        wait_for(lambda: hooked("firing"), 30, "the webhook's firing event")
        assert [a["key"] for a in gw.status()["alerts"]["active"]] == ["source_offline:plant"]
        time.sleep(12)  # an outage of a while: the retries back off
        broker.start()
        watcher = Watcher(broker.port, gid)  # (the gateway reconnects after 1 s at the soonest)
        # It came 22 s after the broker in a run before the fix (the status connection and
        # the event each retried with backoff up to 60 s); now within the status
        # connection's 10 s.
        wait_for(lambda: watcher.alerts(topic, "firing"), 15, "the MQTT firing event")
        # resolved after the source's own reconnect (its backoff) and 5 s without trouble
        wait_for(lambda: watcher.alerts(topic, "resolved"), 40, "the MQTT resolved event")
        assert hooked("resolved") == ["source_offline:plant"]
        time.sleep(2)
        assert [e["key"] for e in watcher.alerts(topic, "firing")] == ["source_offline:plant"]
        assert len(watcher.alerts(topic, "resolved")) == 1 and hooked("firing") == hooked(
            "resolved"
        )
    finally:
        if watcher is not None:
            watcher.close()
