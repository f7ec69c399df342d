"""Arguments a command does not take are refused (exit 2, one line), not ignored: `dead-letters
list 5` read like "the newest 5" and listed 50, `replay 3 --all` replayed all of them.
Run in-process (`gateway.cli.main`); the refusal comes before any store is opened."""

from __future__ import annotations

import io
import itertools
import re
import socket
from pathlib import Path

import pytest

from gateway.cli import _arguments, _Output, main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dead-letters", "replay", "3", "--all"],
         "dead-letters replay takes numbers or --all, not both"),
        (["dead-letters", "purge", "3", "--all"],
         "dead-letters purge takes numbers or --all, not both"),
    ],
)  # fmt: skip
def test_an_argument_a_command_does_not_take_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"gateway: {{id: a, data_dir: '{tmp_path / 'data'}'}}\n")
    assert main([*args, "-c", str(config)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"edge-stream: {message}\n")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["config", "history", "--timeout", "5"], "unrecognized arguments: --timeout 5"),
        (["config", "history", "extra"], "unrecognized arguments: extra"),
        (["config", "show", "--limit", "3"], "unrecognized arguments: --limit 3"),
        (["config", "show", "new.yaml"], "unrecognized arguments: new.yaml"),
        (["config", "versions", "--key", "k"], "unrecognized arguments: --key k"),
        (["config", "rollback", "--out", "k"], "unrecognized arguments: --out"),
        (["config", "keygen-signing", "--out", "KEY", "extra"], "unrecognized arguments: extra"),
        (["config", "keygen-signing", "--out", "KEY", "-c", "a.yaml"],
         "unrecognized arguments: -c a.yaml"),
        (["config", "sign", "a.yaml", "--key", "KEY", "--gateway", "g", "--broker", "mqtt://h"],
         "unrecognized arguments: --broker mqtt://h"),
        (["dead-letters", "list", "5"], "unrecognized arguments: 5"),
        (["dead-letters", "list", "--all"], "unrecognized arguments: --all"),
        (["dead-letters", "show", "3", "--all"], "unrecognized arguments: --all"),
        (["dead-letters", "replay", "--limit", "3"], "unrecognized arguments: --limit"),
        # '²'.isdigit(): taken as a number, int('²') was a ValueError traceback
        (["dead-letters", "show", "1", "-c", "f", "²"], "unrecognized arguments: ²"),
        (["state", "list", "r.0"], "unrecognized arguments: r.0"),
        (["state", "reset", "r.0", "--limit", "3"], "unrecognized arguments: --limit 3"),
        (["store", "stats", "--force"], "unrecognized arguments: --force"),
        (["store", "reset", "sink"], "unrecognized arguments: sink"),
        (["secret", "rotate", "value"], "unrecognized arguments: value"),
        (["secret", "keygen", "value"], "unrecognized arguments: value"),
        (["web", "passwd", "ann", "--force"], "unrecognized arguments: --force"),
        # an empty path: a ValueError traceback, "edge-stream: : cannot read", ignored
        (["config", "keygen-signing", "--out", ""], "argument --out: an empty path; name a file"),
        (["config", "show", "-c", ""], "argument -c/--config: an empty path; name a file"),
        (["secret", "encrypt", "v", "--key-file", ""],
         "argument --key-file: an empty path; name a file"),
    ],
)  # fmt: skip
def test_an_option_of_another_action_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], refused: str
) -> None:
    # One parser served all the actions of a command: `config history --timeout 5` (push's
    # option) was taken and ignored, and so was `store stats --force`.
    argv = [a if a != "KEY" else str(tmp_path / "fleet.key") for a in args]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    usage, error = err.splitlines()[0], err.splitlines()[-1]
    command = " ".join(args[:2])
    assert out == "" and usage.startswith(f"usage: edge-stream {command} ")
    assert error == f"edge-stream {command}: error: {refused}"
    assert not (tmp_path / "fleet.key").exists()


@pytest.mark.parametrize("action", ["show", "replay", "purge"])
def test_dead_letter_numbers_after_an_option_are_taken(action: str) -> None:
    # `dead-letters show 1 -c FILE 2` (as one parser took it before) was refused:
    # 'unrecognized arguments: 2'
    args = _arguments(["dead-letters", action, "1", "-c", "gw.yaml", "2", "3"])
    assert (args.seq, args.config) == ([1, 2, 3], "gw.yaml")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gateway", "a/b"], "the gateway id 'a/b' holds '/': the id is one level of MQTT"),
        (["--gateway", "a+b"], "the gateway id 'a+b' holds '+': the id is one level of MQTT"),
        (["--gateway", "pi-01", "--version", "-5"], "version -5: a gateway takes a whole number"),
        (["--gateway", "pi-01", "--version", str(2**53)], f"version {2**53}: a gateway takes"),
    ],
)  # fmt: skip
def test_config_sign_refuses_a_gateway_id_or_version_no_gateway_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # Signed and pushed, 'a/b' went to edge-stream/a/b/config/set, which no gateway reads,
    # and version -5 is refused by every gateway; one past 2^53 - 1, once applied, made the
    # gateway refuse every later push.
    key = tmp_path / "fleet.key"
    assert main(["config", "keygen-signing", "--out", str(key)]) == 0
    new = tmp_path / "new.yaml"
    new.write_text("gateway: {id: pi-01}\n")
    capsys.readouterr()
    assert main(["config", "sign", str(new), "--key", str(key), *args]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"edge-stream: {message}") and err.count("\n") == 1


