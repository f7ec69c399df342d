"""The `edge-stream` command.

edge-stream run -c config/gateway.yaml           run the gateway
edge-stream check-config -c FILE                 validate a config; exit 1 with the errors
edge-stream reload -c FILE                       ask the gateway running on FILE (its
                                                 web.listen) to read FILE again; exit 1
                                                 when refused or when no gateway answers
edge-stream config show -c FILE                  print the effective config (overrides
                                                 applied, defaults filled in) as YAML,
                                                 every secret written ***
edge-stream config diff -c FILE NEWFILE          what NEWFILE would change, component by
                                                 component; secrets shown as `changed`
edge-stream config history -c FILE [--limit N]   the reloads the gateway recorded
edge-stream config versions -c FILE              the kept versions of FILE (name, time,
                                                 hash), newest first: the texts that API
                                                 edits and rollbacks replaced
edge-stream config rollback -c FILE [VERSION]    put a kept version back (default: the
                                                 newest), validated first; the current
                                                 text is kept too; a running gateway is
                                                 asked to reload
edge-stream config keygen-signing --out KEY      an Ed25519 key pair for remote config
                                                 (KEY 0600, KEY.pub for the gateways)
edge-stream config sign FILE --key KEY --gateway ID [--version N]
                                                 print the signed envelope of FILE
edge-stream config push FILE --key KEY --gateway ID --broker URL [--version N]
                                                 publish it, wait for the gateway's answer;
                                                 exit 0 only if applied
edge-stream secret keygen [-c FILE]              create the key for ENC(...) secrets
edge-stream secret encrypt [VALUE|-] [-c FILE]   print ENC(...) for VALUE (`-` or none:
                                                 stdin, or a prompt without echo)
edge-stream secret decrypt [VALUE|-] [-c FILE]   print the plaintext of an ENC(...) value
edge-stream secret rotate -c FILE                a new key; re-encrypt FILE's ENC(...) values
                                                 (backups FILE.bak-<time>, KEY.bak-<time>)
edge-stream --version                            the installed version
edge-stream dead-letters list|show|replay|purge  inspect and replay what could not be delivered
edge-stream store stats                          depth and oldest age per sink
edge-stream store drop-sink NAME -c FILE         forget a sink removed from FILE, and its
                                                 backlog
edge-stream state list|show|reset [COMPONENT]    processors' kept state (windows, deadband),
                                                 named ROUTE.N; reset on a running gateway
                                                 is done by it within seconds
edge-stream store reset [--force]                move a damaged store aside, start empty
                                                 (--force: a valid one too; never while
                                                 a gateway runs on the data_dir)
edge-stream web passwd USER [--role viewer|operator] [-c FILE]
                                                 add a console user or set its password
                                                 (asked twice; or one line on stdin; a new
                                                 user is a viewer, a user keeps its role
                                                 unless --role) in
                                                 web.users_file (default <data_dir>/web-users);
                                                 ends the user's sessions; refused for
                                                 web.username (its password is web.password)
edge-stream docs [--out docs/reference]          write the config reference, a page per
                                                 component, from the config schema
edge-stream schema                               print the JSON Schema of the config file

Each action has its own options (`edge-stream config push --help`); another action's is a
usage error, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import getpass
import http.client
import json
import os
import pwd
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Any, NoReturn, TextIO

from gateway.config import files, secrets
from gateway.config.load import (
    MAX_BYTES,
    apply_env,
    gateway_section,
    load,
    parse_text,
    read_text,
)
from gateway.config.model import Config, GatewaySection, path_problem
from gateway.config.units import ascii_int
from gateway.core.errors import ConfigError
from gateway.store import admin
from gateway.store.sqlite import StoreError

# An empty EDGE_STREAM_CONFIG is unset (it named the file "", "cannot read ''").
DEFAULT_CONFIG = os.environ.get("EDGE_STREAM_CONFIG") or "config/gateway.yaml"


def _refuse(err: ConfigError, path: str) -> NoReturn:
    """Print a config's problems, one line each, and exit 1."""
    if len(err.problems) == 1:
        print(f"edge-stream: {err.problems[0]}", file=sys.stderr)
    else:
        print(f"edge-stream: {path}: the config has {len(err.problems)} problems:", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
    raise SystemExit(1)


def _config(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as err:
        _refuse(err, path)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import serve, setup_logging

    config = _config(args.config)
    setup_logging(args.log_level or config.gateway.log_level)
    try:
        return asyncio.run(serve(config, args.config, args.log_level))
    except ConfigError as err:
        print(f"edge-stream: {err}", file=sys.stderr)
        return 1


def _count(items: Sized, noun: str) -> str:
    n = len(items)
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args.config)
    print(
        f"{args.config}: ok ({_count(config.sources, 'source')}, "
        f"{_count(config.routes, 'route')}, {_count(config.sinks, 'sink')})"
    )
    return 0


def _view(path: str) -> tuple[Config, dict[str, Any]]:
    from gateway.config.view import load_view

    try:
        return load_view(path)
    except ConfigError as err:
        _refuse(err, path)


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from gateway.config import view

    if args.action == "history":
        return _config_history(args)
    if args.action in ("versions", "rollback"):
        return _config_versions(args)
    if args.action in REMOTE_ACTIONS:
        return cmd_config_remote(args)
    config, raw = _view(args.config)
    if args.action == "show":
        text = yaml.safe_dump(view.show(config, raw), sort_keys=False, allow_unicode=True)
        sys.stdout.write(text)
        return 0
    new, new_raw = _view(args.new)
    lines = view.diff(config, raw, new, new_raw)
    print("\n".join(lines) if lines else "no changes")
    return 0


def _config_history(args: argparse.Namespace) -> int:
    """`config history`: the reloads the gateway recorded in its store, oldest first."""
    with admin.open_admin(_store_path(args), write=False) as store:
        records = store.reload_history(args.limit)
    if not records:
        print("no reloads recorded yet")
        return 0
    for r in records:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.at))
        what = "; ".join(r.changes) if r.changes else "no component changed"
        line = f"{when}  {r.trigger:<8} {r.outcome:<11} {r.hash or '-':<12}  {what}"
        if r.errors:
            line += "  errors: " + "; ".join(r.errors)
        print(line)
    return 0


def _raw_config(path: str) -> tuple[dict[str, Any], dict[Any, int], dict[Any, str]]:
    """The config file parsed and its overrides applied, not validated: (data, the keys'
    lines, the keys the environment set)."""
    try:
        data, lines = parse_text(read_text(path), path)
        env = apply_env(data, dict(os.environ))
    except ConfigError as err:
        _refuse(err, path)
    return data, lines, env


