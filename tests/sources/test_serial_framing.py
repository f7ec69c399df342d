"""Framing of serial byte streams, as pure functions: lines, regex, fixed records, NMEA 0183."""

from __future__ import annotations

import json
from functools import reduce
from typing import Any

import pytest

from gateway.sources._serial_framing import (
    FixedFramer,
    LineFramer,
    LineSplitter,
    NmeaFramer,
    Record,
    RegexFramer,
)

pytestmark = pytest.mark.unit


def nmea(body: str) -> bytes:
    """A sentence with its checksum, computed here independently of the gateway."""
    checksum = reduce(lambda acc, ch: acc ^ ord(ch), body, 0)
    return f"${body}*{checksum:02X}\r\n".encode()


def feed_bytewise(framer: Any, data: bytes) -> list[Record]:
    out: list[Record] = []
    for i in range(len(data)):
        out.extend(framer.feed(data[i : i + 1]))
    return out


def test_lines_split_across_reads_and_terminators() -> None:
    framer = LineFramer(b"\r\n", 64, "utf-8", strip=True)
    data = b"one\r\ntwo\r\n\r\nthree\r"
    assert [r.content for r in feed_bytewise(framer, data)] == [b"one", b"two"]
    assert [r.content for r in framer.feed(b"\n")] == [b"three"]


def test_over_long_line_is_cut_reported_once_and_the_next_line_survives() -> None:
    splitter = LineSplitter(b"\n", 8)
    assert splitter.feed(b"0123456789") == [(b"01234567", True)]
    assert splitter.feed(b"abcdefghij") == []  # still the same over-long line
    assert splitter.feed(b"xyz\nok\n") == [(b"ok", False)]
    framer = LineFramer(b"\n", 8, "utf-8", strip=True)
    (rec, ok) = framer.feed(b"0123456789ABC\nfine\n")
    assert rec.reject is not None and "max_length" in rec.reject and rec.content == b"01234567"
    assert rec.truncated == "max_length"
    assert ok == Record(b"fine")


def test_a_line_of_max_length_whose_terminator_straddles_two_reads_is_a_line() -> None:
    # 16 bytes and the \r of \r\n were 17 > max_length: cut as too long, and the line,
    # as long as allowed, went to the dead letters
    splitter = LineSplitter(b"\r\n", 16)
    assert splitter.feed(b"0123456789abcdef\r") == []
    assert splitter.feed(b"\nnext\r\n") == [(b"0123456789abcdef", False), (b"next", False)]
    # one byte more is too long, once, and the next line survives
    assert splitter.feed(b"0123456789abcdefg\r") == [(b"0123456789abcdef", True)]
    assert splitter.feed(b"\nok\r\n") == [(b"ok", False)]


def test_a_line_of_max_length_ended_by_cr_lf_is_a_line_with_the_default_terminator() -> None:
    # With terminator "\n" and a device sending "\r\n", the \r counted against
    # max_length: a line of exactly max_length bytes went to the dead letters as too long.
    splitter = LineSplitter(b"\n", 5)
    assert splitter.feed(b"abcde\r\n") == [(b"abcde\r", False)]
    assert splitter.feed(b"abcde\r") == []  # its \n may come in the next read
    assert splitter.feed(b"\nabcdef\r\n") == [(b"abcde\r", False), (b"abcde", True)]
    assert splitter.feed(b"abcde\r\r\n") == [(b"abcde", True)]  # one \r only is the end's
    framer = LineFramer(b"\n", 5, "utf-8", strip=True)
    assert framer.feed(b"abcde\r\nfghij\r") == [Record(b"abcde")]
    assert framer.feed(b"\n") == [Record(b"fghij")]
    assert NmeaFramer(8, False).feed(b"$GPTXT,1\r\n")[0].reject is None


def test_garbage_that_is_not_text_is_rejected() -> None:
    framer = LineFramer(b"\n", 64, "utf-8", strip=True)
    bad, good = framer.feed(b"\xff\xfe\x00junk\nok\n")
    assert bad.reject is not None and "not utf-8 text" in bad.reject
    assert bad.content == b"\xff\xfe\x00junk"
    assert good == Record(b"ok")
    binary = LineFramer(b"\n", 64, "binary", strip=False)
    assert binary.feed(b"\xff\xfe\n") == [Record(b"\xff\xfe")]


def test_regex_named_groups_become_fields() -> None:
    pattern = r"^(?P<status>ST|US),(?P<mode>GS|NT),\s*(?P<weight>[-+0-9.]+)\s*(?P<unit>\w+)"
    framer = RegexFramer(b"\n", 128, "ascii", pattern, convert=True)
    ok, nomatch = framer.feed(b"ST,GS,  +12.50kg\r\nhello\n")
    assert json.loads(ok.content) == {"status": "ST", "mode": "GS", "weight": 12.5, "unit": "kg"}
    assert nomatch.reject is not None and "does not match" in nomatch.reject
    raw = RegexFramer(b"\n", 128, "ascii", r"(?P<n>\d+)", convert=False)
    assert json.loads(raw.feed(b"id 0042\n")[0].content) == {"n": "0042"}


