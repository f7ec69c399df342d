"""The reference docs written from the schema: docs/reference/ is what `edge-stream docs`
writes (the drift test), a key without a description is found, and the Doc and Range
marks do what the docs say."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
import yaml

from gateway import cli, registry
from gateway.config import reference, units
from gateway.config.schema import Doc, Duration, Problems, Range, Size, build_dataclass

pytestmark = pytest.mark.unit

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference"


def test_the_committed_reference_is_what_edge_stream_docs_writes() -> None:
    pages = reference.pages(registry.entries())
    committed = {p.name: p.read_text(encoding="utf-8") for p in REFERENCE.glob("*.md")}
    stale = sorted(set(committed) - set(pages))
    missing = sorted(set(pages) - set(committed))
    changed = sorted(n for n in pages if n in committed and committed[n] != pages[n])
    assert (stale, missing, changed) == ([], [], []), (
        "docs/reference/ differs from the config schema: run `edge-stream docs`"
    )


def test_edge_stream_docs_writes_the_pages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["docs", "--out", str(tmp_path / "ref")]) == 0
    written = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "ref").glob("*.md")}
    assert written == reference.pages(registry.entries())
    assert capsys.readouterr().out == f"wrote {len(written)} pages to {tmp_path / 'ref'}\n"


def test_edge_stream_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == reference.json_schema(registry.entries())


@dataclass(frozen=True)
class _Inner:
    depth: Annotated[int, Doc("How deep.")] = 1
    width: int = 2  # no description


@dataclass(frozen=True)
class _Outer:
    name: Annotated[str, Doc("A name.", example="x")]
    inner: Annotated[_Inner, Doc("Below.")] = _Inner()
    rows: list[_Inner] | None = None


def test_a_key_without_a_description_is_found_at_any_depth() -> None:
    # rows hold the class inner holds: its keys are listed (and found) once, under inner
    assert reference.undocumented(_Outer) == ["inner.width", "rows"]


def test_a_page_row_says_type_default_bounds_and_description() -> None:
    @dataclass(frozen=True)
    class Marked:
        budget: Annotated[Size, Doc("Bytes."), Range(1 << 20, 1 << 30, "too big or small")] = (
            64 << 20
        )
        wait: Annotated[Duration, Doc("Time."), Range(0, above=True, message="positive")] = 0.25

    rows = {k.path: k for k in reference.keys(Marked)}
    assert rows["budget"] == reference.Key("budget", "size", "`64MiB`", "1MiB to 1GiB", "Bytes.")
    assert rows["wait"] == reference.Key("wait", "duration", "`250ms`", "> 0s", "Time.")


def test_a_sample_is_made_of_the_examples() -> None:
    assert reference.sample(_Outer) == {"name": "x"}
    assert reference.sample(_Outer, "outer") == {"type": "outer", "name": "x"}


@dataclass(frozen=True)
class _Bounded:
    low: Annotated[int, Range(1, 10, "must be 1..10")] = 5
    middle: int = 0
    high: Annotated[float | None, Range(0, above=True, message="must be more than 0")] = None

    def check(self) -> list[tuple[str, str]]:
        return [("middle", "middle is wrong")] if self.middle else []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({}, []),
        ({"low": 10, "high": 0.5}, []),
        ({"low": 0}, [(("b", "low"), "must be 1..10")]),
        ({"high": 0}, [(("b", "high"), "must be more than 0")]),
        ({"high": None, "low": 11}, [(("b", "low"), "must be 1..10")]),
        # in the order of the keys, whether a bound or check() found the problem
        (
            {"low": 0, "middle": 1, "high": -1},
            [
                (("b", "low"), "must be 1..10"),
                (("b", "middle"), "middle is wrong"),
                (("b", "high"), "must be more than 0"),
            ],
        ),
    ],
)
def test_range_marks_report_at_their_key(value: dict[str, object], expected: list[object]) -> None:
    problems = Problems()
    build_dataclass(_Bounded, value, ("b",), problems)
    assert problems.items == expected


def test_sizes_and_durations_read_as_configs_write_them() -> None:
    assert [reference.size_text(n) for n in (1 << 30, 64 << 10, 4096 + 1, 0)] == [
        "1GiB",
        "64KiB",
        "4097",
        "0",
    ]
    assert [units.duration_text(s) for s in (7 * 86400, 300, 30, 0.005, 0.0015)] == [
        "7d",
        "5m",
        "30s",
        "5ms",
        "1.5ms",
    ]


def test_the_reference_says_what_a_number_without_a_unit_is() -> None:
    # `batch_linger: 5` reads 5 seconds, `max_bytes: 1000` 1000 bytes; the docs named only
    # the forms with a unit, so a technician meaning 5 ms got a 5 s linger.
    page = reference.config_page(registry.entries())
    assert "a number without a unit is seconds for a duration, bytes for a size" in page
    assert (units.parse_duration(5), units.parse_size(1000)) == (5.0, 1000)


def test_every_component_guide_reads_as_written() -> None:
    # A module docstring is a component's user guide: an escape such as `\r` written in
    # it must reach the reader as the two characters, not as a control character.
    for entry in registry.entries():
        guide = sys.modules[entry.module].__doc__ or ""
        controls = sorted({hex(ord(c)) for c in guide if ord(c) < 32 and c != "\n"})
        assert controls == [], f"{entry.module}'s guide holds control characters {controls}"


def test_the_example_of_every_component_page_passes_check_config(tmp_path: Path) -> None:
    # A processor's page showed `processors: [...]` at the top of the file, which
    # check-config refused ("processors: unknown key"): a technician pasting it got nothing
    # that runs. Each page's example is now a config file on its own.
    from gateway.config.load import load_data
    from gateway.core.errors import ConfigError

    refused = {}
    for name, page in reference.pages(registry.entries()).items():
        if name in ("README.md", "config.md"):
            continue  # config.md's example names TLS files: test_conformance checks it
        data = yaml.safe_load(page.split("```yaml\n")[-1].split("```")[0])
        data["gateway"] = {"data_dir": str(tmp_path)}
        try:
            load_data(data, name, environ={})
        except ConfigError as err:
            refused[name] = err.problems
    assert refused == {}