def _gateway_section(
    path: str, raw: tuple[dict[str, Any], dict[Any, int], dict[Any, str]] | None = None
) -> GatewaySection:
    """The config's gateway: section (overrides applied), validated alone. The commands
    that need only its data_dir or key file run also when the rest of the file is refused
    (a rollback is for a file that no longer loads, too; an ENC(...) value may have no key
    in this shell), but a mistake in this section is refused as check-config says it: a
    `datadir:` read as the default ./data had them act on another store."""
    data, lines, env = raw or _raw_config(path)
    try:
        return gateway_section(path, data, lines, env)
    except ConfigError as err:
        _refuse(err, path)


def _data_dir(path: str) -> str:
    """The config's gateway.data_dir, read without validating the rest of the file."""
    return _gateway_section(path).data_dir


def _as_owner(
    args: argparse.Namespace, *folders: str | Path, written: tuple[str | Path, ...] = ()
) -> None:
    """Refuse, in one line (exit 1), a command that writes in `folders`, run as root where
    a folder (or the nearest one above it that exists) belongs to another user: what it
    made there (a 0600 key, a users file, a kept config version, the data_dir's .lock,
    SQLite's -wal) would be root's, and the gateway, run as that user, could not use it.
    `written`: files replaced in place (`files.write_atomic`), whose folder is checked and,
    for a symbolic link, its target's folder too, where the new file is made."""
    if os.geteuid() != 0:
        return
    for file in written:
        folders += (Path(file).absolute().parent, Path(os.path.realpath(file)).parent)
    for folder in folders:
        path = Path(folder).absolute()
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            uid = path.stat().st_uid
        except OSError:
            continue
        if uid == 0:
            continue
        try:
            owner = pwd.getpwuid(uid).pw_name
        except KeyError:
            owner = f"#{uid}"  # as sudo -u takes a number
        program = sys.argv[0] if os.path.basename(sys.argv[0]) == "edge-stream" else "edge-stream"
        raise SystemExit(
            f"edge-stream: {path} belongs to {owner}, not root: run this as that user (sudo"
            f" -u {owner} {program} {args.command} {args.action} ...); as root it would leave"
            " files there that a gateway running as that user cannot read or write"
        )


def _config_versions(args: argparse.Namespace) -> int:
    """`config versions` and `config rollback [VERSION]`."""
    from gateway.config import edit

    data_dir = _data_dir(args.config)
    if args.action == "versions":
        kept = files.versions(data_dir)
        for v in kept:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v.saved_at))
            print(f"{v.name}  {when}  {v.hash}")
        print(f"{_count(kept, 'kept version')} under {files.history_dir(data_dir)}")
        return 0
    _as_owner(args, data_dir, written=(args.config,))
    try:
        version = files.find_version(data_dir, args.new)
        text = read_text(version.path)
        edit.validate(text, str(version.path))
    except ConfigError as err:
        _refuse(err, args.config)
    try:
        current = read_text(args.config)
    except ConfigError:
        current = None
    if current == text:
        print(f"{args.config} already holds {version.name}; nothing to restore")
        return 0
    durable = True
    try:
        replaced = files.save(args.config, text, data_dir)
    except files.NotDurable as err:  # replaced all the same: said, then applied as such
        print(f"edge-stream: {files.unsaved(err, args.config)}", file=sys.stderr)
        replaced, durable = err.kept, False
    except OSError as err:  # a full disk: as the console's rollback answers it, in one line
        print(f"edge-stream: {files.unsaved(err, args.config)}", file=sys.stderr)
        return 1
    also = f"; the text it replaced is kept as {replaced.name}" if replaced else ""
    print(f"{args.config}: restored {version.name}{also}")
    reloaded = _reload_after_rollback(args.config, data_dir)
    return reloaded if durable else 1


def _gateway_runs_on(data_dir: str) -> bool:
    """Whether a gateway holds the lock of `data_dir` (False also when it cannot be told)."""
    from gateway.store.admin import gateway_runs

    return bool(gateway_runs(Path(data_dir) / "store.db"))


def _reload_after_rollback(path: str, data_dir: str) -> int:
    """Ask a running gateway to apply the restored file; none answering is fine."""
    try:
        url, headers, context = _reload_target(path)
        url += "?trigger=rollback"
    except SystemExit:  # web.enabled is false: no API to ask
        print("the gateway reads it at its next start, on SIGHUP or when it sees the change")
        return 0
    # Sent with no login (the appliance's console has its accounts in the users file only,
    # and the config none), a 401 leaves the restore done and its reload unknown. A login
    # that was sent and refused (a wrong password, a viewer) is the user's to fix: exit 1.
    refused = None if "Authorization" in headers else _LoginRefused
    try:
        answer, _reason = _ask_reload(url, headers, context, login_refused=refused)
    except _LoginRefused:
        print(
            f"the reload is not confirmed (the console at {url} asks for a login, which the"
            " config does not give): the gateway takes the restored file when it sees the"
            " change (gateway.watch_config), or on SIGHUP (systemctl reload edge-stream)"
        )
        return 0
    if answer is None:
        # The address asked is the restored file's web.listen: a version whose console
        # was elsewhere or off (web.enabled: false in the running file) found none there,
        # and "used at the next start" had the user restart a gateway that reads it anyway.
        if _gateway_runs_on(data_dir):
            print(
                f"no gateway answers at {url}, but one runs on {data_dir}: it takes the"
                " restored file when it sees the change (gateway.watch_config), or on"
                " SIGHUP (systemctl reload edge-stream)"
            )
        else:
            print(f"no gateway answers at {url}; the restored file is used at the next start")
        return 0
    other = _other_file(path, answer)
    if other is not None:
        print(
            f"edge-stream: the gateway at {url} runs on {other}, not on {path}: it read {other}"
            f" again ({_outcome_text(answer)}); {path} is used by a gateway started on it",
            file=sys.stderr,
        )
        return 1
    outcome = str(answer.get("outcome"))
    if outcome == "applied":
        print("the running gateway applied it")
        return 0
    errors = "; ".join(str(e) for e in answer.get("errors") or [])
    print(
        f"edge-stream: the running gateway did not apply it ({outcome}): {errors};"
        " `config rollback` again puts the text before back",
        file=sys.stderr,
    )
    return 1


# --- remote config: the operator's side (keygen-signing, sign, push) ---------------------

REMOTE_ACTIONS = ("keygen-signing", "sign", "push")
PUSH_PASSWORD_ENV = "EDGE_STREAM_PUSH_PASSWORD"