@pytest.mark.parametrize("timeout", ["0", "-1", "nan"])
def test_config_push_refuses_a_timeout_that_is_no_wait(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    # It ended the push at once with "cannot reach the broker 127.0.0.1:1883: " (and no
    # reason), while the broker was there.
    argv = ["config", "push", "new.yaml", "--key", "k", "--gateway", "pi-01"]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--broker", "mqtt://127.0.0.1:1883", "--timeout", timeout])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --timeout: must be a number of seconds above 0, got {timeout}" in err


def _push_argv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    key = tmp_path / "fleet.key"
    assert main(["config", "keygen-signing", "--out", str(key)]) == 0
    new = tmp_path / "new.yaml"
    new.write_text("gateway: {id: pi-01}\n")
    capsys.readouterr()
    return ["config", "push", str(new), "--key", str(key), "--gateway", "pi-01"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker", "mqtts://127.0.0.1:1", "--ca-file", "/nonexistent/ca.pem"],
         "cannot use the TLS files (--ca-file '/nonexistent/ca.pem'): [Errno 2] No such file"),
        (["--broker", "mqtt://127.0.0.1:1", "--ca-file", "/nonexistent/ca.pem"],
         "--ca-file: for an mqtts:// broker; mqtt://127.0.0.1:1 is mqtt://"),
        (["--broker", "mqtts://127.0.0.1:1", "--cert-key", "/nonexistent/key.pem"],
         "--cert-key needs the --cert-file whose key it is"),
    ],
)  # fmt: skip
def test_config_push_names_the_tls_file_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # A missing --ca-file said "cannot reach the broker 127.0.0.1:1: [Errno 2] No such file
    # or directory", naming no file; on an mqtt:// broker it was ignored without a word.
    assert main([*_push_argv(tmp_path, capsys), *args]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"edge-stream: {message}") and err.count("\n") == 1


@pytest.mark.parametrize("broker", ["mqtt://127.0.0.1:1", "mqtt://:s3cret-pw@127.0.0.1:1"])
def test_config_push_refuses_a_password_without_a_user_name(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    broker: str,
) -> None:
    # An MQTT client sends a password only with a user name: it went unsent, and the
    # broker's refusal ("not authorized") said nothing of the password set.
    monkeypatch.setenv("EDGE_STREAM_PUSH_PASSWORD", "s3cret-pw")
    assert main([*_push_argv(tmp_path, capsys), "--broker", broker]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "edge-stream: $EDGE_STREAM_PUSH_PASSWORD (or the password in --broker) needs a user"
        " name: give --username, or user:password@ in --broker\n",
    )


