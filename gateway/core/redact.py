"""How a secret may be written inside other text: what to look for to mask it."""

from __future__ import annotations

import html
import json
from urllib.parse import quote, quote_plus


def written_forms(secret: str) -> set[str]:
    """`secret` as is, percent-encoded (in a URL or a form), JSON-escaped (with `\\/` as
    well, as PHP writes a slash) and HTML-escaped: the ways an error page or a message
    can quote it."""
    in_json = json.dumps(secret, ensure_ascii=False)[1:-1]
    return {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        in_json,
        in_json.replace("/", "\\/"),
        json.dumps(secret)[1:-1],
        html.escape(secret),
    }
