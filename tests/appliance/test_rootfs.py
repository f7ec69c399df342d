"""The rootfs/ overlay laid onto the appliance image: its files are there, the gateway's
config passes `edge-stream check-config`, the fstab parses, and the board's Mosquitto
config runs (on free loopback ports): sensors need the password file on the LAN
listener, the gateway gets in anonymously on the local one, and a message crosses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml

from tests import servers
from tests.e2e.harness import GatewayProcess, free_port, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROOTFS = REPO / "rootfs"
FILES = [
    "etc/edge-stream/gateway.yaml",
    "etc/mosquitto/mosquitto.conf",
    "etc/systemd/journald.conf.d/edge-stream.conf",
    "etc/systemd/network/80-wired.network",
    "etc/systemd/network/80-wifi.network",
    "etc/fstab",
    "usr/lib/edge-stream/firstboot",
    "usr/lib/edge-stream/read-environment",
    "usr/lib/edge-stream/board-id",
]


def test_files_are_there() -> None:
    missing = [f for f in FILES if not (ROOTFS / f).is_file()]
    assert not missing
    assert os.access(ROOTFS / "usr/lib/edge-stream/firstboot", os.X_OK)


def test_firstboot_script_parses() -> None:
    result = subprocess.run(
        ["bash", "-n", str(ROOTFS / "usr/lib/edge-stream/firstboot")], capture_output=True
    )
    assert result.returncode == 0, result.stderr


def _check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def test_gateway_config_is_valid_with_the_first_boot_credentials(tmp_path: Path) -> None:
    """As the service runs it: data_dir from the unit, the console's account from the
    first boot (EnvironmentFile); without an account the LAN listen address is refused."""
    config = ROOTFS / "etc/edge-stream/gateway.yaml"
    env = {"EDGE_STREAM__GATEWAY__DATA_DIR": str(tmp_path)}
    account = {"EDGE_STREAM__WEB__USERNAME": "admin", "EDGE_STREAM__WEB__PASSWORD": "s3cret-pw"}
    result = _check_config(config, {**env, **account})
    assert result.returncode == 0, result.stdout + result.stderr
    refused = _check_config(config, env)
    assert refused.returncode != 0 and "web" in refused.stderr


def test_fstab_parses() -> None:
    result = subprocess.run(
        ["findmnt", "--verify", "--tab-file", str(ROOTFS / "etc/fstab")],
        capture_output=True,
        text=True,
    )
    said = result.stdout + result.stderr
    assert "0 parse errors" in said, said
    # the labels and mount points belong to the image, not this machine: only those
    # may be "unreachable" here
    problems = [
        line
        for line in said.splitlines()
        if line.strip().startswith("[") and "unreachable on boot required" not in line
    ]
    assert not problems, said
    text = (ROOTFS / "etc/fstab").read_text()
    mounts = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    assert all("noatime" in m[3] for m in mounts if m[2] in ("ext4", "vfat"))
    assert any(m[1] == "/var/lib/edge-stream" for m in mounts)


def test_journald_is_capped() -> None:
    text = (ROOTFS / "etc/systemd/journald.conf.d/edge-stream.conf").read_text()
    assert re.search(r"^SystemMaxUse=\d+M$", text, re.M)
    assert re.search(r"^Storage=(persistent|volatile)$", text, re.M)


class ApplianceMosquitto(servers.Mosquitto):
    """The rootfs mosquitto.conf, with its two listeners moved to free loopback ports and
    its files into the server's folder."""

    def __init__(self, workspace: servers.Workspace, password: str) -> None:
        super().__init__(workspace)
        self.local_port = free_port()
        self.password = password

    def setup(self) -> None:
        (self.dir / "data").mkdir()
        (self.dir / "conf.d").mkdir()
        passwords = self.dir / "passwd"
        subprocess.run(
            ["mosquitto_passwd", "-b", "-c", str(passwords), "sensors", self.password],
            check=True,
            capture_output=True,
        )
        passwords.chmod(0o600)
        text = (ROOTFS / "etc/mosquitto/mosquitto.conf").read_text()
        replacements = {
            r"^listener 1883$": f"listener {self.port} 127.0.0.1",
            r"^listener 1884 127\.0\.0\.1$": f"listener {self.local_port} 127.0.0.1",
            r"^password_file .*$": f"password_file {passwords}",
            r"^persistence_location .*$": f"persistence_location {self.dir / 'data'}/",
            r"^include_dir .*$": f"include_dir {self.dir / 'conf.d'}",
        }
        for pattern, new in replacements.items():
            text, count = re.subn(pattern, new, text, flags=re.M)
            assert count == 1, f"{pattern} not in rootfs/etc/mosquitto/mosquitto.conf"
        self.config_file.write_text(text)


@pytest.fixture
def broker(server_workspace: servers.Workspace) -> Any:
    server = ApplianceMosquitto(server_workspace, password="sensor-pw")
    try:
        server.start()
    except servers.ServerError as err:
        pytest.fail(str(err), pytrace=False)
    yield server
    server.close()


def _connect(port: int, user: tuple[str, str] | None = None) -> int:
    """The CONNACK's reason code (0: accepted)."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex)
    if user:
        client.username_pw_set(*user)
    codes: list[int] = []
    client.on_connect = lambda c, u, f, rc, p=None: codes.append(rc.value)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_for(lambda: codes, 10, "a CONNACK")
    finally:
        client.loop_stop()
        client.disconnect()
    return codes[0]


def test_mosquitto_lan_listener_needs_the_password(broker: ApplianceMosquitto) -> None:
    assert _connect(broker.port) != 0
    assert _connect(broker.port, ("sensors", "wrong")) != 0
    assert _connect(broker.port, ("sensors", "sensor-pw")) == 0
    assert _connect(broker.local_port) == 0  # the gateway, on the board itself


def test_the_appliance_config_takes_a_sensor_reading(
    broker: ApplianceMosquitto, tmp_path: Path
) -> None:
    """The shipped gateway.yaml against the shipped mosquitto.conf: a reading published on
    the LAN listener with the sensors' password lands in readings.jsonl."""
    config = yaml.safe_load((ROOTFS / "etc/edge-stream/gateway.yaml").read_text())
    config["gateway"]["data_dir"] = str(tmp_path / "data")
    assert config["mqtt"]["url"] == "mqtt://127.0.0.1:1884"
    config["mqtt"]["url"] = f"mqtt://127.0.0.1:{broker.local_port}"
    gateway = GatewayProcess(tmp_path, config)  # web on a free loopback port
    try:
        gateway.start()
        sensor = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="sensor-1")
        sensor.username_pw_set("sensors", "sensor-pw")
        sensor.connect("127.0.0.1", broker.port)
        sensor.loop_start()
        sensor.publish("sensors/room1/temp", b'{"temp": 21.5}', qos=1).wait_for_publish(10)
        sensor.loop_stop()
        sensor.disconnect()
        readings = tmp_path / "data" / "readings.jsonl"
        wait_for(
            lambda: readings.exists() and "sensors/room1/temp" in readings.read_text(),
            30,
            "the reading in readings.jsonl",
        )
    finally:
        gateway.stop()
        gateway.close()
