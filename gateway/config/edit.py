"""Programmatic edits of the config file that keep the user's text: add, change or
remove one source, route or sink by name.

`set_component(text, section, name, value)` and `remove_component(text, section, name)`
take the file's text and give back the new text; `edit_file` reads the file, makes
the change, validates the result with the loader `check-config` uses and writes it
through `files.save` (the replaced text kept under `<data_dir>/config-history/`). A
change the loader refuses raises ConfigError with its key paths and writes nothing.

In a YAML file only the lines of the edited component change: the file is read with
ruamel.yaml's round-trip loader to find where each component starts and ends, and
the new component, written by ruamel.yaml in the file's own indentation, replaces
exactly those lines. Every other byte (comments at the top, between components,
inline and at the end, key order, quoting, blank lines) stays as it was. Comment
lines right above a component and right below it (at its key's indentation or
less) belong to the text around it: changing or removing the component leaves
them. Within a changed component, the keys keep their order and the values that did
not change keep their form (quotes, `10s`, flow or block style, comments). A file
whose section is written in flow style (`sinks: {a: {...}}`) or empty is written
back whole by ruamel.yaml, which keeps its comments but may change its spacing.

A JSON file is written back as formatted JSON (indent 2).

Defaults: a page sends back a component as `GET /api/config` shows it, every default
filled in. A key whose value is the default the config model gives it (read as the
loader reads it: `0s` and 0.0 are the same) and that the file's version of the
component did not write is left out, in nested sections (`batch:`) and in each
processor of a route too (matched with the file's processor at the same place only
when it has the same type). A key the file wrote stays, even when it equals the
default; a new component keeps only the keys that differ from the defaults.
A key the file wrote whose sent value reads the same (`10s` sent as 10.0, `64MiB` as
67108864, `match: a/#` as `[a/#]`) keeps the file's form, and a component sent back
with nothing changed leaves the text as it was. A key an environment override sets,
sent back as GET showed it (the override's value, `***` for a secret), keeps the
file's value or stays out: the value is the environment's, not the file's.

Secrets: the file's `ENC(...)` values are never decrypted here, so the file keeps
them as they were. A value sent for a secret is written as sent (it may be an
`ENC(...)` text). A value sent as its redacted form, as `config show` and `GET
/api/config` print it (`***`, `postgresql://gw:***@db/x`), keeps the file's value:
a page can send back what it was shown. A `***` with no value to keep is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString
from ruamel.yaml.tokens import CommentToken
from ruamel.yaml.util import load_yaml_guess_indent

from gateway.config import files
from gateway.config.load import (
    apply_env,
    load_data,
    parse_text,
    past_limits,
    plain_tag,
    read_text,
)
from gateway.config.model import NAME_MAX, Config, RouteSection
from gateway.config.schema import Component, Problems, build, fields
from gateway.config.view import REDACTED, plain, redact, show
from gateway.core.errors import ConfigError

SECTIONS = ("sources", "routes", "sinks")
_NOUNS = {"sources": "source", "routes": "route", "sinks": "sink"}
MAX_NAME = NAME_MAX  # what the loader takes (config/model.py)
_STR_TAG = "tag:yaml.org,2002:str"
_MISSING = object()


class NoSuchComponent(ConfigError):
    """The component to remove is not in the file."""


def check_name(section: str, name: str) -> None:
    """A component name an edit may write: ConfigError (one line) otherwise."""
    if section not in SECTIONS:
        raise ConfigError(f"{section!r} is not a section that holds components ({SECTIONS})")
    if not name or len(name) > MAX_NAME:
        raise ConfigError(f"a {_NOUNS[section]} name has 1 to {MAX_NAME} characters")
    if not name.isprintable() or name != name.strip():
        raise ConfigError(f"a {_NOUNS[section]} name is printable text without outer spaces")


def set_component(
    text: str,
    section: str,
    name: str,
    value: dict[str, Any],
    source: str,
    environ: dict[str, str] | None = None,
) -> str:
    """`text` with `section.name` added or replaced by `value` (plain data, as from JSON).

    `source` is the file's name (`.json`: a JSON file); `environ` the gateway's
    environment, whose overrides GET showed. ConfigError if the text cannot be read, or a
    redacted value has nothing to keep."""
    check_name(section, name)
    if not isinstance(value, dict):
        raise ConfigError(f"{section}.{name}: expected a mapping of the component's keys")
    old_data, _ = parse_text(text, source)
    old_section = old_data.get(section)
    old = old_section.get(name, _MISSING) if isinstance(old_section, dict) else _MISSING
    if old is not _MISSING:  # one the environment alone makes is written as sent, whole
        value = _without_overrides(value, old, old_data, section, name, source, environ or {})
    expected = _without_defaults(_unredact(value, old, (section, name)), old, section)
    if _identical(expected, old):
        return text  # sent back as GET showed it, nothing changed: not a byte either
    if source.endswith(".json"):
        new_text = _json_set(text, section, name, expected)
    else:
        new_text = _yaml_edit(text, section, name, expected, old)
    new_text = line_ends_of(text, new_text)
    _verify(text, new_text, source, section, name, expected)
    return new_text


def remove_component(text: str, section: str, name: str, source: str) -> str:
    """`text` without `section.name`; ConfigError if there is no such component."""
    check_name(section, name)
    old_data, _ = parse_text(text, source)
    old_section = old_data.get(section)
    if not isinstance(old_section, dict) or name not in old_section:
        raise NoSuchComponent(f"{source}: no {_NOUNS[section]} named {name!r} under {section}:")
    if source.endswith(".json"):
        new_text = _json_set(text, section, name, _MISSING)
    else:
        new_text = _yaml_edit(text, section, name, _MISSING, old_section[name])
    new_text = line_ends_of(text, new_text)
    _verify(text, new_text, source, section, name, _MISSING)
    return new_text


def line_ends_of(text: str, new_text: str) -> str:
    """`new_text` with the line ends of `text` when those are all \\r\\n (a file written
    on Windows): the lines an edit wrote ended in \\n alone, and the file came out with
    both kinds. YAML reads either the same."""
    if "\r\n" not in text or text.count("\n") != text.count("\r\n"):
        return new_text
    return _BARE_LF.sub("\r\n", new_text)


_BARE_LF = re.compile(r"(?<!\r)\n")


def validate(text: str, source: str, environ: dict[str, str] | None = None) -> Config:
    """Load `text` as the gateway would (environment overrides, ENC(...) secrets); the
    errors name the file and the key path (no line: the text is not in the file yet)."""
    data, _lines = parse_text(text, source)
    return load_data(data, source, {}, environ)


def edit_file(
    path: str | os.PathLike[str],
    section: str,
    name: str,
    value: dict[str, Any] | None,
    environ: dict[str, str] | None = None,
) -> tuple[str, files.Version | None, bool]:
    """Set (`value`) or remove (None) one component of the file at `path`, validate the
    result and write it with `files.save`. Returns the text it replaced, the kept
    version of it (None: no file before, or nothing changed) and whether it wrote.
    ConfigError, and nothing written, if the result is refused. `files.NotDurable`
    (with `replaced`, the old text) if it was written but not synced to the disk.

    Blocking (reads, validates, fsyncs): call it in a worker thread."""
    source = str(path)
    old_text = read_text(path)
    env = dict(os.environ) if environ is None else environ
    if value is None:
        new_text = remove_component(old_text, section, name, source)
    else:
        new_text = set_component(old_text, section, name, value, source, env)
    config = validate(new_text, source, env)
    if new_text == old_text:
        # sent back as it is: a version of the same text would push a real one out of
        # the 20 kept, and `config rollback` to it would change nothing
        return old_text, None, False
    try:
        kept = files.save(source, new_text, config.gateway.data_dir)
    except files.NotDurable as err:  # written all the same: the caller applies it as such
        err.replaced = old_text
        raise
    return old_text, kept, True


# -- environment overrides ------------------------------------------------------------


def _without_overrides(
    value: dict[str, Any],
    old: Any,
    data: dict[str, Any],
    section: str,
    name: str,
    source: str,
    environ: dict[str, str],
) -> dict[str, Any]:
    """`value` with each key an environment override sets, sent back as GET showed it
    (the override's value, `***` for a secret), put back to the file's value, or left
    out where the file has none: the value is the environment's, not the file's. It was
    written into the file (a path from the environment, kept after the variable went),
    and a secret given by the environment was refused as a `***` with nothing behind it."""
    effective = copy.deepcopy(data)
    try:
        overridden = apply_env(effective, environ)
    except ConfigError:
        return value  # the loader says what is wrong with the variable
    paths = [p[2:] for p in overridden if p[:2] == (section, name) and len(p) > 2]
    if not paths:
        return value
    try:
        config = load_data(copy.deepcopy(data), source, {}, environ)
    except ConfigError:
        return value  # GET showed no config: nothing was sent back from it
    shown = show(config, effective).get(section, {}).get(name, _MISSING)
    out = copy.deepcopy(value)
    for path in paths:
        sent = _get(out, path)
        if sent is _MISSING or not _identical(sent, _get(shown, path)):
            continue  # a value of the caller's own: written as sent
        _put(out, path, _get(old, path))
    return out


def _get(data: Any, path: tuple[str | int, ...]) -> Any:
    for step in path:
        in_map = isinstance(data, dict) and step in data
        in_list = isinstance(data, list) and isinstance(step, int) and step < len(data)
        if not (in_map or in_list):
            return _MISSING
        data = data[step]
    return data


def _put(data: Any, path: tuple[str | int, ...], value: Any) -> None:
    """`value` at `path` in `data`, the key removed for _MISSING (an item of a list,
    which has no such thing, is left as it is)."""
    parent = _get(data, path[:-1])
    key = path[-1]
    if isinstance(parent, dict):
        if value is _MISSING:
            parent.pop(key, None)
        else:
            parent[key] = value
    elif isinstance(parent, list) and isinstance(key, int) and value is not _MISSING:
        parent[key] = value


# -- defaults -----------------------------------------------------------------------


def _without_defaults(value: Any, old: Any, section: str) -> Any:
    """`value` less each key whose value is its default and that the file's version of
    the component (`old`) did not write: a page sends back the config as GET showed it,
    defaults filled in, and the file keeps only what the user chose."""
    if section == "routes":
        return _prune_dataclass(RouteSection, value, old)
    return _prune_component(_NOUNS[section], value, old)


def _component_class(kind: str, value: Any) -> type | None:
    from gateway import registry

    type_name = value.get("type") if isinstance(value, dict) else None
    entry = registry.find(kind, type_name) if isinstance(type_name, str) else None
    return entry.config if entry is not None else None


def _prune_component(kind: str, value: Any, old: Any) -> Any:
    cls = _component_class(kind, value)
    if cls is None:
        return value
    if not (isinstance(old, dict) and old.get("type") == value.get("type")):
        old = _MISSING  # another type: none of the old keys are the user's for this one
    return _prune_dataclass(cls, value, old)


def _prune_dataclass(cls: type, value: Any, old: Any) -> Any:
    if not isinstance(value, dict):
        return value
    hints, known = fields(cls)
    old_map = old if isinstance(old, dict) else {}
    out = {}
    for key, item in value.items():
        field = known.get(key)
        if field is None:  # an unknown key: the loader says so
            out[key] = item
            continue
        written = old_map.get(key, _MISSING)
        if written is _MISSING and _is_default(hints[key], field, item):
            continue
        if written is not _MISSING and _same_meaning(hints[key], written, item):
            out[key] = written  # `10s` stays `10s`, not the 10.0 GET shows
            continue
        out[key] = _prune_value(hints[key], item, written)
    return out


def _prune_value(tp: Any, value: Any, old: Any) -> Any:
    """The defaults left out inside a nested section or a list of them (a processor
    matched with the old one at its place only when it has the same type)."""
    marks: tuple[Any, ...] = ()
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp, *more = get_args(tp)
            marks += tuple(more)
        elif origin in (Union, types.UnionType):
            others = [a for a in get_args(tp) if a is not type(None)]
            if len(others) != 1:
                return value
            tp = others[0]
        else:
            break
    kind = next((m.kind for m in marks if isinstance(m, Component)), None)
    if kind is not None:
        return _prune_component(kind, value, old)
    if get_origin(tp) is list and isinstance(value, list):
        (item_tp,) = get_args(tp)
        old_list = old if isinstance(old, list) else []
        return [
            _prune_value(item_tp, v, old_list[i] if i < len(old_list) else _MISSING)
            for i, v in enumerate(value)
        ]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _prune_dataclass(tp, value, old)
    return value


def _is_default(tp: Any, field: dataclasses.Field[Any], value: Any) -> bool:
    """Whether `value`, read as the loader reads it, is the field's default."""
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        return False  # a required key
    built = _read(tp, value)
    return built is not _MISSING and _identical(plain(built), plain(default))


def _same_meaning(tp: Any, a: Any, b: Any) -> bool:
    """Whether two values of a key read, as the loader reads them, as the same: the same
    types and order all the way down (1, 1.0 and true differ inside a filter's or a
    transform's values, and so do two orders of a transform's renames)."""
    if _identical(a, b):
        return True
    built_a, built_b = _read(tp, a), _read(tp, b)
    if built_a is _MISSING or built_b is _MISSING:
        return False
    return _identical(plain(built_a), plain(built_b))


def _read(tp: Any, value: Any) -> Any:
    """`value` built as the loader builds it; _MISSING if the loader would refuse it."""
    problems = Problems()
    built = build(tp, value, ("",), problems)
    return _MISSING if problems else built


def _identical(a: Any, b: Any) -> bool:
    """Equal values of the same types (1 is not 1.0 nor True), lists item by item."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_identical(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# -- redacted values ------------------------------------------------------------


def _unredact(value: Any, old: Any, path: tuple[str | int, ...]) -> Any:
    """`value` with every redacted leaf replaced by the old value it stands for."""
    return _unredact_leaf(value, old, path, None)


def _unredact_leaf(value: Any, old: Any, path: tuple[str | int, ...], key: str | None) -> Any:
    if isinstance(value, dict):
        old_map = old if isinstance(old, dict) else {}
        return {
            k: _unredact_leaf(v, old_map.get(k, _MISSING), (*path, str(k)), str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        old_list = old if isinstance(old, list) and len(old) == len(value) else None
        return [
            _unredact_leaf(v, old_list[i] if old_list else _MISSING, (*path, i), key)
            for i, v in enumerate(value)
        ]
    if isinstance(value, str) and REDACTED in value:
        if old is not _MISSING and old != value and redact(old, old, key) == value:
            return old
        dotted = ".".join(str(p) for p in path)
        if value == REDACTED:
            raise ConfigError(
                f"{dotted}: {REDACTED!r} stands for a secret that is not in the file;"
                " send the value itself or its ENC(...) text"
            )
        if _MASKED_PASSWORD.search(value):
            # A DSN or URL as GET showed it, but not the file's: its password would be
            # written as the three characters `***`.
            raise ConfigError(
                f"{dotted}: its password {REDACTED!r} stands for a secret, and the file has"
                " no value that reads so; send the whole value with its password or its"
                " ENC(...) text"
            )
    return value


# A password written *** in a URL's user info (`//gw:***@db`), a `password=***` pair or a
# URL's query parameter (`?api_key=***`).
_MASKED_PASSWORD = re.compile(
    r"//[^/@\s]*:\*\*\*@|\bpassword\s*=\s*\*\*\*(?!\S)|://\S*[?&][^=&#\s]+=\*\*\*(?![^&#\s])",
    re.IGNORECASE,
)


# -- JSON -------------------------------------------------------------------------


def _json_set(text: str, section: str, name: str, value: Any) -> str:
    # a byte order mark (Notepad writes one), which the loader reads past: kept
    mark = "\ufeff" if text.startswith("\ufeff") else ""
    text = text.removeprefix(mark)
    data = json.loads(text) if text.strip() else {}
    components = data.get(section)
    if not isinstance(components, dict):
        components = data[section] = {}
    if value is _MISSING:
        del components[name]
    else:
        components[name] = _ordered_like(components.get(name), value)
    return mark + json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _ordered_like(old: Any, new: Any) -> Any:
    """`new` with the keys `old` had first, in old's order (the user's order stays)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    keys = [k for k in old if k in new] + [k for k in new if k not in old]
    return {k: _ordered_like(old.get(k), new[k]) for k in keys}


