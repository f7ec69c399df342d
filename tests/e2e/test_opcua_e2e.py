"""End to end: an OPC UA server (separate process) -> the real `edge-stream` process -> a file.

Subscribed and polled nodes, with the password given as ENC(...): the values the server
holds, then a value changed at the server, reach the file sink, and /api/status shows
the source connected; the password appears nowhere in the log or the status.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from gateway.config import secrets
from tests import servers
from tests.e2e.harness import GatewayProcess, wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "opcua-e2e-pw-7731"


def rows(path: Path) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        row = json.loads(line)
        payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
        out.setdefault(row["topic"], []).append(payload["value"])
    return out


async def _write(url: str, name: str, value: float) -> None:
    client = Client(url)
    client.set_user("op")
    client.set_password(PASSWORD)
    await client.connect()
    try:
        node = client.get_node(f"ns=2;s={name}")
        await node.write_value(ua.DataValue(ua.Variant(value, ua.VariantType.Double)))
    finally:
        await client.disconnect()


def test_opcua_values_reach_a_file_through_the_gateway(tmp_path: Path) -> None:
    workspace = servers.Workspace()
    gw: GatewayProcess | None = None
    try:
        server = workspace.opcua(["--user", f"op:{PASSWORD}"])
        key_file = secrets.generate_key_file(tmp_path / "secret.key")
        key = secrets.load_key(key_file)
        assert key is not None
        out = tmp_path / "out.jsonl"
        config = {
            "gateway": {"secret_key_file": str(key_file)},
            "sources": {
                "line1": {
                    "type": "opcua",
                    "url": server.url,
                    "username": "op",
                    "password": secrets.encrypt(PASSWORD, key),
                    "publishing_interval": "100ms",
                    "interval": "200ms",
                    "nodes": {
                        "temperature": {"node": "ns=2;s=Double"},
                        "counter": {"path": "2:Plant/2:Counter", "mode": "poll"},
                    },
                }
            },
            "routes": {"plant": {"match": "opcua/#", "sinks": ["archive"]}},
            "sinks": {"archive": {"type": "file", "path": str(out)}},
        }
        gw = GatewayProcess(tmp_path, config)
        gw.start()
        wait_for(lambda: len(rows(out).get("opcua/line1/counter", [])) >= 2, 60,
                 f"two polls of counter in the file (log: {gw.log_path})")  # fmt: skip
        asyncio.run(_write(server.url, "Double", 77.5))
        wait_for(lambda: 77.5 in rows(out).get("opcua/line1/temperature", []), 60,
                 f"the changed temperature in the file (log: {gw.log_path})")  # fmt: skip
        source = gw.status()["sources"]["line1"]
        assert source["connected"] is True and source["server"]["state"] == "online"
        assert source["errors"] == 0
        assert gw.stop() == 0
        assert PASSWORD not in gw.log_path.read_text() and PASSWORD not in json.dumps(source)
    finally:
        if gw is not None:
            gw.close()
        workspace.close()
