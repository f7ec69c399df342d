"""Write-back commands' payloads and results (gateway.mqtt.commands), pure logic."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from gateway.mqtt.commands import dump, parse_command

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("payload", "value", "ident"),
    [(b"21.5", 21.5, None), (b'{"value": -3, "id": "a"}', -3, "a"), (b"on", "on", None),
     (b'"NaN"', "NaN", None), (b"[1.5, 2]", [1.5, 2], None)],
)  # fmt: skip
def test_commands_read(payload: bytes, value: Any, ident: Any) -> None:
    assert parse_command(payload) == (value, ident)


@pytest.mark.parametrize(
    "payload",
    [b"NaN", b"Infinity", b"-Infinity", b'{"value": NaN}', b"[1, Infinity]", b"1e999",
     b'{"value": -1e400, "id": 1}'],
)  # fmt: skip
def test_non_finite_numbers_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError, match="finite number"):
        parse_command(payload)


def test_a_result_is_always_json() -> None:
    body = {"ok": True, "value": math.nan, "raw": [math.inf, 1.5], "nested": {"x": -math.inf}}
    text = dump(body).decode()

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in {text}")

    assert json.loads(text, parse_constant=refuse) == {
        "ok": True, "value": None, "raw": [None, 1.5], "nested": {"x": None}
    }  # fmt: skip
    assert dump({"value": 2.5}) == b'{"value": 2.5}'


def test_a_deeply_nested_payload_is_refused_not_a_recursion_error() -> None:
    # json's RecursionError went past the writers' `except ValueError` and out of the
    # Modbus and OPC UA sources' write handling.
    with pytest.raises(ValueError, match="nested"):
        parse_command(b"[" * 100_000)
