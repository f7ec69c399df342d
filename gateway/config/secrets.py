"""Secrets in config files, written `ENC(...)`: AES-256-GCM with a 32-byte key.

The key comes from `EDGE_STREAM_SECRET_KEY` (64 hex digits or base64) or from a
key file (`gateway.secret_key_file`, default `<data_dir>/secret.key`) that
`edge-stream secret keygen` writes with mode 0600. `edge-stream secret encrypt`
prints the `ENC(...)` form of a value to paste into the config.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

# cryptography is imported where it is used: most configs hold no secret, and it costs memory.

ENV_KEY = "EDGE_STREAM_SECRET_KEY"
_ENC = re.compile(r"ENC\(([A-Za-z0-9+/=_-]+)\)")
_AAD = b"edge-stream secret v1"


class SecretError(ValueError):
    """A secret could not be decrypted, or no key is available."""


def _decode_key(text: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as err:
        raise SecretError("the secret key must be 32 bytes as 64 hex digits or base64") from err
    if len(key) != 32:
        raise SecretError(f"the secret key must be 32 bytes, this one has {len(key)}")
    return key


def load_key(key_file: str | os.PathLike[str] | None) -> bytes | None:
    """The key from the environment, else from `key_file` if it exists, else None."""
    if os.environ.get(ENV_KEY):
        return _decode_key(os.environ[ENV_KEY])
    if key_file and Path(key_file).is_file():
        return _decode_key(Path(key_file).read_text())
    return None


def generate_key_file(path: str | os.PathLike[str]) -> Path:
    """Write a new random key to `path` (mode 0600); refuse to overwrite one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(AESGCM.generate_key(bit_length=256).hex() + "\n")
    return target


def encrypt(plaintext: str, key: bytes) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), _AAD)
    return f"ENC({base64.urlsafe_b64encode(nonce + sealed).decode()})"


def decrypt(token: str, key: bytes) -> str:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = base64.urlsafe_b64decode(token)
    try:
        return AESGCM(key).decrypt(raw[:12], raw[12:], _AAD).decode()
    except (InvalidTag, ValueError) as err:
        raise SecretError("cannot decrypt ENC(...): wrong key or damaged value") from err


def has_secret(text: str) -> bool:
    return "ENC(" in text


def reveal(text: str, key: bytes | None) -> str:
    """Replace every ENC(...) inside `text` with its plaintext."""
    if key is None:
        raise SecretError(
            f"the value holds ENC(...) but no key is set: set {ENV_KEY} or create the key file"
            " with 'edge-stream secret keygen'"
        )
    return _ENC.sub(lambda m: decrypt(m.group(1), key), text)
