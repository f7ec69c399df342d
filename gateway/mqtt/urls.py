"""Where a broker is and how to reach it: MQTT URLs and TLS contexts (no I/O)."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from gateway.config.schema import mask_password


def parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) from mqtt://host:port or mqtts://host:port."""
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(
            f"{mask_password(url)!r} is not an mqtt://host:port or mqtts://host:port URL"
        )
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context
