"""Runs every data-driven processor case under testcases/.

A case is a folder holding
  config.yaml    `processors: [...]`, written exactly as under a route
  input.json     a list of FlowFiles: {"topic", "content", "attributes"}; `content`
                 that is a string is used as UTF-8 text as is (so it can be invalid
                 JSON), anything else is encoded as JSON; `content_base64` gives raw bytes
  expected.json  one entry per input, in order:
                   {"outputs": [...]}   what leaves the last processor ([] = filtered);
                                        each output may give "topic" (default: the
                                        input's), "content" (a string is compared byte
                                        for byte, anything else as JSON, telling 1,
                                        1.0 and true apart), "attributes" (default:
                                        the input's) and "same": true (the input
                                        FlowFile itself passed on, not a copy)
                   {"dead_letter": "reason", "processor": 0}
                                        the input is dead-lettered by processor 0
                                        with exactly this reason
                 or, for a config that must be refused,
                   {"config_errors": ["processors.0.topic: ..."]}   (no input.json)
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.schema import Problems, build_component
from gateway.core.component import Context, Processor
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile

pytestmark = pytest.mark.unit

CASES = Path(__file__).parent / "testcases"


def _case_dirs() -> list[Path]:
    return sorted(p.parent for p in CASES.rglob("config.yaml"))


def _build(config: dict[str, Any]) -> tuple[list[Processor], list[str]]:
    from gateway import registry

    problems = Problems()
    processors: list[Processor] = []
    for i, value in enumerate(config["processors"]):
        cfg = build_component("processor", value, ("processors", i), problems)
        if cfg is not None and not problems:
            cls = registry.find("processor", cfg.type).cls  # type: ignore[union-attr]
            processors.append(cls(cfg, Context(name=f"case.{i}", kind="processor")))
    errors = [f"{'.'.join(str(p) for p in path)}: {message}" for path, message in problems.items]
    return processors, errors


def _flowfile(spec: dict[str, Any]) -> FlowFile:
    if "content_base64" in spec:
        content = base64.b64decode(spec["content_base64"])
    elif isinstance(spec["content"], str):
        content = spec["content"].encode()
    else:
        content = json.dumps(spec["content"]).encode()
    return FlowFile.create(spec["topic"], content, dict(spec.get("attributes", {})))


def _run(processors: list[Processor], ff: FlowFile) -> dict[str, Any]:
    items = [ff]
    for i, processor in enumerate(processors):
        out: list[FlowFile] = []
        for item in items:
            try:
                out.extend(processor.process(item))
            except PermanentError as err:
                return {"dead_letter": str(err), "processor": i}
        items = out
    return {"outputs": items}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _check_output(case: str, ff: FlowFile, got: FlowFile, want: dict[str, Any]) -> None:
    if want.get("same"):
        assert got is ff, f"{case}: expected the input FlowFile passed on unchanged"
    else:
        assert got.id != ff.id and got.lineage == (ff.id,), f"{case}: not derived from input"
        assert got.created == ff.created
    assert got.topic == want.get("topic", ff.topic), case
    assert got.attributes == want.get("attributes", ff.attributes), case
    if "content" in want:
        expected = want["content"]
        if isinstance(expected, str):
            assert got.content == expected.encode(), case
        else:
            assert _canonical(json.loads(got.content)) == _canonical(expected), case


@pytest.mark.parametrize("case_dir", _case_dirs(), ids=lambda p: str(p.relative_to(CASES)))
def test_case(case_dir: Path) -> None:
    config = yaml.safe_load((case_dir / "config.yaml").read_text())
    expected = json.loads((case_dir / "expected.json").read_text())
    processors, errors = _build(config)
    if isinstance(expected, dict) and "config_errors" in expected:
        assert errors == expected["config_errors"]
        return
    assert errors == [], "the case's config should load"
    inputs = json.loads((case_dir / "input.json").read_text())
    assert len(inputs) == len(expected), "expected.json needs one entry per input"
    for n, (spec, want) in enumerate(zip(inputs, expected, strict=True)):
        label = f"input {n}"
        ff = _flowfile(spec)
        got = _run(processors, ff)
        if "dead_letter" in want:
            assert got.get("dead_letter") == want["dead_letter"], label
            assert got["processor"] == want.get("processor", got["processor"]), label
            continue
        assert "outputs" in got, f"{label}: dead-lettered: {got.get('dead_letter')}"
        assert len(got["outputs"]) == len(want["outputs"]), label
        for out, want_out in zip(got["outputs"], want["outputs"], strict=True):
            _check_output(label, ff, out, want_out)


def test_there_are_cases_for_every_processor() -> None:
    kinds = {p.relative_to(CASES).parts[0] for p in _case_dirs()}
    assert {"json", "transform", "filter"} <= kinds


@pytest.mark.parametrize("type_name", ["json", "transform", "filter"])
def test_each_processor_is_one_documented_module(type_name: str) -> None:
    import dataclasses
    import sys

    from gateway import registry

    entry = registry.find("processor", type_name)
    assert entry is not None
    config = entry.config
    assert dataclasses.fields(config)[0].name == "type"
    assert config.__dataclass_params__.frozen
    assert sys.modules[config.__module__] is sys.modules[entry.cls.__module__]
    doc = sys.modules[entry.cls.__module__].__doc__ or ""
    summary = doc.splitlines()[0]
    assert summary.endswith(".") and len(summary) <= 100
    for field in dataclasses.fields(config)[1:]:
        assert f"{field.name}:" in doc, f"the docstring does not document {field.name!r}"