def cmd_config_remote(args: argparse.Namespace) -> int:
    """`config keygen-signing --out KEY`, `config sign FILE`, `config push FILE`."""
    from gateway.config import remote

    try:
        if args.action == "keygen-signing":
            public, b64 = remote.keygen(args.out)
            print(f"wrote {args.out} (0600, keep it secret) and {public}")
            print(f"public key (remote_config.public_key takes the file or this): {b64}")
            return 0
        number = args.remote_version if args.remote_version is not None else int(time.time())
        document = remote.Document(
            args.gateway, number, remote.format_of(args.new), read_text(args.new)
        )
        parse_text(document.config, args.new)  # a syntax error is found here, not on the device
        envelope = remote.sign(document, remote.load_private_key(args.key))
        if args.action == "sign":
            print(envelope.decode())
            return 0
        return _push(args, envelope, number)
    except ConfigError as err:
        print(f"edge-stream: {err.problems[0]}", file=sys.stderr)
        return 1


def _push(args: argparse.Namespace, envelope: bytes, number: int) -> int:
    from gateway.mqtt.remote import push
    from gateway.mqtt.urls import login

    try:
        user, password = login(args.broker, args.username, os.environ.get(PUSH_PASSWORD_ENV))
    except ValueError:  # a bad URL is said by the push
        user, password = args.username, None
    if password and not user:
        # an MQTT client sends a password only with a user name: it went unsent, and
        # the broker's refusal (not authorized) said nothing of the password set
        print(
            f"edge-stream: ${PUSH_PASSWORD_ENV} (or the password in --broker) needs a user"
            " name: give --username, or user:password@ in --broker",
            file=sys.stderr,
        )
        return 1
    try:
        answer = asyncio.run(
            push(
                envelope,
                gateway_id=args.gateway,
                version=number,
                url=args.broker,
                username=args.username,
                password=os.environ.get(PUSH_PASSWORD_ENV),
                ca_file=args.ca_file,
                cert_file=args.cert_file,
                key_file=args.cert_key,
                wait=args.timeout,
            )
        )
    except ValueError as err:  # the URL
        print(f"edge-stream: {err}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(
            f"edge-stream: {args.gateway}: no answer within {args.timeout:g} s (is the gateway"
            " running with remote_config enabled on that broker?)",
            file=sys.stderr,
        )
        return 1
    outcome = str(answer.get("outcome"))
    line = f"{args.gateway}: config version {answer.get('version')} {outcome.replace('_', ' ')}"
    if outcome == "applied":
        changes = answer.get("changes")
        print(
            f"{line} (hash {answer.get('hash')})" + (f"; {', '.join(changes)}" if changes else "")
        )
        errors = answer.get("errors")
        if errors:  # applied all the same: the version could not be kept, and the like
            print(
                f"edge-stream: {args.gateway}: but: {'; '.join(map(str, errors))}", file=sys.stderr
            )
        return 0
    print(
        f"edge-stream: {line}: {'; '.join(map(str, answer.get('errors') or []))}", file=sys.stderr
    )
    return 1


