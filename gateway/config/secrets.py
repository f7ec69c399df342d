"""Secrets in config files, written `ENC(...)`: AES-256-GCM with a 32-byte key.

The key comes from `EDGE_STREAM_SECRET_KEY` (64 hex digits or base64) or from a
key file (`gateway.secret_key_file`, default `<data_dir>/secret.key`) that
`edge-stream secret keygen` writes with mode 0600. `edge-stream secret encrypt`
prints the `ENC(...)` form of a value to paste into the config, `secret decrypt`
the plaintext of one, and `secret rotate` re-encrypts a config's values with a
new key (see `rotate_text`; gateway/config/files.py writes the files).

A key file that its group or other users may read is refused with the line
`chmod 600 FILE` to run: the key opens every secret in the config.

Everything written `ENC(...)` must decrypt: an empty, cut-short or damaged value,
or an `ENC(` without its `)`, is a config error naming the key; it is never
used as literal text. A key that is there but unusable (not readable by the
user the gateway runs as, not text, not 32 bytes) is an error naming the file.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from pathlib import Path

from gateway.config import files

# cryptography is imported where it is used: most configs hold no secret, and it costs memory.

ENV_KEY = "EDGE_STREAM_SECRET_KEY"
KEY_FILE_MAX = 4 << 10  # a key is 64 characters; a larger file is not one
# Anything written ENC(...) is meant as a secret: it must decrypt, or the config is refused.
_ENC = re.compile(r"ENC\(([^)]*)\)")
_TOKEN = re.compile(r"[A-Za-z0-9_-]+=*")
_NONCE, _TAG = 12, 16
_AAD = b"edge-stream secret v1"


class SecretError(ValueError):
    """A secret could not be decrypted, or no key is available."""


class NoKeyError(SecretError):
    """A value holds ENC(...) and there is no key at all."""


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
    """The key from the environment, else from `key_file` if it exists, else None.

    SecretError says what is wrong with a key that is there but cannot be used:
    not readable by this user, not a file, not text, not 32 bytes.
    """
    if os.environ.get(ENV_KEY):
        try:
            return _decode_key(os.environ[ENV_KEY])
        except SecretError as err:
            raise SecretError(f"{ENV_KEY}: {err}") from err
    if not key_file or not os.path.lexists(key_file):
        return None
    try:
        raw = files.read_head(key_file, KEY_FILE_MAX + 1)
    except OSError as err:
        hint = ""
        if isinstance(err, PermissionError):
            hint = " (the user the gateway runs as must be able to read it)"
        raise SecretError(
            f"cannot read the key file {key_file}: {err.strerror or err}{hint}"
        ) from err
    if len(raw) > KEY_FILE_MAX:
        raise SecretError(
            f"the key file {key_file} is larger than {KEY_FILE_MAX >> 10} KiB; it must hold 64"
            " hex digits or base64"
        )
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as err:
        raise SecretError(
            f"the key file {key_file} is not text: byte {raw[err.start]:#04x} at offset"
            f" {err.start}; it must hold 64 hex digits or base64"
        ) from err
    try:
        key = _decode_key(text)
    except SecretError as err:
        raise SecretError(f"the key file {key_file}: {err}") from err
    mode = stat.S_IMODE(os.stat(key_file).st_mode)
    if mode & 0o044:
        raise SecretError(
            f"the key file {key_file} may be read by other users (mode {mode:04o}):"
            f" run 'chmod 600 {key_file}'"
        )
    return key


def generate_key_file(path: str | os.PathLike[str]) -> Path:
    """Write a new random key to `path` (mode 0600); refuse to overwrite one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    with os.fdopen(fd, "w") as f:
        f.write(key_text(AESGCM.generate_key(bit_length=256)))
    return target


