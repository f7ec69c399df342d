"""The config API: read the effective config, and add, change or remove one source,
route or sink of the config file, which is then applied like a reload.

GET    /api/config                 {"path", "hash", "config"}: the file's effective
                                   config (overrides applied, defaults filled in), every
                                   secret written *** (as `edge-stream config show`)
PUT    /api/config/SECTION/NAME    body: the component's config as a JSON object
DELETE /api/config/SECTION/NAME    SECTION is sources, routes or sinks
PUT|DELETE ...?check=1             show before apply: validate the edit and answer what
                                   it would change, writing nothing: {"outcome":
                                   "checked", "errors", "changes" (as `config diff`),
                                   "diff" (a unified diff of the component's effective
                                   config, secrets ***)}; 422 with the errors if invalid
                                   (any value but 0, false, no or off asks a check),
                                   and "hash", the file's hash it was checked against
PUT|DELETE ...?hash=HASH           apply only if the file's hash is still HASH (the
                                   check's or GET /api/config's): otherwise 409
                                   "changed", nothing written (another user's edit, a
                                   rollback, a hand edit came between)
GET    /api/config/versions        {"versions": [{"name", "saved_at", "hash"}]}: the kept
                                   versions, newest first (as `config versions`)
POST   /api/config/rollback        body {"version": NAME} (default: the newest): put that
                                   version back and apply it (as `config rollback`); the
                                   text it replaced is kept in turn (with ?check: 400)

Both use the running gateway's data_dir (`data_dir`), where its edits kept the versions,
not the file's: a file broken by hand (a YAML error, a typo in `gateway:`, a data_dir
moved or removed, an emptied file) would name no data_dir or another one.

A PUT or DELETE changes the file with `gateway.config.edit` (only the component's lines
change; comments and formatting stay), validates the result as `check-config` does,
writes it atomically (the replaced text kept under `<data_dir>/config-history/`) and
asks the gateway to reload (as POST /api/config/reload). The answer is
{"outcome", "errors", "version"} (`version`: the kept version of the replaced text,
which `edge-stream config rollback VERSION` restores), plus the reload's `changes`
when it names them:

200 applied       the new config runs
400               the body is not a JSON object, or a name is not usable; a query
                  parameter other than ?check (a rollback's: any), or a rollback body
                  key other than "version" (named, with a "did you mean")
404               DELETE of a component that is not there; an unknown section
409 refused / rolled_back   the gateway did not apply it (the errors say why); the
                  file is put back as it was, so that it says what runs. Also: no
                  config file (a gateway started without `-c FILE`; "path": null), and
                  a GET /api/config of a file that does not load ("path": the file)
409 changed       ?hash=HASH and the file's hash is no longer HASH; nothing written
413               a body over 256 KiB
500               the file or its kept version cannot be written (a full disk, a
                  folder the gateway's user may not write): the error says which
422 refused       the new config is invalid; the errors name the key paths
                  (`gw.yaml: routes.r1.sinks.0: no sink named 'x' is defined under
                  sinks:`); nothing is written

One edit at a time; the file work runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any
from urllib.parse import unquote

from gateway.config import files
from gateway.config.load import apply_env, load_data, parse_text, read_text
from gateway.config.schema import did_you_mean
from gateway.core.errors import ConfigError

log = logging.getLogger("gateway.web")

MAX_BODY = 256 << 10
PREFIX = "/api/config/"
VERSIONS = PREFIX + "versions"
ROLLBACK = PREFIX + "rollback"


def not_taken(given: Iterable[str], taken: Collection[str]) -> str:
    """The names of `given` that are not in `taken`, for "..., not NAMES": each quoted,
    with a "did you mean" when one of `taken` is close (`'versoin' (did you mean
    'version'?)`), at most five of them, each cut to 40 characters; "" when all are
    taken. A key or query parameter misspelt was ignored: `{"versoin": NAME}` rolled
    back to the newest version, `?chek=1` wrote and applied the edit it meant to check."""
    unknown = sorted(set(given) - set(taken))
    return ", ".join(f"{k[:40]!r}{did_you_mean(k, taken)}" for k in unknown[:5])


Response = tuple[int, str, bytes]
Reload = Callable[[str], Awaitable[dict[str, Any]]]  # a reload attempt, by trigger


class ConfigApi:
    """Serves /api/config for the config file at `path` (None: the gateway has none),
    applying edits through `reload` (the gateway's POST /api/config/reload path);
    `data_dir` gives the running gateway's data_dir, where the kept versions are (None:
    the file's, as `config versions` reads it)."""

    def __init__(
        self,
        path: str | None,
        reload: Reload | None,
        settle: Callable[[str], None] | None = None,
        data_dir: Callable[[], str] | None = None,
    ) -> None:
        self.path = path
        self._reload = reload
        self._settle = settle  # the file was put back to this text: no change to reload
        self._data_dir = data_dir
        self._lock = asyncio.Lock()

    @staticmethod
    def serves(path: str) -> bool:
        return path == "/api/config" or (path.startswith(PREFIX) and path != PREFIX + "reload")

    @staticmethod
    def allowed(path: str) -> tuple[str, ...]:
        if path in ("/api/config", VERSIONS):
            return ("GET", "HEAD")
        return ("POST",) if path == ROLLBACK else ("PUT", "DELETE")

    async def handle(
        self,
        method: str,
        url_path: str,
        body: bytes,
        check: bool = False,
        expect: str | None = None,
    ) -> Response:
        """Answer one request (already authorized, its body read and bounded); `expect`:
        a change's ?hash, the file's hash it was checked against."""
        if method not in self.allowed(url_path):
            allowed = " or ".join(self.allowed(url_path))
            return _answer(405, errors=[f"{url_path}: only {allowed} here"])
        if self.path is None or self._reload is None:
            return _answer(
                409,
                errors=[
                    "the gateway was started without a config file (-c FILE),"
                    " so there is no file to show or edit"
                ],
                path=None,  # no file, which a page words otherwise than a broken one
            )
        if url_path == "/api/config":
            return await self._show(self.path)
        if url_path == VERSIONS:
            return await self._versions(self.path)
        if url_path == ROLLBACK:
            if check:  # it would write and apply: refused rather than done unasked
                return _answer(
                    400,
                    errors=[
                        "a rollback has no ?check: GET /api/config/versions lists the kept"
                        " versions; POST without ?check puts one back and applies it"
                    ],
                )
            async with self._lock:
                return await self._rollback(self.path, self._reload, body)
        # ruamel.yaml (0.8 MB of RSS) comes with `edit`: only once someone edits
        from gateway.config import edit

        parts = url_path[len(PREFIX) :].split("/")
        if len(parts) != 2 or parts[0] not in edit.SECTIONS:
            return _answer(
                404, errors=[f"no such config API path; use {PREFIX}{{sources|routes|sinks}}/NAME"]
            )
        section, name = parts[0], unquote(parts[1])
        try:
            edit.check_name(section, name)
        except ConfigError as err:
            return _answer(400, errors=list(err.problems))
        value = None
        if method == "PUT":
            try:
                value = json.loads(body, parse_constant=_no_constant)
            except _NotJson as err:
                return _answer(400, errors=[f"{section}.{name}: {err}"])
            except json.JSONDecodeError as err:  # a hand-typed body: say where it went wrong
                return _answer(
                    400,
                    errors=[
                        f"{section}.{name}: the body is not JSON: {err.msg} at line"
                        f" {err.lineno} column {err.colno}"
                    ],
                )
            except (ValueError, RecursionError):  # [[[[..., a number of 5,000 digits
                value = None
            if not isinstance(value, dict):
                return _answer(400, errors=[f"{section}.{name}: the body must be a JSON object"])
            try:  # "\ud800" is JSON, but half a character: no file can hold it
                json.dumps(value, ensure_ascii=False).encode()
            except UnicodeEncodeError as err:
                half = err.object[err.start : err.end].encode(errors="backslashreplace").decode()
                return _answer(
                    400, errors=[f"{section}.{name}: {half} is half of a character, not text"]
                )
        if check:
            return await self._check(self.path, section, name, value)
        async with self._lock:
            return await self._edit(self.path, self._reload, section, name, value, expect)

    async def _check(
        self, path: str, section: str, name: str, value: dict[str, Any] | None
    ) -> Response:
        from gateway.config import edit

        try:
            # Reads, changes and validates (decrypting secrets): in a worker thread.
            changes, text_diff, checked = await asyncio.to_thread(
                _preview, path, section, name, value
            )
        except edit.NoSuchComponent as err:
            return _answer(404, errors=list(err.problems))
        except ConfigError as err:
            return _answer(422, errors=list(err.problems))
        return _answer(200, "checked", changes=changes, diff=text_diff, hash=checked)

    async def _versions(self, path: str) -> Response:
        try:
            kept = await asyncio.to_thread(_kept_versions, self._versions_dir(path))
        except ConfigError as err:
            return _answer(409, errors=list(err.problems))
        except OSError as err:  # a config-history/ left to root (a command run as root)
            return _answer(500, errors=[f"{err.filename}: cannot read it ({err.strerror})"])
        return 200, "application/json", json.dumps({"versions": kept}, indent=1).encode()

    def _versions_dir(self, path: str) -> Callable[[], str]:
        """Where the kept versions are: the running gateway's data_dir; without one,
        the file's (read in the worker thread)."""
        if self._data_dir is not None:
            return self._data_dir
        return lambda: _data_dir(path)

    async def _rollback(self, path: str, reload: Reload, body: bytes) -> Response:
        try:
            asked = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError):
            asked = None
        name = asked.get("version") if isinstance(asked, dict) else None
        unknown = not_taken(asked, ("version",)) if isinstance(asked, dict) else ""
        if not isinstance(asked, dict) or not isinstance(name, str | None) or unknown:
            shape = 'the body: {"version": NAME} or nothing (the newest)'
            if unknown:
                shape += f", not {unknown}"
            return _answer(400, errors=[shape])
        try:
            old_text, restored, kept, durable = await asyncio.to_thread(
                _restore, path, self._versions_dir(path), name
            )
        except ConfigError as err:
            return _answer(409, errors=list(err.problems))
        except OSError as err:
            return _answer(500, errors=[files.unsaved(err, path)])
        version = None if kept is None else kept.name
        if old_text is None:
            return _answer(200, "unchanged", [f"{path} already holds {restored}"], version)
        log.info(
            "web: %s restored in %s through the API (old text kept as %s)", restored, path, version
        )
        outcome = await reload("rollback")
        result = str(outcome.get("outcome", "refused"))
        errors = [str(e) for e in outcome.get("errors") or []] + _warned(durable, path)
        extra = {"changes": outcome["changes"]} if "changes" in outcome else {}
        if result == "applied":
            return _answer(200, result, errors, version, restored=restored, **extra)
        errors += await self._put_back(path, old_text, errors)
        log.warning(
            "web: the gateway did not apply %s (%s); %s is back as it was", restored, result, path
        )
        return _answer(409, result, errors, version, restored=restored, **extra)

    async def _show(self, path: str) -> Response:
        try:
            # Reads, validates and decrypts the whole file: off the event loop.
            shown = await asyncio.to_thread(_show, path)
        except ConfigError as err:
            return _answer(409, errors=list(err.problems), path=path)
        return 200, "application/json", json.dumps(shown, indent=1).encode()

    async def _edit(
        self,
        path: str,
        reload: Reload,
        section: str,
        name: str,
        value: dict[str, Any] | None,
        expect: str | None = None,
    ) -> Response:
        from gateway.config import edit

        durable: files.NotDurable | None = None
        try:
            # Read, change, validate (decrypting secrets) and fsync: in a worker thread.
            old_text, kept, wrote = await asyncio.to_thread(
                _edit_file, path, section, name, value, expect
            )
        except _Changed as err:
            return _answer(409, "changed", [str(err)])
        except edit.NoSuchComponent as err:
            return _answer(404, errors=list(err.problems))
        except ConfigError as err:
            return _answer(422, errors=list(err.problems))
        except files.NotDurable as err:  # written all the same: applied as such, and said
            assert err.replaced is not None  # edit_file sets it
            old_text, kept, wrote, durable = err.replaced, err.kept, True, err
        except OSError as err:
            return _answer(500, errors=[files.unsaved(err, path)])
        version = None if kept is None else kept.name
        what = f"{section}.{name} {'removed' if value is None else 'written'}"
        if not wrote:
            log.info("web: %s in %s through the API: no change, nothing written", what, path)
        else:
            log.info("web: %s in %s through the API (old text kept as %s)", what, path, version)
        outcome = await reload("edit")
        result = str(outcome.get("outcome", "refused"))
        errors = [str(e) for e in outcome.get("errors") or []] + _warned(durable, path)
        extra = {"changes": outcome["changes"]} if "changes" in outcome else {}
        if result == "applied":
            return _answer(200, result, errors, version, **extra)
        if not wrote:  # nothing to put back: the file is as it was
            log.warning("web: the gateway did not apply %s (%s)", path, result)
            return _answer(409, result, errors, version, **extra)
        # Not running: put the text back, so that the file says what runs.
        errors += await self._put_back(path, old_text, errors)
        log.warning(
            "web: the gateway did not apply %s (%s); %s is back as it was", what, result, path
        )
        return _answer(409, result, errors, version, **extra)

    async def _put_back(self, path: str, old_text: str, errors: list[str]) -> list[str]:
        """Write `old_text` back after the gateway did not apply an edit or a rollback, and
        settle it. On the disk that failed the write's sync, the put-back fails it too (the
        text is back all the same): the line saying so, unless `errors` has it already; it
        was a 500 with a traceback, the file's watcher left unsettled."""
        put = await asyncio.to_thread(files.put_back, path, old_text)
        if self._settle is not None:
            self._settle(old_text)
        lines = [line for line in put if line not in errors]
        for line in lines:
            log.warning("web: %s", line)
        return lines