def _reload_target(path: str) -> tuple[str, dict[str, str], ssl.SSLContext | None]:
    """The running gateway's reload URL and auth header, from the config's `web:`.

    Read with the running gateway's eyes where possible; a file the gateway would
    refuse still names its web address (parsed without validation), so that the
    refusal is the gateway's to say."""
    from gateway.config.model import WebSection

    try:
        web = load(path).web
    except ConfigError as err:
        try:
            data, _ = parse_text(read_text(path), path)
            apply_env(data, dict(os.environ))
            raw = data.get("web") or {}
            keys = ("listen", "username", "password", "tls_cert", "tls_key")
            web = WebSection(**{k: raw[k] for k in keys if k in raw})
            if not isinstance(web.listen, str) or web.listen_problem():
                raise ValueError  # no address to ask: the load's error says why
            if any(isinstance(v, str) and secrets.has_secret(v) for v in raw.values()):
                # an ENC(...) this shell cannot decrypt (no key): its text was sent as the
                # password, and the 401 said to set web.password; the load's error says why
                raise ValueError
        except (ConfigError, TypeError, ValueError, AttributeError):
            _refuse(err, path)
    if not web.enabled:
        raise SystemExit(
            f"edge-stream: {path}: web.enabled is false, so the gateway has no API to reload"
            " through; send it SIGHUP instead"
        )
    host, _, port = web.listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    headers = {"Content-Length": "0"}
    if web.username and web.password:
        token = base64.b64encode(f"{web.username}:{web.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    context = None
    if web.tls_cert:
        # The gateway's own certificate is the one trusted (self-signed ones included);
        # the name is not checked, as the address is this machine's.
        try:
            context = ssl.create_default_context(cafile=web.tls_cert)
        except (OSError, ssl.SSLError) as err:
            raise SystemExit(
                f"edge-stream: web.tls_cert {web.tls_cert}: cannot read it ({err})"
            ) from err
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = False
    scheme = "https" if web.tls_cert else "http"
    return f"{scheme}://{host}:{port}/api/config/reload", headers, context


class _LoginRefused(Exception):
    """The console answered 401 or 403 to the reload (`config rollback` goes on)."""


def _ask_reload(
    url: str,
    headers: dict[str, str],
    context: ssl.SSLContext | None,
    login_refused: type[Exception] | None = None,
) -> tuple[dict[str, Any] | None, object]:
    """POST the reload URL: (the gateway's answer, None), or (None, why) when no gateway
    answers. An HTTP error answer is said in one line, and exits 1; a 401 or 403 raises
    `login_refused` instead, when given."""
    request = urllib.request.Request(url, data=b"", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            body = response.read(1 << 20)
    except urllib.error.HTTPError as err:
        err.close()  # it holds the answer's connection
        if login_refused is not None and err.code in (401, 403):
            raise login_refused(f"{err.code} {err.reason}") from None
        hint = ""
        if err.code in (401, 403):
            # the console's accounts are all in web.users_file, or web.username is a viewer
            hint = (
                "; reload asks with web.username and web.password from the config (an"
                " operator): set them, or send the gateway SIGHUP (systemctl reload"
                " edge-stream)"
            )
        print(
            f"edge-stream: {url}: the gateway answered {err.code} {err.reason}{hint}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    except (OSError, ValueError, http.client.HTTPException) as err:  # InvalidURL: 'a b:1'
        return None, getattr(err, "reason", err)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "outcome" not in answer:
        # another program on web.listen: a JSON list read as the answer was an
        # AttributeError traceback, a page "no gateway answers (Expecting value ...)"
        print(
            f"edge-stream: {url}: what answers there is not an Edge Stream gateway (not its"
            " reload answer); is web.listen the address of the gateway?",
            file=sys.stderr,
        )
        raise SystemExit(1)
    return answer, None


def _other_file(path: str, answer: dict[str, Any]) -> str | None:
    """The file the answering gateway runs on when it is not `path`, else None."""
    ran = answer.get("path")
    if not isinstance(ran, str):
        return None  # a gateway from before the answer named its file
    try:
        same = os.path.samefile(path, ran)
    except (OSError, ValueError):  # not both to be seen from here
        same = os.path.realpath(path) == os.path.realpath(ran)
    return None if same else ran


def _outcome_text(answer: dict[str, Any]) -> str:
    return str(answer.get("outcome")).replace("_", " ")


def cmd_reload(args: argparse.Namespace) -> int:
    url, headers, context = _reload_target(args.config)
    answer, reason = _ask_reload(url, headers, context)
    if answer is None:
        print(f"edge-stream: no gateway answers at {url} ({reason})", file=sys.stderr)
        try:
            data_dir = _data_dir(args.config)
        except SystemExit:  # the gateway: section is refused: nothing more to tell
            return 1
        if _gateway_runs_on(data_dir):
            # the file's web.listen changed (or web.enabled), the running console is
            # where the old file had it: "no gateway answers" alone sent the user to start one
            print(
                f"edge-stream: but a gateway runs on {data_dir}, its console elsewhere (its"
                f" web.listen or web.enabled is not {args.config}'s): send it SIGHUP"
                " (systemctl reload edge-stream) to read its config file again",
                file=sys.stderr,
            )
        return 1
    other = _other_file(args.config, answer)
    if other is not None:
        print(
            f"edge-stream: {args.config}: the gateway at {url} runs on {other}, not on this"
            f" file: it read {other} again ({_outcome_text(answer)}); copy {args.config} over"
            f" {other} to apply it",
            file=sys.stderr,
        )
        return 1
    errors = [str(e) for e in answer.get("errors") or []]
    changes = [str(c) for c in answer.get("changes") or []]
    if answer.get("outcome") == "applied":
        print(f"{args.config}: reload applied" + (f": {'; '.join(changes)}" if changes else ""))
        return 0
    outcome = "rolled back" if answer.get("outcome") == "rolled_back" else "refused"
    print(f"edge-stream: {args.config}: reload {outcome}: {'; '.join(errors)}", file=sys.stderr)
    return 1


def _key_file(args: argparse.Namespace) -> Path:
    """--key-file, else the config's gateway.secret_key_file, else <data_dir>/secret.key
    (environment overrides apply; the rest of the config need not be valid yet)."""
    if args.key_file:
        return Path(args.key_file)
    if not Path(args.config).is_file():
        default = Path("./data/secret.key")
        if args.action in ("encrypt", "decrypt") and os.environ.get(secrets.ENV_KEY):
            return default  # not used: the key comes from the environment
        return _without_config(args.config, default)
    gateway = _gateway_section(args.config)
    if gateway.secret_key_file:
        return Path(gateway.secret_key_file)
    return Path(gateway.data_dir) / "secret.key"


def _without_config(config: str, default: Path) -> Path:
    """`default`, the file a command uses when its config file does not exist, said on
    stderr: a mistyped -c wrote the key or the console user to ./data without a word,
    where the gateway, started on the right file, does not look."""
    what = "is not a file" if os.path.lexists(config) else "does not exist"
    print(f"edge-stream: note: {config} {what}; using {default}", file=sys.stderr)
    return default


def cmd_secret(args: argparse.Namespace) -> int:
    path = _key_file(args)
    if args.action == "keygen":
        _as_owner(args, written=(path,))
    elif args.action == "rotate":
        _as_owner(args, written=(path, args.config))
    if args.action == "keygen":
        if os.path.lexists(path):
            print(
                f"edge-stream: {path} exists; not replacing a key that may be in use",
                file=sys.stderr,
            )
            return 1
        try:
            secrets.generate_key_file(path)
        except OSError as err:  # a folder that cannot be made or written, a file in the way
            print(f"edge-stream: {_cannot_write(path, err)}", file=sys.stderr)
            return 1
        print(f"wrote a new key to {path} (mode 0600); keep a copy somewhere safe")
        if os.environ.get(secrets.ENV_KEY):
            print(
                f"edge-stream: note: {secrets.ENV_KEY} is set, and comes first: every command"
                f" and the gateway use it, not {path}, until it is unset",
                file=sys.stderr,
            )
        return 0
    if args.action == "rotate":
        return _rotate(args, path)
    key = _load_key(path, _keygen_hint(args))
    if key is None:
        return 1
    value = args.value
    if value is None or value == "-":
        prompt = f"value to {args.action}: "
        # bounded: `< /dev/zero` filled the memory; a config holds no longer value
        value = getpass.getpass(prompt) if sys.stdin.isatty() else _stdin(MAX_BYTES + 1)
        # bytes, as read: a count of characters let 'é' + 262,200 'a' through, cut short
        if len(value.encode("utf-8", "surrogateescape")) > MAX_BYTES:
            print(
                f"edge-stream: secret {args.action}: the value is longer than a config file can"
                f" be ({MAX_BYTES >> 10} KiB); nothing done",
                file=sys.stderr,
            )
            return 1
        value = _line_end_off(value)
    if _not_text(value, f"secret {args.action}: the value"):
        return 1
    if args.action == "encrypt":
        if not value:  # an ENC() of nothing would stand in the config for a secret
            print(
                "edge-stream: secret encrypt: the value is empty; nothing encrypted",
                file=sys.stderr,
            )
            return 2
        print(secrets.encrypt(value, key))
        return 0
    if not secrets.has_secret(value):
        print("edge-stream: the value holds no ENC(...) to decrypt", file=sys.stderr)
        return 1
    try:
        print(secrets.reveal(value, key))
    except secrets.SecretError as err:
        print(f"edge-stream: {err}", file=sys.stderr)
        return 1
    return 0


def _web_section(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The users file (the config's web.users_file, else <data_dir>/web-users) and the
    config's web: mapping, read once without validating the rest (a config that listens
    beyond localhost is refused until a user exists)."""
    from gateway.web.access import users_path

    if not Path(args.config).is_file():
        return _without_config(args.config, users_path(None, "./data")), {}
    raw = _raw_config(args.config)
    data_dir = _gateway_section(args.config, raw).data_dir
    web = raw[0].get("web")
    if web is not None and not isinstance(web, dict):
        message = f"{args.config}: web: expected a mapping, got {type(web).__name__} {web!r}"
        _refuse(ConfigError(message), args.config)
    web = web or {}
    users_file = web.get("users_file")
    if users_file is not None and not isinstance(users_file, str):
        message = f"{args.config}: web.users_file: expected a path, got {users_file!r}"
        _refuse(ConfigError(message), args.config)
    problem = path_problem(users_file or None, "/var/lib/edge-stream/web-users")
    if problem:  # '~/u' wrote a folder named '~' here, where the gateway does not look
        _refuse(ConfigError(f"{args.config}: web.users_file: {problem}"), args.config)
    return users_path(users_file, data_dir), web


def cmd_web(args: argparse.Namespace) -> int:
    from gateway.web import access

    problem = access.check_user_name(args.user)
    if problem:
        print(f"edge-stream: {problem}", file=sys.stderr)
        return 1
    path, web = _web_section(args)
    _as_owner(args, written=(path,))
    if web.get("username") == args.user and web.get("password"):
        # The console checks the config's account first: a line for the same name in the
        # users file was never used, and the old password went on working.
        print(
            f"edge-stream: {args.user} is web.username in {args.config}: its password is"
            " web.password there (change it, then reload); give users-file accounts"
            " other names",
            file=sys.stderr,
        )
        return 1
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            print("edge-stream: the two passwords differ; nothing changed", file=sys.stderr)
            return 1
    else:  # one line, bounded: `< /dev/zero` filled the memory
        password = _line_end_off(_stdin(4 * (PASSWORD_MAX + 2), line=True))
    if len(password) < 8:
        print("edge-stream: a console password has at least 8 characters", file=sys.stderr)
        return 1
    if len(password) > PASSWORD_MAX:
        print(
            f"edge-stream: a console password has at most {PASSWORD_MAX} characters",
            file=sys.stderr,
        )
        return 1
    if _not_text(password, "the password"):
        return 1
    try:
        new = access.set_user(path, args.user, args.role, password)
        role = args.role or access.read_users(path)[args.user].role
    except ConfigError as err:
        print(f"edge-stream: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"edge-stream: {path}: cannot write it ({err.strerror or err})", file=sys.stderr)
        return 1
    what = "added" if new else "changed"
    print(f"{path}: {what} {args.user} ({role}); a running gateway uses it at once")
    return 0


PASSWORD_MAX = 1024  # characters of a console password read by `web passwd`


def _stdin(limit: int, line: bool = False) -> str:
    """At most `limit` bytes of stdin (up to the end of a line when `line`), as they are:
    a \r is the secret's own, as Linux's text stdin leaves it (turned into \n, it changed
    the secret). Bytes that are not UTF-8 are kept as surrogates, for _not_text to name:
    read as text, a UTF-8 locale's stdin (errors=strict) raised a UnicodeDecodeError
    traceback."""
    raw = sys.stdin.buffer.readline(limit) if line else sys.stdin.buffer.read(limit)
    return raw.decode("utf-8", "surrogateescape")


def _line_end_off(text: str) -> str:
    """`text` without one final \n or \r\n (the end of the line `echo` or an editor
    adds); any other \r or \n is part of the value."""
    return text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text


def _not_text(value: str, what: str) -> bool:
    """True, after saying so, when `value` (from argv, stdin or a prompt) holds bytes that
    are not UTF-8: Python carries them as surrogates, which failed with a traceback when
    the value was encrypted or hashed."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        print(
            f"edge-stream: {what} is not UTF-8 text (byte {ord(value[err.start]) & 0xFF:#04x}"
            f" at character {err.start + 1}); nothing done",
            file=sys.stderr,
        )
        return True
    return False


def _cannot_write(path: Path, err: OSError) -> str:
    """Why `path` (a file, or a folder to fill) could not be written, in one line."""
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        for part in (*reversed(path.parents), path):
            if part.exists() and not part.is_dir():
                what = "it" if part == path else str(part)
                return f"cannot write {path}: {what} is a file, not a folder"
    where = Path(err.filename) if err.filename else path
    because = err.strerror or str(err)
    return f"cannot write {path}: {because}" + ("" if where == path else f" ({where})")


def _keygen_hint(args: argparse.Namespace) -> str:
    """The keygen command that makes the key file these arguments look for."""
    if args.key_file:
        return f"edge-stream secret keygen --key-file {args.key_file}"
    if Path(args.config).is_file():
        return f"edge-stream secret keygen -c {args.config}"
    return "edge-stream secret keygen"


def _load_key(path: Path, hint: str) -> bytes | None:
    """The key (environment, else `path`); None after printing why there is none, naming
    the key file looked for and the command (`hint`) that makes that one."""
    try:
        key = secrets.load_key(path)
    except secrets.SecretError as err:
        print(f"edge-stream: {err}", file=sys.stderr)
        return None
    if key is None:
        print(
            f"edge-stream: no key: there is no {path}; run '{hint}' or set {secrets.ENV_KEY}",
            file=sys.stderr,
        )
    return key


def _rotate(args: argparse.Namespace, key_file: Path) -> int:
    """A new key in `key_file` and every ENC(...) of the config re-encrypted with it; the
    old file and key kept beside them (0600); each written atomically."""
    config = Path(args.config)
    if os.environ.get(secrets.ENV_KEY):
        print(
            f"edge-stream: the key comes from {secrets.ENV_KEY}: rotate works on a key file;"
            f" unset {secrets.ENV_KEY} to rotate {key_file}",
            file=sys.stderr,
        )
        return 1
    old = _load_key(key_file, _keygen_hint(args))
    if old is None:
        return 1
    try:  # as the gateway reads it: /dev/zero given as FILE filled the memory (a traceback)
        text = read_text(config)
    except ConfigError as err:
        print(f"edge-stream: {err}", file=sys.stderr)
        return 1
    raw = text.encode("utf-8")  # the bytes read: UTF-8 decodes and encodes back the same
    new = secrets.new_key()
    try:
        rotated, count = secrets.rotate_text(text, old, new)
    except secrets.SecretError as err:
        print(f"edge-stream: {config}: {err}; nothing changed", file=sys.stderr)
        return 1
    if count == 0:
        print(f"edge-stream: {config} holds no ENC(...) value; nothing changed", file=sys.stderr)
        return 1
    unsynced: list[str] = []
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 100):  # a second rotation within the same second
        config_backup = config.with_name(f"{config.name}.bak-{stamp}")
        key_backup = key_file.with_name(f"{key_file.name}.bak-{stamp}")
        if not (config_backup.exists() or key_backup.exists()):
            break
        stamp = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{n}"
    try:
        for backup, data in ((config_backup, raw), (key_backup, key_file.read_bytes())):
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        # The key first: from here on a crash leaves the backups to put back by hand.
        # a symlinked config or key stays a symlink: write_atomic replaces its target.
        # A file replaced but not synced to the disk (NotDurable) holds its new text: the
        # config is rotated all the same (the new key would not open the old values), and
        # it is said.
        for target, content, mode in (
            (key_file, secrets.key_text(new), 0o600),
            (config, rotated, config.stat().st_mode & 0o777),
        ):
            try:
                files.write_atomic(target, content, mode)
            except files.NotDurable as err:
                unsynced.append(files.unsaved(err, target))
    except OSError as err:
        print(f"edge-stream: cannot rotate: {err}", file=sys.stderr)
        return 1
    noun = "value" if count == 1 else "values"
    print(
        f"rotated {count} ENC(...) {noun} in {config} to a new key in {key_file}"
        f" (old ones kept as {config_backup} and {key_backup}); a running gateway"
        " picks it up on reload (SIGHUP)"
    )
    for line in unsynced:
        print(f"edge-stream: {line}", file=sys.stderr)
    return 1 if unsynced else 0


def _store_path(args: argparse.Namespace) -> Path:
    """<data_dir>/store.db of the config. Only its data_dir is needed: the history, the dead
    letters and the state are read also when the rest of the file is refused (the reload it
    failed is in the history) or its ENC(...) values have no key in this shell."""
    return Path(_data_dir(args.config)) / "store.db"


def cmd_dead_letters(args: argparse.Namespace) -> int:
    if args.action in ("replay", "purge") and args.all and args.seq:
        print(
            f"edge-stream: dead-letters {args.action} takes numbers or --all, not both",
            file=sys.stderr,
        )
        return 2
    if args.action in ("replay", "purge"):
        _as_owner(args, _store_path(args).parent)
    write = args.action in ("replay", "purge")
    with admin.open_admin(_store_path(args), write=write) as store:
        if args.action == "list":
            for d in reversed(store.dead_letters(args.limit)):
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.failed_at / 1e9))
                print(f"{d.seq:>7}  {when}  {d.id}  {d.topic}  [{d.origin}]  {d.reason}")
            print(f"{store.dead_letter_count()} dead letter(s)")
            return 0
        if args.action == "show":
            missing: list[int] = []
            for seq in args.seq:
                record = store.dead_letter(seq)
                if record is None:
                    missing.append(seq)
                    continue
                item = {
                    "seq": record.seq,
                    "id": record.id,
                    "topic": record.topic,
                    "attributes": record.attributes,
                    "content": record.content.decode("utf-8", "backslashreplace"),
                    "created": record.created,
                    "origin": record.origin,
                    "sink": record.sink,
                    "reason": record.reason,
                }
                print(json.dumps(item, indent=2))
            if missing:  # the others are shown, as replay and purge do the others
                print(f"edge-stream: {admin.not_found(missing)}", file=sys.stderr)
                return 1
            return 0
        seqs = _selection(args)
        done: admin.Purged | admin.Replayed
        if args.action == "purge":
            done = store.purge(seqs)
            if seqs is None or len(done.missing) < len(set(seqs)):
                print(f"purged {done.count} dead letter(s)")
        else:
            # replay: into the store's replay inbox, which the gateway takes in like new
            # input: a refusal by a sink goes back to that sink, one by a route's
            # processor goes through that processor on, to that route's sinks.
            done = store.replay(seqs)
            if seqs is None or len(done.missing) < len(set(seqs)):
                print(f"replayed {done.count} dead letter(s)")
            note = done.note()
            if note:
                print(note)
        # A mistyped number: said, not "replayed 0" and success (the others asked for
        # are done; a number that names none is the only line when all are).
        if done.missing:
            print(f"edge-stream: {admin.not_found(done.missing)}", file=sys.stderr)
            return 1
        return 0