def new_key() -> bytes:
    """A fresh random 32-byte key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM.generate_key(bit_length=256)


def key_text(key: bytes) -> str:
    """The key as a key file holds it."""
    return key.hex() + "\n"


def rotate_text(text: str, old: bytes, new: bytes) -> tuple[str, int]:
    """`text` with every ENC(...) re-encrypted from key `old` to key `new`, and how many.

    Text-level, so comments and formatting survive (YAML or JSON alike: what
    ENC(...) holds never needs quoting). An `ENC(` that is not a complete value,
    or one that `old` cannot open, is a SecretError naming its line; a text such as
    `ENC(...)` in a comment, which is not an encrypted value, is left as it is.
    """
    for number, line in enumerate(text.splitlines(), 1):
        try:
            check_form(line)
            for match in _ENC.finditer(line):
                if _TOKEN.fullmatch(match.group(1)):
                    decrypt(match.group(1), old)
        except SecretError as err:
            raise SecretError(f"line {number}: {err}") from err
    count = 0

    def swap(match: re.Match[str]) -> str:
        nonlocal count
        if not _TOKEN.fullmatch(match.group(1)):
            return match.group(0)
        count += 1
        return encrypt(decrypt(match.group(1), old), new)

    return _ENC.sub(swap, text), count


def encrypt(plaintext: str, key: bytes) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), _AAD)
    return f"ENC({base64.urlsafe_b64encode(nonce + sealed).decode()})"


def _check_token(token: str) -> None:
    if not token:
        raise SecretError(
            "ENC() is empty: paste the whole value that 'edge-stream secret encrypt' printed"
        )
    if not _TOKEN.fullmatch(token):
        raise SecretError(
            "ENC(...) holds characters that 'edge-stream secret encrypt' never writes"
            " (it writes letters, digits, '-', '_' and '=')"
        )


def decrypt(token: str, key: bytes) -> str:
    """The plaintext of the text inside ENC(...); SecretError if it is not one of ours."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _check_token(token)
    try:
        raw = base64.urlsafe_b64decode(token)
    except (ValueError, binascii.Error) as err:
        raise SecretError("ENC(...) is cut short or damaged: it is not complete base64") from err
    if len(raw) < _NONCE + _TAG:
        raise SecretError("ENC(...) is too short to be an encrypted value: is it cut short?")
    try:
        return AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], _AAD).decode()
    except (InvalidTag, ValueError) as err:
        raise SecretError("cannot decrypt ENC(...): wrong key or damaged value") from err


def has_secret(text: str) -> bool:
    return "ENC(" in text


SECRET_NAMES = ("password", "secret", "token", "tokens")  # tokens: the http source
# Request headers that carry credentials (the `headers` of the http sink and rest source)
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "apikey"}
)


def is_secret_key(name: object) -> bool:
    """A key whose value is a secret by its name: password, secret, token, *_password,
    *-token (a header such as X-Auth-Token), api_key, or a credential header."""
    key = str(name).lower()
    if key in SECRET_HEADERS or key == "api_key":
        return True
    return any(key == s or key.endswith((f"_{s}", f"-{s}")) for s in SECRET_NAMES)


def plaintexts(text: str, key: bytes) -> list[str]:
    """The plaintext of each ENC(...) inside `text` (which `reveal` opened already)."""
    return [decrypt(m.group(1), key) for m in _ENC.finditer(text)]


def masked_form(text: str) -> str:
    """`text` with each ENC(...) written `ENC(...)`: how a problem quotes a secret's value."""
    return _ENC.sub("ENC(...)", text)


def check_form(text: str) -> None:
    """SecretError if `text` holds an ENC( that is not a complete ENC(...)."""
    if "ENC(" in _ENC.sub("", text):
        raise SecretError("ENC( has no closing ')': paste the whole ENC(...) value")


def reveal(text: str, key: bytes | None) -> str:
    """Replace every ENC(...) inside `text` with its plaintext; SecretError if one cannot be."""
    check_form(text)
    for match in _ENC.finditer(text):
        _check_token(match.group(1))
    if key is None:
        raise NoKeyError(
            f"the value holds ENC(...) but no key is set: set {ENV_KEY} or create the key file"
            " with 'edge-stream secret keygen'"
        )
    return _ENC.sub(lambda m: decrypt(m.group(1), key), text)
