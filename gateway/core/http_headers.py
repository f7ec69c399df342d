"""Checks of the HTTP request settings the webhook sink and the REST source share: extra
headers, bearer token and basic auth; and the Retry-After of an answer (pure logic, no I/O)."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterator, Mapping

_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # not in a header value (tab is)


def has_control(value: str) -> bool:
    """True if `value` cannot be an HTTP header value: a line break or control character
    (aiohttp refuses the request with a ValueError)."""
    return _CONTROL.search(value) is not None


def auth_problems(
    headers: Mapping[str, str],
    bearer_token: str | None,
    username: str | None,
    password: str | None,
) -> Iterator[tuple[str, str]]:
    """(key, problem) for each header, token or basic-auth setting HTTP cannot carry."""
    for name, value in headers.items():
        if not name or not _NAME.fullmatch(name):
            yield f"headers.{name}", "is not a valid HTTP header name"
        elif _CONTROL.search(value):
            yield f"headers.{name}", "a header value cannot hold a line break or control character"
    if bearer_token is not None and _CONTROL.search(bearer_token):
        yield "bearer_token", "cannot hold a line break or control character"
    if bearer_token is not None and (username or password):
        yield "bearer_token", "use bearer_token or username and password, not both"
    if bearer_token is not None or (username and password):
        # both went out (`authorization` and `Authorization`), or one replaced the other
        for name in headers:
            if name.lower() == "authorization":
                yield (
                    f"headers.{name}",
                    "bearer_token (or username and password) sets Authorization already:"
                    " give one of them",
                )
    if bool(username) != bool(password):
        yield "username", "basic auth needs both username and password"
    if username and ":" in username:
        yield "username", "a basic auth user name cannot hold ':'"


def retry_after(value: str | None, now: float) -> float:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), or 0."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to isdigit, not to float
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - now)