def _selection(args: argparse.Namespace) -> list[int] | None:
    """The dead letters named on the command line; None for --all."""
    if args.all:
        return None
    if not args.seq:
        raise SystemExit("edge-stream: name dead letters by number, or use --all")
    return list(args.seq)


def cmd_store(args: argparse.Namespace) -> int:
    if args.action == "reset":
        _as_owner(args, _store_path(args).parent)
        return _store_reset(_store_path(args), args.force)
    if args.action == "drop-sink":
        return _drop_sink(args)
    with admin.open_admin(_store_path(args), write=False) as store:
        now = time.time_ns()
        stats = store.stats()
    print(f"{'sink':<20} {'waiting':>10} {'oldest':>10}")
    for sink in stats.sinks:
        age = f"{(now - sink.oldest) / 1e9:.1f}s" if sink.oldest else "-"
        print(f"{sink.name:<20} {sink.waiting:>10} {age:>10}")
    # Replayed dead letters are in neither count until the gateway takes them in (a
    # batch a second; none while it is stopped): 20,000 replayed read "0 FlowFiles; 0
    # dead letter(s)" for 40 s, as if gone.
    replaying = (
        f"; {stats.replaying} replayed dead letter(s) not yet taken in by the gateway"
        if stats.replaying
        else ""
    )
    print(
        f"{stats.flowfiles} FlowFiles, {stats.bytes / 1048576:.1f} MiB buffered;"
        f" {stats.dead_letters} dead letter(s){replaying}"
    )
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    """`state list | show COMPONENT | reset COMPONENT`: processors' key/value state."""
    if args.action == "reset":
        _as_owner(args, _store_path(args).parent)
    with admin.open_admin(_store_path(args), write=args.action == "reset") as store:
        if args.action == "list":
            states = store.states()
            for item in states:
                print(f"{item.component:<24} {item.keys:>8} keys {item.bytes:>12} bytes")
            if not states:  # as `config history` says it: no output read as a failure
                print("no kept state")
            return 0
        known = [item.component for item in store.states()]
        if args.component not in known:
            print(
                f"edge-stream: no state for {args.component!r}"
                f" (there is for: {', '.join(known) or 'none'})",
                file=sys.stderr,
            )
            return 1
        if args.action == "show":
            for key, value in store.state(args.component, args.limit):
                print(f"{key}  {value.decode('utf-8', 'backslashreplace')}")
            return 0
        outcome = store.reset_state(args.component)
    if outcome == "asked":
        print(f"asked the running gateway to reset the state of {args.component}")
    else:
        print(f"reset the state of {args.component}")
    return 0


