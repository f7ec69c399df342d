"""Arguments a command does not take are refused (exit 2, one line), not ignored: `dead-letters
list 5` read like "the newest 5" and listed 50, `replay 3 --all` replayed all of them.
Run in-process (`gateway.cli.main`); the refusal comes before any store is opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dead-letters", "list", "5"],
         "dead-letters list takes no numbers and no --all (--limit N: how many, default 50)"),
        (["dead-letters", "list", "--all"],
         "dead-letters list takes no numbers and no --all (--limit N: how many, default 50)"),
        (["dead-letters", "show", "--all"], "dead-letters show takes numbers, not --all"),
        (["dead-letters", "replay", "3", "--all"],
         "dead-letters replay takes numbers or --all, not both"),
        (["dead-letters", "purge", "3", "--all"],
         "dead-letters purge takes numbers or --all, not both"),
        (["state", "list", "r.0"], "state list takes no component (state show ROUTE.N does)"),
        (["config", "history", "extra"], "config history takes no argument"),
        (["config", "keygen-signing", "--out", "KEY", "extra"],
         "config keygen-signing takes no argument"),
    ],
)  # fmt: skip
def test_an_argument_a_command_does_not_take_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"gateway: {{id: a, data_dir: '{tmp_path / 'data'}'}}\n")
    argv = [a if a != "KEY" else str(tmp_path / "fleet.key") for a in args]
    assert main([*argv, "-c", str(config)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"edge-stream: {message}\n")
    assert not (tmp_path / "data").exists() and not (tmp_path / "fleet.key").exists()
