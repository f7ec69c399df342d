"""The local web page, the JSON API and /metrics.

GET /            the status page (HTML, refreshes itself)
GET /healthz     200 "ok" while the gateway runs (no credentials needed)
GET /api/status  sources, routes, sinks with state and store depth, dead letters
GET /api/dead-letters?limit=50   the newest dead letters with their reasons
GET /metrics     Prometheus text format
GET /api/metrics the same values as JSON (gateway/metrics.py, docs/metrics.md)
POST /api/config/reload   read the config file again now (as SIGHUP does); answers
                 {"outcome": "applied"|"refused", "errors": [...]} after the attempt
GET /api/config  the config file's effective config, every secret written ***
PUT|DELETE /api/config/{sources|routes|sinks}/NAME   add, change or remove one
                 component in the config file (its comments and layout kept),
                 validated, written with the old text kept, then applied as a
                 reload: {"outcome", "errors", "version"}; 422 with the key paths
                 when invalid, 409 (the file put back) when not applied, 413 for
                 a body over 256 KiB. The logic is config_api.py's; this server
                 only reads the body and checks the credentials.

With `web.username`/`web.password` set, everything but /healthz asks for HTTP
basic authentication; without them the server only listens on localhost.

This is a small HTTP/1.1 server on asyncio streams rather than aiohttp: it
answers a handful of GET requests for one local page, and aiohttp alone would
add about 12 MB to a gateway that must idle under 50 MB on a Pi. Requests are
bounded (8 KiB head, 10 s to send it, 64 connections at once). When all 64 are
taken, a new connection closes the one that has waited longest for a request
(an idle keep-alive or a slow sender) rather than being refused, so a flood of
idle or slow connections cannot lock out /healthz or the page.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.config.model import WebSection
from gateway.core.errors import ConfigError
from gateway.engine.status import StatusView
from gateway.metrics import metrics_json, registry_for
from gateway.mqtt.broker import in_use
from gateway.web.config_api import MAX_BODY, ConfigApi
from gateway.web.page import STATUS_PAGE

MAX_HEAD = 8192
HEAD_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    503: "Service Unavailable",
}

Response = tuple[int, str, bytes]


class WebServer:
    """Serves the running gateway through `view`, across reloads: a reload swaps the
    engine behind the view, and the listening socket and open connections stay."""

    def __init__(
        self,
        view: StatusView,
        config: WebSection,
        reload: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        config_path: str | None = None,
    ) -> None:
        self.engine = view  # the store, and the snapshot of whichever engine runs now
        self.config = config
        self.metrics = registry_for(view)
        self._server: asyncio.Server | None = None
        # Open connections, and those waiting for a request head; both oldest first.
        self._open: dict[asyncio.StreamWriter, None] = {}
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        self._routes: dict[str, Callable[[dict[str, list[str]]], Awaitable[Response]]] = {
            "/": self.page,
            "/healthz": self.healthz,
            "/api/status": self.api_status,
            "/api/dead-letters": self.api_dead_letters,
            "/metrics": self.metrics_text,
            "/api/metrics": self.api_metrics,
        }
        self._reload = reload  # POST /api/config/reload; None: not offered
        self.config_api = ConfigApi(config_path, reload)  # /api/config, its edits
        self._expected_auth: str | None = None
        if config.username and config.password:
            token = f"{config.username}:{config.password}".encode()
            self._expected_auth = "Basic " + base64.b64encode(token).decode()

    async def start(self) -> str:
        """Listen on `web.listen`; an address that cannot be had is a ConfigError, one line."""
        listen = self.config.listen
        host, _, port = listen.rpartition(":")
        try:
            self._server = await asyncio.start_server(
                self._connection, host.strip("[]"), int(port), limit=MAX_HEAD
            )
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(in_use("web.listen", listen)) from err
            raise ConfigError(
                f"web.listen {listen}: cannot listen there ({err.strerror or err});"
                " set web.listen to an address of this machine, e.g. 127.0.0.1:8080"
            ) from err
        return f"http://{listen}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= MAX_CONNECTIONS:
            if not self._waiting:
                writer.close()  # all busy answering: refuse rather than queue without bound
                return
            # Make room by closing the connection that has waited longest for a request.
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            self._open.pop(oldest, None)
            oldest.transport.abort()
        self._open[writer] = None
        try:
            while await self._one_request(reader, writer):
                pass
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ):
            pass  # a client that went away or sent garbage; nothing to report
        finally:
            self._open.pop(writer, None)
            self._waiting.pop(writer, None)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        self._waiting[writer] = None
        async with asyncio.timeout(HEAD_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        self._waiting.pop(writer, None)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, (400, "text/plain", b"bad request\n"), close=True)
            return False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        url = urlsplit(target)
        handler = self._routes.get(url.path)
        if self.config_api.serves(url.path):
            answer = await self._config_request(method, url.path, headers, reader, writer)
            if answer is None:
                return False  # answered and closed
            response: Response = answer
        elif url.path == "/api/config/reload":
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_HEAD:  # nothing is read from the body: bound it
                await self._send(writer, (413, "text/plain", b"no body needed\n"), close=True)
                return False
            await reader.readexactly(length)
            if method != "POST":
                response = (405, "text/plain", b"only POST\n")
            elif self._reload is None:
                response = (404, "text/plain", b"no config file to reload\n")
            elif not self._authorized(headers.get("authorization", "")):
                response = (401, "text/plain", b"credentials needed\n")
            else:
                response = _json(await self._reload())
        elif method not in ("GET", "HEAD"):
            response = (405, "text/plain", b"only GET\n")
        elif handler is None:
            response = (404, "text/plain", b"not found\n")
        elif url.path != "/healthz" and not self._authorized(headers.get("authorization", "")):
            response = (401, "text/plain", b"credentials needed\n")
        else:
            response = await handler(parse_qs(url.query))
        await self._send(writer, response, close=not keep, head_only=method == "HEAD")
        return keep

    async def _config_request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> Response | None:
        """/api/config and its components (config_api.py); None when the answer was
        sent and the connection closed (a body too large, no credentials)."""
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if "transfer-encoding" in headers or not 0 <= length <= MAX_BODY:
            limit = f"a body of at most {MAX_BODY >> 10} KiB, with a Content-Length\n"
            await self._send(writer, (413, "text/plain", limit.encode()), close=True)
            return None
        if not self._authorized(headers.get("authorization", "")):
            await self._send(writer, (401, "text/plain", b"credentials needed\n"), close=True)
            return None
        async with asyncio.timeout(HEAD_TIMEOUT):
            body = await reader.readexactly(length)
        return await self.config_api.handle(method, path, body)

    def _authorized(self, given: str) -> bool:
        if self._expected_auth is None:
            return True
        return hmac.compare_digest(given.encode(), self._expected_auth.encode())

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, close: bool, head_only: bool = False
    ) -> None:
        status, content_type, body = response
        head = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
        ]
        if status == 401:
            head.append('WWW-Authenticate: Basic realm="edge-stream"')
        if close:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if not head_only:
            writer.write(body)
        await writer.drain()

    async def page(self, _query: dict[str, list[str]]) -> Response:
        return 200, "text/html; charset=utf-8", STATUS_PAGE.encode()

    async def healthz(self, _query: dict[str, list[str]]) -> Response:
        return 200, "text/plain", b"ok\n"

    async def api_status(self, _query: dict[str, list[str]]) -> Response:
        return _json(self.engine.snapshot().to_json())

    async def api_dead_letters(self, query: dict[str, list[str]]) -> Response:
        try:
            limit = max(1, min(int(query.get("limit", ["50"])[0]), 1000))
        except ValueError:
            return 400, "text/plain", b"limit must be a number\n"
        return _json(
            [
                {
                    "seq": d.seq,
                    "id": d.id,
                    "topic": d.topic,
                    "origin": d.origin,
                    "reason": d.reason,
                    "failed_at_ns": d.failed_at,
                    "bytes": d.bytes,
                }
                for d in await self.engine.store.dead_letters(limit)
            ]
        )

    async def metrics_text(self, _query: dict[str, list[str]]) -> Response:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics)

    async def api_metrics(self, _query: dict[str, list[str]]) -> Response:
        return _json(metrics_json(self.metrics))


def _json(value: Any) -> Response:
    return 200, "application/json", json.dumps(value, indent=1).encode()