def _drop_sink(args: argparse.Namespace) -> int:
    """`store drop-sink NAME`: forget a sink removed from the config, and its backlog."""
    # The sinks' names as written (overrides applied), not validated: README says the store
    # commands validate only the gateway: section; a mistake elsewhere refused it whole.
    raw = _raw_config(args.config)
    data_dir = _gateway_section(args.config, raw).data_dir
    sinks = raw[0].get("sinks") or {}
    if not isinstance(sinks, dict):
        message = f"{args.config}: sinks: expected a mapping, got {type(sinks).__name__}"
        _refuse(ConfigError(message), args.config)
    if args.name in {str(name) for name in sinks}:  # `1:` is YAML's int, the sink '1'
        print(
            f"edge-stream: sink {args.name!r} is in {args.config}; remove it from the config"
            " (and reload) before dropping what waits for it",
            file=sys.stderr,
        )
        return 1
    _as_owner(args, data_dir)
    with admin.open_admin(Path(data_dir) / "store.db") as store:
        waiting = store.drop_sink(args.name)
    print(f"dropped sink {args.name!r} and the {waiting} FlowFile(s) that waited for it")
    return 0


def _store_reset(path: Path, force: bool = False) -> int:
    """`store reset`: move a damaged store aside (see `admin.reset`) and say what happened.
    A refusal (a gateway runs on the data_dir, a valid store without --force) is a
    StoreError, which `main` prints as one line."""
    done = admin.reset(path, force)
    if not done.moved:
        print(f"no store at {path}; the gateway starts with an empty one")
        return 0
    why = f"it {done.problem}" if done.problem else "--force"
    print(
        f"moved {', '.join(p.name for p in done.moved)} aside to {done.aside} ({why});"
        " the gateway starts with an empty store"
    )
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from gateway import registry
    from gateway.config import reference

    out = Path(args.out)
    pages = reference.pages(registry.entries())
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in pages.items():
            (out / name).write_text(text, encoding="utf-8")
    except OSError as err:
        print(f"edge-stream: {_cannot_write(out, err)}", file=sys.stderr)
        return 1
    print(f"wrote {len(pages)} pages to {out}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from gateway import registry
    from gateway.config import reference

    print(json.dumps(reference.json_schema(registry.entries()), indent=2, ensure_ascii=False))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # 0.2 MB of RSS: only when asked

    try:
        return version("edge-stream")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


class _PrintVersion(argparse.Action):
    """--version: read the package metadata only when asked (it costs every start)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help=str(kwargs.get("help")))

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(f"edge-stream {_version()}")
        sys.stdout.flush()  # a failure to write is said by main(), not lost at exit
        parser.exit()


LIMIT_MAX = 1_000_000_000  # the largest --limit: more than a store holds


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a --limit of 0 printed nothing, and a
    negative one everything, as SQLite reads LIMIT -1)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    if number > LIMIT_MAX:  # past SQLite's integers it was an OverflowError traceback
        raise argparse.ArgumentTypeError(f"must be at most {LIMIT_MAX}, got {number}")
    return number


def _path(text: str) -> str:
    """An argparse type: a file or folder name, not empty (`--out ""` was a ValueError
    traceback, `-c ""` "edge-stream: : cannot read the config file", and `--key-file ""`
    was ignored for the config's key)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; name a file")
    return text


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0 (`--timeout 0`, -1 or nan ended the push
    at once and said the broker could not be reached)."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < number < 1e9:  # nan fails it too
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return number


def parser() -> argparse.ArgumentParser:
    """The command line. A command with actions (`config show`, `store reset`) has a parser
    per action, holding only that action's options: with one parser for the group,
    `config history --timeout 5` was taken and ignored."""
    p = argparse.ArgumentParser(prog="edge-stream", description="Edge Stream IoT gateway")
    p.add_argument("--version", action=_PrintVersion, help="print the installed version")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser, default: str = DEFAULT_CONFIG) -> Any:
        help = f"config file (YAML/JSON; default: {DEFAULT_CONFIG})"
        sp.add_argument("-c", "--config", type=_path, default=default, help=help)
        return sp

    def group(name: str, help: str, fn: Any) -> Callable[..., argparse.ArgumentParser]:
        """The command `name` with actions; the returned function adds one."""
        command = sub.add_parser(name, help=help)
        # `config -c FILE show`, the order the one parser of the group took: kept working
        # (see _arguments), for the actions that read a config
        command.add_argument(
            "-c", "--config", dest="group_config", type=_path, default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )  # fmt: skip
        actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")

        def action(
            verb: str, help: str, config: bool = True, late: str | None = None
        ) -> argparse.ArgumentParser:
            sp = actions.add_parser(verb, help=help, description=help)
            # late: its optional positional, which main() takes when it comes after an option
            sp.set_defaults(fn=fn, late=late, action_parser=sp, takes_config=config)
            return with_config(sp, argparse.SUPPRESS) if config else sp

        return action

    run = with_config(sub.add_parser("run", help="run the gateway"))
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(fn=cmd_run)
    with_config(sub.add_parser("check-config", help="validate a config file")).set_defaults(
        fn=cmd_check
    )
    with_config(
        sub.add_parser("reload", help="make the running gateway read its config file again")
    ).set_defaults(fn=cmd_reload)

    conf = group(
        "config", "show a config, what a new one changes, its versions and reloads", cmd_config
    )
    conf("show", "print the effective config as YAML, secrets written ***")
    conf("diff", "what NEWFILE would change, component by component").add_argument(
        "new", type=_path, metavar="NEWFILE", help="the new config file"
    )
    conf("history", "the reloads recorded in the store, oldest first").add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="how many (default 50)"
    )
    conf("versions", "the kept versions of the config file, newest first")
    conf("rollback", "put a kept version back", late="new").add_argument(
        "new", nargs="?", metavar="VERSION", help="the kept version (default: the newest)"
    )
    _remote_options(conf)

    sec = group("secret", "keys and ENC(...) values", cmd_secret)
    for verb, help, late in (
        ("keygen", "create the key for ENC(...) secrets", None),
        ("encrypt", "print ENC(...) for VALUE", "value"),
        ("decrypt", "print the plaintext of an ENC(...) value", "value"),
        ("rotate", "a new key; re-encrypt the config's ENC(...) values", None),
    ):
        sp = sec(verb, help, late=late)
        if late:
            sp.add_argument(
                "value", nargs="?", metavar="VALUE|-", help="`-` or none: stdin, or a prompt"
            )
        sp.add_argument(
            "--key-file", type=_path, metavar="KEY", help="the key file (default: the config's)"
        )

    dl = group("dead-letters", "inspect and replay dead letters", cmd_dead_letters)
    dl("list", "the newest dead letters, oldest first").add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="how many (default 50)"
    )
    dl("show", "dead letters in full", late="seq").add_argument(
        "seq", nargs="+", type=int, metavar="N"
    )
    for verb, help in (
        ("replay", "put dead letters back into the gateway's intake"),
        ("purge", "delete dead letters"),
    ):
        sp = dl(verb, help, late="seq")
        sp.add_argument("seq", nargs="*", type=int, metavar="N")
        sp.add_argument("--all", action="store_true", help="all of them")

    st = group("store", "store statistics, reset, drop a removed sink", cmd_store)
    st("stats", "what waits for each sink, and how old it is")
    st("reset", "move a damaged store aside, start empty").add_argument(
        "--force", action="store_true", help="move a valid store aside too"
    )
    st("drop-sink", "forget a sink removed from the config, and its backlog").add_argument(
        "name", metavar="NAME", help="the removed sink"
    )

    webp = group("web", "console users", cmd_web)(
        "passwd", "add a console user or set its password"
    )
    webp.add_argument("user", metavar="USER")
    # no default: a user given a new password keeps its role (a new user is a viewer)
    webp.add_argument("--role", choices=["viewer", "operator"], default=None)

    state = group("state", "processors' kept state (windows, deadband)", cmd_state)
    state("list", "keys and bytes per ROUTE.N")
    show = state("show", "a component's keys and values, oldest first")
    show.add_argument("component", metavar="ROUTE.N")
    show.add_argument(
        "--limit", type=_positive, default=100, metavar="N", help="how many keys (default 100)"
    )
    state("reset", "forget a component's state").add_argument("component", metavar="ROUTE.N")

    docs = sub.add_parser("docs", help="write the config reference (Markdown) from the schema")
    docs.add_argument(
        "--out", type=_path, default="docs/reference", help="folder (default docs/reference)"
    )
    docs.set_defaults(fn=cmd_docs)
    schema = sub.add_parser("schema", help="print the JSON Schema of the config file")
    schema.set_defaults(fn=cmd_schema)
    return p


