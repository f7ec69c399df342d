"""Reshapes a JSON object: sets, renames, drops and scales fields and can change the topic.

The content must be a JSON object; anything else goes to the dead letters
with the reason. The result is a new FlowFile (a child of the input) with
compact JSON content and, if `topic` is given, a new topic.

Keys (all optional, at least one needed)
  type: transform
  rename: {t: temp, meta.dev: device}     move fields (a missing field is skipped)
  drop: [debug, meta.raw]                 remove fields (a missing field is skipped)
  scale: {temp: 0.1}                      multiply a number field
  offset: {temp: -40}                     add to a number field; with scale the
                                          result is value * scale + offset
  set: {site: "{topic.1}", unit: C}       set fields (templates allowed, see below)
  topic: "plant/{topic.1}/clean"          the output topic (a template)

They apply in this order: rename, drop, scale/offset, set; so drop, scale,
offset and set name fields as they are after renaming. rename takes every field
out before it puts any back, so `{a: b, b: a}` swaps two fields. Two renames to
the same field give one name to a field devices send under either
(`{t: temp, temperature: temp}`); when both are there, the later one wins. A
target put inside one put before it joins it (`{meta: m, ts: m.time}`), and so
does a `set` key inside an object set before it.

Refused when the config is loaded (each lost a value or dead-lettered every FlowFile):
- a rename target holding one put before it (write it first);
- a rename of a field inside one renamed before it (write it first);
- a `set` key holding one set before it (write it first);
- a `set` key inside a value set before it that is no object: a number, a
  list, or text, even text made from the topic or an attribute (only an object
  or a lone `{field.NAME}` can hold it);
- drop, scale or offset naming a field rename has moved away (name its new
  place);
- scale or offset naming a field drop removes.

A field path `a.b` reaches into nested objects (set creates the objects it
needs); in scale and offset a number indexes an array (`values.0`). A field
named in scale or offset that is missing is skipped; one that is not a number
(true/false is not a number) dead-letters the FlowFile.

Templates
  {topic}            the whole input topic
  {topic.N}          topic level N, counting from 0; -1 is the last level
  {attributes.KEY}   an attribute, e.g. {attributes.mqtt.qos}
  {field.NAME}       a field of the input, e.g. {field.meta.site}
  {{ and }}          a literal { and }

Templates always read the input as it arrived, before any change. A value
that is exactly one placeholder keeps its JSON type (`"{field.temp}"` copies
the number); in longer text values are written as JSON (`"t={field.temp}"`
gives "t=21.5"). A placeholder whose level, attribute or field is missing
dead-letters the FlowFile, and so does a topic template that yields an
invalid topic (e.g. a field value holding `+` or `#`). Unknown placeholders
and invalid topics are refused when the config is loaded.

Example
  routes:
    clean:
      match: "raw/+/temp"
      processors:
        - type: transform
          rename: {t: temp}
          scale: {temp: 0.1}
          offset: {temp: -40}
          set: {device: "{topic.1}", qos: "{attributes.mqtt.qos}"}
          drop: [raw]
          topic: "clean/{topic.1}/temperature"
      sinks: [warehouse]
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from gateway.config.schema import Doc, did_you_mean
from gateway.core.component import Context, Processor
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile
from gateway.core.topics import validate_topic
from gateway.processors.json import (
    MISSING,
    array_index,
    check_path,
    decode,
    decode_object,
    encode,
    kind,
    level_number,
    lookup,
    shown,
    split_path,
)

PLACEHOLDERS = ("topic", "topic.N", "attributes.KEY", "field.NAME")
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class Env:
    """What templates read for one FlowFile: the input as it arrived."""

    __slots__ = ("flowfile", "levels", "obj")

    def __init__(self, flowfile: FlowFile, obj: Any) -> None:
        self.flowfile = flowfile
        self.obj = obj
        self.levels: list[str] | None = None


Getter = Callable[[Env], Any]


def _topic(env: Env) -> str:
    return env.flowfile.topic


def _level_getter(n: int, name: str) -> Getter:
    def get(env: Env) -> str:
        levels = env.levels
        if levels is None:
            levels = env.levels = env.flowfile.topic.split("/")
        try:
            return levels[n]
        except IndexError:
            raise PermanentError(
                f"topic {env.flowfile.topic!r} has no level {n} (needed by {{{name}}})"
            ) from None

    return get


def _attribute_getter(key: str, name: str) -> Getter:
    def get(env: Env) -> str:
        value = env.flowfile.attributes.get(key)
        if value is None:
            raise PermanentError(f"attribute {key!r} is missing (needed by {{{name}}})")
        return value

    return get


def _field_getter(path: str, name: str) -> Getter:
    parts = split_path(path)

    def get(env: Env) -> Any:
        value = lookup(env.obj, parts)
        if value is MISSING:
            raise PermanentError(f"field {path!r} is missing (needed by {{{name}}})")
        return value

    return get


def _placeholder(name: str) -> Getter:
    """The getter for one placeholder name, or ValueError saying why it is unknown."""
    head, dot, rest = name.partition(".")
    if name == "topic":
        return _topic
    level = level_number(rest) if head == "topic" and dot else None
    if level is not None:
        return _level_getter(level, name)
    if head == "attributes" and rest:
        return _attribute_getter(rest, name)
    if head == "field" and rest and check_path(rest) is None:
        return _field_getter(rest, name)
    known = ("topic", "attributes", "field")
    hint = did_you_mean(head, known) if head not in known else ""
    allowed = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
    raise ValueError(f"unknown placeholder {{{name}}}{hint}; use {allowed}")


def _text(value: Any) -> str:
    return value if type(value) is str else encode(value).decode()


class Template:
    """A string with placeholders, parsed once when the config is loaded."""

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[str | Getter] = []
        literal: list[str] = []
        pos = 0
        for m in _TOKEN.finditer(text):
            literal.append(text[pos : m.start()])
            pos = m.end()
            token = m.group(0)
            if token in ("{{", "}}"):
                literal.append(token[0])
            elif m.group(1) is not None:
                if any(literal):
                    parts.append("".join(literal))
                literal = []
                parts.append(_placeholder(m.group(1).strip()))
            else:
                raise ValueError(
                    f"unmatched {token!r} in {text!r} (write {token * 2} for a literal)"
                )
        literal.append(text[pos:])
        if any(literal):
            parts.append("".join(literal))
        self.parts = parts
        self.constant: str | None = None
        self.single: Getter | None = None
        if not parts:
            self.constant = ""
        elif len(parts) == 1 and isinstance(parts[0], str):
            self.constant = parts[0]
        elif len(parts) == 1 and not isinstance(parts[0], str):
            self.single = parts[0]

    def sample(self) -> str:
        """The text with every placeholder replaced by 'x' (to validate topics)."""
        return "".join(p if isinstance(p, str) else "x" for p in self.parts)

    def render(self, env: Env) -> str:
        """The text with every placeholder filled in."""
        return "".join(p if isinstance(p, str) else _text(p(env)) for p in self.parts)


def compile_value(value: Any) -> Getter:
    """A function making a fresh copy of a `set` value, with templates filled in."""
    if isinstance(value, str):
        template = Template(value)
        if template.constant is not None:
            constant = template.constant
            return lambda env: constant
        single = template.single
        if single is not None:
            # A whole value copied from the input; copy containers so that later
            # changes to the output object cannot reach back into it.
            return lambda env: _fresh(single(env))
        return template.render
    if isinstance(value, dict):
        items = [(str(k), compile_value(v)) for k, v in value.items()]
        return lambda env: {k: get(env) for k, get in items}
    if isinstance(value, list | tuple):
        getters = [compile_value(v) for v in value]
        return lambda env: [get(env) for get in getters]
    return lambda env: value


def _fresh(value: Any) -> Any:
    # Through JSON, not copy.deepcopy: deepcopy spends Python frames on each level and
    # failed (RecursionError) on an array 400 deep, which the decoder had taken.
    return decode(encode(value)) if type(value) in (dict, list) else value


def _not_finite(value: Any) -> bool:
    """True when a `set` value holds NaN or an infinity, anywhere inside it."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_not_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_not_finite(v) for v in value)
    return False


