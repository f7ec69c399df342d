"""Broker URLs: parsed without I/O, and never printed with their password."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gateway.mqtt.broker import GatewayBroker
from gateway.mqtt.urls import (
    TlsFilesError,
    client_cert_problems,
    files_tls_context,
    login,
    parse_url,
)

pytestmark = pytest.mark.unit


def test_parse_url() -> None:
    assert parse_url("mqtt://broker:1884") == ("broker", 1884, False)
    assert parse_url("mqtts://u:p%2Fw@broker") == ("broker", 8883, True)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mqtt://gw:1/Pw0rdQz@broker:1883", "'mqtt://gw:***@broker:1883'"),
        ("mqtt://broker:1883/plant", "'mqtt://broker:1883/plant'"),
        ("mqtts://broker?x=1", "'mqtts://broker?x=1'"),
    ],
)
def test_a_path_or_query_after_host_and_port_is_refused(url: str, masked: str) -> None:
    """Ignored before: a password with an unencoded / (gw:1/Pw0rdQz) made host gw, port 1;
    a path meant as a topic prefix did nothing."""
    with pytest.raises(ValueError) as caught:
        parse_url(url)
    assert str(caught.value).startswith(
        f"{masked} is not an mqtt://host:port or mqtts://host:port URL (MQTT has no path"
    )
    assert parse_url("mqtt://broker:1883/") == ("broker", 1883, False)


def test_a_user_name_and_password_in_the_url_are_used_unless_the_keys_give_them() -> None:
    # They were dropped without a word: the client connected anonymously and the broker
    # answered Not authorized, while the startup line showed mqtt://gw:***@host.
    assert login("mqtts://u:p%2Fw@broker", None, None) == ("u", "p/w")
    assert login("mqtt://gw@broker", None, "key-pw") == ("gw", "key-pw")
    assert login("mqtt://gw:url-pw@broker", "other", "key-pw") == ("other", "key-pw")
    assert login("mqtt://broker", None, None) == (None, None)


@pytest.mark.parametrize(
    "url",
    ["mqtt://u:Pw0rdQz/Pw0rdQz@host:1883", "mqtt://u:Pw0rdQz#x@host", "mqtt://u:p@host:99999"],
)
def test_a_bad_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_url(url)
    assert "Pw0rdQz" not in str(caught.value) and "p@" not in str(caught.value)
    assert "'mqtt://u:***@" in str(caught.value)
    assert caught.value.__cause__ is None  # a traceback would print urllib's message


def test_the_gateway_broker_is_shown_without_its_password() -> None:
    broker = GatewayBroker("mqtt://gw:Pw0rdQz@10.0.0.5:1883", None, ["sources.plant"])
    assert broker.describe() == "MQTT broker mqtt://gw:***@10.0.0.5:1883"
    assert broker.status()["url"] == "mqtt://gw:***@10.0.0.5:1883"
    assert broker.url == "mqtt://gw:Pw0rdQz@10.0.0.5:1883"  # what the components connect to


def test_a_tls_file_path_with_a_nul_is_a_tls_files_error() -> None:
    # open() raises ValueError ("embedded null byte"), not OSError: the MQTT source and
    # the status channel crashed on it instead of naming the file in their error.
    with pytest.raises(TlsFilesError, match=r"cannot use the TLS files \(ca_file '/ca\\x00"):
        files_tls_context((("ca_file", "/ca\0.pem"), ("cert_file", None), ("key_file", None)))


def test_a_named_pipe_as_a_client_certificate_is_a_problem_not_a_hang(tmp_path: Path) -> None:
    # the check read it with open(): with a writer that stays, check-config hung
    path = tmp_path / "client.pem"
    os.mkfifo(path)
    writer = os.open(path, os.O_RDWR)
    os.write(writer, b"-----BEGIN PRIVATE KEY-----\n")
    found: list[list[tuple[str, str]]] = []
    reader = threading.Thread(
        target=lambda: found.append(list(client_cert_problems(str(path), None))), daemon=True
    )
    reader.start()
    reader.join(10)
    os.close(writer)  # its EOF, if it waited
    reader.join(10)
    assert found == [[("cert_file", f"{path} cannot be read (not a regular file)")]]


def test_a_combined_client_pem_whose_key_follows_a_long_chain_is_left_to_openssl(
    tmp_path: Path,
) -> None:
    # the key was looked for in the first 1 MiB only: "holds no private key"
    cert = b"-----BEGIN CERTIFICATE-----\n" + b"A" * 64 + b"\n-----END CERTIFICATE-----\n"
    path = tmp_path / "combined.pem"
    path.write_bytes(cert * (1100 * 1024 // len(cert)) + b"-----BEGIN PRIVATE KEY-----\n")
    assert list(client_cert_problems(str(path), None)) == []
    path.write_bytes(cert)
    assert [k for k, _ in client_cert_problems(str(path), None)] == ["cert_file"]