def test_regex_convert_takes_plain_ascii_numbers_only() -> None:
    # int() read "1_000" as 1000 and "١٢" (Arabic-Indic digits) as 12: a reading garbled
    # on the line was stored as another number; it stays the text it is
    framer = RegexFramer(b"\n", 128, "utf-8", r"^(?P<a>\S+) (?P<b>\S+) (?P<c>\S+)", True)
    (record,) = framer.feed("1_000 \u0661\u0662 -2.5e1\n".encode())
    assert json.loads(record.content) == {"a": "1_000", "b": "\u0661\u0662", "c": -25.0}


def test_fixed_records_with_sync_and_garbage() -> None:
    framer = FixedFramer(6, bytes.fromhex("aa55"))
    data = b"\x00\x01" + b"\xaa\x55abcd" + b"\xaa\x55ef" + b"gh" + b"\x13\xaa"
    out = feed_bytewise(framer, data) + framer.feed(b"\x55wxyz")
    assert [(r.content, r.reject is not None) for r in out] == [
        (b"\x00", True), (b"\x01", True),  # bytes before the first sync, as they came
        (b"\xaa\x55abcd", False), (b"\xaa\x55efgh", False),
        (b"\x13", True), (b"\xaa\x55wxyz", False),
    ]  # fmt: skip
    plain = FixedFramer(4, None)
    assert [r.content for r in plain.feed(b"abcdefghij")] == [b"abcd", b"efgh"]
    assert [r.content for r in plain.feed(b"kl")] == [b"ijkl"]


GGA = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
RMC = "GPRMC,123519,A,4807.038,N,01131.000,W,022.4,084.4,230394,003.1,W"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GGA, {"talker": "GP", "sentence": "GGA", "time": "12:35:19", "lat": 48.1173,
               "lon": 11.5166667, "fix_quality": 1, "satellites": 8, "hdop": 0.9,
               "altitude_m": 545.4, "geoid_separation_m": 46.9}),
        (RMC, {"talker": "GP", "sentence": "RMC", "time": "12:35:19", "valid": True,
               "lat": 48.1173, "lon": -11.5166667, "speed_knots": 22.4, "course_deg": 84.4,
               "date": "1994-03-23", "datetime": "1994-03-23T12:35:19Z",
               "magnetic_variation_deg": -3.1}),
        ("GNGLL,3751.65,S,14507.36,E,225444,A", {"talker": "GN", "sentence": "GLL",
               "lat": -37.8608333, "lon": 145.1226667, "time": "22:54:44", "valid": True}),
        ("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K", {"talker": "GP", "sentence": "VTG",
               "course_true_deg": 54.7, "course_magnetic_deg": 34.4, "speed_knots": 5.5,
               "speed_kmh": 10.2}),
        ("GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1", {"talker": "GP", "sentence": "GSA",
               "mode": "A", "fix_type": 3, "satellites": [4, 5, 9, 12, 24], "pdop": 2.5,
               "hdop": 1.3, "vdop": 2.1}),
        ("GPZDA,201530.00,04,07,2002,00,00", {"talker": "GP", "sentence": "ZDA",
               "time": "20:15:30.00", "day": 4, "month": 7, "year": 2002,
               "datetime": "2002-07-04T20:15:30.00Z"}),
        ("HEHDT,274.07,T", {"talker": "HE", "sentence": "HDT", "heading_deg": 274.07}),
        ("PGRME,15.0,M,45.0,M,25.0,M", {"talker": "P", "sentence": "GRME",
               "fields": ["15.0", "M", "45.0", "M", "25.0", "M"]}),
    ],
)  # fmt: skip
def test_nmea_sentences_parsed(body: str, expected: dict[str, Any]) -> None:
    (rec,) = NmeaFramer(256, True).feed(nmea(body))
    assert rec.reject is None
    data = json.loads(rec.content)
    assert data.pop("raw") == nmea(body).decode().strip()
    assert data == expected
    assert (rec.talker, rec.sentence) == (expected["talker"], expected["sentence"])


def test_nmea_bad_input_becomes_dead_letters() -> None:
    framer = NmeaFramer(100, True)
    good = nmea(GGA)
    wrong = b"00" if not good.endswith(b"*00\r\n") else b"11"
    bad_sum = good[:-4] + wrong + b"\r\n"
    out = framer.feed(bad_sum + b"\x07\x00garbage" + good + b"no dollar here\r\n")
    reasons = [r.reject for r in out]
    assert reasons[0] is not None and "bad NMEA checksum" in reasons[0]
    assert reasons[1] is not None and "before the NMEA sentence" in reasons[1]
    assert out[1].content == b"\x07\x00garbage"
    assert reasons[2] is None and json.loads(out[2].content)["sentence"] == "GGA"
    assert reasons[3] is not None and "not an NMEA sentence" in reasons[3]
    (missing,) = framer.feed(b"$GPHDT,274.07,T\r\n")
    assert missing.reject is not None and "without a checksum" in missing.reject
    (lenient,) = NmeaFramer(100, False).feed(b"$GPHDT,274.07,T\r\n")
    assert json.loads(lenient.content)["heading_deg"] == 274.07
    (malformed,) = framer.feed(nmea("GPRMC,12x519,A"))
    assert malformed.reject is not None and "malformed RMC" in malformed.reject
    (long,) = framer.feed(b"$" + b"A" * 200 + b"\r\n")
    assert long.reject is not None and "max_length" in long.reject
    assert long.truncated == "max_length"


