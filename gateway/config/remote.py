"""Signed remote config: the envelope an operator signs and the gateway checks and applies.

A fleet server (or an operator's laptop, `edge-stream config push`) publishes on
`edge-stream/<gateway id>/config/set` a JSON envelope

    {"document": "<base64 bytes>", "signature": "<base64 Ed25519 signature of those bytes>"}

whose document is JSON: {"gateway": id, "version": int, "format": "yaml"|"json",
"config": "<the text of the config file>"}. The gateway holds only the public key
(`remote_config.public_key`), so one compromised gateway cannot sign configs for
the others. It refuses an envelope that is larger than MAX_PAYLOAD, unsigned,
wrongly signed, meant for another gateway, not newer than the last version applied
(kept in `<data_dir>/remote-config.json`, so a restart keeps it), in another format
than the config file, or whose config is invalid (the checks of `check-config`).
A refused document writes nothing.

A good one is written like a local edit (`files.save`: atomic, the replaced text
kept under config-history/) and applied through the gateway's reload path; if that
reload is refused or rolled back, the previous text is written back and the version
does not advance.

This module does no MQTT (gateway/mqtt/remote.py does); it is also the operator's
side: key generation and signing for the CLI. cryptography (8.6 MB of RSS: its Rust
extension carries its own OpenSSL) is imported when a key is read or made, so only by a
gateway with `remote_config` on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import files, secrets
from gateway.config.load import MAX_BYTES, load_data, parse_text, read_text
from gateway.config.model import Config, GatewaySection
from gateway.core.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

MAX_PAYLOAD = 1 << 20  # bytes of one envelope
STATE_FILE = "remote-config.json"
FORMATS = ("yaml", "json")

Outcome = dict[str, Any]  # {"outcome": "applied"|"refused"|"rolled_back", "errors", "changes"?}


def set_topic(gateway_id: str) -> str:
    return f"edge-stream/{gateway_id}/config/set"


def result_topic(gateway_id: str) -> str:
    return f"edge-stream/{gateway_id}/config/result"


def active_topic(gateway_id: str) -> str:
    return f"edge-stream/{gateway_id}/config/active"


class Refused(ConfigError):
    """A remote document the gateway will not apply; `version` is what it claimed, if any."""

    def __init__(self, problems: list[str] | str, version: int | None = None) -> None:
        super().__init__(problems)
        self.version = version


@dataclass(frozen=True)
class Document:
    """A signed config document, once its signature is verified."""

    gateway: str
    version: int
    format: str  # "yaml" | "json"
    config: str

    def to_bytes(self) -> bytes:
        body = {
            "gateway": self.gateway,
            "version": self.version,
            "format": self.format,
            "config": self.config,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# --- keys -----------------------------------------------------------------------------


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file or a file holding its 32 bytes in base64, or
    those 32 bytes in base64 given instead of a file (as `config keygen-signing` says)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw = files.read_head(path, secrets.KEY_FILE_MAX)
    except OSError as err:
        inline = _base64_key(str(path))
        if inline is not None:
            return Ed25519PublicKey.from_public_bytes(inline)
        raise ConfigError(
            f"cannot read the public key {path}: {err.strerror or err}; `edge-stream config"
            " keygen-signing` makes a key pair"
        ) from err
    if b"PRIVATE KEY-----" in raw:
        raise ConfigError(
            f"{path} holds a private key: give the gateway the public key (the .pub file"
            " `edge-stream config keygen-signing` wrote beside it), and keep the private"
            " key off the gateways"
        )
    if b"-----BEGIN" in raw:
        try:
            key = serialization.load_pem_public_key(raw)
        except ValueError as err:
            raise ConfigError(f"{path}: not a PEM public key ({err})") from err
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{path}: not an Ed25519 public key")
        return key
    try:
        data = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ConfigError(f"{path}: neither PEM nor base64 of an Ed25519 public key") from err
    if len(data) != 32:
        raise ConfigError(f"{path}: {len(data)} bytes after base64, an Ed25519 public key has 32")
    return Ed25519PublicKey.from_public_bytes(data)


def _base64_key(text: str) -> bytes | None:
    """The 32 bytes of a key written in base64, or None if `text` is not that."""
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if len(data) == 32 else None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The operator's Ed25519 signing key (PEM, as `config keygen-signing` writes it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = (
        "a public key, which only checks signatures: sign with the private key"
        " `edge-stream config keygen-signing` wrote (the file without .pub)"
    )
    try:
        raw = files.read_head(path, secrets.KEY_FILE_MAX)
    except OSError as err:
        if _base64_key(str(path)) is not None:  # the public key's base64 given as --key
            raise ConfigError(f"--key is {public}") from err
        raise ConfigError(f"cannot read the signing key {path}: {err.strerror or err}") from err
    if b"PUBLIC KEY-----" in raw or _base64_key(raw.decode("ascii", "replace")) is not None:
        raise ConfigError(f"{path} holds {public}")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: not an unencrypted PEM private key") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key")
    return key


def keygen(out: str | Path) -> tuple[Path, str]:
    """Write a new private key to `out` (0600) and its public key to `out`.pub (PEM), never
    over an existing file: a pair is written whole or not at all. Returns the public key's
    path and the key in base64."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Path(out)
    if not private.name or str(out).endswith("/") or private.is_dir():
        # `--out .` was a ValueError traceback ("has an empty name")
        folder = str(out).rstrip("/") or "/"
        raise ConfigError(
            f"{out} is a folder: give the private key's file name, e.g."
            f" {Path(folder) / 'fleet.key'} (its public key goes beside it, as .pub)"
        )
    public = private.with_name(private.name + ".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = key.public_key()
    pub_pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    made: list[Path] = []
    try:
        for path, data, mode in ((private, pem, 0o600), (public, pub_pem, 0o644)):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError as err:
                raise ConfigError(f"{path} exists; keygen-signing never overwrites a key") from err
            except OSError as err:
                raise ConfigError(f"cannot create {path}: {err.strerror or err}") from err
            made.append(path)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    except BaseException:
        for path in made:  # half a pair is no use, and would be refused as existing
            path.unlink(missing_ok=True)
        raise
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public, base64.b64encode(raw).decode()


# --- envelopes --------------------------------------------------------------------------


def format_of(path: str | Path) -> str:
    """The format a config file is read in: JSON for *.json, YAML otherwise (as load does)."""
    return "json" if str(path).endswith(".json") else "yaml"


# The largest version: every JSON reader keeps it exact. One past it, applied by mistake,
# made the gateway refuse every version a signer would use after it.
VERSION_MAX = 2**53 - 1


def sign(document: Document, key: Ed25519PrivateKey) -> bytes:
    """The envelope for `document`, signed with `key`; ConfigError if it is too large, or
    for a gateway id or version no gateway takes (open_envelope, GatewaySection.check)."""
    for _key, problem in GatewaySection(id=document.gateway).check():
        raise ConfigError(f"the gateway id {problem}")
    if not 0 <= document.version <= VERSION_MAX:
        raise ConfigError(
            f"version {document.version}: a gateway takes a whole number from 0 to"
            f" {VERSION_MAX}, newer than the last it applied (default: the unix time now)"
        )
    data = document.to_bytes()
    envelope = json.dumps(
        {
            "document": base64.b64encode(data).decode(),
            "signature": base64.b64encode(key.sign(data)).decode(),
        }
    ).encode()
    if len(envelope) > MAX_PAYLOAD:
        raise ConfigError(
            f"the signed envelope is {len(envelope)} bytes; a gateway takes at most"
            f" {MAX_PAYLOAD} (1 MiB)"
        )
    return envelope


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise Refused(f"the envelope has no {what}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise Refused(f"the envelope's {what} is not base64") from err


def open_envelope(payload: bytes, key: Ed25519PublicKey, gateway_id: str) -> Document:
    """Verify an envelope and return its document, or raise Refused saying why."""
    if len(payload) > MAX_PAYLOAD:
        raise Refused(f"the payload is {len(payload)} bytes; at most {MAX_PAYLOAD} are taken")
    try:
        envelope = json.loads(payload)
    except (ValueError, RecursionError) as err:
        raise Refused("the payload is not a JSON envelope {document, signature}") from err
    if not isinstance(envelope, dict):
        raise Refused("the payload is not a JSON envelope {document, signature}")
    data = _b64(envelope.get("document"), "document")
    claimed = _claimed_version(data)
    if "signature" not in envelope:
        raise Refused("the document is not signed", claimed)
    signature = _b64(envelope.get("signature"), "signature")
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature, data)
    except InvalidSignature as err:
        raise Refused(
            "the signature does not verify with remote_config.public_key", claimed
        ) from err
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise Refused("the signed document is not JSON") from err
    if not isinstance(body, dict):
        raise Refused("the signed document is not a JSON object")
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= VERSION_MAX:
        raise Refused(f"the document's version is not a whole number from 0 to {VERSION_MAX}")
    target, fmt, text = body.get("gateway"), body.get("format"), body.get("config")
    if target != gateway_id:
        raise Refused(f"the document is for gateway {target!r}, this is {gateway_id!r}", version)
    if fmt not in FORMATS:
        raise Refused(f"the document's format is {fmt!r}; 'yaml' or 'json'", version)
    if not isinstance(text, str):
        raise Refused("the document has no config text", version)
    try:
        text.encode()
    except UnicodeEncodeError as err:
        # JSON lets a string escape half a surrogate pair ("\ud800"), which no file holds:
        # hashing or writing the text crashed the channel, and the pusher got no answer.
        raise Refused(
            f"the document's config text holds a lone surrogate (U+{ord(text[err.start]):04X}"
            f" at character {err.start}), which is not text a config file can hold",
            version,
        ) from err
    return Document(target, version, fmt, text)


def _claimed_version(data: bytes) -> int | None:
    """The version an unverified document claims, only to label the answer."""
    try:
        version = json.loads(data).get("version")
    except (ValueError, RecursionError, AttributeError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


# --- the last version applied -----------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """The last remote version applied, as kept in <data_dir>/remote-config.json."""

    version: int
    hash: str
    applied_at: float


def read_state(data_dir: str | Path) -> Applied | None:
    path = Path(data_dir) / STATE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Applied(int(raw["version"]), str(raw["hash"]), float(raw["applied_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        # Losing it would let an older signed config be replayed: refuse to go on blind.
        raise ConfigError(
            f"{path} cannot be read ({err}); it holds the last remote config version"
            ' applied: restore it, or write {"version": N, "hash": "", "applied_at": 0}'
        ) from err


def write_state(data_dir: str | Path, applied: Applied) -> None:
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    body = {"version": applied.version, "hash": applied.hash, "applied_at": applied.applied_at}
    files.write_atomic(folder / STATE_FILE, json.dumps(body) + "\n")


# --- validating and applying ------------------------------------------------------------


def validate(document: Document, config_path: str) -> Config:
    """The document's config, checked as `check-config` checks a file (ConfigError)."""
    if document.format != format_of(config_path):
        raise ConfigError(
            f"the document is {document.format}, the gateway's config file {config_path} is"
            f" {format_of(config_path)}"
        )
    if len(document.config.encode()) > MAX_BYTES:
        raise ConfigError(f"the config text is larger than {MAX_BYTES} bytes")
    source = f"remote-v{document.version}.{document.format}"
    data, lines = parse_text(document.config, source)
    if not data:
        raise ConfigError(f"{source}:1: the config is empty")
    return load_data(data, source, lines)


async def apply(
    document: Document,
    *,
    config_path: str,
    data_dir: str,
    last_version: int | None,
    reload: Callable[[], Awaitable[Outcome]],
    settle: Callable[[str], None],
) -> tuple[Outcome, Applied | None]:
    """Check `document`, write it to the config file, reload; put the old text back when
    the reload does not apply it. Returns the outcome and, when applied, the new state
    (already written under the new config's data_dir)."""
    if last_version is not None and document.version <= last_version:
        return _refused(
            f"version {document.version} is not newer than the last applied, {last_version}"
        ), None
    warnings: list[str] = []
    try:
        # Parsing and validating walk the whole text (and decrypt its secrets): off the loop.
        config = await asyncio.to_thread(validate, document, config_path)
        old = await asyncio.to_thread(read_text, config_path)
        await asyncio.to_thread(files.save, config_path, document.config, data_dir)
    except ConfigError as err:
        return _refused(*err.problems), None
    except files.NotDurable as err:  # written all the same: reloaded as such, and said
        warnings.append(files.unsaved(err, config_path))
    except OSError as err:
        return _refused(f"cannot write {config_path}: {err.strerror or err}"), None
    try:
        outcome = await reload()
    except asyncio.CancelledError:
        files.put_back(config_path, old)  # stopping meanwhile: the file must not change
        raise
    except ConfigError as err:  # the reload path gave up with an error, not an outcome
        outcome = {"outcome": "rolled_back", "errors": list(err.problems)}
    if outcome.get("outcome") != "applied":
        # On the disk that failed the write's sync, putting back fails it too: the old
        # text is back all the same, settled, and the document answered (a QoS 1 one left
        # unacked was sent again at each reconnect, written and reloaded again, for ever).
        put = await asyncio.to_thread(files.put_back, config_path, old)
        settle(old)
        warnings += [line for line in put if line not in warnings]
    if warnings:
        outcome = {**outcome, "errors": [*outcome.get("errors", []), *warnings]}
    if outcome.get("outcome") != "applied":
        return outcome, None
    applied = Applied(document.version, files.text_hash(document.config), time.time())
    try:
        await asyncio.to_thread(write_state, config.gateway.data_dir, applied)
    except OSError as err:  # applied all the same; the version holds until a restart
        errors = [f"the version could not be kept in {config.gateway.data_dir}: {err}"]
        outcome = {**outcome, "errors": [*outcome.get("errors", []), *errors]}
    return outcome, applied


def _refused(*errors: str) -> Outcome:
    return {"outcome": "refused", "errors": list(errors)}
