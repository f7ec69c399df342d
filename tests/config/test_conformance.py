"""Every built-in component against the schema: a reference page, every key described,
a sample config (from the keys' examples) that builds with no problem, and a JSON Schema
that takes the shipped config, the README's example and every sample."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
import yaml

from gateway import registry
from gateway.config import reference
from gateway.config.load import load_data
from gateway.config.model import Config
from gateway.config.schema import Problems, build_component, build_dataclass, fields
from gateway.core.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BUILTINS = sorted(registry.BUILTINS)


def _entry(kind: str, type_name: str) -> registry.Entry:
    entry = registry.find(kind, type_name)
    assert entry is not None, f"{kind} {type_name} is not available"
    return entry


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = reference.json_schema(registry.entries())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: jsonschema.Draft202012Validator, data: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)
    ]


def test_every_builtin_is_available_and_has_a_page() -> None:
    pages = reference.pages(registry.entries())
    for kind, type_name in BUILTINS:
        _entry(kind, type_name)
        assert reference.page_name(kind, type_name) in pages
        assert f"# `{type_name}` {kind}" in pages[reference.page_name(kind, type_name)]


@pytest.mark.parametrize(("kind", "type_name"), BUILTINS)
def test_every_key_of_a_builtin_is_described(kind: str, type_name: str) -> None:
    assert reference.undocumented(_entry(kind, type_name).config) == []


def test_every_key_of_the_top_level_sections_is_described() -> None:
    assert reference.undocumented(Config) == []


@pytest.mark.parametrize(("kind", "type_name"), BUILTINS)
def test_the_sample_config_of_a_builtin_builds(kind: str, type_name: str) -> None:
    sample = reference.sample(_entry(kind, type_name).config, type_name)
    problems = Problems()
    built = build_component(kind, sample, (f"{kind}s", "sample"), problems)
    assert problems.items == []
    assert built is not None and built.type == type_name


@pytest.mark.parametrize(("kind", "type_name"), BUILTINS)
def test_the_schema_takes_the_sample_config_of_a_builtin(
    validator: jsonschema.Draft202012Validator, kind: str, type_name: str
) -> None:
    sample = reference.sample(_entry(kind, type_name).config, type_name)
    if kind == "processor":
        data = {"routes": {"r": {"match": "#", "sinks": ["s"], "processors": [sample]}}}
    else:
        data = {f"{kind}s": {"sample": sample}}
    assert _errors(validator, data) == []


def test_the_sample_of_each_top_level_section_builds() -> None:
    hints, _ = fields(Config)
    for section in ("gateway", "buffer", "mqtt", "web"):
        cls = get_args(hints[section])[0]  # the class inside Annotated[...]
        problems = Problems()
        build_dataclass(cls, reference.sample(cls), (section,), problems)
        assert problems.items == [], section


def test_the_schema_takes_the_shipped_config(validator: jsonschema.Draft202012Validator) -> None:
    data = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    assert _errors(validator, data) == []
    load_data(data, environ={})  # and the gateway takes it too


def test_the_schema_takes_the_readme_example(validator: jsonschema.Draft202012Validator) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The config file") :]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None
    data = yaml.safe_load(match.group(1))
    assert _errors(validator, data) == []


def test_the_schema_refuses_what_the_gateway_refuses(
    validator: jsonschema.Draft202012Validator,
) -> None:
    bad = {
        "buffer": {"batch_max": 0},
        "sources": {"plant": {"type": "mqtt", "topics": ["a/#"], "qos": 3}},
        "sinks": {
            "w": {"type": "postgres", "dsn": "postgresql://db/t", "tabel": "x"},
            "c": {"type": "redis"},
            "z": {"type": "kafka"},
        },
    }
    errors = _errors(validator, bad)
    assert "buffer.batch_max: 0 is less than the minimum of 1" in errors
    assert any(e.startswith("sources.plant.qos: 3 is not one of") for e in errors)
    assert any(e.startswith("sinks.w: Additional properties") and "tabel" in e for e in errors)
    assert "sinks.c: 'url' is a required property" in errors
    assert any(e.startswith("sinks.z.type: 'kafka' is not one of") for e in errors)


def test_the_schema_tells_components_apart_by_type() -> None:
    schema = reference.json_schema(registry.entries())
    sinks = schema["$defs"]["sinks"]
    assert sinks["required"] == ["type"]
    types = {branch["if"]["properties"]["type"]["const"] for branch in sinks["allOf"]}
    assert types == {t for k, t in BUILTINS if k == "sink"}
    postgres = schema["$defs"]["PostgresSinkConfig"]
    assert postgres["properties"]["type"] == {
        "const": "postgres",
        "description": "The kind of sink.",
    }
    assert postgres["properties"]["pool_size"]["maximum"] == 2
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    json.dumps(schema)  # plain JSON throughout


def test_the_config_reference_example_lacks_only_the_files_it_names() -> None:
    # Its route went to a sink `warehouse` that the example did not define: check-config
    # refused it for that too, beside the certificate and key files it names.
    page = (ROOT / "docs" / "reference" / "config.md").read_text()
    data = yaml.safe_load(page.split("```yaml\n")[-1].split("```")[0])
    with pytest.raises(ConfigError) as refused:
        load_data(data, environ={})
    problems = refused.value.problems
    assert problems and all(re.search(r"cannot (be )?read", p) for p in problems), problems


def _readme_yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def test_every_yaml_snippet_of_the_readme_is_taken_as_the_text_completes_it(
    tmp_path: Path,
) -> None:
    # What the text around each snippet says to add: an ENC(...) is what `secret encrypt`
    # prints, the public key is the file `config keygen-signing` wrote, and a route's
    # sink `warehouse` is the one the config file's example defines.
    from gateway.config import remote, secrets

    key = secrets.load_key(secrets.generate_key_file(tmp_path / "secret.key"))
    assert key is not None
    sealed = secrets.encrypt("a-token-of-sixteen-or-more", key)
    public, _ = remote.keygen(tmp_path / "fleet.key")
    blocks = _readme_yaml_blocks()
    assert len(blocks) >= 5
    for block in blocks:
        text = block.replace("ENC(...)", sealed)
        text = text.replace("/etc/edge-stream/fleet.key.pub", str(public))
        data = yaml.safe_load(text)
        data.setdefault("gateway", {})["data_dir"] = str(tmp_path)
        if "warehouse" in str(data.get("routes")) and "sinks" not in data:
            data["sinks"] = {"warehouse": {"type": "file", "path": str(tmp_path / "w.jsonl")}}
        try:
            load_data(data, "README.md", environ={})
        except ConfigError as err:
            pytest.fail(f"{block}\n{err.problems}")


def _docstring_examples(doc: str) -> list[str]:
    """The YAML examples of a module's guide: its ```yaml blocks, and the indented block
    under a line `Example` or `Examples`."""
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL)
    for found in re.finditer(r"(?m)^Examples?\n((?:[ \t]+\S.*\n|[ \t]*\n)+)", doc + "\n"):
        block = textwrap.dedent(found.group(1))
        # a command that follows the config (`curl ...` to the http source) is not YAML
        blocks.append(re.split(r"(?m)^(?=curl |edge-stream |mosquitto_pub )", block)[0])
    return blocks


def _as_config(kind: str, example: Any) -> dict[str, Any]:
    """An example placed in a config file as the text around it has it: a component's
    keys under a name, components under their section, processors in a route."""
    if isinstance(example, list):  # a route's processors
        route = {"match": "#", "processors": example, "sinks": ["out"]}
        return {"routes": {"r": route}, "sinks": {"out": {"type": "file"}}}
    if "type" in example:
        return {f"{kind}s": {"example": example}}
    if set(example) <= {"sources", "routes", "sinks"}:
        data = dict(example)
        for route in (data.get("routes") or {}).values():
            for sink in route.get("sinks", []):  # a route's sink the example leaves out
                data.setdefault("sinks", {}).setdefault(sink, {"type": "file"})
        return data
    return {f"{kind}s": example}


@pytest.mark.parametrize(("kind", "type_name"), BUILTINS)
def test_the_examples_of_a_builtin_s_guide_pass_check_config(
    tmp_path: Path, kind: str, type_name: str
) -> None:
    # The guide (the module docstring the reference page points to) is what a technician
    # copies from; an ENC(...) there is what `secret encrypt` prints, and a certificate
    # file it names is one they have.
    from gateway.config import secrets

    key = secrets.load_key(secrets.generate_key_file(tmp_path / "secret.key"))
    assert key is not None
    sealed = secrets.encrypt("a-token-of-sixteen-or-more", key)
    doc = sys.modules[_entry(kind, type_name).module].__doc__ or ""
    blocks = _docstring_examples(doc)
    assert blocks, "the guide shows no example"
    for block in blocks:
        example = yaml.safe_load(block.replace("ENC(...)", sealed))
        data = _as_config(kind, example)
        data["gateway"] = {"data_dir": str(tmp_path)}
        try:
            load_data(data, "example", environ={})
        except ConfigError as err:
            problems = [p for p in err.problems if not re.search(r"cannot (be )?read", p)]
            assert problems == [], block
