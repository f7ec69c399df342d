"""`make image-test`: boot the appliance image under QEMU and check it from outside.

A copy of build/edge-stream-<version>-arm64.img (1 GiB larger, so the first boot grows the
data partition) gets, on its FAT boot partition (written with mtools, no mount), an
edge-stream.yaml (the shipped config with gateway.id `image-test` and watch_config off, so
that only `systemctl reload` reloads it) and an SSH public key as authorized_keys. QEMU's
virt machine (cortex-a72) boots the kernel and initrd copied out of the image, headless,
with user networking restricted to the guest (no way out) and the guest's 8080, 1883 and
22 forwarded to 127.0.0.1 only. Then, from outside:

  - the first boot printed the credentials on the (serial) console
  - systemd reaches multi-user (over ssh; the boot time is measured to it)
  - edge-stream.service is active (ssh: systemctl is-active), the hostname is image-test
  - /healthz answers through the forwarded port
  - an MQTT message published with the sensors' password into the VM's Mosquitto lands
    in the gateway's file sink (/var/lib/edge-stream/readings.jsonl)
  - a config change (a second file sink) applied by `systemctl reload edge-stream`
    shows in /api/status
  - after `systemctl reboot` (timed to multi-user again): the gateway runs, the reading
    is still there, no credentials were made again, no unit failed

Exit 0 when every check passes; the console log is build/image-test/console.log.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build"
WORK = BUILD / "image-test"
BOOT_TIMEOUT = 600.0  # emulated, on a busy machine; a boot takes 35-60 s on an idle one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, subprocess.SubprocessError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(every)
    raise SystemExit(f"image-test: FAILED: no {what} within {timeout:.0f} s (last: {last!r})")


class Check:
    def __init__(self) -> None:
        self.passed: list[str] = []

    def ok(self, what: str) -> None:
        self.passed.append(what)
        print(f"  ok  {what}", flush=True)


def find_image() -> tuple[Path, Path, Path]:
    images = sorted(BUILD.glob("edge-stream-*-arm64.img"))
    if not images:
        compressed = sorted(BUILD.glob("edge-stream-*-arm64.img.xz"))
        if not compressed:
            raise SystemExit("image-test: no build/edge-stream-*-arm64.img; run `make image`")
        subprocess.run(["xz", "-dk", str(compressed[-1])], check=True)
        images = sorted(BUILD.glob("edge-stream-*-arm64.img"))
    image = images[-1]
    stem = image.name.removesuffix(".img")
    kernel, initrd = BUILD / f"{stem}.vmlinuz", BUILD / f"{stem}.initrd"
    for path in (kernel, initrd):
        if not path.exists():
            raise SystemExit(f"image-test: no {path}; run `make image` again")
    return image, kernel, initrd


def prepare(image: Path) -> tuple[Path, Path]:
    """The disk copy with the test's files on its boot partition; the SSH key."""
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    disk = WORK / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    subprocess.run(["truncate", "-s", "+1G", str(disk)], check=True)
    key = WORK / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    table = json.loads(
        subprocess.run(
            ["sfdisk", "-J", str(disk)], check=True, capture_output=True, text=True
        ).stdout
    )["partitiontable"]
    offset = int(table["partitions"][0]["start"]) * int(table.get("sectorsize", 512))
    config = yaml.safe_load((REPO / "rootfs/etc/edge-stream/gateway.yaml").read_text())
    config["gateway"]["id"] = "image-test"
    config["gateway"]["watch_config"] = False
    (WORK / "edge-stream.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(key.with_suffix(".pub"), WORK / "authorized_keys")
    for name in ("edge-stream.yaml", "authorized_keys"):
        subprocess.run(
            ["mcopy", "-o", "-i", f"{disk}@@{offset}", str(WORK / name), f"::{name}"],
            check=True,
        )
    return disk, key


def main() -> int:
    if not shutil.which("qemu-system-aarch64"):
        raise SystemExit("image-test: no qemu-system-aarch64; run: apt-get install qemu-system-arm")
    image, kernel, initrd = find_image()
    disk, key = prepare(image)
    web, mqtt, ssh_port = free_port(), free_port(), free_port()
    console = WORK / "console.log"
    forwards = ",".join(
        f"hostfwd=tcp:127.0.0.1:{host}-:{guest}"
        for host, guest in ((web, 8080), (mqtt, 1883), (ssh_port, 22))
    )
    command = [
        "nice", "-n", "10", "qemu-system-aarch64",
        "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "root=LABEL=ES_ROOT rw rootwait console=ttyAMA0 systemd.show_status=1",
        "-drive", f"file={disk},format=raw,if=virtio",
        # restrict=on: the guest reaches nothing outside; only the forwards come in
        "-netdev", f"user,id=net0,restrict=on,{forwards}",
        "-device", "virtio-net-pci,netdev=net0,romfile=",  # no PXE ROM: direct kernel boot
        "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
    ]  # fmt: skip
    print(f"image-test: booting {image.name} under QEMU (console: {console})", flush=True)
    started = time.monotonic()
    qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    check = Check()
    try:
        return run_checks(qemu, started, console, key, web, mqtt, ssh_port, check)
    finally:
        qemu.terminate()
        try:
            qemu.wait(20)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.wait()


def run_checks(
    qemu: subprocess.Popen[bytes],
    started: float,
    console: Path,
    key: Path,
    web: int,
    mqtt: int,
    ssh_port: int,
    check: Check,
) -> int:
    def text() -> str:
        if qemu.poll() is not None:
            raise SystemExit(f"image-test: FAILED: QEMU exited with {qemu.returncode}")
        return console.read_text(errors="replace") if console.exists() else ""

    # The credentials come on the serial console during the first boot; the login (and
    # so everything else) only once the key on the boot partition was taken.
    wait_for("the credentials on the console", lambda: "user sensors" in text(), BOOT_TIMEOUT)

    found = re.search(r"user admin\s+password (\S+)", text())
    sensors = re.search(r"user sensors\s+password (\S+)", text())
    login = re.search(r"user edge\s+password (\S+)", text())
    if not (found and sensors and login):
        raise SystemExit("image-test: FAILED: no credentials printed on the console")
    web_pw, mqtt_pw, login_pw = found.group(1), sensors.group(1), login.group(1)
    check.ok("the first boot printed the console, login and MQTT passwords")

    def ssh(command: str, stdin: str = "") -> str:
        result = subprocess.run(
            [
                "ssh", "-i", str(key), "-p", str(ssh_port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "edge@127.0.0.1", command,
            ],
            input=stdin, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if result.returncode != 0:
            raise subprocess.SubprocessError(f"{command}: {result.stderr.strip()}")
        return result.stdout.strip()

    def sudo(command: str, stdin: str = "") -> str:
        return ssh(f"sudo -S -p '' {command}", f"{login_pw}\n{stdin}")

    wait_for(
        "multi-user.target active (over ssh)",
        lambda: ssh("systemctl is-active multi-user.target") == "active",
        BOOT_TIMEOUT,
        2,
    )
    boot = time.monotonic() - started
    check.ok(f"systemd reached multi-user {boot:.0f} s after QEMU started")
    check.ok(f"systemd-analyze: {ssh('systemd-analyze time').splitlines()[0]}")

    state = wait_for(
        "edge-stream.service active",
        lambda: ssh("systemctl is-active edge-stream.service") == "active" and "active",
        120,
        2,
    )
    check.ok(f"edge-stream.service is {state} (Type=notify: READY=1 came)")
    hostname = ssh("hostname")
    if hostname != "image-test":
        raise SystemExit(f"image-test: FAILED: hostname {hostname!r}, not gateway.id image-test")
    check.ok("edge-stream.yaml from the boot partition taken; hostname image-test")
    failed = ssh("systemctl --failed --no-legend --plain | cut -d' ' -f1")
    if failed:
        raise SystemExit(f"image-test: FAILED: failed units: {failed}")
    check.ok("no failed unit")

    def healthz() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/healthz", timeout=5) as r:
            return r.status == 200

    wait_for("/healthz through the forwarded port", healthz, 60)
    check.ok("/healthz answers on the forwarded port")

    marker = uuid.uuid4().hex
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"image-test-{marker[:8]}")
    client.username_pw_set("sensors", mqtt_pw)
    client.connect("127.0.0.1", mqtt)
    client.loop_start()
    client.publish(
        "sensors/image-test/temp", json.dumps({"marker": marker}), qos=1
    ).wait_for_publish(30)
    client.loop_stop()
    client.disconnect()
    wait_for(
        "the MQTT message in readings.jsonl",
        lambda: marker in sudo("cat /var/lib/edge-stream/readings.jsonl"),
        60,
        2,
    )
    check.ok("an MQTT message published with the sensors' password reached the file sink")

    auth = base64.b64encode(f"admin:{web_pw}".encode()).decode()

    def status() -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{web}/api/status", headers={"Authorization": f"Basic {auth}"}
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    config = yaml.safe_load(sudo("cat /etc/edge-stream/gateway.yaml"))
    config["sinks"]["second"] = {"type": "file", "path": "second.jsonl"}
    config["routes"]["everything"]["sinks"].append("second")
    sudo("tee /etc/edge-stream/gateway.yaml >/dev/null", yaml.safe_dump(config, sort_keys=False))
    sudo("systemctl reload edge-stream.service")
    wait_for(
        "the reloaded config's sink in /api/status",
        lambda: "second" in status().get("sinks", {}),
        60,
        2,
    )
    last = status().get("config", {}).get("last_reload") or {}
    if last.get("outcome") != "applied" or last.get("trigger") != "sighup":
        raise SystemExit(f"image-test: FAILED: last reload {last!r}")
    check.ok("systemctl reload applied a config change (a second sink)")

    # A second boot: what a board does every day (no first-boot work), and what survives.
    boot_id = ssh("cat /proc/sys/kernel/random/boot_id")
    try:
        sudo("systemctl reboot")
    except subprocess.SubprocessError:
        pass  # the connection may drop before ssh returns
    rebooted = time.monotonic()

    def up_again() -> bool:
        new = ssh("cat /proc/sys/kernel/random/boot_id")
        return new != boot_id and ssh("systemctl is-active multi-user.target") == "active"

    wait_for("multi-user after a reboot", up_again, BOOT_TIMEOUT, 2)
    second = time.monotonic() - rebooted
    check.ok(f"a second boot reached multi-user {second:.0f} s after `systemctl reboot`")
    wait_for(
        "edge-stream.service active after the reboot",
        lambda: ssh("systemctl is-active edge-stream.service") == "active",
        120,
        2,
    )
    if marker not in sudo("cat /var/lib/edge-stream/readings.jsonl"):
        raise SystemExit("image-test: FAILED: the reading is gone after the reboot")
    if text().count("user sensors") != 1 or ssh("systemctl --failed --no-legend --plain"):
        raise SystemExit(
            "image-test: FAILED: the second boot made credentials again or a unit failed"
        )
    check.ok("after it: the gateway runs, the reading is kept, no new credentials, no failed unit")
    print("image-test: the second boot's slowest units (systemd-analyze blame):")
    for line in ssh("systemd-analyze blame --no-pager").splitlines()[:6]:
        print(f"      {line.strip()}")
    print(
        f"image-test: {len(check.passed)} passed, 0 failed; to multi-user: first boot"
        f" {boot:.0f} s, second boot {second:.0f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
