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
(`gateway.log_level: changed (info -> debug)`). A changed secret shows as
`password changed`, never its text. Pure functions; the caller loads the files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from typing import Any

from gateway.config import secrets
from gateway.config.load import apply_env, load_data, parse_file
from gateway.config.model import Config
from gateway.config.schema import key_of, mask_password
from gateway.config.secrets import is_secret_key

REDACTED = "***"
_ENC = re.compile(r"ENC\([^)]*\)")
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
# A URL's query parameter: `?api_key=...`, `&access_token=...` (masked when its name is a
# secret's, as a key of the config would be)
_QUERY_PARAM = re.compile(r"([?&])([^=&#\s]+)=([^&#\s]*)")
_COLLECTIONS = ("sources", "routes", "sinks")
_MAX_SHOWN = 200  # characters of one value in a diff line
_ABSENT = object()


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


def plain(value: Any) -> Any:
    """A loaded config (or part of one) as YAML-ready data: dicts, lists, scalars."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            key_of(f.name): plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


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


def _leaves(data: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Mapping leaves by key path; lists are leaves (compared whole)."""
    if isinstance(data, dict) and data:
        out: dict[tuple[str, ...], Any] = {}
        for k, v in data.items():
            out.update(_leaves(v, (*prefix, str(k))))
        return out
    return {prefix: data}


def changed_keys(old: Any, new: Any) -> list[str]:
    """The key paths (`webhook.url`, `rules.backlog.for`) where two loaded sections (or
    any two values `plain` takes) differ: names only, so that no secret is shown."""
    a, b = _leaves(plain(old)), _leaves(plain(new))
    return [".".join(p) for p in [*a, *(p for p in b if p not in a)] if a.get(p) != b.get(p)]


def _text(value: Any) -> str:
    if value is _ABSENT:
        text = "absent"
    elif isinstance(value, str):
        text = value if value else "''"
    else:
        text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _changes(old: Any, new: Any, old_shown: Any, new_shown: Any) -> list[str]:
    """`key old -> new` per changed leaf; `key changed` when a secret is involved."""
    a, b = _leaves(old), _leaves(new)
    a_shown, b_shown = _leaves(old_shown), _leaves(new_shown)
    out = []
    for path in [*a, *(p for p in b if p not in a)]:
        before, after = a.get(path, _ABSENT), b.get(path, _ABSENT)
        if before == after:
            continue
        key = ".".join(path)
        shown_a, shown_b = a_shown.get(path, _ABSENT), b_shown.get(path, _ABSENT)
        if shown_a == shown_b or REDACTED in (shown_a, shown_b):
            out.append(f"{key} changed")
        else:
            out.append(f"{key} {_text(shown_a)} -> {_text(shown_b)}")
    return out


def diff(old: Config, old_raw: dict[str, Any], new: Config, new_raw: dict[str, Any]) -> list[str]:
    """What replacing `old` by `new` changes, one line per component (or section key).

    Values are compared as loaded (a re-encrypted but equal secret is no change) and
    shown redacted."""
    a, b = plain(old), plain(new)
    a_shown, b_shown = show(old, old_raw), show(new, new_raw)
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
            detail = "" if rest == "changed" else f" ({rest})"
            lines.append(f"{section}.{key}: changed{detail}")
    return lines
