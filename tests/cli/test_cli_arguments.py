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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gateway", "a/b"], "the gateway id 'a/b' holds '/': the id is one level of MQTT"),
        (["--gateway", "a+b"], "the gateway id 'a+b' holds '+': the id is one level of MQTT"),
        (["--gateway", "pi-01", "--version", "-5"], "version -5: a gateway takes a whole number"),
    ],
)  # fmt: skip
def test_config_sign_refuses_a_gateway_id_or_version_no_gateway_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # Signed and pushed, 'a/b' went to edge-stream/a/b/config/set, which no gateway reads,
    # and version -5 is refused by every gateway ("not a whole number >= 0").
    key = tmp_path / "fleet.key"
    assert main(["config", "keygen-signing", "--out", str(key)]) == 0
    new = tmp_path / "new.yaml"
    new.write_text("gateway: {id: pi-01}\n")
    capsys.readouterr()
    assert main(["config", "sign", str(new), "--key", str(key), *args]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"edge-stream: {message}") and err.count("\n") == 1
