"""`ServedTls`: what the console and the http source serve, renewed in place, through a
real TLS listener on loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.config import tls
from gateway.config.tls import ServedTls, ServedTlsError
from tests.servers import TlsFiles, make_pki

pytestmark = pytest.mark.unit


@pytest.fixture
def pki(tmp_path: Path) -> tuple[TlsFiles, TlsFiles, Path, Path]:
    """Two PKIs (the first, a renewal) and the files served, holding the first's."""
    first, renewed = make_pki(tmp_path / "first"), make_pki(tmp_path / "renewed")
    cert, key = tmp_path / "served.crt", tmp_path / "served.key"
    cert.write_bytes(first.server_cert_file.read_bytes())
    key.write_bytes(first.server_key_file.read_bytes())
    return first, renewed, cert, key


async def _on_close(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


@asynccontextmanager
async def _listen(served: ServedTls) -> AsyncIterator[int]:
    server = await asyncio.start_server(_on_close, "127.0.0.1", 0, ssl=served.listening())
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _handshake(port: int, ca: Path) -> None:
    """A TLS connection trusting `ca` only: it fails unless the certificate is its."""
    context = ssl.create_default_context(cafile=str(ca))
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.close()


async def test_a_renewal_is_served_to_new_handshakes_on_the_socket_that_listens(
    pki: tuple[TlsFiles, TlsFiles, Path, Path],
) -> None:
    first, renewed, cert, key = pki
    served = ServedTls(str(cert), str(key))
    assert not await served.renew()  # not listening yet: nothing to renew
    async with _listen(served) as port:
        await _handshake(port, first.ca_file)
        assert not await served.renew()  # the same files
        cert.write_bytes(renewed.server_cert_file.read_bytes())
        key.write_bytes(renewed.server_key_file.read_bytes())
        assert await served.renew()
        await _handshake(port, renewed.ca_file)
        with pytest.raises(ssl.SSLCertVerificationError):
            await _handshake(port, first.ca_file)
        assert not await served.renew()  # nothing changed since


async def test_files_that_cannot_be_served_leave_the_certificate_served(
    pki: tuple[TlsFiles, TlsFiles, Path, Path],
) -> None:
    first, renewed, cert, key = pki
    served = ServedTls(str(cert), str(key))
    async with _listen(served) as port:
        cert.write_bytes(renewed.server_cert_file.read_bytes())  # the old key
        with pytest.raises(ServedTlsError) as info:
            await served.renew()
        assert info.value.key == "tls_key" and str(key) in str(info.value)
        await _handshake(port, first.ca_file)
        key.write_bytes(renewed.server_key_file.read_bytes())  # the renewal completed
        assert await served.renew()
        await _handshake(port, renewed.ca_file)


async def test_the_checked_context_is_served_though_the_files_changed_after_the_check(
    pki: tuple[TlsFiles, TlsFiles, Path, Path],
) -> None:
    # The context checked is the one served: the files are not loaded again into the
    # context serving (a key written back in between left one half-loaded), and the
    # check is made off the event loop.
    first, renewed, cert, key = pki
    on_the_loop: list[bool] = []

    def load(cert_file: str, key_file: str) -> ssl.SSLContext:
        on_the_loop.append(_on_a_loop())
        context = tls.served_tls(cert_file, key_file)
        if len(on_the_loop) == 2:  # the renewal's check: the old key written back
            key.write_bytes(first.server_key_file.read_bytes())
        return context

    served = ServedTls(str(cert), str(key), load)
    async with _listen(served) as port:
        cert.write_bytes(renewed.server_cert_file.read_bytes())
        key.write_bytes(renewed.server_key_file.read_bytes())
        assert await served.renew()
        await _handshake(port, renewed.ca_file)
    assert on_the_loop == [True, False]  # `listening()` here on the loop; the renewal not


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