def test_a_dead_letter_keeps_the_bytes_around_the_line() -> None:
    framer = LineFramer(b"\n", 64, "utf-8", strip=True)
    bad, good = framer.feed(b" \x00\xff bad \t\x00 \n  fine \n")
    assert bad.reject is not None and bad.content == b" \x00\xff bad \t\x00 "
    assert good == Record(b"fine")  # a good line is still stripped, as documented


def test_nul_bytes_around_an_nmea_sentence_are_garbage_not_dropped() -> None:
    framer = NmeaFramer(200, True)
    good = nmea(GGA)
    out = framer.feed(b"\x00\x00" + good)
    assert out[0].content == b"\x00\x00"
    assert out[0].reject is not None and "2 bytes before the NMEA sentence" in out[0].reject
    assert out[1].reject is None and json.loads(out[1].content)["sentence"] == "GGA"
    assert len(out) == 2
    # after the checksum, and a line that is nothing but garbage, kept as it came
    trailing, nul_only, blank, spaced = (
        framer.feed(good[:-2] + b"\x00 \r\n"),
        framer.feed(b" \x00 \x00\r\n"),
        framer.feed(b" \t\r\n\r\n"),
        framer.feed(b"  " + good[:-2] + b"  \r\n"),
    )
    assert trailing[0].reject is None
    assert trailing[1].reject is not None and trailing[1].content == b"\x00 "
    assert "after the NMEA checksum" in trailing[1].reject
    assert [(r.content, r.reject is not None) for r in nul_only] == [(b" \x00 \x00", True)]
    assert blank == []  # blank lines carry nothing
    assert len(spaced) == 1 and spaced[0].reject is None  # spaces around are layout
    assert json.loads(spaced[0].content)["raw"] == good.decode().strip()


def test_a_line_in_another_encoding_is_stored_as_utf8_text() -> None:
    # `encoding: latin-1` used to keep the line's own bytes: b"caf\xe9", which no sink
    # could show as text (the file sink wrote it as base64)
    framer = LineFramer(b"\n", 64, "latin-1", strip=True)
    assert framer.feed(b" caf\xe9 \n") == [Record("café".encode())]
    assert LineFramer(b"\n", 64, "cp1252", strip=True).feed(b"\x80 5\n") == [Record("€ 5".encode())]
    # UTF-8 (however it is spelled) and binary lines stay as they came
    for encoding in ("utf-8", "UTF8", "binary"):
        framer = LineFramer(b"\n", 64, encoding, strip=True)
        assert framer.feed("café\n".encode()) == [Record("café".encode())], encoding
    # what is no text in the encoding stays garbage, with its own bytes
    (bad,) = LineFramer(b"\n", 64, "ascii", strip=True).feed(b"caf\xe9\n")
    assert bad.content == b"caf\xe9" and bad.reject is not None


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        ("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,nan,M,46.9,M,,", "'nan'"),
        ("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,inf,M,46.9,M,,", "'inf'"),
        ("GPRMC,123519,A,4807.038,N,01131.000,E,1e999,084.4,230394,003.1,W", "'1e999'"),
        ("GPGGA,123519,inf00.000,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,", "'inf00.000'"),
        ("GPGGA,123519,4807.038,N,01131.000,E,1,0_8,0.9,545.4,M,46.9,M,,", "'0_8'"),
        ("GPHDT,-Infinity,T", "'-Infinity'"),
        ("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,nan,W", "'nan'"),
        # a time or date that is none made "datetime": "1994-03-23T12:35:19nanZ" and the like
        ("GPRMC,123519nan,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W", "'123519nan'"),
        ("GPRMC,253519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W", "'253519'"),
        ("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,231394,003.1,W", "'231394'"),
        ("GPZDA,201530.00,04,07,99999,00,00", "'99999'"),
        ("GPZDA,201530.00,04,13,2002,00,00", "bad date 04/13"),
        # a plain decimal of 400 digits is beyond a float: float() made it inf
        ("GPHDT," + "1" * 400 + ",T", "beyond a float"),
        ("GPVTG,054.7,T,034.4,M,005.5,N," + "9" * 310 + ".5,K", "beyond a float"),
        ("GPGGA,123519," + "4" * 400 + ".038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,", "beyond"),
    ],
)
def test_a_number_field_that_is_no_decimal_number_is_a_malformed_sentence(
    body: str, bad: str
) -> None:
    # float() took "nan", "inf" and "1e999": the content held NaN or Infinity, which is
    # not JSON (a json route, a jsonb column refused it downstream), and int() took "0_8"
    # as 8 satellites; each is now a dead letter with its reason, as other garbage is.
    (record,) = NmeaFramer(1000, True).feed(nmea(body))
    assert record.reject is not None and "malformed" in record.reject and bad in record.reject
