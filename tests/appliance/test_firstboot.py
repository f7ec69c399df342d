"""The appliance's first-boot script (rootfs/usr/lib/edge-stream/firstboot), run for real
in a private mount and host-name namespace: the folders it writes (/etc/edge-stream,
/var/lib/edge-stream and -firstboot, /etc/systemd/network, /etc/mosquitto, /etc/ssh, boot)
are fresh tmpfs mounts there, /etc, /var/lib and /opt overlays (passwd holds the
gateway's user), /opt/edge-stream/venv a wrapper around this checkout. Nothing of this
machine changes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROOTFS = REPO / "rootfs"
UNSHARE = ["unshare", "--mount", "--uts", "--propagation", "private"]

# What the gateway's user must reach (this checkout, the venv, the Python it is made
# from) behind a folder it cannot enter (a 0700 /root: a CI clone in /root/ci, a pyenv
# Python in /root/.pyenv): that folder is a 0755 tmpfs here, holding just those paths.
# A path that is itself closed (a checkout of mode 0700) is an overlay there, whose top,
# made here, is 0755: bound as it is, it stayed closed. What lies inside is as it is:
# a checkout cloned under umask 077 is refused by `_veiled`, saying what to do.
# $VEILED: see `_veiled`.
VEIL = r"""
umask 022
n=0
declare -A veiled=()
mkdir -p "$T/veil-tops"
mountpoint -q "$T/veil-tops" || mount -t tmpfs -o mode=0755 tmpfs "$T/veil-tops"
while IFS=$'\t' read -r closed path; do
  [ -n "$closed" ] || continue
  if [ -z "${veiled[$closed]:-}" ]; then
    n=$((n + 1))
    mkdir "$T/veiled-$n"
    mount --bind "$closed" "$T/veiled-$n"
    mount -t tmpfs -o mode=0755 tmpfs "$closed"
    veiled[$closed]=$T/veiled-$n
  fi
  mkdir -p "$path"
  inside=${veiled[$closed]}${path#"$closed"}
  if (( 0$(stat -c %a "$inside") & 1 )); then
    mount --bind "$inside" "$path"
  else
    top=$(mktemp -d "$T/veil-tops/XXXXXX")
    chmod 0755 "$top"
    mkdir "$top-work"
    mount -t overlay overlay -o "lowerdir=$inside,upperdir=$top,workdir=$top-work" "$path"
  fi
done <<<"$VEILED"
"""

# What the namespace gets before the script runs; $T is the test's folder. Every folder
# the script writes in is a fresh mount here.
SETUP = r"""
set -euo pipefail
T=$1
fresh() { mkdir -p "$1"; mount -t tmpfs -o mode=0755 tmpfs "$1"; }
# /etc, /var/lib and /opt as overlays: what is made or written there (passwd, hosts,
# the folders below) stays in this namespace
fresh "$T/overlay"
for top in etc var/lib opt; do
  o=$T/overlay/${top//\//-}
  mkdir "$o" "$o-work"
  mount -t overlay overlay -o "lowerdir=/$top,upperdir=$o,workdir=$o-work" "/$top"
done
echo "edge-stream:x:64999:64999::/var/lib/edge-stream:/usr/sbin/nologin" >>/etc/passwd
echo "edge-stream:x:64999:" >>/etc/group
grep -q '^mosquitto:' /etc/group || echo "mosquitto:x:64998:" >>/etc/group
"""
SETUP += VEIL
SETUP += r"""
fresh /etc/edge-stream
fresh /var/lib/edge-stream
# the script's marks folder as on a new card, or one set up before the marks moved there:
# none (/var/lib is this namespace's overlay)
mountpoint -q /var/lib && rm -rf /var/lib/edge-stream-firstboot
fresh /etc/systemd/network
fresh /etc/mosquitto
fresh /etc/ssh
fresh /opt/edge-stream
fresh "$T/boot"
# what the script prints on the console, for the test to read
: >"$T/console"
mount --bind "$T/console" /dev/console
cp -a "$ROOTFS/etc/systemd/network/." /etc/systemd/network/
install -o edge-stream -g edge-stream -m 0640 "$ROOTFS/etc/edge-stream/gateway.yaml" \
  /etc/edge-stream/gateway.yaml
chown edge-stream:edge-stream /etc/edge-stream /var/lib/edge-stream
# what the gateway's user could have put in its own folders before a boot
if [ -n "${PLANT:-}" ]; then
  ln -s "$T/planted-grown" /var/lib/edge-stream/.grown
  ln -s "$T/planted-hostname" /var/lib/edge-stream/.hostname-config
  ln -s "$T/planted-credentials" /etc/edge-stream/.credentials-made
fi
# a board set up by the script before its marks moved to /var/lib/edge-stream-firstboot:
# its old marks, accounts and passwords
if [ -n "${PLANT:-}" ] || [ -n "${OLD_MARKS:-}" ]; then
  if [ -n "${OLD_MARKS:-}" ]; then
    touch /var/lib/edge-stream/.grown /etc/edge-stream/.credentials-made
  fi
  printf 'sensors:$7$old-hash\n' >/etc/mosquitto/passwd
  install -o edge-stream -g edge-stream -m 0600 /dev/null /var/lib/edge-stream/web-users
  install -o edge-stream -g edge-stream -m 0600 /dev/null /var/lib/edge-stream/secret.key
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >/var/lib/edge-stream/secret.key
  printf 'admin:operator:old-hash\n' >/var/lib/edge-stream/web-users
fi
if [ -n "${PLANT:-}" ]; then
  printf 'X=1\n' >"$T/planted-environment"
  chmod 0600 "$T/planted-environment"
  ln -s "$T/planted-environment" /etc/edge-stream/environment
  printf 'gateway:\n  id: read-as-root\n' >"$T/planted-config"
  chmod 0600 "$T/planted-config"
  ln -sf "$T/planted-config" /etc/edge-stream/gateway.yaml
fi
# a board set up by this script before it gave each board its own gateway.id: its
# marks, accounts and passwords
if [ -n "${NEW_MARKS:-}" ]; then
  install -d -m 0700 /var/lib/edge-stream-firstboot
  touch /var/lib/edge-stream-firstboot/grown /var/lib/edge-stream-firstboot/credentials-made
  printf 'sensors:$7$old-hash\n' >/etc/mosquitto/passwd
  install -o edge-stream -g edge-stream -m 0600 /dev/null /var/lib/edge-stream/web-users
  install -o edge-stream -g edge-stream -m 0600 /dev/null /var/lib/edge-stream/secret.key
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >/var/lib/edge-stream/secret.key
  printf 'admin:operator:old-hash\n' >/var/lib/edge-stream/web-users
fi
# the board's machine id (systemd writes it before any unit starts)
if [ -n "${MACHINE_ID:-}" ]; then
  printf '%s\n' "$MACHINE_ID" >/etc/machine-id
fi
if [ -n "${ENVIRONMENT:-}" ]; then
  printf '%s' "$ENVIRONMENT" >/etc/edge-stream/environment
  chown edge-stream:edge-stream /etc/edge-stream/environment
fi
mkdir -p /opt/edge-stream/venv/bin
printf '#!/bin/sh\nexport PYTHONPATH=%s\nexec %s "$@"\n' "$REPO" "$PYTHON" \
  >/opt/edge-stream/venv/bin/python
# a Python that writes a line on stderr as it exits (a warning at shutdown)
if [ -n "${STRAY:-}" ]; then
  printf '#!/bin/sh\nexport PYTHONPATH=%s\n%s "$@"\ns=$?\n%s\nexit $s\n' "$REPO" "$PYTHON" \
    'echo "Exception ignored in: <function _exit at 0x7f>" >&2' >/opt/edge-stream/venv/bin/python
fi
# no shell in between, as pip's entry point: a shell drops EDGE_STREAM__SINKS__a-b__X.
# It notes the command lines of the processes that started it (any user can read them)
mkdir -m 1777 /var/lib/cmdlines
printf '#!%s\nimport sys\nsys.path.insert(0, "%s")\n%s\n%s\n' "$PYTHON" "$REPO" \
  'from tests.appliance.cmdlines import note; note("/var/lib/cmdlines")' \
  'from gateway.cli import main; sys.exit(main())' >/opt/edge-stream/venv/bin/edge-stream
chmod 0755 /opt/edge-stream/venv/bin/python /opt/edge-stream/venv/bin/edge-stream
cp -a "$T/card/." "$T/boot/"
# a boot partition that cannot be written (remounted read-only after errors, or full)
if [ -n "${RO_BOOT:-}" ]; then
  mount -o remount,ro "$T/boot"
fi
# a temp folder nothing can be written in (a full or read-only /tmp)
if [ -n "${RO_TMP:-}" ]; then
  mkdir "$T/tmp"
  mount -t tmpfs -o ro tmpfs "$T/tmp"
  export TMPDIR=$T/tmp
fi
# $BOOTS boots of the board, one after the other, $BETWEEN run before each after the
# first. $CUT: the first boot stops (the power cut) before the first of its commands
# where that test holds; bash reads $BASH_ENV before the script, and the trap it sets
# runs before each command of the script's own (not within its functions). $SHIMS: shell
# read there too, at each boot (functions standing in for commands; $SHIM_T is $T)
printf 'unset BASH_ENV\nSHIM_T=%q\n%s\n' "$T" "${SHIMS:-}" >"$T/shims.sh"
shims=
if [ -n "${SHIMS:-}" ]; then shims=$T/shims.sh; fi
for n in $(seq "$BOOTS"); do
  if [ "$n" -gt 1 ]; then eval "${BETWEEN:-}"; fi
  if [ "$n" -eq 1 ] && [ -n "${CUT:-}" ]; then
    printf '. %q\ntrap %q DEBUG\n' "$T/shims.sh" "if $CUT; then touch $T/cut; exit 99; fi" \
      >"$T/cut.sh"
    status=0
    BASH_ENV=$T/cut.sh EDGE_STREAM_BOOT=$T/boot "$ROOTFS/usr/lib/edge-stream/firstboot" \
      || status=$?
    [ "$status" -eq 0 ] || [ -e "$T/cut" ]
  else
    BASH_ENV=$shims EDGE_STREAM_BOOT=$T/boot "$ROOTFS/usr/lib/edge-stream/firstboot"
  fi
done
cp -a /etc/systemd/network/. "$T/network/"
cp -a "$T/boot/." "$T/card-after/"
cp /etc/edge-stream/gateway.yaml "$T/gateway.yaml"
hostname >"$T/hostname"
cp /etc/hostname "$T/etc-hostname"
cp /etc/mosquitto/passwd "$T/mosquitto-passwd" 2>/dev/null || true
cp /var/lib/edge-stream/web-users "$T/web-users" 2>/dev/null || true
find /var/lib/cmdlines -type f ! -name '*.env' -exec cat {} + >"$T/cmdlines"
find /var/lib/cmdlines -type f -name '*.env' -exec cat {} + | sort -u >"$T/overrides"
for f in /etc/edge-stream/gateway.yaml /var/lib/edge-stream/secret.key \
  /var/lib/edge-stream/web-users; do
  stat -c '%U:%04a' "$f" 2>/dev/null || echo missing
done >"$T/owners"
# what the data partition holds, and where
find /var/lib/edge-stream -mindepth 1 -printf '%P\n' | sort >"$T/data-files"
# the script's own marks
find /var/lib/edge-stream-firstboot -mindepth 1 -printf '%P\n' | sort >"$T/marks"
"""


# what SETUP lays its own mounts over, the veils of `_veiled` aside: the test's folder may
# not be there (its files would be hidden, or written where the test does not read them)
REPLACED = (Path("/etc"), Path("/var/lib"), Path("/opt"))


def _veiled(tmp_path: Path, needed: set[Path] | None = None) -> str:
    """Lines "CLOSED<TAB>PATH": each path the gateway's user needs (`needed`, by default
    this checkout, the venv, this Python's installation) that is, or lies under, a folder
    others cannot enter (CLOSED, the highest such), for VEIL to expose. A CLOSED (made a
    tmpfs by VEIL) that holds the test's folder `tmp_path` fails the test with what to do:
    VEIL hid the folder it then wrote in, and the test failed far from the cause. So
    does a checkout whose gateway/ or modules others cannot read: VEIL opens only the
    closed folder's top, and a clone made under umask 077 (0700 folders, 0600 files)
    stayed unreadable to the gateway's user, the script failing with no word of why."""
    if needed is None:
        real = Path(os.path.realpath(sys.executable))
        needed = {REPO, Path(sys.prefix), Path(sys.base_prefix), real.parent.parent}
    needed = {Path(os.path.realpath(p)) for p in needed}
    for checkout in sorted(p for p in needed if (p / "gateway").is_dir()):
        _readable_by_others(checkout)
    # a path inside another needed one comes with it
    needed = {p for p in needed if not any(q != p and q in p.parents for q in needed)}
    here = Path(os.path.realpath(tmp_path))
    lines = []
    for path in sorted(needed):
        closed = next(
            (a for a in (*reversed(path.parents), path) if not os.stat(a).st_mode & stat.S_IXOTH),
            None,
        )
        if closed is not None:
            lines.append(f"{closed}\t{path}")
    for folder in [Path(line.split("\t")[0]) for line in lines] + list(REPLACED):
        if folder == here or folder in here.parents:
            pytest.fail(
                f"the first-boot test's folder {here} is in {folder}, which the test mounts"
                f" over: run pytest with a --basetemp outside it (e.g. --basetemp"
                f" /tmp/firstboot-test)",
                pytrace=False,
            )
    return "\n".join(lines)


def _readable_by_others(checkout: Path) -> None:
    """Fail the test, saying what to do, when others (the gateway's user) cannot read
    the checkout's gateway/ folder or one of its modules."""
    package = checkout / "gateway"
    modules = sorted(package.glob("*.py"))
    wanted = [(package, stat.S_IROTH | stat.S_IXOTH), *[(m, stat.S_IROTH) for m in modules[:1]]]
    for path, bits in wanted:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & bits != bits:
            pytest.fail(
                f"{path} (mode {mode:04o}) cannot be read by other users, so neither by the"
                f" gateway's user the first-boot test runs it as: the checkout was cloned"
                f" under a umask such as 077; run chmod -R o+rX {checkout} (or clone it"
                f" with umask 022)",
                pytrace=False,
            )


def _firstboot(
    tmp_path: Path,
    card: dict[str, str],
    plant: bool = False,
    environment: str = "",
    old_marks: bool = False,
    boots: int = 1,
    ro_tmp: bool = False,
    marks: bool = False,
    machine_id: str = "",
    between: str = "",
    cut: str = "",
    ro_boot: bool = False,
    stray: bool = False,
    shims: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run the script with `card` (name: text) on the boot partition; `plant`: symbolic
    links in the gateway's folders first (see SETUP); `environment`: the text of
    /etc/edge-stream/environment; `old_marks`: a board set up before the marks moved;
    `boots`: how many times it runs (the board booted again); `ro_tmp`: its TMPDIR a
    read-only folder; `marks`: a board set up by this script before it gave each board
    its own gateway.id; `machine_id`: /etc/machine-id (this machine's when empty);
    `between`: shell run between two boots; `cut`: a shell test, the first boot cut
    short before the first of its commands where it holds (see SETUP); `ro_boot`: the
    boot partition read-only; `stray`: the venv's Python writes a line on stderr as it
    exits; `shims`: shell each boot reads first (see SETUP). What went to the console is
    in tmp_path/console."""
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
        "VEILED": _veiled(tmp_path),
        "PYTHON": sys.executable,
        "REPO": str(REPO),
        "ROOTFS": str(ROOTFS),
        "PLANT": "1" if plant else "",
        "OLD_MARKS": "1" if old_marks else "",
        "ENVIRONMENT": environment,
        "BOOTS": str(boots),
        "RO_TMP": "1" if ro_tmp else "",
        "NEW_MARKS": "1" if marks else "",
        "MACHINE_ID": machine_id,
        "BETWEEN": between,
        "CUT": cut,
        "RO_BOOT": "1" if ro_boot else "",
        "STRAY": "1" if stray else "",
        "SHIMS": shims,
    }
    return subprocess.run(
        [*UNSHARE, "bash", str(setup), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_the_hostname_is_the_id_the_gateway_runs_with(tmp_path: Path) -> None:
    """`id: 007` is the gateway id "007" (README: a key that takes text keeps an unquoted
    number as written), and an EDGE_STREAM__GATEWAY__ID in /etc/edge-stream/environment
    wins over the file: the hostname was read with YAML 1.1 (the number 7) from the file
    alone."""
    config = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text()
    as_written = config.replace("id: edge-stream ", "id: 007 ")
    assert as_written != config
    (tmp_path / "a").mkdir()
    result = _firstboot(tmp_path / "a", {"edge-stream.yaml": as_written})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hostname 007 (gateway.id)" in result.stdout, result.stdout
    environment = "EDGE_STREAM__GATEWAY__ID=boiler-room\n"
    (tmp_path / "b").mkdir()
    result = _firstboot(tmp_path / "b", {}, environment=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hostname boiler-room (gateway.id)" in result.stdout, result.stdout
    # cut to the 63 characters of a host name, it does not end with '-' (RFC 1123)
    long_id = "a" * 62 + "-b"
    (tmp_path / "c").mkdir()
    result = _firstboot(tmp_path / "c", {}, environment=f"EDGE_STREAM__GATEWAY__ID={long_id}\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"hostname {long_id[:62]} (gateway.id)" in result.stdout, result.stdout


def test_the_hostname_follows_any_override_of_the_gateway_section(tmp_path: Path) -> None:
    """The gateway takes EDGE_STREAM__GATEWAY='{id: x}' and EDGE_STREAM__gateway__id (the
    keys after the prefix in any case); only EDGE_STREAM__GATEWAY__ID= was looked at to
    tell a change, so a change of such an override left the hostname stale."""
    environment = "EDGE_STREAM__GATEWAY='{id: first-name}'\n"
    change = (
        "printf 'EDGE_STREAM__gateway__id=second-name\\n' >/etc/edge-stream/environment;"
        " chown root:edge-stream /etc/edge-stream/environment"
    )
    result = _firstboot(tmp_path, {}, environment=environment, boots=2, between=change)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hostname first-name (gateway.id)" in result.stdout, result.stdout
    assert "hostname second-name (gateway.id)" in result.stdout, result.stdout
    assert (tmp_path / "hostname").read_text() == "second-name\n"


def test_a_config_the_gateway_refuses_leaves_the_hostname_said_and_read_again(
    tmp_path: Path,
) -> None:
    """The reader's stderr went to /dev/null and its mark was written before the name was
    read: a refused config left the hostname without a line in the journal, and was
    never read again (the mark the same) when what refused it was put right."""
    environment = "EDGE_STREAM__GATEWAY__IDD=typo\n"
    result = _firstboot(tmp_path, {}, environment=environment, boots=2, marks=True)
    assert result.returncode == 0, result.stdout + result.stderr
    refused = [line for line in result.stdout.splitlines() if "the hostname stays" in line]
    assert len(refused) == 2, result.stdout
    assert refused[0].startswith(
        "edge-stream-firstboot: the hostname stays: the gateway refuses its config ("
    ), refused
    assert "EDGE_STREAM__GATEWAY__IDD" in refused[0], refused


def test_a_boot_partition_that_cannot_be_written_shows_the_passwords_on_the_console(
    tmp_path: Path,
) -> None:
    """The credentials' file could not be written (a boot partition full or read-only):
    set -e stopped the script before the console and the mark, and every boot made new
    passwords and showed them nowhere. Now the console shows them, once, and they stay
    the passwords in use."""
    result = _firstboot(tmp_path, {}, machine_id=BOARD_A, boots=2, ro_boot=True)
    assert result.returncode == 0, result.stdout + result.stderr
    said = [line for line in result.stdout.splitlines() if "credentials" in line]
    assert said == [
        "edge-stream-firstboot: credentials not written to the boot partition (Read-only"
        " file system): kept for root in /var/lib/edge-stream-firstboot/credentials.txt,"
        " for the boot partition at a later boot, and shown on the console",
        "edge-stream-firstboot: credentials still not written to the boot partition"
        " (Read-only file system): kept for root in"
        " /var/lib/edge-stream-firstboot/credentials.txt",
    ], result.stdout
    console = (tmp_path / "console").read_text()
    assert console.count("made at the first boot") == 1, console
    mqtt = re.search(r"user sensors\s+password (\S+)", console)
    assert mqtt is not None and _mqtt_password_works(tmp_path, mqtt[1]), console
    assert list((tmp_path / "card-after").iterdir()) == []


def test_passwords_the_card_could_not_take_are_kept_for_it_and_written_once(
    tmp_path: Path,
) -> None:
    """A boot partition that could not be written left the passwords on the console only:
    on a board with no screen nobody saw them, and they were written nowhere. Root keeps
    a copy (0600 in its 0700 marks folder) until a later boot writes the card's file,
    which is written once: the user deletes it after reading."""
    between = (
        'mount -o remount,rw "$T/boot"; stat -c %a /var/lib/edge-stream-firstboot'
        ' /var/lib/edge-stream-firstboot/credentials.txt >>"$T/modes" 2>/dev/null || true;'
        ' if [ -e "$T/boot/edge-stream-credentials.txt" ]; then'
        ' mv "$T/boot/edge-stream-credentials.txt" "$T/read.txt"; fi'
    )
    result = _firstboot(tmp_path, {}, machine_id=BOARD_A, boots=3, ro_boot=True, between=between)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "modes").read_text() == "700\n600\n700\n"
    said = [line for line in result.stdout.splitlines() if "credentials" in line]
    assert said[1:] == [
        "edge-stream-firstboot: credentials made at the first boot written to the boot"
        " partition's edge-stream-credentials.txt"
    ], result.stdout
    console = (tmp_path / "console").read_text()
    read = (tmp_path / "read.txt").read_text()
    for user in ("admin", "edge", "sensors"):
        shown = re.search(rf"user {user}\s+password (\S+)", console)
        assert shown is not None and f"password {shown[1]}" in read, (console, read)
    raw = (tmp_path / "read.txt").read_bytes()  # CRLF, as the first boot writes it
    assert raw.count(b"\r\n") == raw.count(b"\n") == 6 and b"\r\r" not in raw, raw
    assert list((tmp_path / "card-after").iterdir()) == []
    assert "credentials.txt" not in (tmp_path / "marks").read_text().split()


# `sync` noting what it synced (its arguments; none: everything), for `_POWER_CUT`
_SYNC_NOTED = 'sync() { printf "%s\\n" "${*:-ALL}" >>"$SHIM_T/synced"; command sync "$@"; }'

# What a power cut loses: the copy of the credentials' text, unless it was synced
_POWER_CUT = (
    'mount -o remount,rw "$T/boot"; k=/var/lib/edge-stream-firstboot/credentials.txt;'
    ' if ! grep -qxE "ALL|$k( .*)?|-f $k" "$T/synced" 2>/dev/null; then : >"$k"; fi'
)


def test_passwords_kept_for_the_card_are_synced_before_the_mark(tmp_path: Path) -> None:
    """The copy of the passwords a read-only card could not take was not synced before
    the credentials-made mark was set: a power cut could leave it empty, the mark set,
    and a later boot wrote that empty file to the card and deleted the copy."""
    marked = "[ -e /var/lib/edge-stream-firstboot/credentials-made ]"
    result = _firstboot(
        tmp_path,
        {},
        machine_id=BOARD_A,
        boots=2,
        ro_boot=True,
        cut=marked,
        shims=_SYNC_NOTED,
        between=_POWER_CUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "cut").exists(), result.stdout
    console = (tmp_path / "console").read_text()
    read = (tmp_path / "card-after/edge-stream-credentials.txt").read_text()
    for user in ("admin", "edge", "sensors"):
        shown = re.search(rf"user {user}\s+password (\S+)", console)
        assert shown is not None and f"password {shown[1]}" in read, (console, read)


def test_a_copy_of_the_passwords_not_whole_is_kept_and_said_not_written_to_the_card(
    tmp_path: Path,
) -> None:
    """A copy a power cut left empty (the mark set) was written to the card as it was,
    an empty file, and deleted: the passwords lost without a word."""
    between = 'mount -o remount,rw "$T/boot"; : >/var/lib/edge-stream-firstboot/credentials.txt'
    result = _firstboot(tmp_path, {}, machine_id=BOARD_A, boots=2, ro_boot=True, between=between)
    assert result.returncode == 0, result.stdout + result.stderr
    said = [line for line in result.stdout.splitlines() if "credentials" in line]
    assert said[1:] == [
        "edge-stream-firstboot: credentials not written to the boot partition:"
        " /var/lib/edge-stream-firstboot/credentials.txt does not hold them whole (cut"
        " short by a power cut?), so it is kept as it is; for new passwords delete"
        " /var/lib/edge-stream-firstboot/credentials-made and reboot"
    ], result.stdout
    assert list((tmp_path / "card-after").iterdir()) == []
    assert "credentials.txt" in (tmp_path / "marks").read_text().split()


def test_a_card_file_renamed_into_place_is_written_even_if_the_last_sync_fails(
    tmp_path: Path,
) -> None:
    """The card's last `sync -f` failing after the rename kept the copy, and a later boot
    wrote the card's file again, after the user had read and deleted it."""
    failing = (
        'sync() { if [ "${1:-}" = -f ] && [ -e "$SHIM_T/boot/edge-stream-credentials.txt" ];'
        " then echo \"sync: error syncing '$2': Input/output error\" >&2; return 1; fi;"
        ' command sync "$@"; }'
    )
    between = 'mv "$T/boot/edge-stream-credentials.txt" "$T/read.txt"'
    result = _firstboot(tmp_path, {}, machine_id=BOARD_A, boots=2, shims=failing, between=between)
    assert result.returncode == 0, result.stdout + result.stderr
    said = [line for line in result.stdout.splitlines() if "credentials" in line]
    assert said == [
        "edge-stream-firstboot: credentials written to the boot partition's"
        " edge-stream-credentials.txt"
    ], result.stdout
    assert "made at the first boot" in (tmp_path / "read.txt").read_text()
    assert list((tmp_path / "card-after").iterdir()) == []
    assert "credentials.txt" not in (tmp_path / "marks").read_text().split()


def test_a_stray_line_on_stderr_is_not_taken_for_the_hostname(tmp_path: Path) -> None:
    """The hostname was the last line of the id reader's stdout and stderr together: a
    line on stderr (a warning as Python exits) became the hostname, or `hostname`
    refused it and set -e stopped the boot."""
    environment = "EDGE_STREAM__GATEWAY__ID=boiler-room\n"
    result = _firstboot(tmp_path, {}, environment=environment, stray=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hostname boiler-room (gateway.id)" in result.stdout, result.stdout
    assert (tmp_path / "hostname").read_text() == "boiler-room\n"
    assert (tmp_path / "etc-hostname").read_text() == "boiler-room\n"


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
    owners = (tmp_path / "owners").read_text().split()
    assert owners == ["edge-stream:0640", "edge-stream:0600", "edge-stream:0600"], owners
    assert "hostname boiler-room (gateway.id)" in result.stdout
    credentials = (tmp_path / "card-after/edge-stream-credentials.txt").read_text()
    assert "user admin" in credentials and "user sensors" in credentials


# two boards' machine ids (systemd writes a random one at the first boot)
BOARD_A = "0f8e2c4b6a1d4e3f9b7c5a2d1e0f3c4b"
BOARD_B = "5a6b7c8d9e0f41a2b3c4d5e6f7a8b9c0"


def _board_id(machine_id: str) -> str:
    """The id the first boot gives: `edge-stream-` and the first 8 hex digits of
    `systemd-id128 machine-id --app-specific=a18c2967-de06-47fb-ad3b-c6c53abf96bc`."""
    app = uuid.UUID("a18c2967-de06-47fb-ad3b-c6c53abf96bc").bytes
    return "edge-stream-" + hmac.new(bytes.fromhex(machine_id), app, "sha256").hexdigest()[:8]


def _gateway_id(tmp_path: Path) -> object:
    return yaml.safe_load((tmp_path / "gateway.yaml").read_text())["gateway"].get("id")


def test_the_first_boot_gives_the_board_its_own_id_and_hostname(tmp_path: Path) -> None:
    """Every card of the image had gateway.id edge-stream and so the hostname
    edge-stream: ten boards were ten edge-stream.local, and with an upstream MQTT sink
    each, the same client ids (edge-stream-<gateway id>-...): they took each other's
    sessions in a loop. The first boot gives the image's config the board's own id, from
    its machine id, with the file's comments kept; the hostname and the credentials
    follow."""
    result = _firstboot(tmp_path, {}, machine_id=BOARD_A)
    assert result.returncode == 0, result.stdout + result.stderr
    own = _board_id(BOARD_A)
    assert _gateway_id(tmp_path) == own
    shipped = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text().splitlines()
    written = (tmp_path / "gateway.yaml").read_text().splitlines()
    changed = [(a, b) for a, b in zip(shipped, written, strict=True) if a != b]
    assert changed == [
        (
            "  id: edge-stream              # the board's own name, also its hostname (set"
            " at boot):",
            f"  id: {own}     # the board's own name, also its hostname (set at boot):",
        )
    ]
    assert f"gateway.id {own}, the board's own (from the machine id)" in result.stdout
    assert f"hostname {own} (gateway.id)" in result.stdout
    assert (tmp_path / "hostname").read_text() == f"{own}\n"
    assert (tmp_path / "etc-hostname").read_text() == f"{own}\n"
    credentials = (tmp_path / "card-after/edge-stream-credentials.txt").read_text()
    assert credentials.startswith(f"Edge Stream on {own}: made at the first boot"), credentials
    assert f"http://{own}.local:8080/" in credentials
    # as scripts/image_test.py reads them off the console
    for user in ("admin", "edge", "sensors"):
        assert re.search(rf"user {user}\s+password \S{{16}}\s", credentials), credentials


def test_two_boards_get_two_ids(tmp_path: Path) -> None:
    ids = []
    for name, machine_id in (("a", BOARD_A), ("b", BOARD_B)):
        (tmp_path / name).mkdir()
        result = _firstboot(tmp_path / name, {}, machine_id=machine_id)
        assert result.returncode == 0, result.stdout + result.stderr
        ids.append((_gateway_id(tmp_path / name), (tmp_path / name / "hostname").read_text()))
    assert ids == [(_board_id(m), f"{_board_id(m)}\n") for m in (BOARD_A, BOARD_B)]
    assert ids[0] != ids[1]


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("id: boiler-room #", "boiler-room"),  # its own: kept
        ("id: edge-stream              # mine,", _board_id(BOARD_A)),  # the image's, copied
        ('id: "edge-stream" #', _board_id(BOARD_A)),
    ],
    ids=["own", "the-images", "the-images-quoted"],
)
def test_a_config_from_the_card_keeps_its_own_id_only(
    tmp_path: Path, written: str, expected: str
) -> None:
    """The card's config is taken first; an id of its own stays (and the hostname
    follows it), the image's edge-stream (a copy of the shipped file) becomes the
    board's own."""
    shipped = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text()
    config = shipped.replace("id: edge-stream              #", written)
    assert config != shipped
    result = _firstboot(tmp_path, {"edge-stream.yaml": config}, machine_id=BOARD_A)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "took edge-stream.yaml from the boot partition" in result.stdout
    assert _gateway_id(tmp_path) == expected
    assert (tmp_path / "hostname").read_text() == f"{expected}\n"
    assert ("gateway.id edge-stream-" in result.stdout) == (expected != "boiler-room")
    credentials = (tmp_path / "card-after/edge-stream-credentials.txt").read_text()
    assert f"http://{expected}.local:8080/" in credentials


def test_a_config_from_the_card_without_an_id_gets_the_boards_own(tmp_path: Path) -> None:
    """gateway.id left out is the model's default, edge-stream: the same on every board
    as the image's. The first boot adds the board's own under `gateway:`."""
    config = "gateway:\n  data_dir: /var/lib/edge-stream\nsinks:\n  f:\n    type: file\n"
    config += "    path: out.jsonl\nroutes:\n  r:\n    match: '#'\n    sinks: [f]\n"
    result = _firstboot(tmp_path, {"edge-stream.yaml": config}, machine_id=BOARD_A)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "took edge-stream.yaml from the boot partition" in result.stdout
    own = _board_id(BOARD_A)
    assert (tmp_path / "gateway.yaml").read_text() == config.replace(
        "gateway:\n", f"gateway:\n  id: {own}\n"
    )
    assert (tmp_path / "hostname").read_text() == f"{own}\n"


def test_a_second_boot_changes_no_id(tmp_path: Path) -> None:
    """The id is given once: the boots after the first leave gateway.id as it is, even
    edge-stream put back (the user's choice then)."""
    put_back = "sed -i 's/id: edge-stream-[0-9a-f]*/id: edge-stream/' /etc/edge-stream/gateway.yaml"
    result = _firstboot(tmp_path, {}, machine_id=BOARD_A, boots=2, between=put_back)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("gateway.id edge-stream-") == 1, result.stdout
    assert _gateway_id(tmp_path) == "edge-stream"
    assert (tmp_path / "hostname").read_text() == "edge-stream\n"
    assert result.stdout.count("credentials written") == 1, result.stdout


def test_a_board_asked_for_new_passwords_keeps_its_id(tmp_path: Path) -> None:
    """Deleting the credentials-made mark makes new passwords at the next boot. On a
    board set up before the first boot gave ids (upgraded, its id-mark missing), that
    boot gave it a new gateway.id too: its upstream identities changed with it."""
    # (the planted users file's line is no real one, which `web passwd` refuses)
    again = "rm /var/lib/edge-stream-firstboot/credentials-made; : >/var/lib/edge-stream/web-users"
    result = _firstboot(tmp_path, {}, machine_id=BOARD_A, marks=True, boots=2, between=again)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gateway.id edge-stream-" not in result.stdout
    assert _gateway_id(tmp_path) == "edge-stream"
    assert result.stdout.count("credentials written") == 1, result.stdout


def _mqtt_password_works(tmp_path: Path, password: str) -> bool:
    """Whether Mosquitto's password file (PBKDF2-SHA512, `$7$`) takes `password` for
    the user sensors."""
    line = (tmp_path / "mosquitto-passwd").read_text().strip()
    user, hashed = line.split(":", 1)
    _, _seven, iterations, salt, digest = hashed.split("$")
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    return user == "sensors" and base64.b64encode(key).decode() == digest


@pytest.mark.parametrize("cut", ["written", "marked"])
def test_a_first_boot_cut_short_leaves_the_passwords_in_use_named_by_the_boards_host(
    tmp_path: Path, cut: str
) -> None:
    """The credentials went to the boot partition while the hostname was still
    edge-stream, and again at the end; a power cut in between (`written`) left
    http://edge-stream.local:8080/ on the card for good, the mark already set. The mark
    was set before the first write: a cut right after it (`marked`) left no file at
    all, and the passwords in use nowhere. Whatever the cut, the card ends up naming the
    board's own host with the passwords it takes."""
    when = {
        "written": f"[ -e {tmp_path}/boot/edge-stream-credentials.txt ]",
        "marked": "[ -e /var/lib/edge-stream-firstboot/credentials-made ]",
    }[cut]
    result = _firstboot(tmp_path, {}, machine_id=BOARD_A, boots=2, cut=when)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "cut").exists(), result.stdout
    own = _board_id(BOARD_A)
    assert sorted(p.name for p in (tmp_path / "card-after").iterdir()) == [
        "edge-stream-credentials.txt"
    ]
    credentials = (tmp_path / "card-after/edge-stream-credentials.txt").read_text()
    assert credentials.startswith(f"Edge Stream on {own}: made at the first boot"), credentials
    assert f"http://{own}.local:8080/" in credentials
    mqtt = re.search(r"user sensors\s+password (\S+)", credentials)
    assert mqtt is not None and _mqtt_password_works(tmp_path, mqtt[1]), credentials


@pytest.mark.parametrize("marks", ["old", "new"])
def test_a_board_set_up_before_keeps_its_id(tmp_path: Path, marks: str) -> None:
    """A board set up before the first boot gave each board its own id (its credentials
    made, the marks in the gateway's folders or in root's) keeps edge-stream at the
    boot after the upgrade: a new id would change its upstream identities (MQTT client
    ids, consumer names), its sessions and subscriptions left behind."""
    result = _firstboot(
        tmp_path, {}, machine_id=BOARD_A, old_marks=marks == "old", marks=marks == "new"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _gateway_id(tmp_path) == "edge-stream"
    assert (tmp_path / "gateway.yaml").read_text() == (
        ROOTFS / "etc/edge-stream/gateway.yaml"
    ).read_text()
    assert "gateway.id edge-stream-" not in result.stdout
    _assert_no_new_credentials(tmp_path, result)


def test_an_invalid_config_on_the_card_is_left_there_with_the_reason(tmp_path: Path) -> None:
    result = _firstboot(tmp_path, {"edge-stream.yaml": "gateway:\n  datadir: /x\n"})
    assert result.returncode == 0, result.stdout + result.stderr
    error = (tmp_path / "card-after/edge-stream-error.txt").read_text()
    assert "datadir" in error
    assert (tmp_path / "card-after/edge-stream.yaml").exists()
    # the image's config stays, with the board's own id
    assert "data_dir: /var/lib/edge-stream " in (tmp_path / "gateway.yaml").read_text()
    assert "datadir" not in (tmp_path / "gateway.yaml").read_text()


def test_root_writes_nothing_through_the_gateways_folders(tmp_path: Path) -> None:
    """The script runs as root; /var/lib/edge-stream and /etc/edge-stream are the gateway
    user's. Its marks there (.grown, .hostname-config, .credentials-made) were written
    through whatever that user had put in their place: a symbolic link to /etc/passwd
    had root overwrite it with a hash at the next boot, one to /etc/nologin created it;
    a link in the config's place had root read the target for the hostname.
    A tmpfs data folder (no partition to grow) is passed over too."""
    (tmp_path / "planted-hostname").write_text("root:x:0:0::/root:/bin/bash\n")
    result = _firstboot(tmp_path, {}, plant=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "planted-hostname").read_text() == "root:x:0:0::/root:/bin/bash\n"
    assert not (tmp_path / "planted-grown").exists()
    assert not (tmp_path / "planted-credentials").exists()
    environment = (tmp_path / "planted-environment").stat()
    assert (environment.st_uid, environment.st_gid) == (0, 0)  # no chown through the link
    # a link in the config's place: root read the target (a file of root's) for the
    # hostname, gateway.id
    assert "read-as-root" not in result.stdout
    assert "is not a regular file: the hostname stays" in result.stdout
    # the links stand where the old script's marks were: the board was set up, and its
    # passwords stay
    _assert_no_new_credentials(tmp_path, result)


def _assert_no_new_credentials(tmp_path: Path, result: subprocess.CompletedProcess[str]) -> None:
    after = {p.name for p in (tmp_path / "card-after").iterdir()}
    assert "edge-stream-credentials.txt" not in after
    assert "credentials written" not in result.stdout
    assert (tmp_path / "mosquitto-passwd").read_text() == "sensors:$7$old-hash\n"
    assert (tmp_path / "web-users").read_text() == "admin:operator:old-hash\n"


def test_a_board_set_up_before_the_marks_moved_keeps_its_passwords(tmp_path: Path) -> None:
    """The marks moved from the gateway's folders (.credentials-made, .grown) to
    /var/lib/edge-stream-firstboot; a board set up by the old script, given the new one,
    made new credentials at its next boot: the console's admin password replaced, the
    MQTT sensors' password file made again."""
    result = _firstboot(tmp_path, {}, old_marks=True)
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_no_new_credentials(tmp_path, result)


def test_the_environment_file_is_read_not_run(tmp_path: Path) -> None:
    """/etc/edge-stream/environment (EnvironmentFile= of the unit) is in the gateway
    user's folder; the script, as root, sourced it as shell to check the card's config
    with its overrides: whatever that user wrote there ran as root at the next boot. Its
    EDGE_STREAM__ lines are still taken, quoted as systemd reads them."""
    environment = (
        "EDGE_STREAM__WEB__USERNAME=operator\n"
        f'EDGE_STREAM__WEB__PASSWORD="a long $(touch {tmp_path}/ran-too) password"\n'
        f"touch {tmp_path}/ran-as-root\n"
        # systemd drops a name it does not take (only letters, digits, _): so does the
        # script (as a shell variable, it stopped the script)
        "EDGE_STREAM__SINKS__local-file__NO_SUCH_KEY=1\n"
    )
    # listening on the LAN needs an account: here only the environment's, as users_file
    # names a file that does not exist
    config = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text() + (
        "  users_file: /var/lib/edge-stream/no-users\n"
    )
    config = config.replace("local_file", "local-file")
    result = _firstboot(tmp_path, {"edge-stream.yaml": config}, environment=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "ran-as-root").exists()
    assert not (tmp_path / "ran-too").exists()
    after = {p.name for p in (tmp_path / "card-after").iterdir()}
    assert "edge-stream.yaml.applied" in after, result.stdout


def test_the_environment_files_secrets_are_on_no_command_line(tmp_path: Path) -> None:
    """The environment file's values (the console's password, DSNs) reached the gateway's
    commands as `runuser ... -- env NAME=value ...`: a command line, which every user of
    the board reads in /proc while the command runs. They go through the environment."""
    secret = "a-password-nobody-may-read"
    environment = f"EDGE_STREAM__WEB__USERNAME=operator\nEDGE_STREAM__WEB__PASSWORD={secret}\n"
    config = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text() + (
        "  users_file: /var/lib/edge-stream/no-users\n"
    )
    result = _firstboot(tmp_path, {"edge-stream.yaml": config}, environment=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    # check-config took the config, with the account the environment file gives
    assert "edge-stream.yaml.applied" in {p.name for p in (tmp_path / "card-after").iterdir()}
    cmdlines = (tmp_path / "cmdlines").read_text()
    assert "runuser" in cmdlines and "check-config" in cmdlines, cmdlines
    assert secret not in cmdlines


def test_the_environment_file_is_read_as_systemd_reads_it(tmp_path: Path) -> None:
    """The unit's EnvironmentFile= is read by systemd's rules; the script's own reading
    dropped `NAME = value` (systemd takes the spaces off), kept trailing spaces and the
    backslash of \\" and the CR of a file written on Windows: check-config checked the
    card's config with other values than the gateway then ran with."""
    environment = (
        "# the console's account\r\n"
        "EDGE_STREAM__WEB__USERNAME = operator  \r\n"
        'EDGE_STREAM__WEB__PASSWORD="a \\"quoted\\" \\\\ password"\r\n'
        "EDGE_STREAM__GATEWAY__ID=boiler-\\\nroom\r\n"
    )
    config = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text() + (
        "  users_file: /var/lib/edge-stream/no-users\n"
    )
    result = _firstboot(tmp_path, {"edge-stream.yaml": config}, environment=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    after = {p.name for p in (tmp_path / "card-after").iterdir()}
    assert "edge-stream.yaml.applied" in after, result.stdout
    overrides = (tmp_path / "overrides").read_text().splitlines()
    assert "('EDGE_STREAM__WEB__USERNAME', 'operator')" in overrides
    assert """('EDGE_STREAM__WEB__PASSWORD', 'a "quoted" \\\\ password')""" in overrides
    assert "('EDGE_STREAM__GATEWAY__ID', 'boiler-room')" in overrides


def test_the_environment_files_values_win_over_the_scripts_data_dir(tmp_path: Path) -> None:
    """In edge-stream.service, EnvironmentFile= overrides Environment= (which sets
    EDGE_STREAM__GATEWAY__DATA_DIR); the script exported its data_dir after the file's
    pairs, so check-config checked the card's config with another data_dir than the
    gateway then ran with."""
    environment = (
        "EDGE_STREAM__GATEWAY__DATA_DIR=/var/lib/edge-stream/elsewhere\n"
        "EDGE_STREAM__WEB__USERNAME=operator\nEDGE_STREAM__WEB__PASSWORD=a-long-password\n"
    )
    config = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text()
    result = _firstboot(
        tmp_path, {"edge-stream.yaml": config}, environment=environment, old_marks=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    overrides = (tmp_path / "overrides").read_text().splitlines()
    assert "('EDGE_STREAM__GATEWAY__DATA_DIR', '/var/lib/edge-stream/elsewhere')" in overrides
    assert "('EDGE_STREAM__GATEWAY__DATA_DIR', '/var/lib/edge-stream')" not in overrides


ELSEWHERE = (
    "EDGE_STREAM__GATEWAY__DATA_DIR=/var/lib/edge-stream/elsewhere\n"
    "EDGE_STREAM__WEB__USERNAME=operator\nEDGE_STREAM__WEB__PASSWORD=a-long-password\n"
)


@pytest.mark.parametrize(
    "name", ["EDGE_STREAM__GATEWAY__DATA_DIR", "EDGE_STREAM__gateway__Data_Dir"]
)
def test_the_secret_key_is_looked_for_in_the_data_dir_the_gateway_uses(
    tmp_path: Path, name: str
) -> None:
    """With EDGE_STREAM__GATEWAY__DATA_DIR in the environment file, `secret keygen` writes
    the key under that data_dir, but the script looked for it under /var/lib/edge-stream:
    every boot after the first ran keygen again, which refused ("exists; not replacing
    a key that may be in use") in the journal. The gateway takes the name in any case
    after the prefix; the script saw only that spelling."""
    environment = ELSEWHERE.replace("EDGE_STREAM__GATEWAY__DATA_DIR", name)
    result = _firstboot(tmp_path, {}, environment=environment, boots=2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not replacing" not in result.stderr, result.stderr
    assert result.stdout.count("made the gateway's secret key") == 1, result.stdout
    files = (tmp_path / "data-files").read_text().splitlines()
    assert "elsewhere/secret.key" in files and "secret.key" not in files, files


def test_a_config_from_the_card_is_kept_in_the_data_dir_the_gateway_uses(tmp_path: Path) -> None:
    """The config a card's edge-stream.yaml replaces is kept under the data_dir's
    config-history/ (for `config rollback`); with EDGE_STREAM__GATEWAY__DATA_DIR in the
    environment file it went under /var/lib/edge-stream, where the gateway and `config
    rollback` do not look."""
    config = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text()
    result = _firstboot(tmp_path, {"edge-stream.yaml": config + "# new\n"}, environment=ELSEWHERE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "took edge-stream.yaml" in result.stdout, result.stdout
    files = (tmp_path / "data-files").read_text().splitlines()
    assert any(f.startswith("elsewhere/config-history/") for f in files), files
    assert "config-history" not in files, files


def test_the_environment_files_values_go_through_no_temp_file(tmp_path: Path) -> None:
    """The environment file's pairs (the console's password, DSNs) went through a mktemp
    file: left in /tmp until the next reboot when the unit's timeout killed the script in
    between, and a temp folder that cannot be written (full, read-only) stopped the whole
    first boot under set -e, before the credentials were made."""
    config = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text() + (
        "  users_file: /var/lib/edge-stream/no-users\n"
    )
    environment = "EDGE_STREAM__WEB__USERNAME=operator\nEDGE_STREAM__WEB__PASSWORD=a-long-one\n"
    result = _firstboot(
        tmp_path, {"edge-stream.yaml": config}, environment=environment, ro_tmp=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = {p.name for p in (tmp_path / "card-after").iterdir()}
    assert {"edge-stream.yaml.applied", "edge-stream-credentials.txt"} <= after, result.stdout
    overrides = (tmp_path / "overrides").read_text().splitlines()
    assert "('EDGE_STREAM__WEB__PASSWORD', 'a-long-one')" in overrides


def test_an_environment_file_systemd_skips_is_said_so_and_skipped(tmp_path: Path) -> None:
    """A value that is not UTF-8 (a file saved as Latin-1) makes systemd skip the whole
    file (EnvironmentFile=-, the gateway runs without its overrides); the reader's failure
    was hidden from `set -e` by `< <(...)`, and nothing said why the file's values were
    not taken."""
    environment = "EDGE_STREAM__GATEWAY__ID=caf\udce9\nEDGE_STREAM__WEB__USERNAME=operator\n"
    config = (ROOTFS / "etc/edge-stream/gateway.yaml").read_text()
    result = _firstboot(
        tmp_path, {"edge-stream.yaml": config}, environment=environment, old_marks=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "/etc/edge-stream/environment" in line]
    assert lines == [
        "edge-stream-firstboot: /etc/edge-stream/environment: cannot be read (invalid UTF-8"
        " in the value of EDGE_STREAM__GATEWAY__ID): systemd skips the whole file too, so"
        " the gateway runs without any of its values; the card's config is checked without"
        " them"
    ], result.stdout
    overrides = (tmp_path / "overrides").read_text()
    assert "WEB__USERNAME" not in overrides and "GATEWAY__ID" not in overrides


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder any user may enter, all the way from / (pytest's own are in a 0700 one)."""
    folder = Path(tempfile.mkdtemp(prefix="firstboot-veil-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.parametrize("under", ["", "ci/"])
def test_a_checkout_that_is_itself_closed_or_under_one_is_reached(
    tmp_path: Path, open_folder: Path, under: str
) -> None:
    """Only the folders above a needed path were looked at: a checkout of mode 0700 itself
    (not under a closed folder) was not veiled, and the gateway's user could not read it."""
    if os.geteuid() != 0:
        pytest.fail("the first-boot test needs root (mount namespaces)", pytrace=False)
    repo = open_folder / under / "repo"
    (repo / "gateway").mkdir(parents=True)
    (repo / "gateway/module.py").write_text("reached\n")
    (repo / "gateway").chmod(0o755)
    (repo / "gateway/module.py").chmod(0o644)
    closed = open_folder / "ci" if under else repo
    closed.chmod(0o700)
    lines = _veiled(tmp_path, {repo})
    assert lines == f"{closed}\t{repo}"
    script = (
        "set -euo pipefail\nT=$1\n" + VEIL + 'runuser -u nobody -- cat "$2/gateway/module.py"\n'
    )
    result = subprocess.run(
        [*UNSHARE, "bash", "-c", script, "veil", str(tmp_path), str(repo)],
        capture_output=True,
        text=True,
        env={**os.environ, "VEILED": lines},
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "reached\n"), result.stderr


@pytest.mark.parametrize(
    ("package", "module"), [(0o700, 0o600), (0o755, 0o600)], ids=["folder", "module"]
)
def test_a_checkout_others_cannot_read_fails_at_once_saying_what_to_do(
    tmp_path: Path, open_folder: Path, package: int, module: int
) -> None:
    """VEIL opens only the closed folder's top: a checkout cloned under umask 077 (0700
    folders, 0600 files) was still unreadable to the gateway's user, and the first-boot
    script failed on an import with no word of the cause."""
    repo = open_folder / "repo"
    (repo / "gateway").mkdir(parents=True)
    (repo / "gateway/module.py").write_text("reached\n")
    (repo / "gateway").chmod(package)
    (repo / "gateway/module.py").chmod(module)
    repo.chmod(0o700)
    unreadable = repo / "gateway" if package == 0o700 else repo / "gateway/module.py"
    with pytest.raises(pytest.fail.Exception, match=r"chmod -R o\+rX") as failed:
        _veiled(tmp_path, {repo})
    assert str(failed.value) == (
        f"{unreadable} (mode {package if package == 0o700 else module:04o}) cannot be read"
        " by other users, so neither by the gateway's user the first-boot test runs it as:"
        f" the checkout was cloned under a umask such as 077; run chmod -R o+rX {repo}"
        " (or clone it with umask 022)"
    )


def test_a_test_folder_in_a_folder_the_test_mounts_over_fails_at_once(open_folder: Path) -> None:
    """A test folder under a closed folder (pytest's --basetemp in /root) was hidden by the
    tmpfs put there: the script then failed far from the cause."""
    closed = open_folder / "ci"
    (closed / "repo").mkdir(parents=True)
    closed.chmod(0o700)
    with pytest.raises(pytest.fail.Exception, match=r"--basetemp outside it") as failed:
        _veiled(closed / "pytest/test0", {closed / "repo"})
    assert str(failed.value).startswith(
        f"the first-boot test's folder {closed}/pytest/test0 is in {closed}, which the test"
    )
    with pytest.raises(pytest.fail.Exception, match=r"is in /var/lib, which"):
        _veiled(Path("/var/lib/ci/test0"), {closed / "repo"})
