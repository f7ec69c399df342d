"""The certificate and key that the console and the http source serve HTTPS with.

Read by the config check (check-config, run, reload: `Config.check`) and again when
the listener starts, with the same one-line message naming the key and the file:
OpenSSL's own says "PEM lib" and names neither.
"""

from __future__ import annotations

import ssl

from gateway.config import files

_PEEK = files.PEM_PEEK


class ServedTlsError(ValueError):
    """A certificate or key file that cannot be served with; `key` is the config key at
    fault (`tls_cert` or `tls_key`), the message names the file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class _Encrypted(Exception):
    """The key file asks for a passphrase: OpenSSL would prompt on a terminal for it."""


class EncryptedKeyError(ssl.SSLError):
    """A client key that asks for a passphrase (an ssl.SSLError, as the callers expect)."""

    def __str__(self) -> str:
        return str(self.args[0])  # ssl.SSLError's own would show ('the text',)


def _no_passphrase() -> bytes:
    raise _Encrypted


def load_client_cert(context: ssl.SSLContext, cert_file: str, key_file: str | None) -> None:
    """`context.load_cert_chain(cert_file, key_file)` for a client certificate, but a key
    that asks for a passphrase is an ssl.SSLError saying so: OpenSSL would otherwise ask
    for it on the terminal, blocking the event loop at every connect (and, with no
    terminal, fail with "[Errno 22] Invalid argument")."""
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _Encrypted:
        raise EncryptedKeyError(
            f"{key_file or cert_file} holds an encrypted private key (it asks for a"
            " passphrase): give the key without one"
        ) from None


def _peek(key: str, path: str) -> bytes:
    try:
        return files.read_head(path, _PEEK, regular=True)  # OpenSSL's own open of a pipe hangs
    except OSError as err:
        raise ServedTlsError(key, f"{path} cannot be read ({err.strerror or err})") from err
    except ValueError as err:  # open() refuses a path with a NUL in it
        raise ServedTlsError(key, f"{path!r} cannot be read (the path holds a NUL)") from err


def served_tls(cert: str, key: str) -> ssl.SSLContext:
    """The server-side TLS context for the PEM certificate (chain) `cert` and its private
    key `key`; ServedTlsError names the key and file at fault, in one line."""
    cert_text, key_text = _peek("tls_cert", cert), _peek("tls_key", key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise ServedTlsError(
            "tls_key",
            f"{key} is encrypted (it asks for a passphrase): give the key without one",
        ) from None
    except ssl.SSLError as err:
        if err.reason == "KEY_VALUES_MISMATCH":
            raise ServedTlsError("tls_key", f"{key} is not the key of tls_cert {cert}") from err
        # OpenSSL decides what it serves (a TRUSTED CERTIFICATE, a key after a long chain);
        # these only say why it refused
        if b"-----BEGIN CERTIFICATE-----" not in cert_text:
            raise ServedTlsError("tls_cert", f"{cert} holds no PEM certificate") from err
        if b"PRIVATE KEY-----" not in key_text:
            raise ServedTlsError("tls_key", f"{key} holds no PEM private key") from err
        raise ServedTlsError(
            "tls_cert", f"cannot serve {cert} with tls_key {key}: {err.reason or err}"
        ) from err
    except OSError as err:  # gone since it was read
        raise ServedTlsError("tls_cert", f"{cert} cannot be read ({err.strerror or err})") from err
    return context
