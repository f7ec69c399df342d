"""The effective config as a user may see it: `edge-stream config show` and `config diff`.

`show` prints the config the gateway would run (environment overrides applied,
defaults filled in) as YAML, with every secret written `***`: each value written
`ENC(...)` in the file or an override (from its `ENC(...)` text, never decrypted),
each key named `password`, `secret` or `token` (or ending `_password`, `_secret`,
`_token`) at any depth, and the password of every DSN or URL
(`postgresql://gw:***@db/x`, `password=***`).

`diff` compares two loaded configs component by component: sources, routes and sinks
by name (`sinks.warehouse: changed (batch.max_rows 1000 -> 500)`, `routes.alarms:
added`, `sources.plc1: removed`), the other sections key by key
(`gateway.log_level: changed (info -> debug)`), a whole block only one side has once
(`alerts.rules.behind: added`, not each of its keys with its default). A changed
secret shows as its key and `changed` (`password changed`, `web.password: changed`,
`dsn changed`), never its text.
Pure functions; the caller loads the files.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import re
import typing
from typing import Any

from gateway.config import secrets
from gateway.config.load import apply_env, load_data, parse_file
from gateway.config.model import Config
from gateway.config.schema import DURATION, SIZE, key_of, mask_password
from gateway.config.secrets import is_secret_key
from gateway.config.units import ascii_int, duration_text, size_text

REDACTED = "***"
_ENC = re.compile(r"ENC\([^)]*\)")
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
# A URL's query parameter: `?api_key=...`, `&access_token=...` (masked when its name is a
# secret's, as a key of the config would be)
_QUERY_PARAM = re.compile(r"([?&])([^=&#\s]+)=([^&#\s]*)")
_COLLECTIONS = ("sources", "routes", "sinks")
_MAX_SHOWN = 200  # characters of one value in a diff line


class _Absent:
    """A key one side of a diff does not have."""


_ABSENT: Any = _Absent()


def load_view(
    path: str | os.PathLike[str], environ: dict[str, str] | None = None
) -> tuple[Config, dict[str, Any]]:
    """The validated Config at `path` and its raw data (overrides applied, ENC(...) kept).

    ConfigError as `load` raises it."""
    env = dict(os.environ) if environ is None else environ
    data, lines = parse_file(path)
    raw = copy.deepcopy(data)
    config = load_data(data, str(path), lines, env)
    apply_env(raw, env)  # cannot fail: load_data applied the same overrides
    return config, raw


def plain(value: Any, as_written: bool = False) -> Any:
    """A loaded config (or part of one) as YAML-ready data: dicts, lists, scalars; with
    `as_written`, durations and sizes as a config writes them (`5s`, not 5.0; `1GiB`, not
    1073741824)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        units = _units(type(value)) if as_written else {}
        out = {}
        for f in dataclasses.fields(value):
            if f.name.startswith("_"):
                continue
            item = getattr(value, f.name)
            unit = units.get(f.name)
            if unit is not None and isinstance(item, int | float) and not isinstance(item, bool):
                out[key_of(f.name)] = duration_text(item) if unit is DURATION else size_text(item)
            else:
                out[key_of(f.name)] = plain(item, as_written)
        return out
    if isinstance(value, dict):
        return {str(k): plain(v, as_written) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v, as_written) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


@functools.cache
def _units(cls: type) -> dict[str, object]:
    """The fields of a config dataclass typed Duration or Size (or either | None), and which."""

    def unit_of(tp: Any) -> object | None:
        for mark in (DURATION, SIZE):
            if mark in getattr(tp, "__metadata__", ()):
                return mark
        for arg in typing.get_args(tp):
            found = unit_of(arg)
            if found is not None:
                return found
        return None

    hints = typing.get_type_hints(cls, include_extras=True)
    return {name: unit for name, tp in hints.items() if (unit := unit_of(tp)) is not None}


def _mask_text(text: str) -> str:
    text = _ENC.sub(REDACTED, text)
    text = _KV_PASSWORD.sub(lambda m: m.group(1) + REDACTED, text)
    if "://" in text and "?" in text:
        text = _QUERY_PARAM.sub(_mask_query_param, text)
    return mask_password(text)


def _mask_query_param(match: re.Match[str]) -> str:
    sep, name, value = match.groups()
    if value and is_secret_key(name.replace("-", "_")):
        return f"{sep}{name}={REDACTED}"
    return match.group(0)


def redact(data: Any, raw: Any = _ABSENT, name: object = None) -> Any:
    """`data` (plain) with every secret written ***; `raw` is the same part of the file's
    data with overrides applied, whose ENC(...) values mark secrets without decrypting."""
    if isinstance(raw, str) and secrets.has_secret(raw):
        # The loaded value is the plaintext: show the file's text with ENC(...) masked.
        return _mask_text(raw) if isinstance(data, str) else REDACTED
    if is_secret_key(name) and isinstance(data, (str, int, float)) and not isinstance(data, bool):
        if data == "":
            return data
        return REDACTED
    if isinstance(data, dict):
        raw_map = raw if isinstance(raw, dict) else {}
        return {k: redact(v, _raw_get(raw_map, k), k) for k, v in data.items()}
    if isinstance(data, list):
        raw_list = raw if isinstance(raw, list) and len(raw) == len(data) else []
        return [redact(v, raw_list[i] if raw_list else _ABSENT, name) for i, v in enumerate(data)]
    if isinstance(data, str):
        return _mask_text(data)
    return data