def test_config_push_to_a_broker_that_never_answers_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A TimeoutError has no text: it said "cannot reach the broker 127.0.0.1:N: " and stopped.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        argv = [*_push_argv(tmp_path, capsys), "--broker", f"mqtt://127.0.0.1:{port}"]
        assert main([*argv, "--timeout", "0.3"]) == 1
    err = capsys.readouterr().err
    assert err == f"edge-stream: cannot reach the broker 127.0.0.1:{port}: no answer within 0.3 s\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "diff", "-c", "a.yaml", "b.yaml", "extra"],
        ["secret", "encrypt", "-c", "a.yaml", "value", "extra"],
    ],
)
def test_only_the_arguments_left_over_are_said_unrecognized(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    # An argument after the option was taken as the positional only when it was alone:
    # with one more, both were "unrecognized", the right NEWFILE (VALUE) too.
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith("error: unrecognized arguments: extra\n")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_control_characters_from_publishers_do_not_reach_the_terminal() -> None:
    """A dead letter's or a state key's topic is a publisher's text: printed raw by
    `dead-letters list` or `state list`, an escape sequence in it acted on the terminal."""
    hostile = "plant/\x1b]0;owned\x07/\x1b[2J\x9bx\tok\n"
    terminal = _Terminal()
    _Output(terminal).write(hostile)
    assert terminal.getvalue() == "plant/\\x1b]0;owned\\x07/\\x1b[2J\\x9bx\tok\n"
    pipe = io.StringIO()  # a pipe or a file gets the text as it is
    _Output(pipe).write(hostile)
    assert pipe.getvalue() == hostile


def test_control_characters_in_a_config_s_keys_do_not_reach_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # check-config names a key as written: a source named "s\e[2J" cleared the terminal
    config = tmp_path / "gateway.yaml"
    config.write_text('sources:\n  "s\\e[2J": {type: system, interval: 1m}\n')
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with pytest.raises(SystemExit) as stop:
        main(["check-config", "-c", str(config)])
    assert stop.value.code == 1
    assert "\x1b" not in terminal.getvalue()
    assert "sources.s\\x1b[2J: names use letters" in terminal.getvalue()


def test_the_config_file_may_come_before_the_action_as_it_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `config -c FILE versions`, taken by the one parser of the group, then read as the
    # action: "invalid choice: 'FILE'"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"gateway: {{id: a, data_dir: '{tmp_path / 'data'}'}}\n")
    assert main(["config", "-c", str(config), "versions"]) == 0
    assert capsys.readouterr().out == f"0 kept versions under {tmp_path / 'data'}/config-history\n"
    with pytest.raises(SystemExit) as stop:  # an action that reads no config
        main(["config", "-c", str(config), "keygen-signing", "--out", str(tmp_path / "k")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: unrecognized arguments: -c {config}\n")


_README = Path(__file__).resolve().parents[2] / "README.md"
# A placeholder of the README's usage lines, and a value a technician would put there
_FILLED = {
    "FILE": "gateway.yaml", "NEWFILE": "new.yaml", "N": "3", "L": "debug", "KEY": "fleet.key",
    "ID": "pi-01", "URL": "mqtts://fleet.example.com:8883", "VERSION": "v1", "NAME": "out",
    "USER": "bob", "ROUTE.N": "minute.0", "VALUE|-": "-", "U": "gw", "F": "ca.pem",
}  # fmt: skip


def _readme_usages() -> list[str]:
    """Each `edge-stream ...` usage the README prints: the Command line block (a usage
    ends where its description's column starts) and the remote config block."""
    text = _README.read_text(encoding="utf-8")
    block = text[text.index("## Command line") :]
    block = block[block.index("```\n") + 4 :]
    block = block[: block.index("```")]
    usages = []
    for line in block.splitlines():
        if line.startswith("edge-stream "):
            # its description starts at column 40 (or a word past it) with a lowercase word
            cut = re.search(r"\s{2,}|(?<=.{37}) (?=[a-z(])", line)
            usage = line[: cut.start()] if cut else line
            usages.append(usage)
    remote = text[text.index("## Remote config for a fleet") : text.index("## What your MQTT")]
    for found in re.finditer(r"^edge-stream (?:[^\n]|\\\n)*(?:\n    [\[-][^\n]*)*", remote, re.M):
        usages.append(" ".join(found.group(0).split("#")[0].replace("\\\n", " ").split()))
    return usages


def _argvs(usage: str) -> list[list[str]]:
    """The command lines a usage allows, every optional part given, each alternative once."""
    words = usage.split()[1:]
    alternatives = [words]
    if "|" in words:  # `show|replay|purge N ... | --all`
        at = words.index("|")
        alternatives = [words[:at], [w for w in words[: at - 2] if w != "..."] + words[at + 1 :]]
    argvs = []
    for shown in alternatives:
        choices: list[list[str]] = []
        for word in shown:
            word = word.strip("[]")
            if word == "...":
                continue
            if word in _FILLED:
                choices.append([_FILLED[word]])
            elif "|" in word and not word.startswith("-"):
                choices.append(word.split("|"))
            else:
                choices.append([word])
        argvs += [list(argv) for argv in itertools.product(*choices)]
    return argvs


def test_every_command_line_the_readme_prints_is_taken() -> None:
    usages = _readme_usages()
    assert len(usages) >= 30, usages
    taken, refused = [], []
    for usage in usages:
        for argv in _argvs(usage):
            if argv == ["--version"]:
                continue  # prints and exits
            if argv[:2] == ["dead-letters", "show"] and "--all" in argv:
                continue  # "show takes numbers", the README says
            try:
                _arguments(argv)
                taken.append(argv)
            except SystemExit:
                refused.append(argv)
    assert refused == [], refused
    assert ["config", "push", "gateway.yaml", "--key", "fleet.key", "--gateway", "pi-01",
            "--broker", "mqtts://fleet.example.com:8883", "--version", "3", "--username",
            "gw", "--ca-file", "ca.pem", "--cert-file", "ca.pem", "--cert-key", "ca.pem",
            "--timeout", "30"] in taken  # fmt: skip
