"""The appliance's first-boot script (rootfs/usr/lib/edge-stream/firstboot), run for real
in a private mount and host-name namespace: the folders it writes (/etc/edge-stream,
/var/lib/edge-stream, /etc/systemd/network, /etc/mosquitto, /etc/ssh, the boot partition)
are fresh tmpfs mounts there, /etc an overlay (its passwd holds the gateway's user),
/opt/edge-stream/venv a wrapper around this checkout. Nothing of this machine changes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROOTFS = REPO / "rootfs"
UNSHARE = ["unshare", "--mount", "--uts", "--propagation", "private"]

# What the namespace gets before the script runs; $T is the test's folder.
SETUP = r"""
set -euo pipefail
T=$1
fresh() { mkdir -p "$1"; mount -t tmpfs -o mode=0755 tmpfs "$1"; }
# /etc as an overlay: what the script writes there (passwd, hosts, hostname) stays here
fresh "$T/overlay"
mkdir "$T/overlay/upper" "$T/overlay/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$T/overlay/upper,workdir=$T/overlay/work" /etc
echo "edge-stream:x:$GW_UID:$GW_UID::/var/lib/edge-stream:/usr/sbin/nologin" >>/etc/passwd
echo "edge-stream:x:$GW_UID:" >>/etc/group
grep -q '^mosquitto:' /etc/group || echo "mosquitto:x:$((GW_UID + 1)):" >>/etc/group
fresh /etc/edge-stream
fresh /var/lib/edge-stream
fresh /etc/systemd/network
fresh /etc/mosquitto
fresh /etc/ssh
fresh /opt/edge-stream
fresh "$T/boot"
mount --bind /dev/null /dev/console
cp -a "$ROOTFS/etc/systemd/network/." /etc/systemd/network/
install -o edge-stream -g edge-stream -m 0640 "$ROOTFS/etc/edge-stream/gateway.yaml" \
  /etc/edge-stream/gateway.yaml
chown edge-stream:edge-stream /etc/edge-stream /var/lib/edge-stream
touch /var/lib/edge-stream/.grown   # a tmpfs has no partition to grow
mkdir -p /opt/edge-stream/venv/bin
for name in python edge-stream; do
  run='exec "$PY" "$@"'
  [ "$name" = edge-stream ] && run='exec "$PY" -m gateway.cli "$@"'
  printf '#!/bin/sh\nPY=%s\nexport PYTHONPATH=%s\n%s\n' "$PYTHON" "$REPO" "$run" \
    >/opt/edge-stream/venv/bin/$name
  chmod 0755 /opt/edge-stream/venv/bin/$name
done
cp -a "$T/card/." "$T/boot/"
EDGE_STREAM_BOOT=$T/boot "$ROOTFS/usr/lib/edge-stream/firstboot"
cp -a /etc/systemd/network/. "$T/network/"
cp -a "$T/boot/." "$T/card-after/"
cp /etc/edge-stream/gateway.yaml "$T/gateway.yaml"
"""


def _gateway_uid() -> int:
    """A uid for the gateway's user that can run this Python (a venv under /root, mode
    0700, is root's alone: then the user is root under another name)."""
    probe = subprocess.run(
        ["runuser", "-u", "nobody", "--", sys.executable, "-c", ""],
        capture_output=True,
    )
    return 64999 if probe.returncode == 0 else 0


def _firstboot(tmp_path: Path, card: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the script with `card` (name: text) on the boot partition."""
    if os.geteuid() != 0:
        pytest.fail("the first-boot test needs root (mount namespaces)", pytrace=False)
    for folder in ("card", "card-after", "network"):
        (tmp_path / folder).mkdir()
    for name, text in card.items():
        (tmp_path / "card" / name).write_text(text)
    setup = tmp_path / "setup.sh"
    setup.write_text(textwrap.dedent(SETUP))
    env = {
        **os.environ,
        "GW_UID": str(_gateway_uid()),
        "PYTHON": sys.executable,
        "REPO": str(REPO),
        "ROOTFS": str(ROOTFS),
    }
    return subprocess.run(
        [*UNSHARE, "bash", str(setup), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_a_network_file_from_the_card_comes_before_the_dhcp_defaults(tmp_path: Path) -> None:
    """systemd-networkd applies the first .network file (by name) that matches an
    interface: a static address in `eth0.network` (README's example) sorted after the
    image's 80-wired.network, which matches every wired interface, and was never used."""
    static = "[Match]\nName=eth0\n\n[Network]\nAddress=192.168.1.50/24\nGateway=192.168.1.1\n"
    result = _firstboot(tmp_path, {"eth0.network": static, "wifi.network": "[Match]\nName=wlan0\n"})
    assert result.returncode == 0, result.stdout + result.stderr
    names = sorted(p.name for p in (tmp_path / "network").iterdir())
    defaults = sorted(p.name for p in (ROOTFS / "etc/systemd/network").iterdir())
    taken = [n for n in names if n not in defaults]
    assert len(taken) == 2, names
    assert all(name < default for name in taken for default in defaults), names
    by_text = {(tmp_path / "network" / n).read_text(): n for n in taken}
    assert static in by_text
    assert "took eth0.network from the boot partition" in result.stdout


def test_the_first_boot_takes_the_config_and_writes_the_passwords(tmp_path: Path) -> None:
    config = (
        (ROOTFS / "etc/edge-stream/gateway.yaml")
        .read_text()
        .replace("id: edge-stream ", "id: boiler-room ")
    )
    result = _firstboot(tmp_path, {"edge-stream.yaml": config})
    assert result.returncode == 0, result.stdout + result.stderr
    after = {p.name for p in (tmp_path / "card-after").iterdir()}
    assert {"edge-stream.yaml.applied", "edge-stream-credentials.txt"} <= after, after
    assert "edge-stream-error.txt" not in after
    assert "id: boiler-room" in (tmp_path / "gateway.yaml").read_text()
    assert "hostname boiler-room (gateway.id)" in result.stdout
    credentials = (tmp_path / "card-after/edge-stream-credentials.txt").read_text()
    assert "user admin" in credentials and "user sensors" in credentials


def test_an_invalid_config_on_the_card_is_left_there_with_the_reason(tmp_path: Path) -> None:
    result = _firstboot(tmp_path, {"edge-stream.yaml": "gateway:\n  datadir: /x\n"})
    assert result.returncode == 0, result.stdout + result.stderr
    error = (tmp_path / "card-after/edge-stream-error.txt").read_text()
    assert "datadir" in error
    assert (tmp_path / "card-after/edge-stream.yaml").exists()
    assert "id: edge-stream " in (tmp_path / "gateway.yaml").read_text()