# -- YAML ---------------------------------------------------------------------------


def round_trip_yaml() -> YAML:
    """The ruamel.yaml reader and writer of config edits: comments and quotes kept, each
    value on its line as the user wrote it."""
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # a long value stays on its line, as the user wrote it
    # `[{type: json}]` stays so (ruamel.yaml writes a one-key mapping in a flow list
    # without its braces: `[type: json]`, the same in YAML but not as it was written)
    y.brace_single_entry_mapping_in_flow_sequence = True
    return y


def _yaml_edit(text: str, section: str, name: str, value: Any, old_plain: Any) -> str:
    y = round_trip_yaml()
    try:
        _guess, indent, dash = load_yaml_guess_indent(text)
        doc = y.load(text)  # again: the guess does not keep the quotes
    except RuamelError as err:  # the loader read it; ruamel.yaml's stricter reading did not
        raise ConfigError(f"cannot edit this file programmatically: {err}") from err
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise ConfigError("the config must be a mapping of sections")
    # The indentation of the file's components (ruamel.yaml's guess looks at the first
    # nested block only, which may be a list's); a list's dash offset is its guess.
    indent = _component_indent(doc) or indent or 2
    dash = min(dash or 0, indent)
    y.indent(mapping=indent, sequence=dash + 2, offset=dash)
    components = doc.get(section)
    old_node = components.get(name, _MISSING) if isinstance(components, dict) else _MISSING
    node = None
    if value is not _MISSING:
        # ruamel.yaml hangs the lines after a component (blank, comments) on its last
        # value, and would write them again with it: in a splice they stay in the text.
        # A copy read anew, not copy.deepcopy: ruamel.yaml's CommentedSeq.__deepcopy__
        # copies the list's attributes once per item, which is quadratic (a component
        # holding a list of 2,000 took 8 s, one of 20,000 a quarter of an hour).
        again = y.load(text)
        trimmed = again[section][name] if old_node is not _MISSING else _MISSING
        _drop_tail(trimmed)
        node = _merge(trimmed, old_plain, value)
    spliced = _splice(text, y, doc, indent, section, name, node)
    if spliced is not None:
        return spliced
    if value is not _MISSING:
        node = _merge(old_node, old_plain, value)
    # Flow style, an empty section, a layout we do not splice: ruamel.yaml writes it all.
    if not isinstance(components, CommentedMap):
        components = doc[section] = CommentedMap()
    if value is _MISSING:
        del components[name]
    else:
        components[_key(name)] = node
    out = io.StringIO()
    y.dump(doc, out)
    return out.getvalue()


