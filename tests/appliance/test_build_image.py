"""scripts/build-image's parts that run fast, sourced from the script itself (a whole
image takes minutes under emulation: `make image`)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def _build_image(
    function: str, *args: str, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one function of scripts/build-image (sourced: it defines them, runs nothing);
    `path`: a folder of stand-in programs put first on PATH."""
    env = {**os.environ, "PYTHON": sys.executable}
    if path:
        env["PATH"] = f"{path}:{env['PATH']}"
    return subprocess.run(
        ["bash", "-c", f'source scripts/build-image && {function} "$@"', "build-image", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_sourcing_the_script_runs_nothing() -> None:
    result = _build_image("true")
    assert result.returncode == 0 and not result.stdout + result.stderr, result


def test_the_overlay_is_roots_and_leaves_the_base_folders_alone(tmp_path: Path) -> None:
    """rootfs/ was copied with `cp -a`, which gives the image's /, /etc, /usr/lib and the
    overlay's files the owner and modes of the checkout: cloned by a user (uid 1000) and
    built with sudo, the image's root folder and /etc belonged to its `edge` user (uid
    1000 there too), and a group-writable checkout (umask 002) made them group-writable."""
    if os.geteuid() != 0:
        pytest.fail("the overlay test needs root (file ownership)", pytrace=False)
    source = tmp_path / "rootfs"
    (source / "etc/mosquitto").mkdir(parents=True)
    (source / "usr/lib/edge-stream").mkdir(parents=True)
    (source / "etc/mosquitto/mosquitto.conf").write_text("listener 1883\n")
    (source / "usr/lib/edge-stream/firstboot").write_text("#!/bin/sh\n")
    for path in [source, *source.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
        path.chmod(0o775 if path.is_dir() or path.name == "firstboot" else 0o664)
    root = tmp_path / "root"
    for folder in ("etc", "usr/lib"):
        (root / folder).mkdir(parents=True)
    (root / "etc").chmod(0o755)
    root.chmod(0o755)

    result = _build_image("overlay", str(source), str(root))
    assert result.returncode == 0, result.stderr

    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (0, 0), f"{path} owned by {info.st_uid}"
        assert not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH), f"{path} {info.st_mode:o}"
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "usr/lib/edge-stream/firstboot").stat().st_mode) == 0o755
    assert (root / "etc/mosquitto/mosquitto.conf").read_text() == "listener 1883\n"


def test_a_checkout_made_with_umask_077_gives_readable_files(tmp_path: Path) -> None:
    """The overlay's copy only took group and other write off: a checkout cloned with
    umask 077 (files 0600, folders 0700) gave the image a mosquitto.conf Mosquitto could
    not read and an /etc/mosquitto nobody but root could enter."""
    if os.geteuid() != 0:
        pytest.fail("the overlay test needs root (file ownership)", pytrace=False)
    source = tmp_path / "rootfs"
    (source / "etc/mosquitto").mkdir(parents=True)
    (source / "usr/lib/edge-stream").mkdir(parents=True)
    (source / "etc/mosquitto/mosquitto.conf").write_text("listener 1883\n")
    (source / "usr/lib/edge-stream/firstboot").write_text("#!/bin/sh\n")
    for path in [*source.rglob("*")]:
        path.chmod(0o700 if path.is_dir() or path.name == "firstboot" else 0o600)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc").chmod(0o755)

    result = _build_image("overlay", str(source), str(root))
    assert result.returncode == 0, result.stderr

    modes = {
        str(path.relative_to(root)): stat.S_IMODE(path.lstat().st_mode) for path in root.rglob("*")
    }
    assert modes == {
        "etc": 0o755,
        "etc/mosquitto": 0o755,
        "etc/mosquitto/mosquitto.conf": 0o644,
        "usr": 0o755,
        "usr/lib": 0o755,
        "usr/lib/edge-stream": 0o755,
        "usr/lib/edge-stream/firstboot": 0o755,
    }, {k: f"{v:o}" for k, v in modes.items()}


def test_preflight_on_an_arm64_host_needs_no_emulation(tmp_path: Path) -> None:
    """README: `make image` on Debian 12 x86-64 or arm64. On arm64 the image's programs run
    natively, and Debian's qemu-user-static registers no qemu-aarch64 for its own CPU
    family: preflight died there ("no /usr/lib/binfmt.d/qemu-aarch64.conf: is
    qemu-user-static installed?") right after installing it. Stand-ins for dpkg (an arm64
    host, every package installed) and mount (recording) keep this machine as it is."""
    if os.geteuid() != 0:
        pytest.fail("preflight refuses to run but as root", pytrace=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_ins = {
        "dpkg": '[ "$1" = --print-architecture ] && echo arm64',
        "dpkg-query": "printf installed",
        "mount": f'echo "$*" >>{tmp_path}/mounts; exit 1',
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    result = _build_image("preflight", path=str(bin_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "arm64" in result.stdout
    assert not (tmp_path / "mounts").exists()
