"""`edge-stream reload -c FILE` and `config rollback` ask the gateway at FILE's web.listen to
read its config file again; when that gateway runs on another file (FILE is a copy being
edited, with the same web.listen), they said "FILE: reload applied" while FILE was never
read. The gateway's answer names its file, and the command says which one it read.

An in-process gateway serves the API; the command runs in a thread, as from a shell."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.app import Gateway, Reloads
from gateway.cli import main
from gateway.config.load import load
from tests.web.test_web import free_port

pytestmark = pytest.mark.integration


def _reload(config: Path) -> int:
    try:
        return main(["reload", "-c", str(config)])
    except SystemExit as exit_:
        return int(exit_.code or 0)


def _files(tmp_path: Path, port: int) -> tuple[Path, Path, str]:
    """The config a gateway runs on, an edited copy with the same web.listen, and the path
    the gateway is given (relative, as `edge-stream run -c gateway.yaml` gives it)."""
    running = tmp_path / "gateway.yaml"
    running.write_text(
        f"gateway: {{id: a, data_dir: '{tmp_path / 'data'}', watch_config: false}}\n"
        "mqtt: {url: 'mqtt://127.0.0.1:1'}\n"
        "status: {enabled: false}\n"
        "routes: {all: {match: '#', sinks: [out]}}\n"
        "sinks: {out: {type: file}}\n"
        f"web: {{listen: '127.0.0.1:{port}'}}\n"
    )
    edited = tmp_path / "new.yaml"
    edited.write_text(running.read_text().replace("sinks: [out]", "sinks: [out, two]"))
    return running, edited, os.path.relpath(running)


async def test_reload_of_a_file_the_gateway_does_not_run_on_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    running, edited, given = _files(tmp_path, port)
    gateway = Gateway(load(running, environ={}), given)
    gateway.reload_now = Reloads(gateway, given, lambda: False).api
    task = asyncio.create_task(gateway.run())
    try:
        async with asyncio.timeout(10):
            await gateway.ready.wait()
        assert await asyncio.to_thread(_reload, running) == 0
        assert capsys.readouterr() == (f"{running}: reload applied\n", "")

        assert await asyncio.to_thread(_reload, edited) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (
            f"edge-stream: {edited}: the gateway at http://127.0.0.1:{port}/api/config/reload"
            f" runs on {running}, not on this file: it read {running} again (applied); copy"
            f" {edited} over {running} to apply it\n"
        )
    finally:
        gateway.stop()
        await task