def _component_indent(doc: CommentedMap) -> int | None:
    """The column of the component names in the file's block sections (None: none)."""
    for section in SECTIONS:
        components = doc.get(section)
        if isinstance(components, CommentedMap) and components and not components.fa.flow_style():
            return int(components.lc.key(next(iter(components)))[1])
    return None


def _splice(
    text: str, y: YAML, doc: CommentedMap, indent: int, section: str, name: str, node: Any
) -> str | None:
    """The text with only the component's lines replaced (node None: removed); None when
    the file's layout is not one this can do line by line."""
    lines = yaml_lines(text)
    if doc.fa.flow_style():
        return None
    # A document end marker (`...`, which YAML allows after the last value) closes the
    # content: what is added goes before it. After it, the edit began a second document,
    # and every edit of a file ending so was refused as not reading back.
    closing = next((i for i, line in enumerate(lines) if _DOC_END.match(line)), len(lines))
    components = doc.get(section, _MISSING)
    if components is _MISSING:  # no such section yet: append it
        if node is None:
            return None
        chunk = _dump(y, {section: {name: node}})
        if closing and not lines[closing - 1].endswith("\n"):
            lines[closing - 1] += "\n"
        return "".join(lines[:closing]) + chunk + "".join(lines[closing:])
    if doc.lc.key(section)[1] != 0:
        return None
    section_line = doc.lc.key(section)[0]
    # The section's own line, when it is `sinks:` or `sinks: {}` (a comment may follow).
    head = re.fullmatch(
        rf"({re.escape(section)}:)[ \t]*(?:\{{\}})?[ \t]*(#.*)?\n?", lines[section_line]
    )

    def section_head(empty: bool) -> str:
        assert head is not None
        comment = f"  {head[2]}" if head[2] else ""
        return f"{head[1]}{' {}' if empty else ''}{comment}\n"

    if not components and head and node is not None:  # `sinks:` or `sinks: {}`: fill it
        chunk = _dump(y, {section: {name: node}}).split("\n", 1)[1]
        lines[section_line] = section_head(empty=False)
        return "".join(lines[: section_line + 1]) + chunk + "".join(lines[section_line + 1 :])
    if not isinstance(components, CommentedMap) or not components or components.fa.flow_style():
        return None
    keys = list(components)
    columns = {components.lc.key(k)[1] for k in keys}
    if columns != {indent}:
        return None
    later = [doc.lc.key(k)[0] for k in doc if doc.lc.key(k)[0] > section_line]
    section_end = min(later) if later else closing

    def span(index: int) -> tuple[int, int, int]:
        """Where the component's lines start and end, and where the lines after it that
        belong to what follows (blank, comments) end."""
        start = components.lc.key(keys[index])[0]
        end = components.lc.key(keys[index + 1])[0] if index + 1 < len(keys) else section_end
        return start, _trim(lines, start, end, indent), end

    tail: list[str] = []
    if name in components:
        index = keys.index(name)
        start, end, after = span(index)
        if node is None:
            if len(keys) == 1:  # the section is left empty: `sinks: {}`
                if head is None:
                    return None
                lines[section_line] = section_head(empty=True)
            return "".join(lines[:start] + lines[end:])
        tail = lines[end:after]  # see _drop_tail; in case a comment escaped it
    else:
        if node is None:
            return None
        start = end = span(len(keys) - 1)[1]
    chunk_lines = yaml_lines(_dump(y, {section: {name: node}}))[1:]
    chunk_lines = _without_block(chunk_lines, [t for t in tail if t.strip()])
    chunk = "".join(chunk_lines[: _trim(chunk_lines, 0, len(chunk_lines), indent)])
    if start > 0 and not lines[start - 1].endswith("\n"):
        lines[start - 1] += "\n"
    return "".join(lines[:start]) + chunk + "".join(lines[end:])


