"""TLS files: the certificate and key that the console and the http source serve HTTPS
with, and the files an HTTP client (the http sink, the rest source) connects with.

Read by the config check (check-config, run, reload: `Config.check`) and again when
the listener starts, with the same one-line message naming the key and the file:
OpenSSL's own says "PEM lib" and names neither. `ServedTls` holds what a listener
serves, and serves a renewal written over the files (then a reload) in place.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from collections.abc import Callable, Iterator

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


def client_tls_problems(
    url: str, verify: bool, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> Iterator[tuple[str, str]]:
    """What an HTTP client's TLS keys (the http sink's, the rest source's) cannot mean
    together with a valid `url`: TLS keys on an http:// URL, verify: false beside the
    ca_file it ignores."""
    if not url.startswith("https://"):
        for name, value in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
            if value:
                yield name, "needs TLS: use an https:// URL"
        if verify is False:
            yield "verify", "needs TLS: use an https:// URL (http:// verifies nothing)"
    elif verify is False and ca_file:
        yield "ca_file", "verifies the server, which verify: false turns off: give one of them"


class ClientTlsError(ValueError):
    """An HTTP client's TLS files cannot be used; the message (one line) names each by its
    key and says why."""


def client_tls(
    url: str, verify: bool, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext | bool:
    """The `ssl` an HTTP client connects to `url` with (True: the default, for http://).
    verify: false leaves the server's certificate unchecked but still presents a client
    certificate (ssl=False dropped it, and a server that asks for one refused every
    request). It reads files: call it off the event loop. A file that is not a regular
    one (a named pipe, whose open by OpenSSL waits for a writer) is refused before it is
    opened; ClientTlsError for any file that cannot be used."""
    if not url.startswith("https://"):
        return True
    named = [
        (k, p)
        for k, p in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file))
        if p
    ]
    try:
        for key, path in named:
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise ClientTlsError(f"{key} {path!r} is not a regular file: give the PEM file")
        tls = ssl.create_default_context(cafile=ca_file)
        if not verify:
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        if cert_file:
            load_client_cert(tls, cert_file, key_file)
    except ClientTlsError:
        raise
    except (OSError, ValueError) as err:  # ssl.SSLError included; ValueError: a NUL in a path
        which = ", ".join(f"{key} {path!r}" for key, path in named)
        raise ClientTlsError(f"cannot use the TLS files ({which}): {err}") from err
    return tls


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


class ServedTls:
    """The certificate a listener serves from `cert` and `key`, renewed in place.

    `listening()` is the context the listening socket is made with; each handshake on it
    switches to the context served now (its `sni_callback`, called with SNI or without),
    so that `renew()` swaps in a context checked on its own and never changes one in use
    (one half-loaded served no handshake at all). New connections get the new
    certificate, open ones keep theirs, and the socket stays open: no connection is
    refused meanwhile, and no other program can take the port. `load` makes a context
    from the files (`served_tls`, or one that names them in its caller's words)."""

    def __init__(
        self,
        cert: str,
        key: str,
        load: Callable[[str, str], ssl.SSLContext] = served_tls,
    ) -> None:
        self.cert = cert
        self.key = key
        self._load = load
        self._serving: ssl.SSLContext | None = None  # what new handshakes switch to
        self._files: tuple[files.Stamp | None, ...] = ()  # what it was read from

    def listening(self) -> ssl.SSLContext:
        """The context to listen with, from the files as they are now (blocking: a stat
        and a read of a few kB each); what `load` raises when they cannot be served
        (ServedTlsError: it names the key and the file)."""
        stamp = self._stamp()
        context = self._load(self.cert, self.key)
        context.sni_callback = self._switch
        self._serving, self._files = context, stamp
        return context

    def _switch(self, ssl_obj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        assert self._serving is not None
        ssl_obj.context = self._serving

    def _stamp(self) -> tuple[files.Stamp | None, ...]:
        """What tells the files changed (see `files.stamp`)."""
        return (files.stamp(self.cert), files.stamp(self.key))

    async def renew(self) -> bool:
        """Serve the files anew when they changed since they were read (a renewal written
        over them); True when it did. They are looked at and checked off the loop (a slow
        disk), in a context of their own that new handshakes then switch to. Files that
        cannot be served raise what `load` raises, and the certificate served stays as it
        was (its caller says so in an ERROR: the renewal needs the operator)."""
        if self._serving is None:
            return False  # not listening yet
        stamp = await asyncio.to_thread(self._stamp)
        if stamp == self._files:
            return False
        checked = await asyncio.to_thread(self._load, self.cert, self.key)
        self._serving, self._files = checked, stamp
        return True