class _Changed(Exception):
    """The file's hash is not the one the edit was checked against."""


def _edit_file(
    path: str, section: str, name: str, value: dict[str, Any] | None, expect: str | None
) -> tuple[str, files.Version | None, bool]:
    """`edit.edit_file`, but with `expect` (a ?hash) only if the file's hash is still
    that: the edit checked against it would undo a change made since, in that component,
    which its diff did not show. (API edits take turns under the lock.)"""
    from gateway.config import edit

    if expect is not None:
        now = files.text_hash(read_text(path))
        if now != expect:
            raise _Changed(
                f"{path} changed since your check (another edit, a rollback or a hand edit:"
                f" its hash is {now}, not {expect[:40]!r}); nothing written: check again"
            )
    return edit.edit_file(path, section, name, value)


def _preview(
    path: str, section: str, name: str, value: dict[str, Any] | None
) -> tuple[list[str], str, str]:
    """What setting (or removing) one component would change: `config diff` lines, a
    unified diff of the component's effective config (secrets redacted), and the hash of
    the file checked."""
    import difflib

    import yaml

    from gateway.config import edit
    from gateway.config.view import diff, load_view, show

    old, old_raw = load_view(path)
    text = read_text(path)
    if value is None:
        new_text = edit.remove_component(text, section, name, path)
    else:
        new_text = edit.set_component(text, section, name, value, path, dict(os.environ))
    data, _lines = parse_text(new_text, path)
    new_raw = copy.deepcopy(data)
    new = load_data(data, path, {}, dict(os.environ))
    apply_env(new_raw, dict(os.environ))

    def component(config: Any, raw: dict[str, Any]) -> list[str]:
        shown = show(config, raw).get(section, {}).get(name)
        if shown is None:
            return []
        return yaml.safe_dump({section: {name: shown}}, sort_keys=False).splitlines()

    lines = difflib.unified_diff(
        component(old, old_raw), component(new, new_raw), "running", "new", lineterm=""
    )
    return diff(old, old_raw, new, new_raw), "\n".join(lines), files.text_hash(text)