_DOC_END = re.compile(r"\.\.\.(?:[ \t]|\r|\n|\Z)")  # at a line's start: no value starts so


def yaml_lines(text: str) -> list[str]:
    """`text` cut into lines as ruamel.yaml numbers them: after a \\n or a lone \\r (not
    str.splitlines, which also cuts at \\f, NEL, U+2028 and more)."""
    return _LINE.findall(text)


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _drop_tail(node: Any) -> None:
    """Cut the comment lines ruamel.yaml keeps after the last value under `node` down
    to that value's own inline comment."""
    while isinstance(node, CommentedMap | CommentedSeq) and node:
        last: Any = next(reversed(node)) if isinstance(node, CommentedMap) else len(node) - 1
        slots = node.ca.items.get(last)
        where = 2 if isinstance(node, CommentedMap) else 0
        token = slots[where] if slots and len(slots) > where else None
        if isinstance(token, CommentToken):
            own = token.value.split("\n", 1)[0]
            if own.strip():
                token.value = own + "\n"
            else:
                slots[where] = None
        node = node[last]


def _without_block(lines: list[str], block: list[str]) -> list[str]:
    """`lines` less the last run of lines that equal `block` (blank lines aside)."""
    if not block:
        return lines
    filled = [i for i, line in enumerate(lines) if line.strip()]
    for n in range(len(filled) - len(block), -1, -1):
        run = filled[n : n + len(block)]
        if [lines[i] for i in run] == block:
            drop = set(range(run[0], run[-1] + 1))
            return [line for i, line in enumerate(lines) if i not in drop]
    return lines