def _remote_options(conf: Callable[..., argparse.ArgumentParser]) -> None:
    """`config keygen-signing | sign | push` (the remote config's operator side): they read
    no config file, so they take no -c."""
    conf("keygen-signing", "an Ed25519 key pair for remote config", config=False).add_argument(
        "--out", type=_path, required=True, metavar="KEY", help="the private key file to write"
    )
    sign = conf("sign", "print the signed envelope of FILE", config=False)
    push = conf("push", "publish FILE to a gateway, wait for its answer", config=False)
    for sp in (sign, push):
        sp.add_argument("new", type=_path, metavar="FILE", help="the config file to send")
        sp.add_argument(
            "--key", type=_path, required=True, metavar="KEY", help="the Ed25519 private key (PEM)"
        )
        sp.add_argument(
            "--gateway", required=True, metavar="ID", help="the gateway id the document is for"
        )
        sp.add_argument(
            "--version", dest="remote_version", type=int, metavar="N", help="default: unix time now"
        )
    push.add_argument(
        "--broker", required=True, metavar="URL", help="mqtt://host:port or mqtts://host:port"
    )
    push.add_argument(
        "--username", metavar="U", help=f"MQTT user name (password from ${PUSH_PASSWORD_ENV})"
    )
    push.add_argument("--ca-file", type=_path, metavar="F", help="CA bundle for mqtts://")
    push.add_argument(
        "--cert-file", type=_path, metavar="F", help="client certificate for mqtts://"
    )
    push.add_argument("--cert-key", type=_path, metavar="F", help="its private key")
    push.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="seconds to wait (default 30)",
    )