def _data_dir(path: str) -> str:
    """Its gateway.data_dir, as `config versions|rollback` read it: from the gateway:
    section alone, so that a file broken elsewhere can still be rolled back."""
    from gateway.config.load import data_dir_of

    return data_dir_of(path)


def _kept_versions(data_dir_of: Callable[[], str]) -> list[dict[str, Any]]:
    return [
        {"name": v.name, "saved_at": v.saved_at, "hash": v.hash}
        for v in files.versions(data_dir_of())
    ]


def _restore(
    path: str, data_dir_of: Callable[[], str], name: str | None
) -> tuple[str | None, str, files.Version | None, files.NotDurable | None]:
    """Put kept version `name` (under data_dir_of()) back in `path` (as `config
    rollback`): the text it replaced (None: it already held that), the version's name,
    the kept old text, and the error if the file was replaced but not synced to the
    disk (it is applied all the same, as `config rollback` does)."""
    from gateway.config import edit

    data_dir = data_dir_of()
    version = files.find_version(data_dir, name)
    text = read_text(version.path)
    edit.validate(text, str(version.path))
    current = read_text(path)
    if current == text:
        return None, version.name, None, None
    try:
        return current, version.name, files.save(path, text, data_dir), None
    except files.NotDurable as err:
        return current, version.name, err.kept, err


def _warned(durable: files.NotDurable | None, path: str) -> list[str]:
    """The line an answer adds when the file was replaced but not synced to the disk."""
    if durable is None:
        return []
    line = files.unsaved(durable, path)
    log.warning("web: %s", line)
    return [line]


def _show(path: str) -> dict[str, Any]:
    from gateway.config.view import load_view, show

    text = read_text(path)
    config, raw = load_view(path)
    return {"path": path, "hash": files.text_hash(text), "config": show(config, raw)}


class _NotJson(ValueError):
    """NaN or Infinity in a body: Python's json reads them, JSON has none."""


def _no_constant(name: str) -> Any:
    # A NaN written to the file reads back as a NaN, which equals nothing (itself
    # included): the edit was refused as "would not read back as sent ... report this".
    raise _NotJson(f"{name} is not JSON; send a number")


def _answer(
    status: int,
    outcome: str = "refused",
    errors: list[str] | None = None,
    version: str | None = None,
    **extra: Any,
) -> Response:
    body = {"outcome": outcome, "errors": errors or [], "version": version, **extra}
    return status, "application/json", json.dumps(body, indent=1).encode()
