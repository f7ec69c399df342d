"""Telling a TLS refusal an operator must fix from trouble that may pass (shared by sinks)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

# TLS alerts by which a server refuses the client's certificate (OpenSSL's reason names).
CERTIFICATE_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "CERTIFICATE_UNKNOWN",
    "UNKNOWN_CA",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "UNSUPPORTED_CERTIFICATE",
    "ACCESS_DENIED",
)


def error_chain(err: BaseException) -> Iterator[BaseException]:
    """`err` and what caused it (client libraries wrap socket and TLS errors in their own)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def certificate_refusal(
    cause: BaseException, key_hint: str = "cert_file", ca_hint: str = "ca_file"
) -> str | None:
    """Why `cause` means a certificate problem that retrying cannot fix, or None."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted: {cause.verify_message} (check {ca_hint})"
    if isinstance(cause, ssl.SSLError) and any(
        alert in (cause.reason or "") for alert in CERTIFICATE_ALERTS
    ):
        return f"it refused our TLS client certificate ({cause.reason}; check {key_hint})"
    return None