def _templates_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _templates_in(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _templates_in(v)


@dataclass(frozen=True)
class TransformProcessorConfig:
    """Keys of the `transform` processor."""

    type: Annotated[str, Doc("The kind of processor.")]
    rename: Annotated[
        dict[str, str],
        Doc(
            "Move fields, old path to new path (a missing field is skipped; of two moved to"
            " one path, the later one wins when both are there).",
            example={"t": "temp"},
        ),
    ] = field(default_factory=dict)
    drop: Annotated[list[str], Doc("Remove fields (a missing field is skipped).")] = field(
        default_factory=list
    )
    scale: Annotated[
        dict[str, int | float],
        Doc(
            "Multiply a number field (a missing one is skipped; one that is not a number"
            " dead-letters the FlowFile).",
            example={"temp": 0.1},
        ),
    ] = field(default_factory=dict)
    offset: Annotated[
        dict[str, int | float],
        Doc("Add to a number field; with scale the result is value * scale + offset."),
    ] = field(default_factory=dict)
    set: Annotated[
        dict[str, Any],
        Doc(
            "Set fields, after rename, drop, scale and offset; a value may be a template:"
            " `{topic}`, `{topic.N}`, `{attributes.KEY}`, `{field.NAME}`, which read the"
            " input as it arrived (before any change); a missing one dead-letters the"
            " FlowFile, and a value that is one placeholder keeps its JSON type."
        ),
    ] = field(default_factory=dict)
    topic: Annotated[
        str | None, Doc("The output topic, a template like `set`'s (default: the input's topic).")
    ] = None

    def check(self) -> Iterator[tuple[str, str]]:
        if not (self.rename or self.drop or self.scale or self.offset or self.set or self.topic):
            yield "", "nothing to do: give at least one of rename, drop, scale, offset, set, topic"
        for old, new in self.rename.items():
            for path in (old, new):
                problem = check_path(path)
                if problem:
                    yield f"rename.{old}", problem
        for i, path in enumerate(self.drop):
            problem = check_path(path)
            if problem:
                yield f"drop.{i}", problem
        yield from self._check_overlaps()
        for key in ("scale", "offset"):
            for path, number in getattr(self, key).items():
                problem = check_path(path)
                if problem:
                    yield f"{key}.{path}", problem
                if not math.isfinite(number):
                    yield f"{key}.{path}", f"{number!r} is not a finite number"
        for path, value in self.set.items():
            problem = check_path(path)
            if problem:
                yield f"set.{path}", problem
            for text in _templates_in(value):
                try:
                    Template(text)
                except ValueError as err:
                    yield f"set.{path}", str(err)
            if _not_finite(value):  # every output would be dead-lettered for it
                yield f"set.{path}", "JSON has no NaN or infinity (.nan, .inf): give a number"
        if self.topic is not None:
            try:
                template = Template(self.topic)
            except ValueError as err:
                yield "topic", str(err)
            else:
                problem = validate_topic(template.sample())
                if problem:
                    yield "topic", f"{self.topic!r} does not make a valid topic: {problem}"

    def _check_overlaps(self) -> Iterator[tuple[str, str]]:
        """Fields that one key would write over another's, or that a key names after
        rename moved them away: each lost a value, or dead-lettered every FlowFile."""
        if any(check_path(p) for p in (*self.rename, *self.rename.values(), *self.set)):
            return  # reported above
        # A field put inside one put before it is fine (`{meta: m, ts: m.time}` moves ts
        # into the moved object); the same field, or one holding a field put before it,
        # overwrites that one.
        targets = [(name, split_path(to)) for name, to in self.rename.items()]
        for i, (name, to) in enumerate(targets):
            for earlier, earlier_to in targets[:i]:
                # The same field twice names one field sent under either name.
                if earlier_to != to and _within(earlier_to, to):
                    yield (
                        f"rename.{name}",
                        f"{'.'.join(to)!r} would overwrite what rename.{earlier} moved to"
                        f" {'.'.join(earlier_to)!r}: write rename.{name} before"
                        f" rename.{earlier}",
                    )
        sources = [split_path(name) for name in self.rename]
        for i, source in enumerate(sources):
            for first in sources[:i]:
                if source != first and _within(source, first):
                    text = ".".join(source)
                    yield (
                        f"rename.{text}",
                        f"rename.{'.'.join(first)} takes it away first, so {text!r} is"
                        " never there: write it before that one",
                    )
        paths = [(split_path(p), v) for p, v in self.set.items()]
        for i, (path, _) in enumerate(paths):
            for before, value in paths[:i]:
                where = f"set.{'.'.join(path)}"
                if _within(before, path):
                    yield (
                        where,
                        f"it would overwrite set.{'.'.join(before)}, set before it:"
                        f" write {where} first",
                    )
                elif _within(path, before) and not _may_hold(value):
                    yield (
                        where,
                        f"set.{'.'.join(before)}, set before it, is no object to hold it:"
                        " set it as an object, or name another field",
                    )
        renamed = [(split_path(old), split_path(new)) for old, new in self.rename.items()]
        named = [(f"drop.{i}", p) for i, p in enumerate(self.drop)]
        named += [(f"{k}.{p}", p) for k in ("scale", "offset") for p in getattr(self, k)]
        gone: set[str] = set()  # named after rename moved them (or malformed)
        for where, text in named:
            path = split_path(text)
            if check_path(text):
                gone.add(text)
                continue
            if any(_within(path, new) for _, new in renamed):
                continue
            for old, new in renamed:
                if _within(path, old):
                    moved = ".".join(new + path[len(old) :])
                    gone.add(text)
                    yield (
                        where,
                        f"rename moves {'.'.join(old)!r} to {'.'.join(new)!r} first, so"
                        f" {text!r} is never there: name it {moved!r}",
                    )
                    break
        dropped = [(d, split_path(d)) for d in self.drop if d not in gone]
        for key in ("scale", "offset"):
            for text in getattr(self, key):
                if text in gone:
                    continue
                path = split_path(text)
                drop = next((d for d, parts in dropped if _within(path, parts)), None)
                if drop is not None:
                    yield (
                        f"{key}.{text}",
                        f"drop removes {drop!r} first: {text!r} is never there; {key} it"
                        " in an earlier transform before dropping it, or take it out of drop",
                    )


def _may_hold(value: Any) -> bool:
    """Whether a `set` value is or may be an object (`{field.NAME}` alone may copy one;
    the topic and attributes are text)."""
    if isinstance(value, dict):
        return True
    if not isinstance(value, str):
        return False
    try:
        single = Template(value).single is not None
    except ValueError:
        return True  # reported already
    return single and value.strip("{} ").startswith("field.")


def _within(path: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    """Whether `path` is the field `outer` or a field inside it."""
    return path[: len(outer)] == outer


def _pop(obj: dict[str, Any], parts: tuple[str, ...]) -> Any:
    parent = lookup(obj, parts[:-1])
    if type(parent) is dict:
        return parent.pop(parts[-1], MISSING)
    return MISSING


def _put(obj: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    node = obj
    for i, part in enumerate(parts[:-1]):
        child = node.get(part, MISSING)
        if child is MISSING:
            child = node[part] = {}
        elif type(child) is not dict:
            where = ".".join(parts[: i + 1])
            raise PermanentError(
                f"cannot set field {'.'.join(parts)!r}: {where!r} is {kind(child)}, not an object"
            )
        node = child
    node[parts[-1]] = value


class TransformProcessor(Processor):
    """Applies rename, drop, scale/offset and set to a JSON object; may change the topic."""

    Config = TransformProcessorConfig

    def __init__(self, config: TransformProcessorConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: TransformProcessorConfig = config
        self._rename = [(split_path(a), split_path(b)) for a, b in config.rename.items()]
        self._drop = [split_path(p) for p in config.drop]
        numbers: dict[str, list[int | float]] = {}
        for path, factor in config.scale.items():
            numbers[path] = [factor, 0]
        for path, addend in config.offset.items():
            numbers.setdefault(path, [1, 0])[1] = addend
        self._numbers = [(path, split_path(path), f, a) for path, (f, a) in numbers.items()]
        self._set = [(split_path(p), compile_value(v)) for p, v in config.set.items()]
        self._topic: Template | None = None
        self._fixed_topic: str | None = None
        if config.topic is not None:
            template = Template(config.topic)
            if template.constant is not None:
                self._fixed_topic = template.constant
            else:
                self._topic = template

    def process(self, flowfile: FlowFile) -> list[FlowFile]:
        obj = decode_object(flowfile.content, "transform")
        env = Env(flowfile, obj)
        # Read everything templates need before the object changes.
        topic = self._fixed_topic
        if self._topic is not None:
            topic = self._topic.render(env)
            problem = validate_topic(topic)
            if problem:
                raise PermanentError(
                    f"topic {topic!r} made from {self._topic.text!r} is not valid: {problem}"
                )
        values = [(parts, get(env)) for parts, get in self._set]
        # Every field is taken out before any is put back: `{a: b, b: a}` swaps them
        # (one after the other, `a` overwrote `b`, which then moved back to `a`).
        moved = [(new, _pop(obj, old)) for old, new in self._rename]
        for new, value in moved:
            if value is not MISSING:
                _put(obj, new, value)
        for parts in self._drop:
            _pop(obj, parts)
        for path, parts, factor, addend in self._numbers:
            self._scale(obj, path, parts, factor, addend)
        for parts, value in values:
            _put(obj, parts, value)
        return [flowfile.derive(topic=topic, content=encode(obj))]

    @staticmethod
    def _scale(
        obj: dict[str, Any],
        path: str,
        parts: tuple[str, ...],
        factor: int | float,
        addend: int | float,
    ) -> None:
        parent = lookup(obj, parts[:-1])
        key: Any = parts[-1]
        if type(parent) is list:
            key = array_index(key, len(parent))
            if key is None:
                return
        elif type(parent) is not dict or key not in parent:
            return
        value = parent[key]
        if type(value) not in (int, float):
            raise PermanentError(
                f"field {path!r} is {kind(value)} ({shown(value)}), scale/offset need a number"
            )
        try:
            result = value * factor + addend
        except OverflowError:  # an integer past a double's range times a float
            result = math.inf
        if type(result) is float and not math.isfinite(result):
            raise PermanentError(
                f"field {path!r} ({shown(value)}) * {factor:g} + {addend:g} is past the range"
                " of a JSON number (±1.8e308)"
            )
        parent[key] = result
