"""Serial source config checks that need no port."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.schema import Problems, build_dataclass
from gateway.sources._serial_framing import LineFramer, RegexFramer
from gateway.sources.serial import SerialSourceConfig

pytestmark = pytest.mark.unit


def problems_of(**raw: Any) -> list[str]:
    problems = Problems()
    build_dataclass(SerialSourceConfig, {"type": "serial", "port": "/dev/x", **raw}, (), problems)
    return [".".join(map(str, path)) + ": " + msg for path, msg in problems.items]


@pytest.mark.parametrize("encoding", ["hex", "base64", "rot13", "zlib"])
def test_a_codec_that_is_no_text_encoding_is_refused(encoding: str) -> None:
    # these passed check-config, then the source crashed ("'hex' is not a text encoding")
    # at its first line and again after each restart, losing what it had read
    assert problems_of(encoding=encoding) == [
        f"encoding: {encoding!r} is not a text encoding (e.g. utf-8, latin-1) or 'binary'"
    ]


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "cp1252", "ascii", "binary"])
def test_text_encodings_pass_and_their_framers_read_a_line(encoding: str) -> None:
    assert problems_of(encoding=encoding) == []
    assert LineFramer(b"\n", 64, encoding, strip=True).feed(b"abc\n")[0].content == b"abc"
    regex = RegexFramer(b"\n", 64, encoding, "(?P<a>\\w+)", convert=True)
    assert regex.feed(b"abc\n")[0].content == b'{"a": "abc"}'