def _raw_get(raw: dict[Any, Any], key: str) -> Any:
    if key in raw:
        return raw[key]
    for k, v in raw.items():  # an override may have written the key in another case
        if str(k).lower() == key.lower():
            return v
    return _ABSENT


def show(config: Config, raw: dict[str, Any]) -> dict[str, Any]:
    """The effective config with every secret redacted, ready for yaml.safe_dump."""
    shown: dict[str, Any] = redact(plain(config), raw)
    return shown


def _paired_leaves(old: Any, new: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The leaf paths of two values (mappings by key; lists are leaves, compared whole),
    but two lists of mappings of the same length (a route's processors) compared item by
    item (`processors.0.size`), and a mapping that one side does not have at all (an
    alert rule added) one path: its keys are no changes of their own, only defaults."""
    mappings = isinstance(old, dict) and isinstance(new, dict)
    if mappings and (old or new):
        return [
            path
            for k in [*old, *(k for k in new if k not in old)]
            for path in _paired_leaves(old.get(k, _ABSENT), new.get(k, _ABSENT), (*prefix, k))
        ]
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and all(isinstance(v, dict) for v in [*old, *new])
    ):
        return [
            path
            for i, (a_item, b_item) in enumerate(zip(old, new, strict=True))
            for path in _paired_leaves(a_item, b_item, (*prefix, str(i)))
        ]
    return [prefix]


def _at(data: Any, path: tuple[str, ...]) -> Any:
    for step in path:
        if isinstance(data, dict) and step in data:
            data = data[step]
        elif isinstance(data, list) and (i := ascii_int(step, 9)) is not None and i < len(data):
            data = data[i]
        else:
            return _ABSENT
    return data


def _differences(old: Any, new: Any) -> list[tuple[tuple[str, ...], str | None]]:
    """Where two plain values differ: each path, with `added` or `removed` for a whole
    mapping only one side has (said once, not key by key with its defaults), else None."""
    out: list[tuple[tuple[str, ...], str | None]] = []
    for path in _paired_leaves(old, new):
        before, after = _at(old, path), _at(new, path)
        if before == after:
            continue
        if before is _ABSENT and isinstance(after, dict):
            out.append((path, "added"))
        elif after is _ABSENT and isinstance(before, dict):
            out.append((path, "removed"))
        else:
            out.append((path, None))
    return out


def changed_keys(old: Any, new: Any) -> list[str]:
    """The key paths (`webhook.url`, `rules.backlog.for`) where two loaded sections (or
    any two values `plain` takes) differ, `rules.backlog added` for a whole mapping one
    side lacks: names only, so that no secret is shown."""
    return [
        ".".join(path) + (f" {block}" if block else "")
        for path, block in _differences(plain(old), plain(new))
    ]


def _text(value: Any) -> str:
    if value is _ABSENT:
        text = "absent"
    elif isinstance(value, str):
        text = value if value else "''"
    else:
        text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _changes(old: Any, new: Any, old_shown: Any, new_shown: Any) -> list[str]:
    """`key old -> new` per changed leaf; `key changed` when a secret is involved;
    `key added` / `key removed` for a whole mapping one side lacks."""
    out = []
    for path, block in _differences(old, new):
        key = ".".join(path)
        shown_a, shown_b = _at(old_shown, path), _at(new_shown, path)
        if block:
            out.append(f"{key} {block}")
        elif shown_a == shown_b or REDACTED in (shown_a, shown_b):
            out.append(f"{key} changed")
        else:
            out.append(f"{key} {_text(shown_a)} -> {_text(shown_b)}")
    return out


def diff(old: Config, old_raw: dict[str, Any], new: Config, new_raw: dict[str, Any]) -> list[str]:
    """What replacing `old` by `new` changes, one line per component (or section key).

    Values are compared as loaded (a re-encrypted but equal secret is no change) and
    shown redacted."""
    a, b = plain(old), plain(new)
    a_shown = redact(plain(old, as_written=True), old_raw)
    b_shown = redact(plain(new, as_written=True), new_raw)
    lines: list[str] = []
    for section in a:
        if section in _COLLECTIONS:
            names = [*a[section], *(n for n in b[section] if n not in a[section])]
            for name in names:
                where = f"{section}.{name}"
                if name not in b[section]:
                    lines.append(f"{where}: removed")
                elif name not in a[section]:
                    lines.append(f"{where}: added")
                elif a[section][name] != b[section][name]:
                    changes = _changes(
                        a[section][name],
                        b[section][name],
                        a_shown[section][name],
                        b_shown[section][name],
                    )
                    lines.append(f"{where}: changed ({', '.join(changes)})")
            continue
        for line in _changes(a[section], b[section], a_shown[section], b_shown[section]):
            key, _, rest = line.partition(" ")
            if rest in ("added", "removed"):
                lines.append(f"{section}.{key}: {rest}")
            else:
                detail = "" if rest == "changed" else f" ({rest})"
                lines.append(f"{section}.{key}: changed{detail}")
    return lines
