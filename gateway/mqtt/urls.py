"""Where a broker is and how to reach it: MQTT URLs and TLS contexts (no I/O)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from urllib.parse import unquote, urlsplit

from gateway.config import files
from gateway.config.schema import mask_password
from gateway.config.tls import load_client_cert
from gateway.core.topics import unsendable

# Bytes of an MQTT string or binary field (a client id, user name, password, topic): its
# length is written in two bytes.
MQTT_STRING_MAX = 65535


def too_long(value: str) -> str | None:
    """Why `value` cannot be an MQTT string or binary field (over MQTT_STRING_MAX bytes of
    UTF-8), without quoting it, or None."""
    size = len(value.encode(errors="surrogatepass"))
    if size > MQTT_STRING_MAX:
        return f"is {size} bytes, longer than MQTT allows ({MQTT_STRING_MAX} bytes)"
    return None


def unsendable_keys(config: object, names: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(key, problem) for each of `names` whose value a broker would refuse at connect, and
    for a password (never quoted) that cannot be sent at all: a client id, user name or
    password over 65535 bytes passed check-config, and every connect crashed with a
    traceback (struct.error) while encoding the CONNECT."""
    for name in (*names, "password"):
        value = getattr(config, name, None)
        if not isinstance(value, str):
            continue
        if name != "password" and (problem := unsendable(value)):
            yield name, f"{value!r} {problem}"
        elif problem := too_long(value):
            yield name, problem if name == "password" else f"{value[:40]!r}... {problem}"


def attribute_problem(attributes: Mapping[str, str]) -> str | None:
    """Why one of `attributes` cannot be an MQTT user property, or None."""
    for name, value in attributes.items():
        if problem := unsendable(name) or unsendable(value):
            return f"the attribute {name!r} (a user property) {problem}"
    return None


def parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) from mqtt://host:port or mqtts://host:port (a user name and
    password in it are for `login`).

    ValueError's message quotes the URL with its password masked, and nothing else of
    it: urllib's own messages quote the port's text, which is a piece of the password
    when one holds '/', '?', '#' or '@'."""
    try:
        parts = urlsplit(url)
        port = parts.port
        if port == 0:  # read as "no port": mqtt://h:0 went to 1883
            raise ValueError("port 0")
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
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        # Ignored: mqtt://u:1/b@broker (a password with an unencoded /) connected to host
        # u, port 1; mqtt://broker:1883/plant read as a topic prefix was none.
        raise ValueError(
            f"{mask_password(url)!r} is not an mqtt://host:port or mqtts://host:port URL"
            " (MQTT has no path or query after host:port; a password holding #, /, ? or @"
            " must be percent-encoded: %23, %2F, %3F, %40)"
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
        load_client_cert(context, cert_file, key_file)
    return context


def client_cert_problems(cert_file: str | None, key_file: str | None) -> Iterator[tuple[str, str]]:
    """The config check of a client certificate: `key_file` needs its `cert_file`; a
    `cert_file` alone is a combined PEM (`load_cert_chain` reads the key from it), so it
    must hold a private key too (if it is longer than the look, OpenSSL decides). A file
    that cannot be read is left to the connect, whose error names it, as for a pair; but
    not a named pipe, whose open would hang the check and OpenSSL's at every connect."""
    if key_file and not cert_file:
        yield "key_file", "key_file needs the cert_file whose key it is"
    elif cert_file and not key_file:
        try:
            text = files.read_head(cert_file, files.PEM_PEEK, regular=True)
        except files.NotARegularFile:
            yield "cert_file", f"{cert_file} cannot be read (not a regular file)"
            return
        except (OSError, ValueError):  # ValueError: a path with a NUL
            return
        if b"PRIVATE KEY-----" not in text and len(text) < files.PEM_PEEK:
            yield (
                "cert_file",
                f"{cert_file} holds no private key: set key_file, or put the key in this"
                " file after the certificate (PEM)",
            )


# (the config key that names it, its path or None): what a TLS error message quotes
TlsFile = tuple[str, str | None]
NO_TLS_FILES: tuple[str | None, str | None, str | None] = (None, None, None)


class TlsFilesError(Exception):
    """The TLS files cannot be read or used; the message (one line) names each by its key."""


def tls_files(
    own: tuple[str | None, str | None, str | None],
    shared: tuple[str | None, str | None, str | None] | None,
    prefix: str = "",
) -> tuple[TlsFile, TlsFile, TlsFile]:
    """The ca_file, cert_file and key_file a client uses, with the keys that set them:
    its own (`own`, under `prefix`) and, on the gateway's broker (`shared`: `mqtt.ca_file`,
    `mqtt.cert_file`, `mqtt.key_file`), those of `mqtt:` where it sets none; cert_file and
    key_file go as a pair."""
    ca, cert, key = own
    files = ((f"{prefix}ca_file", ca), (f"{prefix}cert_file", cert), (f"{prefix}key_file", key))
    if shared is None:
        return files
    if not ca:
        files = (("mqtt.ca_file", shared[0]), files[1], files[2])
    if not cert and not key:
        files = (files[0], ("mqtt.cert_file", shared[1]), ("mqtt.key_file", shared[2]))
    return files


def files_tls_context(files: tuple[TlsFile, TlsFile, TlsFile]) -> ssl.SSLContext:
    """`tls_context` of `files` (see `tls_files`); TlsFilesError names them when one cannot
    be read or used (OSError said "[Errno 2] No such file or directory", naming none)."""
    try:
        return tls_context(files[0][1], files[1][1], files[2][1])
    except (OSError, ValueError) as err:  # ssl.SSLError included; ValueError: a NUL in a path
        named = ", ".join(f"{key} {path!r}" for key, path in files if path)
        raise TlsFilesError(
            f"cannot use the TLS files ({named or 'the system CAs'}): {err}"
        ) from err
