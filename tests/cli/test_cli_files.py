"""The commands that write files (secret keygen, docs) and the key they look for: a path
they cannot write, or a key file that is not there, is one line saying which file and
what to do, never a traceback. Run in-process (`gateway.cli.main`), no server."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import gateway.cli
from gateway.cli import main
from gateway.web import access
from tests.disk import fail_fsync_of

pytestmark = pytest.mark.unit


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def stdin(data: bytes) -> io.TextIOWrapper:
    """A stdin fed `data`, as a UTF-8 locale on Linux gives it (errors=strict, newlines
    left as they are)."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline="\n")


def test_keygen_and_docs_where_a_file_stands_for_a_folder_say_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGE_STREAM_SECRET_KEY", raising=False)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")

    key = blocker / "keys" / "secret.key"
    assert run(capsys, "secret", "keygen", "--key-file", str(key)) == (
        1,
        "",
        f"edge-stream: cannot write {key}: {blocker} is a file, not a folder\n",
    )
    assert run(capsys, "docs", "--out", str(blocker)) == (
        1,
        "",
        f"edge-stream: cannot write {blocker}: it is a file, not a folder\n",
    )
    # an existing key is still never replaced
    assert run(capsys, "secret", "keygen", "--key-file", str(blocker)) == (
        1,
        "",
        f"edge-stream: {blocker} exists; not replacing a key that may be in use\n",
    )
    assert blocker.read_text() == "a file, not a folder\n"


def test_a_missing_key_names_the_file_looked_for_and_the_keygen_that_makes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGE_STREAM_SECRET_KEY", raising=False)
    key = tmp_path / "k" / "my.key"
    code, out, err = run(capsys, "secret", "encrypt", "v", "--key-file", str(key))
    assert (code, out) == (1, "")
    assert err == (
        f"edge-stream: no key: there is no {key}; run 'edge-stream secret keygen"
        f" --key-file {key}' or set EDGE_STREAM_SECRET_KEY\n"
    )
    # the command it names makes the key that encrypt then finds
    assert run(capsys, "secret", "keygen", "--key-file", str(key))[0] == 0
    code, out, err = run(capsys, "secret", "encrypt", "v", "--key-file", str(key))
    assert (code, err) == (0, "") and out.startswith("ENC(")

    config = tmp_path / "gateway.yaml"
    config.write_text(f"gateway: {{id: a, data_dir: '{tmp_path / 'data'}'}}\n")
    code, out, err = run(capsys, "secret", "decrypt", "ENC(abc)", "-c", str(config))
    assert (code, out) == (1, "")
    assert err == (
        f"edge-stream: no key: there is no {tmp_path / 'data' / 'secret.key'}; run"
        f" 'edge-stream secret keygen -c {config}' or set EDGE_STREAM_SECRET_KEY\n"
    )


