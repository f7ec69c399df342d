"""A client certificate whose private key asks for a passphrase: every sink that presents
one (mqtt, amqp, nats, http, redis) and the mqtt source stop with one line saying so.
OpenSSL asked for the passphrase on the terminal instead, blocking the event loop at
every connect, or without a terminal failed with "[Errno 22] Invalid argument"."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from gateway import registry
from gateway.config.tls import load_client_cert
from gateway.core.component import Context
from gateway.core.errors import PermanentError
from gateway.mqtt.urls import tls_context
from tests import servers
from tests.sinks.contract import config_problems

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(cert_file, key_file) of a client certificate whose key is encrypted."""
    pki = servers.make_pki(tmp_path_factory.mktemp("pki"))
    key = serialization.load_pem_private_key(pki.key_file.read_bytes(), password=None)
    locked = Path(pki.key_file).with_name("locked.key")
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return str(pki.cert_file), str(locked)


def test_the_tls_context_says_the_key_is_encrypted(encrypted: tuple[str, str]) -> None:
    cert, key = encrypted
    with pytest.raises(OSError, match="encrypted private key"):
        tls_context(None, cert, key)
    with pytest.raises(OSError, match=f"{key} holds an encrypted private key"):
        load_client_cert(ssl.create_default_context(), cert, key)


@pytest.mark.parametrize(
    ("kind", "keys"),
    [
        ("mqtt", {"url": "mqtts://127.0.0.1:1"}),
        ("amqp", {"url": "amqps://127.0.0.1:1"}),
        ("nats", {"servers": ["tls://127.0.0.1:1"]}),
        ("http", {"url": "https://127.0.0.1:1/in"}),
        ("redis", {"url": "rediss://127.0.0.1:1/0"}),
    ],
)
async def test_a_sink_with_an_encrypted_key_stops_in_one_line(
    encrypted: tuple[str, str], kind: str, keys: dict[str, Any]
) -> None:
    cert, key = encrypted
    config, problems = config_problems(kind, "up", cert_file=cert, key_file=key, **keys)
    assert problems == []
    entry = registry.find("sink", kind)
    assert entry is not None
    sink = entry.cls(config, Context(name="up", kind="sink", gateway_id="pi-01"))
    with pytest.raises(PermanentError, match="encrypted private key") as caught:
        await sink.connect()
    assert "\n" not in str(caught.value)
    assert "('" not in str(caught.value), "the text, not ssl.SSLError's tuple of it"
