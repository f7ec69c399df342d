"""The systemd units (systemd/): `systemd-analyze verify` finds nothing to say about them,
and the gateway's service keeps an exposure of at most 3.0 in `systemd-analyze security`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "systemd").glob("*.service"))
MAX_EXPOSURE = 3.0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root file system as the image lays it out, enough for `verify --root`: the
    system's own units (targets), the rootfs overlay, our units, and the programs their
    Exec lines name."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copytree(REPO / "rootfs", root, dirs_exist_ok=True)
    for unit in UNITS:
        shutil.copy(unit, root / "usr/lib/systemd/system" / unit.name)
    venv_bin = root / "opt/edge-stream/venv/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "edge-stream").write_text("#!/bin/sh\n")
    (venv_bin / "edge-stream").chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin/kill")
    return root


def test_there_are_units() -> None:
    assert {u.name for u in UNITS} >= {"edge-stream.service", "edge-stream-firstboot.service"}


@pytest.mark.parametrize("unit", [u.name for u in UNITS])
def test_verify_is_clean(root: Path, unit: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not said, f"systemd-analyze verify {unit}:\n{said}"


def test_verify_sees_a_missing_program(root: Path, tmp_path: Path) -> None:
    """The check above can fail: a unit whose ExecStart is missing is reported."""
    bad = root / "usr/lib/systemd/system/edge-stream-broken.service"
    bad.write_text("[Service]\nExecStart=/opt/edge-stream/venv/bin/missing\n")
    try:
        result = subprocess.run(
            ["systemd-analyze", "verify", f"--root={root}", bad.name],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        bad.unlink()
    assert "is not executable" in result.stderr


def test_gateway_service_exposure() -> None:
    unit = REPO / "systemd/edge-stream.service"
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    exposure = float(found.group(1))
    print(f"systemd-analyze security edge-stream.service: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_gateway_service_keeps_the_serial_ports() -> None:
    """No PrivateDevices= (it would hide /dev/ttyUSB0 and the like); the dialout group."""
    text = (REPO / "systemd/edge-stream.service").read_text()
    settings = [line.split("=", 1) for line in text.splitlines() if "=" in line]
    keys = {k: v for k, v in settings if not k.startswith("#")}
    assert "PrivateDevices" not in keys
    assert keys["SupplementaryGroups"] == "dialout"
    assert keys["Type"] == "notify" and int(keys["WatchdogSec"]) > 0