def _trim(lines: list[str], start: int, end: int, indent: int) -> int:
    """`end` moved up past the blank lines and the comment lines indented `indent` or
    less: they belong to what follows the component, not to it."""
    while end > start + 1:
        line = lines[end - 1]
        stripped = line.lstrip(" ")
        if stripped.strip() and not (
            stripped.startswith("#") and len(line) - len(stripped) <= indent
        ):
            break
        end -= 1
    return end


def _dump(y: YAML, data: dict[str, Any]) -> str:
    wrapper = CommentedMap()
    for key, value in data.items():
        inner = CommentedMap()
        for k, v in value.items():
            inner[_key(k)] = v
        wrapper[key] = inner
    out = io.StringIO()
    y.dump(wrapper, out)
    return out.getvalue()


def _merge(old: Any, old_plain: Any, new: Any) -> Any:
    """The node to write for `new`: the old node changed in place where it can be, so
    that unchanged values keep their form and the keys their order; new values made
    ready for ruamel.yaml (a string the loader would read as another type is quoted)."""
    if isinstance(new, dict):
        if not isinstance(old, CommentedMap):
            return _convert(new)
        plain_map = old_plain if isinstance(old_plain, dict) else {}
        for key in [k for k in old if k not in new]:
            del old[key]
        for key, value in new.items():
            merged = _merge(old.get(key, _MISSING), plain_map.get(key, _MISSING), value)
            if key in old:
                old[key] = merged  # the key as the user wrote it
            else:
                old[_key(key)] = merged
        return old
    if isinstance(new, list):
        if isinstance(old, CommentedSeq) and isinstance(old_plain, list) and len(old) == len(new):
            for i, value in enumerate(new):
                old[i] = _merge(old[i], old_plain[i], value)
            return old
        seq = _convert(new)
        if isinstance(old, CommentedSeq):
            seq.fa.set_flow_style() if old.fa.flow_style() else seq.fa.set_block_style()
        return seq
    if old is not _MISSING and _same(old_plain, new):
        return old  # as the user wrote it
    return _convert(new)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _convert(value: Any) -> Any:
    if isinstance(value, dict):
        node = CommentedMap()
        for k, v in value.items():
            node[_key(str(k))] = _convert(v)
        return node
    if isinstance(value, list):
        seq = CommentedSeq(_convert(v) for v in value)
        if all(not isinstance(v, dict | list) for v in value):
            seq.fa.set_flow_style()  # `sinks: [a, b]`, as people write them
        return seq
    if isinstance(value, str) and any(c in value for c in _YAML_11_BREAKS):
        # YAML 1.1 (the loader) breaks lines there, 1.2 (ruamel.yaml) does not and wrote
        # them raw: NEL read back as a space. Double quotes write them as escapes.
        return DoubleQuotedScalarString(value)
    if isinstance(value, str) and _reads_as(value) != _STR_TAG:
        return SingleQuotedScalarString(value)  # `yes`, `1_000`, `2024-01-01` stay text
    return value