def test_a_config_file_that_is_not_there_is_said_when_the_defaults_are_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `secret keygen -c /etc/edge-stream/gatway.yaml` (a typo) made ./data/secret.key and
    # said only "wrote a new key", far from the gateway's data_dir; web passwd the same
    monkeypatch.delenv("EDGE_STREAM_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    typo = str(tmp_path / "gatway.yaml")
    code, out, err = run(capsys, "secret", "keygen", "-c", typo)
    assert (code, out.startswith("wrote a new key to data/secret.key")) == (0, True)
    assert err == f"edge-stream: note: {typo} does not exist; using data/secret.key\n"
    monkeypatch.setattr("sys.stdin", stdin(b"password1\n"))
    code, out, err = run(capsys, "web", "passwd", "ann", "-c", str(tmp_path))
    assert (code, out.startswith("data/web-users: added ann")) == (0, True)
    assert err == f"edge-stream: note: {tmp_path} is not a file; using data/web-users\n"
    # with the key in the environment, no file is used: nothing to say
    monkeypatch.setenv("EDGE_STREAM_SECRET_KEY", "ab" * 32)
    code, out, err = run(capsys, "secret", "encrypt", "v", "-c", typo)
    assert (code, out.startswith("ENC("), err) == (0, True, "")


def test_rotate_reads_the_config_as_the_gateway_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # rotate read the whole file, whatever its size: `-c /dev/zero` filled the memory and
    # ended in a MemoryError traceback; a file the gateway refuses is refused here too
    monkeypatch.delenv("EDGE_STREAM_SECRET_KEY", raising=False)
    key = tmp_path / "k"
    assert run(capsys, "secret", "keygen", "--key-file", str(key))[0] == 0
    big = tmp_path / "gateway.yaml"
    big.write_text("# " + "x" * (256 << 10) + "\n")
    assert run(capsys, "secret", "rotate", "-c", str(big), "--key-file", str(key)) == (
        1,
        "",
        f"edge-stream: {big}: the config is larger than 256 KiB (limit 256 KiB): is this the"
        " right file?\n",
    )


def test_a_key_file_is_read_no_further_than_a_key_can_be(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the key file was read whole: `--key-file /dev/zero` filled the memory (MemoryError,
    # a traceback), and a named pipe hung the command
    monkeypatch.delenv("EDGE_STREAM_SECRET_KEY", raising=False)
    key = tmp_path / "big.key"
    key.write_text("a" * 5000)
    assert run(capsys, "secret", "encrypt", "v", "--key-file", str(key)) == (
        1,
        "",
        f"edge-stream: the key file {key} is larger than 4 KiB; it must hold 64 hex digits"
        " or base64\n",
    )


def test_a_value_or_password_that_is_not_utf8_or_too_long_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # bytes that are not UTF-8 (stdin or argv carries them as surrogates) ended the
    # encryption or the hash in a UnicodeEncodeError traceback; `< /dev/zero` was read whole
    monkeypatch.delenv("EDGE_STREAM_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    key = tmp_path / "k"
    assert run(capsys, "secret", "keygen", "--key-file", str(key))[0] == 0
    monkeypatch.setattr("sys.stdin", stdin(b"ab\xffcd\n"))
    assert run(capsys, "secret", "encrypt", "--key-file", str(key)) == (
        1,
        "",
        "edge-stream: secret encrypt: the value is not UTF-8 text (byte 0xff at character 3);"
        " nothing done\n",
    )
    monkeypatch.setattr("sys.stdin", stdin(b"pass\xffword\n"))
    code, out, err = run(capsys, "web", "passwd", "ann", "-c", "none.yaml")
    assert (code, out) == (1, "")
    assert err.endswith(
        "edge-stream: the password is not UTF-8 text (byte 0xff at character 5); nothing done\n"
    )
    monkeypatch.setattr("sys.stdin", stdin(b"x" * 2000))
    code, out, err = run(capsys, "web", "passwd", "ann", "-c", "none.yaml")
    assert (code, out) == (1, "")
    assert err.endswith("edge-stream: a console password has at most 1024 characters\n")
    assert not (tmp_path / "data" / "web-users").exists()
    # the limit is in bytes, as read: a count of characters let this one be cut and encrypted
    monkeypatch.setattr("sys.stdin", stdin("é".encode() + b"a" * 262_200))
    assert run(capsys, "secret", "encrypt", "--key-file", str(key)) == (
        1,
        "",
        "edge-stream: secret encrypt: the value is longer than a config file can be (256 KiB);"
        " nothing done\n",
    )


class _CtrlC(io.BytesIO):
    def read(self, *_args: object) -> bytes:
        raise KeyboardInterrupt

    readline = read1 = read


@pytest.mark.parametrize("args", [["secret", "encrypt"], ["web", "passwd", "ann"]])
def test_ctrl_c_at_a_prompt_ends_the_command_without_a_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
) -> None:
    monkeypatch.delenv("EDGE_STREAM_SECRET_KEY", raising=False)
    key = tmp_path / "k"
    assert run(capsys, "secret", "keygen", "--key-file", str(key))[0] == 0
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(_CtrlC()))
    extra = ["--key-file", str(key)] if args[0] == "secret" else ["-c", str(tmp_path / "a")]
    try:
        code, out, err = run(capsys, *args, *extra)
    except KeyboardInterrupt:  # not let through: it would stop the test run
        pytest.fail("Ctrl-C came out of main(): a traceback")
    assert (code, out) == (130, "")
    assert err.endswith("\nedge-stream: interrupted\n")
    assert not (tmp_path / "data").exists()


def test_web_passwd_refuses_a_users_file_under_a_tilde(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # web.users_file: ~/users wrote ./~/users (~ is not expanded), where no gateway looks
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "gateway.yaml"
    config.write_text("gateway: {id: a, data_dir: d}\nweb: {users_file: ~/users}\n")
    monkeypatch.setattr("sys.stdin", stdin(b"password1\n"))
    code, out, err = run(capsys, "web", "passwd", "ann", "-c", str(config))
    assert (code, out) == (1, "")
    assert err.startswith(f"edge-stream: {config}: web.users_file: '~/users': ~ is not expanded")
    assert not (tmp_path / "~").exists()


def test_keygen_says_when_the_environment_key_will_be_used_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the new file was written and then ignored by every command, without a word
    monkeypatch.setenv("EDGE_STREAM_SECRET_KEY", "00" * 32)
    key = tmp_path / "secret.key"
    code, out, err = run(capsys, "secret", "keygen", "--key-file", str(key))
    assert code == 0 and key.exists()
    assert out == f"wrote a new key to {key} (mode 0600); keep a copy somewhere safe\n"
    assert err == (
        "edge-stream: note: EDGE_STREAM_SECRET_KEY is set, and comes first: every command"
        f" and the gateway use it, not {key}, until it is unset\n"
    )


@pytest.mark.parametrize(
    "args",
    [["schema"], ["config", "show"], ["check-config"], ["docs", "--out", "DOCS"], ["--version"]],
)
def test_output_that_cannot_be_written_is_one_line_not_a_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
) -> None:
    # `edge-stream schema > /dev/full` printed a traceback (OSError: [Errno 28]); a short
    # output only fails when it is flushed, which Python did at exit, after main returned 0.
    config = tmp_path / "gateway.yaml"
    config.write_text(f"gateway: {{id: a, data_dir: '{tmp_path / 'data'}'}}\n")
    argv = [a if a != "DOCS" else str(tmp_path / "docs") for a in args]
    if args[0] in ("config", "check-config"):
        argv += ["-c", str(config)]
    with open("/dev/full", "w") as full:
        monkeypatch.setattr("sys.stdout", full)
        code = main(argv)
        monkeypatch.undo()
    assert code == 1
    assert capsys.readouterr().err == (
        "edge-stream: cannot write the output: No space left on device\n"
    )


def test_the_store_commands_need_only_the_data_dir_of_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # They loaded the whole config: `config history`, the one place that says why a reload
    # was refused, refused to run on the file the reload refused; and a shell without the
    # key of an ENC(...) password could not list dead letters or the state.
    import asyncio

    from gateway.store.sqlite import Store

    monkeypatch.delenv("EDGE_STREAM_SECRET_KEY", raising=False)
    data_dir = tmp_path / "data"

    async def make_store() -> None:
        store = Store(data_dir / "store.db")
        await store.open(["out"])
        await store.close()

    asyncio.run(make_store())
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"gateway: {{id: pi-01, data_dir: '{data_dir}'}}\n"
        "mqtt: {url: mqtt://127.0.0.1:1, username: u, password: 'ENC(AAAAAAAAAAAAAAAA)'}\n"
        "routes: {all: {match: '#', sinks: [out]}}\n"
        "sinks: {out: {type: fiel}}\n"
    )
    c = str(config)
    assert run(capsys, "config", "history", "-c", c) == (0, "no reloads recorded yet\n", "")
    assert run(capsys, "dead-letters", "list", "-c", c) == (0, "0 dead letter(s)\n", "")
    assert run(capsys, "state", "list", "-c", c) == (0, "no kept state\n", "")
    code, out, err = run(capsys, "store", "stats", "-c", c)
    assert (code, err) == (0, "") and out.splitlines()[1].split() == ["out", "0", "-"]
    # drop-sink loaded the whole config too (its sinks' names are all it needs)
    code, out, err = run(capsys, "store", "drop-sink", "out", "-c", c)
    assert (code, out) == (1, "")
    assert err.startswith(f"edge-stream: sink 'out' is in {c}; remove it from the config")
    config.write_text(config.read_text().replace("sinks: [out]", "sinks: [two]"))
    config.write_text(config.read_text().replace("{out: {type: fiel}}", "{two: {type: fiel}}"))
    code, out, err = run(capsys, "store", "drop-sink", "out", "-c", c)
    assert (code, out, err) == (
        0,
        "dropped sink 'out' and the 0 FlowFile(s) that waited for it\n",
        "",
    )
    # a sink named as YAML reads a number ({1: ...}) is the gateway's sink '1': it was
    # dropped, its backlog deleted, while the config still sent to it
    config.write_text(config.read_text().replace("two", "1"))
    code, out, err = run(capsys, "store", "drop-sink", "1", "-c", c)
    assert (code, out) == (1, "")
    assert err.startswith(f"edge-stream: sink '1' is in {c}; remove it from the config")


@pytest.mark.parametrize(
    ("gateway", "problem"),
    [
        (
            "{id: a, datadir: /x}",
            ":1: gateway.datadir: unknown key (did you mean 'data_dir'?)",
        ),
        ("pi-01", ":1: gateway: expected a mapping, got str 'pi-01'"),
        (
            "{id: a, secret_keyfile: /x/k}",
            ":1: gateway.secret_keyfile: unknown key (did you mean 'secret_key_file'?)",
        ),
    ],
)
def test_a_mistake_in_the_gateway_section_is_refused_not_read_as_the_default_data_dir(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    gateway: str,
    problem: str,
) -> None:
    # With the rest of the file refused too (the sink's typo), only data_dir was read from
    # it, and a missing or misspelled one was taken as ./data: `store reset --force` moved
    # the store of the current folder aside, `dead-letters purge --all` emptied it.
    import asyncio

    from gateway.store.sqlite import Store

    monkeypatch.delenv("EDGE_STREAM_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)

    async def make_store() -> None:
        store = Store(tmp_path / "data" / "store.db")
        await store.open(["out"])
        await store.close()

    asyncio.run(make_store())
    before = sorted(p.name for p in (tmp_path / "data").iterdir())
    config = tmp_path / "typo.yaml"
    config.write_text(f"gateway: {gateway}\nsinks: {{out: {{type: fiel}}}}\n")
    c = str(config)
    refused = (1, "", f"edge-stream: {c}{problem}\n")
    for args in (
        ["store", "reset", "--force"],
        ["store", "stats"],
        ["dead-letters", "purge", "--all"],
        ["dead-letters", "replay", "--all"],
        ["state", "reset", "r.0"],
        ["config", "history"],
        ["config", "versions"],
        ["secret", "keygen"],
        ["web", "passwd", "ops"],
    ):
        assert run(capsys, *args, "-c", c) == refused, args
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == before


def test_web_passwd_refuses_the_name_of_the_configs_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `web passwd tech` with web.username tech wrote a users-file line the console never
    # read (it checks the config's account first): "changed tech", and the old password
    # went on working, its sessions too.
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"gateway: {{id: t, data_dir: {tmp_path / 'data'}}}\n"
        "web: {username: tech, password: old-pass-123}\n"
    )
    monkeypatch.setattr("sys.stdin", stdin(b"new-pass-123\n"))
    code, out, err = run(capsys, "web", "passwd", "tech", "-c", str(config))
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert "tech is web.username in" in err and "web.password" in err
    assert not (tmp_path / "data" / "web-users").exists()
    # The config was read twice (for the users file, then for web.username), and the
    # usage text said neither that the sessions end nor that web.username is refused.
    reads: list[str] = []
    read_text = gateway.cli.read_text
    monkeypatch.setattr(
        gateway.cli, "read_text", lambda path: reads.append(path) or read_text(path)
    )
    monkeypatch.setattr("sys.stdin", stdin(b"new-pass-123\n"))
    assert run(capsys, "web", "passwd", "ann", "-c", str(config))[0] == 0
    assert reads == [str(config)]
    usage = " ".join((gateway.cli.__doc__ or "").split())
    assert "ends the user's sessions; refused for web.username" in usage


def test_a_carriage_return_in_a_value_or_password_from_stdin_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # stdin's \r and \r\n were turned into \n: `printf 'password1\rrest\n' | web passwd`
    # stored "password1\nrest"; only the one line end is taken off
    from gateway.config import secrets
    from gateway.web import access

    monkeypatch.delenv("EDGE_STREAM_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", stdin(b"password1\rrest\n"))
    assert run(capsys, "web", "passwd", "ann", "-c", "none.yaml")[0] == 0
    stored = access.read_users(tmp_path / "data" / "web-users")["ann"]
    assert access.verify_password("password1\rrest", stored.hash)
    key = tmp_path / "k"
    assert run(capsys, "secret", "keygen", "--key-file", str(key))[0] == 0
    for given, kept in [(b"a\rb\r\n", "a\rb"), (b"a\r\nb\n\n", "a\r\nb\n"), (b"ab\r", "ab\r")]:
        monkeypatch.setattr("sys.stdin", stdin(given))
        code, out, _ = run(capsys, "secret", "encrypt", "--key-file", str(key))
        assert code == 0, given
        assert secrets.decrypt(out.strip()[4:-1], secrets.load_key(key) or b"") == kept


def test_a_config_in_a_folder_the_user_cannot_enter_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a user who cannot enter /etc/edge-stream (mode 0750, the service's), `secret keygen
    # -c /etc/edge-stream/gateway.yaml` printed a traceback. The refusal is the kernel's
    # (the tests run as root, whom it never refuses): stood in for at the one call.
    config = tmp_path / "closed" / "gateway.yaml"
    real_is_file = Path.is_file
    refusal = PermissionError(13, "Permission denied", str(config))

    def is_file(self: Path) -> bool:
        if self == config:
            raise refusal
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    assert run(capsys, "secret", "keygen", "-c", str(config)) == (
        1,
        "",
        f"edge-stream: {config}: permission denied: run it as the user the file belongs to\n",
    )
    # EPERM (an immutable file, a chown): its owner is refused too, so no such advice
    refusal = PermissionError(1, "Operation not permitted", str(config))
    assert run(capsys, "secret", "keygen", "-c", str(config)) == (
        1,
        "",
        f"edge-stream: {config}: operation not permitted\n",
    )


def test_a_refusal_inside_the_running_gateway_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a one-shot command's refusal on a named file is the one line above: the gateway's
    # own (a serial port it may not open, from inside `run`) is not said as "run it as the
    # file's owner".
    config = tmp_path / "gateway.yaml"
    config.write_text(f"gateway: {{data_dir: {tmp_path / 'data'}}}\n")

    def serve(*_args: object, **_kwargs: object) -> int:
        raise PermissionError(13, "Permission denied", "/dev/ttyUSB0")  # not in dialout

    monkeypatch.setattr("gateway.app.serve", serve)
    with pytest.raises(PermissionError):
        main(["run", "-c", str(config)])


def test_web_passwd_keeps_an_operators_role_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `web passwd ops` to give an operator a new password made it a viewer (--role
    # defaulted to viewer for a change too): the operator's edits were then refused 403.
    config = tmp_path / "gw.yaml"
    config.write_text(f"gateway: {{id: t, data_dir: {tmp_path / 'data'}}}\n")
    users = tmp_path / "data" / "web-users"

    def passwd(*args: str) -> str:
        monkeypatch.setattr("sys.stdin", stdin(b"pass-word-123\n"))
        code, out, err = run(capsys, "web", "passwd", *args, "-c", str(config))
        assert (code, err) == (0, ""), err
        return out

    assert passwd("ops", "--role", "operator") == f"{users}: added ops (operator); " + RUNNING
    assert passwd("ops") == f"{users}: changed ops (operator); " + RUNNING
    assert passwd("vic") == f"{users}: added vic (viewer); " + RUNNING
    assert passwd("vic") == f"{users}: changed vic (viewer); " + RUNNING
    assert passwd("ops", "--role", "viewer") == f"{users}: changed ops (viewer); " + RUNNING
    roles = {u.name: u.role for u in access.read_users(users).values()}
    assert roles == {"ops": "viewer", "vic": "viewer"}


RUNNING = "a running gateway uses it at once\n"


def test_keygen_signing_into_a_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`config keygen-signing --out .` was a ValueError traceback ("has an empty name"),
    and `--out FOLDER` said the folder "exists; keygen-signing never overwrites a key"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys").mkdir()
    cases = ((".", "fleet.key"), ("keys", "keys/fleet.key"), ("keys/", "keys/fleet.key"))
    for out, example in cases:
        assert run(capsys, "config", "keygen-signing", "--out", out) == (
            1,
            "",
            f"edge-stream: {out} is a folder: give the private key's file name, e.g. {example}"
            " (its public key goes beside it, as .pub)\n",
        )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keys"]
    code, out, _ = run(capsys, "config", "keygen-signing", "--out", "keys/fleet.key")
    assert code == 0 and (tmp_path / "keys/fleet.key.pub").exists(), out


def test_a_rollback_whose_folder_cannot_be_synced_says_the_file_was_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsync of the config's folder failed (EIO) after the new text was renamed over
    the file: `save` deleted the version it kept of the replaced text and the command said
    "nothing was changed", while the file held the restored text."""

    from gateway.config import files

    data = tmp_path / "data"
    config = tmp_path / "gw.yaml"
    old = (
        f"gateway: {{id: first, data_dir: {data}}}\nweb: {{enabled: false}}\n"
        "mqtt: {url: 'mqtt://127.0.0.1:1'}\nroutes: {all: {match: '#', sinks: [a]}}\n"
        "sinks: {a: {type: file}}\n"
    )
    config.write_text(old)
    files.save(config, old.replace("first", "second"), data)
    fail_fsync_of(monkeypatch, tmp_path)  # the config's folder
    code, out, err = run(capsys, "config", "rollback", "-c", str(config))
    assert config.read_text() == old
    assert code == 1
    assert err == (
        f"edge-stream: {config}: the file was replaced, but its folder could not be synced"
        " to the disk (Input/output error), so a power cut may yet bring back the old text:"
        " see to the disk (dmesg says why)\n"
    )
    kept = files.versions(data)[0]
    assert kept.path.read_text() == old.replace("first", "second")
    assert out.startswith(f"{config}: restored ") and kept.name in out, out


def test_a_rotation_whose_key_folder_cannot_be_synced_rotates_the_config_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsync of the key's folder failed (EIO) after the new key was renamed over the
    file: rotate said "cannot rotate" and left the config's values under the old key,
    which the key file no longer held: the gateway could open none of them."""

    from gateway.config import secrets

    keys = tmp_path / "keys"
    key = keys / "secret.key"
    assert run(capsys, "secret", "keygen", "--key-file", str(key))[0] == 0
    loaded = secrets.load_key(key)
    assert loaded is not None
    enc = secrets.encrypt("out-a.jsonl", loaded)
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"gateway: {{id: a, data_dir: {tmp_path / 'data'}, secret_key_file: {key}}}\n"
        f"mqtt: {{url: 'mqtt://127.0.0.1:1'}}\nroutes: {{all: {{match: '#', sinks: [a]}}}}\n"
        f"sinks: {{a: {{type: file, path: '{enc}'}}}}\n"
    )
    fail_fsync_of(monkeypatch, keys)  # the key's folder
    code, out, err = run(capsys, "secret", "rotate", "-c", str(config))
    assert code == 1
    assert out.startswith(f"rotated 1 ENC(...) value in {config}"), out
    assert err == (
        f"edge-stream: {key}: the file was replaced, but its folder could not be synced to"
        " the disk (Input/output error), so a power cut may yet bring back the old text: see"
        " to the disk (dmesg says why)\n"
    )
    assert enc not in config.read_text()
    assert run(capsys, "check-config", "-c", str(config))[0] == 0
