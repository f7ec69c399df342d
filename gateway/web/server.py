"""The local web page, the JSON API and /metrics (aiohttp).

GET /            the status page (HTML, refreshes itself)
GET /healthz     200 "ok" while the engine runs (no credentials needed)
GET /api/status  sources, routes, sinks with state and store depth, dead letters
GET /api/dead-letters?limit=50   the newest dead letters with their reasons
GET /metrics     Prometheus text format

With `web.username`/`web.password` set, everything but /healthz asks for HTTP
basic authentication; without them the server only listens on localhost.
"""

from __future__ import annotations

import base64
import hmac
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.config.model import WebSection
from gateway.metrics import registry_for
from gateway.web.page import STATUS_PAGE

if TYPE_CHECKING:
    from gateway.engine.pipeline import Engine


class WebServer:
    def __init__(self, engine: Engine, config: WebSection) -> None:
        self.engine = engine
        self.config = config
        self.metrics = registry_for(engine)
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self.page)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_get("/api/dead-letters", self.api_dead_letters)
        app.router.add_get("/metrics", self.metrics_text)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/healthz" or not (self.config.username and self.config.password):
            return await handler(request)  # type: ignore[no-any-return]
        expected = base64.b64encode(
            f"{self.config.username}:{self.config.password}".encode()
        ).decode()
        given = request.headers.get("Authorization", "").removeprefix("Basic ").strip()
        if not hmac.compare_digest(given, expected):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="edge"'})
        return await handler(request)  # type: ignore[no-any-return]

    async def start(self) -> str:
        host, _, port = self.config.listen.rpartition(":")
        host = host.strip("[]")
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, int(port))
        await site.start()
        return f"http://{self.config.listen}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def page(self, _request: web.Request) -> web.Response:
        return web.Response(text=STATUS_PAGE, content_type="text/html")

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def api_status(self, _request: web.Request) -> web.Response:
        return web.json_response(self.engine.status(), dumps=lambda o: json.dumps(o, indent=1))

    async def api_dead_letters(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "50")), 1000))
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be a number") from None
        rows = await self.engine.store.query(
            "SELECT seq, id, topic, origin, reason, failed_at, length(content)"
            " FROM dead_letters ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        keys = ("seq", "id", "topic", "origin", "reason", "failed_at_ns", "bytes")
        return web.json_response([dict(zip(keys, row, strict=True)) for row in rows])

    async def metrics_text(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
