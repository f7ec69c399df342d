"""Where a broker is and how to reach it: MQTT URLs and TLS contexts (no I/O)."""

from __future__ import annotations

import ssl
from urllib.parse import unquote, urlsplit

from gateway.config.schema import mask_password


def parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) from mqtt://host:port or mqtts://host:port (a user name and
    password in it are for `login`).

    ValueError's message quotes the URL with its password masked, and nothing else of
    it: urllib's own messages quote the port's text, which is a piece of the password
    when one holds '/', '?', '#' or '@'."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # Not chained (`from None`): a traceback would print urllib's message, which
        # quotes the piece of the password that reads as the port.
        raise ValueError(
            f"{mask_password(url)!r} is not an mqtt://host:port or mqtts://host:port URL"
            " (the port is not a number from 1 to 65535; a password holding #, /, ? or @"
            " must be percent-encoded: %23, %2F, %3F, %40)"
        ) from None
    tls = parts.scheme == "mqtts"
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(
            f"{mask_password(url)!r} is not an mqtt://host:port or mqtts://host:port URL"
        )
    return parts.hostname, port or (8883 if tls else 1883), tls


def login(url: str, username: str | None, password: str | None) -> tuple[str | None, str | None]:
    """The user name and password to connect with: those given (the config's keys) or,
    where none is, those the URL holds (mqtt://user:password@host, percent-decoded)."""
    parts = urlsplit(url)
    if not username and parts.username:
        username = unquote(parts.username)
    if not password and parts.password:
        password = unquote(parts.password)
    return username, password


def url_problem(url: str) -> str | None:
    """Why check-config refuses `url` as a broker URL (what `parse_url` will refuse when
    connecting: a bad port crashed a write-back at start), in one line, password masked;
    None if it reads."""
    try:
        parse_url(url)
    except ValueError as err:
        return str(err)
    return None


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context
