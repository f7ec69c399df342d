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


@pytest.mark.parametrize(
    ("terminator", "why"),
    [("\\x", "truncated \\xXX escape"), ("é€", "ordinal not in range(256)")],
)
def test_a_terminator_that_is_no_byte_string_is_refused(terminator: str, why: str) -> None:
    # these passed check-config, then the source crashed at each connect (UnicodeDecodeError
    # or UnicodeEncodeError in turning the terminator into bytes) and never read a line
    assert problems_of(terminator=terminator) == [
        f"terminator: '{terminator}' is no byte string ({why}): write bytes as characters"
        " or escapes such as \\r, \\n, \\t or \\x1e"
    ]
    for fine in ("\r\n", "\\r\\n", "\\x1e", ";", "é"):
        assert problems_of(terminator=fine) == [], fine


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"framing": "nmea", "terminator": ";"},
         "terminator: only used with framing: line or regex"),
        ({"framing": "fixed", "length": 4, "encoding": "latin-1"},
         "encoding: only used with framing: line or regex"),
        ({"framing": "regex", "pattern": "(?P<a>x)", "strip": False},
         "strip: only used with framing: line"),
        ({"convert": False}, "convert: only used with framing: regex"),
        ({"require_checksum": False}, "require_checksum: only used with framing: nmea"),
    ],
)  # fmt: skip
def test_a_key_the_framing_does_not_read_is_refused_as_length_and_pattern_are(
    raw: dict[str, Any], expected: str
) -> None:
    # they were silently ignored: a terminator set for nmea framing changed nothing
    assert problems_of(**raw) == [expected]
    # the default written out is no change
    assert problems_of(framing="nmea", terminator="\\n", strip=True, convert=True) == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "UTF-16BE"])
def test_an_encoding_of_several_bytes_a_character_is_refused(encoding: str) -> None:
    # passed check-config; lines are cut at the terminator's bytes, then decoded, so
    # every line after the first began mid-character and was a dead letter
    (record,) = LineFramer(b"\n", 64, encoding, strip=True).feed("ab\ncd\n".encode(encoding))[1:]
    assert record.reject is not None  # what the source did with such a config
    assert problems_of(encoding=encoding) == [
        f"encoding: {encoding!r} writes a character in several bytes, so a line cannot be cut"
        " at the terminator; use an 8-bit or UTF-8 encoding, or 'binary'"
    ]


def test_utf_8_with_a_byte_order_mark_is_taken_and_idna_is_one_line() -> None:
    # utf-8-sig writes a BOM first: 'a' is 4 bytes, so the check above refused it
    assert problems_of(encoding="utf-8-sig") == []
    # idna's decode raises UnicodeError, not LookupError: a traceback at check-config
    assert problems_of(encoding="idna") == [
        "encoding: 'idna' is not a text encoding (e.g. utf-8, latin-1) or 'binary'"
    ]


@pytest.mark.parametrize(
    ("port", "why"),
    [
        ("socket://10.0.0.7:4001?foo=bar", "unknown option 'foo' (socket:// takes logging)"),
        ("socket://10.0.0.7:4001?logging=verbose", "logging must be one of debug, info"),
        ("rfc2217://10.0.0.7:2217?timeout=soon", "timeout must be a number of seconds"),
        ("rfc2217://10.0.0.7:2217?pol_modem", "unknown option 'pol_modem' (rfc2217:// takes"),
    ],
)
def test_a_network_port_option_pyserial_does_not_take_is_refused(port: str, why: str) -> None:
    # pyserial raised its SerialException at each open, so the source was retried quietly
    # for ever, saying "Could not open port ...: 'debug|info|warning|error'"
    [problem] = problems_of(port=port)
    assert problem.startswith(f"port: {port!r}: {why}"), problem


def test_the_network_port_options_pyserial_takes_pass() -> None:
    assert not problems_of(port="socket://10.0.0.7:4001?logging=debug")
    assert not problems_of(port="rfc2217://10.0.0.7:2217?poll_modem&timeout=2.5&logging=error")
