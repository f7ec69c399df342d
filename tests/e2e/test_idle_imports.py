"""What an idle gateway has imported: the libraries only some configs need stay out of
its memory until they are used (README "Performance": idle RSS with the console on).

The real `edge-stream` process runs with PYTHONPROFILEIMPORTTIME=1, so every module it
imports (at start and later, lazily) is written to its log; nothing is mocked.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests import servers
from tests.e2e.harness import GatewayProcess, wait_for

pytestmark = pytest.mark.e2e

# Libraries a gateway with an MQTT source, a PostgreSQL sink and the console does not
# need until a config or a request asks for them, and what each adds to the idle RSS
# (docs/design-notes.md):
LAZY = {
    "cryptography": "remote_config, ENC() secrets (8.6 MB)",
    "prometheus_client": "a scrape of /metrics or /api/metrics (0.6 MB)",
    "croniter": "a cron `schedule:` (0.4 MB with dateutil)",
    "ruamel": "an edit through the config API (0.8 MB)",
    "importlib.metadata": "--version, a component type that is not built in (0.2 MB)",
}

_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$", re.MULTILINE)


def _imported(gw: GatewayProcess) -> set[str]:
    return set(_IMPORTED.findall(gw.log_path.read_text(errors="replace")))


def _loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def test_an_idle_gateway_imports_only_what_its_config_uses(
    mosquitto: servers.Mosquitto,
    postgres: servers.Postgres,
    gateway_factory: Callable[[dict[str, Any]], GatewayProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # the child inherits it
    gw = gateway_factory(
        {
            "mqtt": {"url": mosquitto.url},
            "sources": {
                "plant": {"type": "mqtt", "topics": ["idle/#"], "qos": 1},
                "self": {"type": "system", "interval": "1s"},
            },
            "routes": {"all": {"match": "#", "sinks": ["pg"]}},
            "sinks": {"pg": {"type": "postgres", "dsn": postgres.dsn, "table": "idle_imports"}},
        }
    )
    gw.start()
    wait_for(lambda: gw.sink("pg")["state"] == "running", 30, "the PostgreSQL sink running")
    modules = _imported(gw)
    # the parsing works, and the console and the sink's driver are there
    assert {"gateway.app", "aiohttp", "asyncpg"} <= modules
    loaded = {name: why for name, why in LAZY.items() if _loaded(modules, name)}
    assert not loaded, f"imported by an idle gateway (needed only for): {loaded}"

    # a scrape brings prometheus_client in, and the metrics are served as before
    url = f"http://127.0.0.1:{gw.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    assert "edge_stream_source_flowfiles_total" in text
    assert "process_resident_memory_bytes" in text
    assert _loaded(_imported(gw), "prometheus_client")
    assert gw.stop() == 0