def main(argv: list[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = _Output(stdout)  # from the start: --version writes while the line is parsed
    sys.stderr = _TerminalSafe(stderr)
    args = None
    try:
        args = _arguments(argv)
        code = int(args.fn(args))
        sys.stdout.flush()  # here, not at exit, where a failure is a traceback
        return code
    except StoreError as err:
        print(f"edge-stream: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `edge-stream schema | head`: the reader has what it wanted
        _drop_output(stdout)
        return 1
    except _OutputError as err:  # `edge-stream schema > /dev/full`
        print(f"edge-stream: cannot write the output: {err.strerror or err}", file=sys.stderr)
        _drop_output(stdout)
        return 1
    except PermissionError as err:
        # A one-shot command on a file in the service's folder (mode 0750) is one line; the
        # running gateway's refusals, and one naming no file, keep their traceback.
        if args is None or args.fn is cmd_run or not err.filename:
            raise
        advice = ": run it as the user the file belongs to" if err.errno == errno.EACCES else ""
        print(
            f"edge-stream: {err.filename}: {(err.strerror or 'refused').lower()}{advice}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:  # Ctrl-C at a password prompt printed a traceback
        print("\nedge-stream: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line parsed; a usage error exits 2 (argparse)."""
    p = parser()
    # argparse gives an optional positional (secret encrypt's VALUE) its empty match as soon
    # as an option comes first: `secret encrypt -c FILE VALUE` leaves VALUE over. Take it.
    args, extra = p.parse_known_args(argv)
    late = getattr(args, "late", None)
    # The first one is the positional; any after it are said as unrecognized (not the
    # positional with them: `config rollback -c A V extra` named V, the right VERSION).
    first = extra[0] if extra else "--"
    seqs = [ascii_int(x, 19) for x in extra]
    if late == "seq" and extra and None not in seqs:
        # `dead-letters replay -c FILE 3 4`: the numbers after the option, the same way
        args.seq, extra = [*args.seq, *(s for s in seqs if s is not None)], []
    elif late and getattr(args, late) is None and (first == "-" or first[:1] != "-"):
        setattr(args, late, first)
        extra = extra[1:]
    if extra:
        getattr(args, "action_parser", p).error(f"unrecognized arguments: {' '.join(extra)}")
    group_config = vars(args).pop("group_config", None)
    if getattr(args, "takes_config", False):  # -c after the action first, else before it
        args.config = getattr(args, "config", None) or group_config or DEFAULT_CONFIG
    elif group_config is not None:  # `config -c FILE sign ...`: sign reads no config
        args.action_parser.error(f"unrecognized arguments: -c {group_config}")
    return args


class _OutputError(OSError):
    """A write to stdout failed (a full disk, an I/O error), told from the OSErrors of the
    files a command reads and writes itself."""


# Control characters other than newline and tab, shown as \xNN on a terminal: topics,
# keys and reasons come from publishers, and an escape sequence in a topic would act on
# the operator's terminal (retitle it, move the cursor, hide what follows).
_TERMINAL_SAFE = {
    c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if chr(c) not in "\n\t"
}


class _TerminalSafe:
    """sys.stderr while a command runs: on a terminal, control characters are written as
    \\xNN (see _TERMINAL_SAFE). The problems of a config name its keys as written, and a
    key holding an escape sequence (a config from elsewhere) acted on the terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._terminal = stream.isatty()
        except (AttributeError, OSError, ValueError):
            self._terminal = False

    def write(self, text: str) -> int:
        return self._stream.write(text.translate(_TERMINAL_SAFE) if self._terminal else text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Output(_TerminalSafe):
    """sys.stdout while a command runs: as _TerminalSafe, and its write errors other than a
    broken pipe are _OutputError, which main() says in one line."""

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except BrokenPipeError:
            raise
        except OSError as err:
            raise _OutputError(err.errno, err.strerror) from err

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as err:
            raise _OutputError(err.errno, err.strerror) from err


def _drop_output(stream: TextIO) -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail on what is left."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a file (pytest's capture): nothing flushes it at exit
        return
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)


if __name__ == "__main__":
    sys.exit(main())
