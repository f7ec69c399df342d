"""Signed remote config documents: keys, envelopes, verification, and applying one to a file."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import files, remote
from gateway.core.errors import ConfigError
from tests.disk import fail_fsync_of

pytestmark = pytest.mark.unit

CONFIG = """\
# the plant's gateway
gateway: {id: pi-01, data_dir: DATA}
sources: {host: {type: system, interval: 1s}}
routes: {all: {match: "#", sinks: [out]}}
sinks: {out: {type: file, path: out.jsonl}}
"""


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    remote.keygen(tmp_path / "op.key")
    return remote.load_private_key(tmp_path / "op.key")


def _doc(version: int = 5, gateway: str = "pi-01", config: str = CONFIG) -> remote.Document:
    return remote.Document(gateway, version, "yaml", config)


def test_keygen_writes_a_private_key_0600_and_a_public_key_the_gateway_reads(
    tmp_path: Path,
) -> None:
    public, b64 = remote.keygen(tmp_path / "op.key")
    assert (tmp_path / "op.key").stat().st_mode & 0o777 == 0o600
    assert public == tmp_path / "op.key.pub"
    from_pem = remote.load_public_key(public)
    (tmp_path / "raw.pub").write_text(b64 + "\n")
    from_raw = remote.load_public_key(tmp_path / "raw.pub")
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert from_pem.public_bytes(*raw) == from_raw.public_bytes(*raw)
    with pytest.raises(ConfigError, match="never overwrites"):
        remote.keygen(tmp_path / "op.key")
    # keygen-signing prints it saying "remote_config.public_key takes the file or this";
    # written in the config instead of a file name, it was "cannot read the public key"
    inline = remote.load_public_key(b64)
    assert inline.public_bytes(*raw) == from_pem.public_bytes(*raw)
    with pytest.raises(ConfigError, match="cannot read the public key"):
        remote.load_public_key(base64.b64encode(b"x" * 31).decode())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64 at all!", "neither PEM nor base64"),
        (base64.b64encode(b"x" * 31).decode(), "31 bytes after base64"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
    ],
)
def test_a_public_key_file_that_is_not_one_is_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "k.pub").write_text(text)
    with pytest.raises(ConfigError, match=message):
        remote.load_public_key(tmp_path / "k.pub")


def test_the_private_key_given_as_the_public_key_is_named_so(tmp_path: Path) -> None:
    # `public_key: fleet.key` (the file beside fleet.key.pub) was refused with the
    # library's words, "Valid PEM but no BEGIN PUBLIC KEY/END PUBLIC KEY delimiters",
    # not saying that it is the private key, which belongs off the gateways
    remote.keygen(tmp_path / "fleet.key")
    with pytest.raises(ConfigError) as refused:
        remote.load_public_key(tmp_path / "fleet.key")
    assert str(refused.value) == (
        f"{tmp_path / 'fleet.key'} holds a private key: give the gateway the public key"
        " (the .pub file `edge-stream config keygen-signing` wrote beside it), and keep"
        " the private key off the gateways"
    )


def test_the_public_key_given_to_sign_is_named_so(tmp_path: Path) -> None:
    # `config sign --key fleet.key.pub` said "not an unencrypted PEM private key"
    public, b64 = remote.keygen(tmp_path / "fleet.key")
    (tmp_path / "raw.pub").write_text(b64 + "\n")
    for given in (public, tmp_path / "raw.pub"):
        with pytest.raises(ConfigError) as refused:
            remote.load_private_key(given)
        assert str(refused.value) == (
            f"{given} holds a public key, which only checks signatures: sign with the"
            " private key `edge-stream config keygen-signing` wrote (the file without .pub)"
        )
    with pytest.raises(ConfigError) as refused:  # the key itself, as public_key takes it
        remote.load_private_key(b64)
    assert str(refused.value).startswith("--key is a public key, which only checks signatures")
    remote.load_private_key(tmp_path / "fleet.key")


def test_a_signed_envelope_opens_to_its_document(key: Ed25519PrivateKey) -> None:
    document = _doc()
    opened = remote.open_envelope(remote.sign(document, key), key.public_key(), "pi-01")
    assert opened == document


def _refusal(payload: bytes, key: Ed25519PrivateKey, gateway: str = "pi-01") -> remote.Refused:
    with pytest.raises(remote.Refused) as info:
        remote.open_envelope(payload, key.public_key(), gateway)
    return info.value


def _envelope(data: bytes, signature: bytes | None) -> bytes:
    body: dict[str, Any] = {"document": base64.b64encode(data).decode()}
    if signature is not None:
        body["signature"] = base64.b64encode(signature).decode()
    return json.dumps(body).encode()


def test_unsigned_wrongly_signed_and_tampered_envelopes_are_refused(
    key: Ed25519PrivateKey,
) -> None:
    data = _doc(7).to_bytes()
    unsigned = _refusal(_envelope(data, None), key)
    assert unsigned.problems == ["the document is not signed"] and unsigned.version == 7

    other = Ed25519PrivateKey.generate()
    wrong = _refusal(_envelope(data, other.sign(data)), key)
    assert "does not verify" in wrong.problems[0] and wrong.version == 7

    tampered = data.replace(b'"version":7', b'"version":8')
    assert "does not verify" in _refusal(_envelope(tampered, key.sign(data)), key).problems[0]


def test_a_document_for_another_gateway_is_refused(key: Ed25519PrivateKey) -> None:
    refused = _refusal(remote.sign(_doc(gateway="pi-02"), key), key)
    assert refused.problems == ["the document is for gateway 'pi-02', this is 'pi-01'"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"x" * (remote.MAX_PAYLOAD + 1), "at most 1048576"),
        (b"{not json", "not a JSON envelope"),
        (b"[1, 2]", "not a JSON envelope"),
        (b'{"document": "***", "signature": "AA=="}', "document is not base64"),
    ],
)
def test_payloads_that_are_not_envelopes_are_refused(
    key: Ed25519PrivateKey, payload: bytes, message: str
) -> None:
    assert message in _refusal(payload, key).problems[0]


def test_a_signed_document_with_a_bad_version_or_format_is_refused(
    key: Ed25519PrivateKey,
) -> None:
    for body, message in [
        ({"gateway": "pi-01", "version": "3", "format": "yaml", "config": ""}, "version"),
        ({"gateway": "pi-01", "version": True, "format": "yaml", "config": ""}, "version"),
        ({"gateway": "pi-01", "version": 2**53, "format": "yaml", "config": ""}, "version"),
        ({"gateway": "pi-01", "version": 3, "format": "toml", "config": ""}, "format"),
        ({"gateway": "pi-01", "version": 3, "format": "yaml"}, "no config text"),
        # a JSON escape of half a surrogate pair: the text cannot be hashed nor written
        ({"gateway": "pi-01", "version": 3, "format": "yaml", "config": "x: \ud800"}, "surrogate"),
    ]:
        data = json.dumps(body).encode()
        assert message in _refusal(_envelope(data, key.sign(data)), key).problems[0]


def test_sign_refuses_an_envelope_over_the_bound(key: Ed25519PrivateKey) -> None:
    with pytest.raises(ConfigError, match="at most 1048576"):
        remote.sign(_doc(config="#" * remote.MAX_PAYLOAD), key)


# --- applying -----------------------------------------------------------------------------


def _setup(tmp_path: Path) -> tuple[Path, str]:
    data_dir = tmp_path / "data"
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.replace("DATA", str(data_dir)))
    return path, str(data_dir)


def _apply(
    path: Path, data_dir: str, document: remote.Document, last: int | None, outcome: str
) -> tuple[dict[str, Any], remote.Applied | None, list[str], list[str]]:
    """Apply through a reload callable answering `outcome`; also what the reload read
    and what `settle` was told."""
    read: list[str] = []
    settled: list[str] = []

    async def reload() -> dict[str, Any]:
        read.append(await asyncio.to_thread(path.read_text))
        if outcome == "raises":  # the reload path gave up with an error, not an outcome
            raise ConfigError("web.listen 127.0.0.1:80 is in use by another program")
        return {"outcome": outcome, "errors": [] if outcome == "applied" else ["it failed"]}

    answer, applied = asyncio.run(
        remote.apply(
            document,
            config_path=str(path),
            data_dir=data_dir,
            last_version=last,
            reload=reload,
            settle=settled.append,
        )
    )
    return answer, applied, read, settled


def test_a_good_document_is_saved_with_history_and_its_version_kept(tmp_path: Path) -> None:
    path, data_dir = _setup(tmp_path)
    old = path.read_text()
    new = old.replace("out.jsonl", "b.jsonl")
    answer, applied, read, _ = _apply(path, data_dir, _doc(9, config=new), 4, "applied")
    assert answer["outcome"] == "applied" and read == [new]
    assert path.read_text() == new
    assert [v.hash for v in files.versions(data_dir)] == [files.text_hash(old)]
    assert applied is not None and applied.version == 9
    assert remote.read_state(data_dir) == applied
    assert applied.hash == files.text_hash(new)


@pytest.mark.parametrize("outcome", ["refused", "rolled_back", "raises"])
def test_a_reload_that_does_not_apply_puts_the_old_text_back(tmp_path: Path, outcome: str) -> None:
    path, data_dir = _setup(tmp_path)
    old = path.read_text()
    new = old.replace("out.jsonl", "b.jsonl")
    answer, applied, read, settled = _apply(path, data_dir, _doc(9, config=new), 4, outcome)
    assert answer["outcome"] == outcome.replace("raises", "rolled_back") and read == [new]
    assert answer["errors"], answer
    assert path.read_text() == old and settled == [old]
    assert applied is None and remote.read_state(data_dir) is None


def test_an_old_version_or_an_invalid_config_writes_nothing(tmp_path: Path) -> None:
    path, data_dir = _setup(tmp_path)
    old = path.read_text()
    answer, _, read, _ = _apply(path, data_dir, _doc(4, config=old + "\n"), 4, "applied")
    assert answer == {
        "outcome": "refused",
        "errors": ["version 4 is not newer than the last applied, 4"],
    }
    invalid = old.replace("type: file", "type: nowhere")
    answer, _, read2, _ = _apply(path, data_dir, _doc(5, config=invalid), 4, "applied")
    assert answer["outcome"] == "refused" and read == read2 == []
    assert any(e.startswith("remote-v5.yaml:5: sinks.out") for e in answer["errors"]), answer
    as_json = remote.Document("pi-01", 6, "json", json.dumps(yaml.safe_load(old)))
    answer, _, _, _ = _apply(path, data_dir, as_json, 4, "applied")
    assert "the document is json" in answer["errors"][0]
    assert path.read_text() == old and files.versions(data_dir) == []
    assert remote.read_state(data_dir) is None


def test_a_damaged_state_file_is_an_error_not_version_zero(tmp_path: Path) -> None:
    (tmp_path / remote.STATE_FILE).write_text("{")
    with pytest.raises(ConfigError, match="last remote config version"):
        remote.read_state(tmp_path)


def test_keygen_never_overwrites_a_public_key_and_writes_a_pair_or_nothing(
    tmp_path: Path,
) -> None:
    # An existing op.key.pub (the key the gateways hold) was replaced without a word; a
    # .pub that could not be written was an IsADirectoryError traceback that left op.key
    # behind, so the next try said "op.key exists".
    (tmp_path / "op.key.pub").write_text("the gateways' key\n")
    with pytest.raises(ConfigError, match=r"op\.key\.pub exists; keygen-signing never"):
        remote.keygen(tmp_path / "op.key")
    assert (tmp_path / "op.key.pub").read_text() == "the gateways' key\n"
    (tmp_path / "dir.key.pub").mkdir()
    (tmp_path / "dir.key.pub" / "x").touch()
    with pytest.raises(ConfigError, match=r"dir\.key\.pub exists"):
        remote.keygen(tmp_path / "dir.key")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.key.pub", "op.key.pub"]


def test_a_config_written_but_not_synced_is_reloaded_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsync of the config's folder failed (EIO) after the new text was renamed over
    the file: the document was answered "refused: cannot write", with no reload, while
    the file held its text."""

    path, data_dir = _setup(tmp_path)
    new = path.read_text().replace("out.jsonl", "b.jsonl")
    fail_fsync_of(monkeypatch, tmp_path)  # the config's folder
    answer, applied, read, _ = _apply(path, data_dir, _doc(9, config=new), 4, "applied")
    assert answer["outcome"] == "applied" and read == [new] and path.read_text() == new
    assert answer["errors"] == [
        f"{path}: the file was replaced, but its folder could not be synced to the disk"
        " (Input/output error), so a power cut may yet bring back the old text: see to the"
        " disk (dmesg says why)"
    ]
    assert applied is not None and remote.read_state(data_dir) == applied


@pytest.mark.parametrize("outcome", ["refused", "rolled_back"])
def test_a_document_refused_is_put_back_and_answered_on_a_disk_that_cannot_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    """The fsync of the config's folder fails (EIO) and the reload refuses the document:
    putting the old text back failed the same fsync and raised out of `apply`, unsettled
    and unanswered; the connection dropped as "cannot reach the broker", and the QoS 1
    document, never acked, came back at each reconnect to be written and reloaded again."""

    path, data_dir = _setup(tmp_path)
    old = path.read_text()
    new = old.replace("out.jsonl", "b.jsonl")
    fail_fsync_of(monkeypatch, tmp_path)  # the config's folder
    answer, applied, read, settled = _apply(path, data_dir, _doc(9, config=new), 4, outcome)
    assert answer["outcome"] == outcome and applied is None
    assert read == [new] and path.read_text() == old and settled == [old]
    assert answer["errors"] == [
        "it failed",
        f"{path}: the file was replaced, but its folder could not be synced to the disk"
        " (Input/output error), so a power cut may yet bring back the old text: see to the"
        " disk (dmesg says why)",
    ]
    assert remote.read_state(data_dir) is None
