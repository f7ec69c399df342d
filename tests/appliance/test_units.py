"""The systemd units (systemd/): `systemd-analyze verify` finds nothing to say about them,
and the gateway's service keeps an exposure of at most 3.0 in `systemd-analyze security`."""

from __future__ import annotations

import re
import shlex
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


# The serial device groups the unit allows whose driver is a loadable module (Debian's
# and the Pi's kernels build the 8250 and PL011 UARTs, ttyS and ttyAMA, in).
SERIAL_MODULES = {"ttyUSB": "usbserial", "ttyACM": "cdc_acm"}


def test_the_usb_serial_drivers_are_loaded_before_the_gateway_starts() -> None:
    """systemd resolves `DeviceAllow=char-GROUP` against /proc/devices when the unit
    starts and drops a group it cannot find: without the driver loaded then (no adapter
    plugged in at boot), an adapter plugged in later could never be opened. The unit
    loads each such driver first (modprobe@), as systemd.resource-control(5) advises."""
    text = (REPO / "systemd/edge-stream.service").read_text()
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values.setdefault(key, []).extend(value.split())
    groups = {v.removeprefix("char-") for v in values["DeviceAllow"] if v.startswith("char-")}
    assert groups >= set(SERIAL_MODULES)
    for group, module in SERIAL_MODULES.items():
        unit = f"modprobe@{module}.service"
        assert unit in values.get("Wants", []), f"char-{group} needs {unit} in Wants="
        assert unit in values.get("After", []), f"char-{group} needs {unit} in After="


def _service_setup_commands() -> list[list[str]]:
    """The commands README "Running it as a service" gives for a machine without the image."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running it as a service", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found, "README 'Running it as a service' gives no setup commands"
    commands: list[list[str]] = []
    for line in found.group(1).splitlines():
        for part in line.split("&&"):
            if part.strip():
                commands.append(shlex.split(part))
    return commands


def test_the_readme_setup_makes_what_the_unit_needs(tmp_path: Path) -> None:
    """What the unit names (its user and group, the venv's program, the config file and
    its folder) is what README's setup commands make, and the user they add is one
    `useradd` accepts (run against a copy of this machine's user files)."""
    text = (REPO / "systemd/edge-stream.service").read_text()
    unit = dict(line.split("=", 1) for line in text.splitlines() if "=" in line[:40])
    user, group = unit["User"], unit["Group"]
    exec_start = unit["ExecStart"].split()
    program, config = exec_start[0], exec_start[exec_start.index("-c") + 1]
    commands = _service_setup_commands()

    adds = [c for c in commands if c[0] == "useradd"]
    assert adds and adds[0][-1] == user, commands
    assert "--user-group" in adds[0] and group == user
    venvs = [c[-1] for c in commands if c[:3] == ["python3", "-m", "venv"]]
    assert [f"{v}/bin/edge-stream" for v in venvs] == [program]
    installs = [c for c in commands if c[0] == "install"]
    folder = f"/etc/{unit['ConfigurationDirectory']}"
    assert any("-d" in c and c[-1] == folder and c[c.index("-o") + 1] == user for c in installs)
    assert any(c[-1] == config and c[c.index("-o") + 1] == user for c in installs)
    assert any(c[-2:] == ["systemd/edge-stream.service", "/etc/systemd/system/edge-stream.service"]
               for c in installs)  # fmt: skip
    assert ["systemctl", "enable", "--now", "edge-stream"] in commands

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if Path("/etc", name).exists():
            shutil.copy(Path("/etc", name), root / "etc" / name)
    result = subprocess.run(
        ["useradd", "--root", str(root), *adds[0][1:]], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    passwd = (root / "etc/passwd").read_text().splitlines()
    assert any(line.startswith(f"{user}:") for line in passwd)
    assert any(line.startswith(f"{group}:") for line in (root / "etc/group").read_text().split())


def test_the_readme_runs_the_commands_as_the_units_user() -> None:
    """README told to run `secret keygen`, `config rollback`, `store`... on the service's
    files from a shell, as root: they made root-owned files (a 0600 key, a restored
    config) that the gateway, running as the unit's User=, could not read. The commands
    it gives run as that user, with the unit's program and config."""
    text = (REPO / "systemd/edge-stream.service").read_text()
    unit = dict(line.split("=", 1) for line in text.splitlines() if "=" in line[:40])
    exec_start = unit["ExecStart"].split()
    program, config = exec_start[0], exec_start[exec_start.index("-c") + 1]
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running it as a service", 1)[1].split("\n## ", 1)[0]
    section = " ".join(section.split())  # a command in backticks may be cut across lines
    runs = re.findall(r"`sudo -u (\S+) (?:env \S+ )?(\S+) ([^`]*)`", section)
    assert runs, "README 'Running it as a service' says not how to run the commands"
    for user, command, args in runs:
        assert (user, command) == (unit["User"], program), runs
        assert args == "..." or f"-c {config}" in args, runs