_YAML_11_BREAKS = "\x85\u2028\u2029"


def _key(name: str) -> str:
    """A key to write: quoted when the loader would read it plain as another type
    (ruamel.yaml, YAML 1.2, writes `yes:` and `on:` plain; YAML 1.1 reads them as true)."""
    return SingleQuotedScalarString(name) if _reads_as(name) != _STR_TAG else name


def _reads_as(text: str) -> str:
    """The tag the loader (PyYAML's YAML 1.1, and 1.2's `1e3` floats) gives `text` plain."""
    return plain_tag(text)


def _verify(
    old_text: str, new_text: str, source: str, section: str, name: str, expected: Any
) -> None:
    """The new text reads (with the loader's own parser) as the old one with exactly this
    change: a guard against a writer that says something else than was meant."""
    old, _ = parse_text(old_text, source)
    want = copy.deepcopy(old)
    components = want.get(section)
    if not isinstance(components, dict):
        components = want[section] = {}
    if expected is _MISSING:
        components.pop(name, None)
    else:
        components[name] = expected
    try:
        new, _ = parse_text(new_text, source)
    except ConfigError:
        new = None
    # What the loader would refuse the file for: its size in bytes (read back, it is
    # counted in characters), and, when it did not read back, its values and depth
    # (counted here on `want`, where an alias's values are counted again: only then).
    problem = past_limits(new_text, want if new is None else None)
    if problem:  # not the writer's mistake: the loader would refuse the file
        raise ConfigError(f"{source}: {section}.{name}: {problem}; nothing was written")
    if new != want:
        anchors = sorted(set(_ANCHOR.findall(old_text)) & set(_ALIAS.findall(old_text)))
        if anchors:
            # A YAML alias reads the anchor's very node: the edit reached it too.
            tied = ", ".join(f"&{a} and *{a}" for a in anchors)
            raise ConfigError(
                f"{source}: {section}.{name}: the file's YAML anchors and aliases ({tied}) tie"
                " this component to other keys, which the edit would change too; nothing was"
                " written: write the values out in place of the aliases, or edit by hand"
            )
        raise ConfigError(
            f"{source}: {section}.{name}: the edited file would not read back as sent;"
            " nothing was written (please report this, with the value sent)"
        )


# YAML anchors (`&base`) and aliases (`*base`), as a value begins (after `: `, `- `, `[`,
# `,` or `{`, or alone on a line), not a `*` or `&` inside a plain value.
_ANCHOR = re.compile(r"(?:^|[\s\[{,])&([^\s\[\]{},]+)", re.MULTILINE)
_ALIAS = re.compile(r"(?:^|[\s\[{,])\*([^\s\[\]{},]+)", re.MULTILINE)
