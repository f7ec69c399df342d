"""Durations (`250ms`, `10s`, `5m`), sizes (`512MiB`) and numbers as written in configs."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def ascii_int(text: str, max_digits: int) -> int | None:
    """The number `text` writes in ASCII digits, or None: for other text (str.isdigit takes
    `²`, which int() refuses) and for a number of more than `max_digits` digits. Leading
    zeros do not count, and are stripped before int(), which refuses text of over 4300
    digits, zeros included (a port or an index of 5000 zeros was a traceback)."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0")
    if len(digits) > max_digits:
        return None
    return int(digits) if digits else 0


def parse_duration(value: object) -> float:
    """Seconds from `250ms`, `10s`, `5m`, `2h`, `1d` or a bare number of seconds."""
    try:
        return _duration(value)
    except OverflowError:  # an integer of hundreds of digits: no float holds it
        raise ValueError(f"the duration {str(value)[:20]}... is too large") from None


def _duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '10s' or '250ms', got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            # YAML's .nan and .inf: a window or an interval of them cannot be scheduled.
            raise ValueError(f"expected a duration such as '10s' or '250ms', got {value!r}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"expected a duration such as '10s', '250ms' or '5m', got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: object) -> int:
    """Bytes from `512MiB`, `1GiB`, `64KB` or a bare number of bytes."""
    try:
        return _size(value)
    except OverflowError:  # `1e400KiB`: no float holds it
        raise ValueError(f"the size {str(value)[:20]}... is too large") from None


def _size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '512MiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value!r}")
        return int(value)  # the loader's WrittenInt (1_048_576, 0x100000) prints as written
    # A float as Python writes it: the loader's WrittenFloat prints as written (+512.0).
    m = _SIZE.match(repr(float(value)) if isinstance(value, float) else str(value))
    if not m:
        raise ValueError(f"expected a size such as '512MiB', '1GiB' or '64KB', got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def size_text(n: float) -> str:
    """Bytes as a config writes them: 1GiB, 64KiB, 4096."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % factor == 0:
            return f"{int(n // factor)}{unit}"
    return str(int(n))


def duration_text(seconds: float) -> str:
    """Seconds as a config writes them: 7d, 5m, 30s, 250ms."""
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    ms = round(seconds * 1000, 6)
    return f"{ms:g}ms"
