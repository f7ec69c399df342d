"""Writes the reference docs and the JSON Schema from the config classes.

The config classes carry their docs (`Doc` marks: a description and an example per
key) and their bounds (`Range` marks), see `gateway.config.schema`. From them:

- `pages(components)`: one Markdown page per component (key, type, default, bounds,
  description, and a sample config made of the keys' examples) plus `config.md` for
  the top-level sections and `README.md` as the index; `edge-stream docs` writes them
  into docs/reference/, and a test fails when the committed pages differ.
- `json_schema(components)`: a JSON Schema (draft 2020-12) of the whole config file,
  components told apart by their `type`, for editors (VS Code's YAML extension) to
  complete and check gateway.yaml; `edge-stream schema` prints it.

`components` is what the registry knows (`gateway.registry.entries()`): anything with
`kind`, `type`, `cls` (whose `Config` is the config class) and `module`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal, Protocol, Union, get_args, get_origin

import yaml

from gateway.config.model import Config, SinkConfig
from gateway.config.schema import DURATION, SIZE, Component, Doc, Range, fields, marks
from gateway.config.units import duration_text, size_text

KINDS = ("source", "processor", "sink")
SECTIONS = (
    "gateway", "buffer", "mqtt", "web", "routes", "remote_config", "status", "alerts", "state"
)  # fmt: skip
_DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"
_SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$"
_GENERATED = (
    "Written by `edge-stream docs` from the config schema (the `Doc` and `Range` marks"
    " on the config classes); do not edit it here."
)


class Described(Protocol):
    """A registry entry: a component's kind, type, class (with `Config`) and module."""

    @property
    def kind(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def cls(self) -> Any: ...
    @property
    def module(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Key:
    """One documented key: its dotted path and what the reference says about it."""

    path: str
    type: str
    default: str
    bounds: str
    description: str


def _split(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """A type without its marks, and the marks."""
    if get_origin(tp) is Annotated:
        return get_args(tp)[0], marks(tp)
    return tp, ()


def _doc(tp: Any) -> Doc | None:
    return next((m for m in _split(tp)[1] if isinstance(m, Doc)), None)


def _optional(tp: Any) -> Any:
    """`T` for `T | None`, else `tp`."""
    if get_origin(tp) in (Union, types.UnionType):
        others = [a for a in get_args(tp) if a is not type(None)]
        if len(others) == 1:
            return others[0]
    return tp


def _unit(tp: Any) -> Any:
    """DURATION or SIZE if `tp` (or `tp | None`) is a duration or a size, else None."""
    base, found = _split(_optional(_split(tp)[0]))
    for mark in (*_split(tp)[1], *found, *_split(base)[1]):
        if mark is DURATION or mark is SIZE:
            return mark
    return None


# ---- text -------------------------------------------------------------------------------


def _value_text(value: Any, unit: Any) -> str:
    if unit is SIZE and isinstance(value, int | float):
        return size_text(value)
    if unit is DURATION and isinstance(value, int | float):
        return duration_text(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value) if value == "" or value.strip() != value else value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def type_text(tp: Any) -> str:
    """How the reference names a key's type."""
    base, found = _split(tp)
    for mark in found:
        if mark is DURATION:
            return "duration"
        if mark is SIZE:
            return "size"
        if isinstance(mark, Component):
            return f"{mark.kind} (by `type`)"
    origin = get_origin(base)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(base) if a is not type(None)]
        return " or ".join(type_text(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(f"`{_value_text(c, None)}`" for c in get_args(base))
    if origin is list:
        return f"list of {type_text(get_args(base)[0])}"
    if origin is dict:
        return f"mapping of names to {type_text(get_args(base)[1])}"
    if dataclasses.is_dataclass(base):
        return "mapping"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    return names.get(base, "any")


def _bounds_text(tp: Any) -> str:
    unit = _unit(tp)
    parts = []
    for mark in _split(tp)[1]:
        if isinstance(mark, Range):
            low = None if mark.low is None else _value_text(mark.low, unit)
            high = None if mark.high is None else _value_text(mark.high, unit)
            if low is not None and high is not None and mark.above:
                parts.append(f"> {low}, ≤ {high}")
            elif low is not None and high is not None:
                parts.append(f"{low} to {high}")
            elif low is not None:
                parts.append(f"{'>' if mark.above else '≥'} {low}")
            elif high is not None:
                parts.append(f"≤ {high}")
    return "; ".join(parts)


def _default_text(field: dataclasses.Field[Any], tp: Any) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if not isinstance(value, str | int | float | list | tuple | dict):
        return ""  # None, a mapping's defaults (below it), or a value that stands for unset
    return f"`{_value_text(value, _unit(tp))}`"


def _nested(tp: Any) -> tuple[str, type] | None:
    """(how the keys below are written, the class) for a key holding config mappings."""
    base = _optional(_split(tp)[0])
    if dataclasses.is_dataclass(base):
        return ".", base  # type: ignore[return-value]
    origin = get_origin(base)
    if origin is dict:
        item = _optional(_split(get_args(base)[1])[0])
        if dataclasses.is_dataclass(item):
            return ".<name>.", item  # type: ignore[return-value]
    if origin is list:
        item = _optional(_split(get_args(base)[0])[0])
        if dataclasses.is_dataclass(item):
            return "[].", item  # type: ignore[return-value]
    return None


def _ordered(cls: type) -> list[str]:
    """A class's keys in order; a sink's own keys before the delivery keys all share."""
    names = list(fields(cls)[1])
    if issubclass(cls, SinkConfig) and cls is not SinkConfig:
        shared = [n for n in fields(SinkConfig)[1] if n != "type"]
        names = [n for n in names if n not in shared] + shared
    return names


def keys(cls: type, prefix: str = "", shown: dict[type, str] | None = None) -> Iterator[Key]:
    """Every key of a config class, those of the mappings below it included; a class
    met again (a device's registers, a group of conditions) refers to the first."""
    shown = {cls: prefix} if shown is None else shown
    hints, fields_ = fields(cls)
    for name in _ordered(cls):
        tp = hints[name]
        doc = _doc(tp)
        nested = _nested(tp)
        description = doc.text if doc else ""
        path = f"{prefix}{name}"
        again = nested is not None and nested[1] in shown
        if nested is not None and again and description:
            first = shown[nested[1]]
            where = f"`{first.rstrip('.')}`" if first else "this page"
            description += f" Each takes the keys of {where}."
        yield Key(
            path,
            type_text(tp),
            _default_text(fields_[name], tp),
            _bounds_text(tp),
            description,
        )
        if nested is not None and not again:
            shown[nested[1]] = f"{path}{nested[0]}"
            yield from keys(nested[1], f"{path}{nested[0]}", shown)


def undocumented(cls: type) -> list[str]:
    """The keys of a config class (and below) that have no description."""
    return [k.path for k in keys(cls) if not k.description.strip()]


def sample(cls: type, type_name: str | None = None) -> dict[str, Any]:
    """A config made of the keys' examples (nested mappings included): the keys
    without an example are left out, so the examples of a class must build together."""
    out: dict[str, Any] = {} if type_name is None else {"type": type_name}
    hints, fields_ = fields(cls)
    for name in fields_:
        if name == "type" and type_name is not None:
            continue
        doc = _doc(hints[name])
        if doc is not None and doc.has_example:
            out[name] = doc.example
            continue
        base = _optional(_split(hints[name])[0])
        if dataclasses.is_dataclass(base):
            inner = sample(base)  # type: ignore[arg-type]
            if inner:
                out[name] = inner
    return out


# ---- pages ------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: Iterable[Key], type_name: str | None = None) -> list[str]:
    lines = [
        "| Key | Type | Default | Bounds | Description |",
        "|-----|------|---------|--------|-------------|",
    ]
    for key in rows:
        if key.path == "type" and type_name is not None:
            lines.append(f"| `type` | string | required | | `{type_name}` |")
            continue
        lines.append(
            f"| `{_cell(key.path)}` | {_cell(key.type)} | {_cell(key.default)}"
            f" | {_cell(key.bounds)} | {_cell(key.description)} |"
        )
    return lines


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=88).rstrip("\n")


def _summary(module: str) -> str:
    doc = sys.modules[module].__doc__ if module in sys.modules else None
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""


def page_name(kind: str, type_name: str) -> str:
    return f"{kind}-{type_name}.md"


def example_config(entry: Described) -> dict[str, Any]:
    """The sample config of a component, placed where it goes in a config file: a
    processor in a route, with the sink the route names (a page showed `processors:` at
    the top of the file, which check-config refused as an unknown key)."""
    conf = sample(entry.cls.Config, entry.type)
    if entry.kind == "processor":
        route = {"match": "#", "processors": [conf], "sinks": ["my_file"]}
        return {"routes": {"my_route": route}, "sinks": {"my_file": {"type": "file"}}}
    return {f"{entry.kind}s": {f"my_{entry.type}": conf}}


def component_page(entry: Described) -> str:
    cls = entry.cls.Config
    module = sys.modules.get(entry.module)
    file = getattr(module, "__file__", None) or ""
    path = entry.module.replace(".", "/")
    where = f"{path}/__init__.py" if file.endswith("__init__.py") else f"{path}.py"
    lines = [
        f"# `{entry.type}` {entry.kind}",
        "",
        _summary(entry.module),
        "",
        f"The user guide is the docstring of `{where}`. {_GENERATED}",
        "",
    ]
    if issubclass(cls, SinkConfig):
        lines += [
            "`batch`, `retry`, `rate_limit` and `overflow` are the delivery keys every sink has.",
            "",
        ]
    lines += _table(keys(cls), entry.type)
    lines += ["", "## Example", "", "```yaml", _yaml(example_config(entry)), "```", ""]
    return "\n".join(lines)


def config_page(components: Iterable[Described]) -> str:
    lines = [
        "# The config file: top-level sections",
        "",
        "One YAML (or JSON) file; sources, routes, sinks and alert rules are mappings keyed"
        " by the name you give them (letters, digits, `_` and `-`, at most 128). Durations"
        " read `250ms`,"
        " `10s`, `5m`; sizes `512MiB`, `1GiB`; a number without a unit is seconds for a"
        " duration, bytes for a size."
        f" {_GENERATED}",
        "",
    ]
    hints, _ = fields(Config)
    for section in SECTIONS:
        doc = _doc(hints[section])
        lines += [f"## `{section}`", "", doc.text if doc else "", ""]
        lines += _table(k for k in keys(Config) if k.path.startswith(f"{section}."))
        lines.append("")
    lines += ["## Components", ""]
    by_kind: dict[str, list[Described]] = {}
    for entry in components:
        by_kind.setdefault(entry.kind, []).append(entry)
    for kind in KINDS:
        named = ", ".join(
            f"[`{e.type}`]({page_name(e.kind, e.type)})" for e in by_kind.get(kind, [])
        )
        lines.append(f"- {kind}s: {named}")
    lines += [
        "",
        "## Example",
        "",
        "```yaml",
        _yaml(_config_sample(hints, by_kind.get("sink", []))),
        "```",
        "",
    ]
    return "\n".join(lines)


def _config_sample(hints: dict[str, Any], sinks: list[Described]) -> dict[str, Any]:
    """The sections' examples, with the sinks their routes name (an example route sent
    to a sink the example lacked: check-config refused the example)."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        out[section] = _section_sample(hints[section])
        if section != "routes":
            continue
        named = {n for route in out[section].values() for n in route.get("sinks", [])}
        entry = next((e for e in sinks if e.type == "postgres"), None)
        if named and entry is not None:
            out["sinks"] = {n: sample(entry.cls.Config, entry.type) for n in sorted(named)}
    return out


def _section_sample(tp: Any) -> dict[str, Any]:
    nested = _nested(tp)
    assert nested is not None
    if nested[0] == ".<name>.":
        return {"telemetry": sample(nested[1])}
    return sample(nested[1])


def pages(components: Iterable[Described]) -> dict[str, str]:
    """Every reference page, by file name: README.md (the index), config.md, and one
    page per component."""
    entries = sorted(components, key=lambda e: (KINDS.index(e.kind), e.type))
    out = {"config.md": config_page(entries)}
    index = [
        "# Configuration reference",
        "",
        f"{_GENERATED} `edge-stream schema` prints the same as a JSON Schema.",
        "",
        f"- [Top-level sections](config.md): {', '.join(SECTIONS)}",
    ]
    for entry in entries:
        name = page_name(entry.kind, entry.type)
        out[name] = component_page(entry)
        index.append(f"- [{entry.kind} `{entry.type}`]({name}): {_summary(entry.module)}")
    out["README.md"] = "\n".join([*index, ""])
    return out


# ---- JSON Schema ------------------------------------------------------------------------


class _SchemaWriter:
    def __init__(self, components: Iterable[Described]) -> None:
        self.components: dict[str, list[Described]] = {}
        for entry in components:
            self.components.setdefault(entry.kind, []).append(entry)
        self.defs: dict[str, Any] = {}

    def of(self, tp: Any) -> dict[str, Any]:
        base, found = _split(tp)
        for mark in found:
            if mark is DURATION or mark is SIZE:
                number: dict[str, Any] = {"type": "number" if mark is DURATION else "integer"}
                number["minimum"] = 0
                for bound in found:
                    if isinstance(bound, Range):
                        number.update(_range_schema(bound))
                pattern = _DURATION_PATTERN if mark is DURATION else _SIZE_PATTERN
                return {"anyOf": [number, {"type": "string", "pattern": pattern}]}
            if isinstance(mark, Component):
                return self.component(mark.kind)
        schema = self.plain(base)
        for mark in found:
            if isinstance(mark, Range):
                schema.update(_range_schema(mark))
        return schema

    def plain(self, tp: Any) -> dict[str, Any]:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = get_args(tp)
            options = [self.of(a) for a in args if a is not type(None)]
            if type(None) in args:
                options.append({"type": "null"})
            return options[0] if len(options) == 1 else {"anyOf": options}
        if origin is Literal:
            return {"enum": list(get_args(tp))}
        if origin is list:
            item = get_args(tp)[0]
            array = {"type": "array", "items": self.of(item)}
            if _split(item)[0] is str:  # one string stands for a list of one
                return {"anyOf": [self.of(item), array]}
            return array
        if origin is dict:
            return {"type": "object", "additionalProperties": self.of(get_args(tp)[1])}
        if dataclasses.is_dataclass(tp):
            return self.ref(tp)  # type: ignore[arg-type]
        if tp is str:  # a number is taken as its text
            return {"type": ["string", "number"]}
        names = {int: "integer", float: "number", bool: "boolean"}
        return {"type": names[tp]} if tp in names else {}

    def ref(self, cls: type, type_name: str | None = None) -> dict[str, Any]:
        name = cls.__name__
        if name not in self.defs:
            self.defs[name] = {}  # taken: a class that holds itself refers to it
            self.defs[name] = self.object(cls, type_name)
        return {"$ref": f"#/$defs/{name}"}

    def object(self, cls: type, type_name: str | None) -> dict[str, Any]:
        hints, fields_ = fields(cls)
        properties: dict[str, Any] = {}
        required = []
        for name, field in fields_.items():
            tp = hints[name]
            if name == "type" and type_name is not None:
                prop: dict[str, Any] = {"const": type_name}
            else:
                prop = dict(self.of(tp))
            doc = _doc(tp)
            if doc is not None:
                prop["description"] = doc.text
                if doc.has_example:
                    prop["examples"] = [doc.example]
            if field.default is not dataclasses.MISSING and _jsonable(field.default):
                prop["default"] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                value = field.default_factory()
                if _jsonable(value):
                    prop["default"] = value
            elif field.default is dataclasses.MISSING:
                required.append(name)
            properties[name] = prop
        out: dict[str, Any] = {"type": "object"}
        summary = (cls.__doc__ or "").strip().split("\n\n")[0]
        if summary:
            out["description"] = " ".join(summary.split())
        out["properties"] = properties
        out["additionalProperties"] = False
        if required:
            out["required"] = required
        return out

    def component(self, kind: str) -> dict[str, Any]:
        name = f"{kind}s"
        if name not in self.defs:
            entries = self.components.get(kind, [])
            self.defs[name] = {}
            self.defs[name] = {
                "type": "object",
                "description": f"A {kind}; its `type` picks its keys.",
                "required": ["type"],
                "properties": {"type": {"enum": [e.type for e in entries]}},
                "allOf": [
                    {
                        "if": {"properties": {"type": {"const": e.type}}, "required": ["type"]},
                        "then": self.ref(e.cls.Config, e.type),
                    }
                    for e in entries
                ],
            }
        return {"$ref": f"#/$defs/{name}"}


def _range_schema(bound: Range) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if bound.low is not None:
        out["exclusiveMinimum" if bound.above else "minimum"] = bound.low
    if bound.high is not None:
        out["maximum"] = bound.high
    return out


def _jsonable(value: Any) -> bool:
    if isinstance(value, str | bool | int | float) or value is None:
        return True
    if isinstance(value, list | tuple):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


def json_schema(components: Iterable[Described]) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of the whole config file."""
    writer = _SchemaWriter(components)
    root = writer.object(Config, None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Edge Stream gateway config",
        **root,
        "$defs": dict(sorted(writer.defs.items())),
    }
