"""The console's HTTP server (aiohttp): the page, the JSON API, live events and /metrics.

GET /            the console (one page); its script and style are files of gateway/web/static/
                 (GET /static/NAME), since the Content-Security-Policy allows no inline script
GET /login       the login page;  POST /login  {"username", "password"} as JSON or a form:
                 sets the session cookie, answers {"user", "role", "csrf"} (a form: 303 to /);
                 a wrong password answers 401 (a form: 303 to login?failed=1, the login
                 page with "Wrong user name or password."); either counts as a failed login
POST /logout     ends the session
GET /healthz     200 "ok" while the gateway runs; 503 "starting" until it is ready as for
                 systemd's READY=1 (each source has tried its first connect, an MQTT source
                 that connected has subscribed: see `Engine.run`); always open: no
                 credentials, any Host
GET /favicon.ico the console's icon (static/favicon.svg, also linked by the pages as
                 `<link rel="icon">`): open, as /static/ is, and cached for a day
GET /api/session {"user", "role", "auth": "session"|"basic"|"open", "csrf"?}
GET /api/status  sources, routes, sinks with state and store depth, dead letters
GET /api/events  Server-Sent Events: the /api/status document each second it changes,
                 until the credentials it was opened with end (a logout, a new password,
                 a session's lifetime); what it sends is a use of its session, whose
                 idle time starts again (the console holds it open only while shown:
                 a wall display stays logged in, a tab left in the background does not)
GET /api/dead-letters?limit=50   the newest dead letters with their reasons
GET /api/dead-letters/SEQ        one in full: its content as text, or as hex when it is
                 not UTF-8 (`content_hex`), at most 64 KiB of it (`truncated`)
GET /api/dead-letters/SEQ/content  its whole content as a file (application/octet-stream)
POST /api/dead-letters/replay|purge  body {"seqs": [SEQ, ...]} or {"all": true}: as
                 `edge-stream dead-letters replay|purge` (operators); answers {"count",
                 "missing"} (the numbers that name no dead letter), and for a replay
                 {"note"}: null, or the line on those not replayed; another key, or
                 both, is refused (400)
GET /metrics     Prometheus text format (open with `web.metrics_open`)
GET /api/metrics the same values as JSON (gateway/metrics.py, docs/metrics.md)
GET /api/topics?filter=F&limit=N, /api/routes/match?topic=T, /api/series
                 the console's topic tree, route matching and sparklines (console_api.py)
POST /api/config/reload   read the config file again now (as SIGHUP does); answers
                 {"outcome": "applied"|"refused"|"rolled_back", "errors": [...],
                 "changes": [...], "path": the file's absolute path}
GET /api/config, PUT|DELETE /api/config/{sources|routes|sinks}/NAME   the config API
                 (config_api.py; a body of at most 256 KiB); a change with a query
                 parameter other than ?check and ?hash (a rollback: any) is refused (400)

A config API change's query parameter, a rollback's body key and a dead-letter replay or
purge body key that is not taken are refused, named with a "did you mean" when a taken
one is close (`config_api.not_taken`): misspelt, it was ignored and the request did what
it did not ask (`?chek=1` applied the edit it meant to check).

Access (gateway/web/access.py): with no account (neither `web.username`/`web.password` nor
a user in the users file) the console is open, and only on localhost (beyond it, once the
last account is gone, every request but /healthz and the login page with its files is
refused until one is added). Otherwise every request but /healthz, /login, /favicon.ico
and /static/ needs a session cookie (HttpOnly, SameSite=Strict, named after the port the
Host names: `access.session_cookie`) or HTTP basic auth; a viewer may only read. A session (and a
remembered basic-auth check) ends when its user gets a new password or is removed. A
request that changes something (any method but GET and HEAD) from a browser's page of
another origin is refused (its Origin or Referer, `Origin: null` without a Referer of
ours, Sec-Fetch-Site); one made with a session cookie also needs the session's CSRF token
in `X-CSRF-Token` and an Origin or Referer of this server. Basic auth (scripts,
`edge-stream reload`) needs no token. Failed logins are rate-limited per client (an IPv4
address or an IPv6 /64). A request whose Host is a name this gateway does not know is
refused (DNS rebinding). A 401 closes the connection.

Bounds: request heads of at most 40 fields of 8 KiB; a connection that sends no complete
request head for 10 s is closed (idle keep-alive and slow senders alike), and so is one
that takes 10 s more to send its body; at most 256 connections, and when all are taken a
new one closes the one that has waited longest for a request (or its body), so a flood of
idle or slow connections cannot lock out /healthz or a user; at
most 16 event streams, each sending only the newest document (a paused reader holds
nothing, and is closed after 30 s without progress). A body over its route's bound
(8 KiB: POST /login, the dead-letter actions, a reload, which needs none; 256 KiB: the
config API) or without a Content-Length (chunked) is refused 413 in the route's JSON, unread.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import json
import logging
import os
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.http import HttpProcessingError

from gateway.config.model import WebSection
from gateway.config.tls import ServedTls, ServedTlsError, served_tls
from gateway.core.errors import ConfigError
from gateway.engine.console import preview_text
from gateway.engine.status import StatusView
from gateway.metrics import metrics_json, registry_for
from gateway.mqtt.broker import in_use
from gateway.store import admin
from gateway.store.sqlite import StoreError
from gateway.web import access, console_api
from gateway.web.config_api import MAX_BODY, ROLLBACK, ConfigApi, not_taken
from gateway.web.page import LOGIN_FAILED_PAGE, LOGIN_PAGE, STATUS_PAGE

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("gateway.web")

MAX_HEAD = 8192
HEAD_TIMEOUT = 10.0  # seconds a connection may take to send a request head, or idle
MAX_CONNECTIONS = 256
MAX_STREAMS = 16
STREAM_WRITE_TIMEOUT = 30.0
STREAM_PING = 15.0  # seconds between comments on a quiet event stream
LOGIN_BODY = 8192
BASIC_CACHE = 32  # checked basic-auth headers kept, so that scripts do not pay scrypt
BASIC_TTL = 300.0
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_SHOWN = 64 << 10  # bytes of a dead letter's content shown
ICON = "favicon.svg"  # of static/: what GET /favicon.ico answers
ICON_CACHE = "public, max-age=86400"  # browsers ask for it with every page otherwise

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("gateway.web") / "static"
    found = {}
    for item in folder.iterdir():
        kind = STATIC_TYPES.get(os.path.splitext(item.name)[1])
        if kind and item.is_file():
            found[item.name] = (item.read_bytes(), kind)
    return found


@dataclass(frozen=True)
class Identity:
    """Who made a request: `auth` is session, basic or open (no accounts exist)."""

    user: str
    role: str
    auth: str
    csrf: str | None = None
    token: str | None = None


IDENTITY = web.RequestKey("identity", Identity)


class WebServer:
    """Serves the running gateway through `view`, across reloads: a reload swaps the
    engine behind the view, and the listening socket and open connections stay."""

    def __init__(
        self,
        view: StatusView,
        config: WebSection,
        reload: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
        config_path: str | None = None,
        users_file: Path | None = None,
        settle: Callable[[str], None] | None = None,
        data_dir: Callable[[], str] | None = None,
        ready: asyncio.Event | None = None,
    ) -> None:
        self.engine = view  # the store, and the snapshot of whichever engine runs now
        self.config = config
        self._ready = ready  # the gateway's first engine reads (None: from the start)
        self._metrics: CollectorRegistry | None = None  # made at the first scrape
        self._reload = reload  # POST /api/config/reload; None: not offered
        # /api/config, its edits; the versions under the running gateway's data_dir
        self.config_api = ConfigApi(config_path, reload, settle, data_dir)
        self._config_file = os.path.abspath(config_path) if config_path else None
        path = users_file or access.users_path(config.users_file, "./data")
        self.users = access.Users(path, config.username, config.password)
        self.sessions = access.Sessions()
        self.limiter = access.LoginLimiter()
        self._scrypt = asyncio.Semaphore(2)  # 16 MiB each: bound the memory of checks
        # checked header -> (user, until, the stored hash it was checked against)
        self._basic_ok: OrderedDict[bytes, tuple[str, float, str | None]] = OrderedDict()
        self._basic_salt = os.urandom(16)
        self._hosts = self._known_hosts()
        self._static = _static_files()
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._busy: set[web.RequestHandler] = set()  # answering a request now
        # waiting for a reload (or an edit applied as one), which may restart this server
        self._reloading: set[web.RequestHandler] = set()
        self._evicting: set[web.RequestHandler] = set()
        self._streams = 0
        self._closing = asyncio.Event()
        self._status_doc: tuple[float, bytes] = (-1.0, b"")
        self.secure = bool(config.tls_cert)
        # what new connections are served, renewed in place (`renew_tls`)
        self._tls: ServedTls | None = None
        if self.secure:
            self._tls = ServedTls(str(config.tls_cert), str(config.tls_key), self._load_tls)

    def _known_hosts(self) -> set[str]:
        hosts = {h.lower() for h in self.config.allowed_hosts}
        listen_host = self.config.listen.rpartition(":")[0].strip("[]")
        if listen_host:
            hosts.add(listen_host.lower())
        name = socket.gethostname().lower()
        hosts |= {name, f"{name}.local"}
        return hosts

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        add = app.router.add_route
        app.router.add_get("/", self.page)
        app.router.add_get("/login", self.login_page)
        add("POST", "/login", self.login)
        add("POST", "/logout", self.logout)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/favicon.ico", self.favicon)
        app.router.add_get("/api/session", self.api_session)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_get("/api/events", self.api_events)
        app.router.add_get("/api/dead-letters", self.api_dead_letters)
        app.router.add_get("/api/dead-letters/{seq:[0-9]+}", self.api_dead_letter)
        app.router.add_get("/api/dead-letters/{seq:[0-9]+}/content", self.api_dead_letter_content)
        add("POST", "/api/dead-letters/{action:replay|purge}", self.api_dead_letters_act)
        app.router.add_get("/metrics", self.metrics_text)
        app.router.add_get("/api/metrics", self.api_metrics)
        app.router.add_get("/api/topics", self.api_console)
        app.router.add_get("/api/routes/match", self.api_console)
        app.router.add_get("/api/series", self.api_console)
        add("*", "/api/config/reload", self.api_reload)
        add("*", "/api/config", self.api_config)
        add("*", "/api/config/{tail:.+}", self.api_config)
        app.on_response_prepare.append(self._headers)
        return app

    async def start(self) -> str:
        """Listen on `web.listen`; an address that cannot be had, or certificate files
        that cannot be served, is a ConfigError, one line."""
        listen = self.config.listen
        host, _, port = listen.rpartition(":")
        # the files read off the loop all the same (a slow disk)
        context = await asyncio.to_thread(self._tls.listening) if self._tls else None
        runner = web.AppRunner(
            self._app(),
            handle_signals=False,
            access_log=None,
            keepalive_timeout=HEAD_TIMEOUT,
            max_line_size=MAX_HEAD,
            max_field_size=MAX_HEAD,
            max_headers=40,
            shutdown_timeout=2.0,
            # No body is decoded: a Content-Encoding is refused in _checked. aiohttp's own
            # decoding answered a broken gzip body 500 and br or zstd 400 in its words,
            # each with an ERROR traceback in the log that any client could provoke.
            auto_decompress=False,
            logger=_ServerLog(logging.getLogger("aiohttp.server"), {}),
        )
        await runner.setup()
        loop = asyncio.get_running_loop()
        try:
            self._listener = await loop.create_server(
                self._admit, host.strip("[]"), int(port), ssl=context, backlog=128
            )
        except OSError as err:
            await runner.cleanup()
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(in_use("web.listen", listen)) from err
            raise ConfigError(
                f"web.listen {listen}: cannot listen there ({err.strerror or err});"
                " set web.listen to an address of this machine, e.g. 127.0.0.1:8080"
            ) from err
        self._runner = runner
        return f"{'https' if self.secure else 'http'}://{listen}"

    async def renew_tls(self) -> bool:
        """Serve the certificate files anew when they changed since they were read (a
        renewal written over them, then a reload); True when it did (see `ServedTls`:
        new connections get the new certificate on the socket that listens). Files that
        cannot be served (changed since the reload's config check read them) leave the
        certificate served as it was, said in an ERROR."""
        if self._listener is None or self._tls is None or self._closing.is_set():
            return False
        try:
            renewed = await self._tls.renew()
        except ConfigError as err:
            log.error("web: %s; the console still serves the certificate it had", err)
            return False
        return renewed and not self._closing.is_set()  # not stopped meanwhile

    def _load_tls(self, cert: str, key: str) -> ssl.SSLContext:
        """The context `ServedTls` serves; files that cannot be served are a ConfigError
        naming the web: key and the file (the config check read them; they may have
        changed since)."""
        try:
            return served_tls(cert, key)
        except ServedTlsError as err:
            raise ConfigError(f"web.{err.key}: {err}") from err

    async def stop(self) -> bool:
        """Stop listening and close the connections; False when a request that asked
        for the reload stopping this server still waits for its answer: then `finish`
        does the rest, once that answer is sent (the caller, a reload, is what that
        request waits for: waiting for it here would cut it after shutdown_timeout)."""
        self._closing.set()  # event streams end
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None and self._runner.server is not None and self._reloading:
            for connection in self._runner.server.connections:
                if connection not in self._reloading:
                    connection.close()  # once its request (if any) is answered
            return False
        await self.finish()
        return True

    async def finish(self) -> None:
        """The rest of `stop`: wait for the requests still answered, then clean up."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _reload_answer(self, request: web.Request, reload: Awaitable[Any]) -> Any:
        """The outcome of a reload asked by `request`; the connection closes after the
        answer when the reload stopped this server (its successor runs)."""
        self._reloading.add(request.protocol)
        try:
            return await reload
        finally:
            self._reloading.discard(request.protocol)

    # -- connections ------------------------------------------------------------------

    def _admit(self) -> asyncio.BaseProtocol:
        """A protocol for a new connection; when all slots are taken, make room by closing
        the connection that has waited longest for a request (idle or slow to send)."""
        assert self._runner is not None and self._runner.server is not None
        server = self._runner.server
        connections = server.connections  # oldest first
        if len(connections) >= MAX_CONNECTIONS:
            self._evicting &= set(connections)
            oldest = next(
                (c for c in connections if c not in self._busy and c not in self._evicting), None
            )
            if oldest is None:
                return _Refused()  # every slot is answering: refuse rather than queue
            self._evicting.add(oldest)
            oldest.force_close()
        return server()

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self._busy.add(request.protocol)
        try:
            return await self._checked(request, handler)
        finally:
            self._busy.discard(request.protocol)

    async def _checked(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path == "/healthz":
            return await handler(request)
        # The header itself: aiohttp's request.host would look the machine's name up.
        host = request.headers.get("Host")
        if host is not None and not access.host_allowed(host, self._hosts):
            return _text(
                421,
                f"this gateway does not answer to the name {host[:100]!r};"
                " add it to web.allowed_hosts\n",
                close=True,
            )
        coding = request.headers.get("Content-Encoding", "").strip().lower()
        if coding not in ("", "identity"):  # no client of the console compresses its bodies
            return _text(
                415,
                f"the console takes a body as it is, not with Content-Encoding {coding[:40]!r}\n",
                close=True,
            )
        changes = request.method not in SAFE_METHODS
        if changes and not self._same_origin(request, required=False):
            return _text(403, "refused: the request comes from a page of another origin\n")
        if path.startswith("/static/") or path in ("/login", "/favicon.ico"):
            return await handler(request)
        identity = await self._identity(request)
        if isinstance(identity, web.StreamResponse):
            return identity
        if identity is None:
            if path == "/metrics" and self.config.metrics_open:
                return await handler(request)
            if not self.users.required:  # and beyond localhost
                return self._no_account()
            if path == "/" and request.method in SAFE_METHODS:
                raise web.HTTPSeeOther("/login")
            return self._unauthorized(request)
        request[IDENTITY] = identity
        if changes and path != "/logout" and identity.role != "operator":
            return _text(403, f"{identity.user} is a viewer; changing this needs an operator\n")
        if changes and identity.auth == "session":
            if not self._same_origin(request, required=True):
                return _text(403, "refused: no Origin or Referer of this server\n")
            given = request.headers.get("X-CSRF-Token", "")
            if not identity.csrf or not _equal(given, identity.csrf):
                return _text(403, "refused: a missing or wrong X-CSRF-Token\n")
        return await handler(request)

    async def _body(self, request: web.Request) -> bytes | web.Response:
        """The request's body (bounded by its handler's check and client_max_size), or a
        408 when it does not come within HEAD_TIMEOUT (a 400 that is never sent when the
        connection closes first). Until it has come, the connection
        has not sent its request: it may be closed to make room (see _admit), so that
        slow senders of bodies cannot hold every slot either."""
        self._busy.discard(request.protocol)
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                return await request.read()
        except TimeoutError:
            return _text(408, f"the body did not come within {HEAD_TIMEOUT:g} s\n", close=True)
        except ConnectionError:  # closed to make room, or by the client: nobody to answer
            log.debug("web: a connection from %s closed before its body came", request.remote)
            return _text(400, "the connection closed before the body came\n", close=True)
        finally:
            self._busy.add(request.protocol)

    def _same_origin(self, request: web.Request, required: bool) -> bool:
        """Whether a request comes from this server's own page; with `required` False,
        also one that tells no origin at all (a script: curl, `edge-stream reload`)."""
        # A browser tells a request of another site so (Fetch metadata), whatever else
        # it leaves out.
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if (fetch_site or "same-origin").lower() not in ("same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            origin = request.headers.get("Referer")
            if origin is None and request.headers.get("Origin") == "null":
                # An opaque origin: a page of another site that sends no Referer
                # (Referrer-Policy: no-referrer, a sandboxed frame) posts with
                # `Origin: null`. No script sends it: it was taken for one, so a
                # browser that kept basic-auth credentials (the console's 401 asks for
                # them) reloaded, rolled back or purged for any site it visited. The
                # console's own page under no-referrer (a proxy adding the policy) sends
                # the same, and its browser says so in Fetch metadata, which no page
                # can set.
                return (fetch_site or "").lower() == "same-origin"
        if origin is None:
            return not required
        return access.same_origin(origin, request.scheme, request.headers.get("Host", ""))

    def _unauthorized(self, request: web.Request) -> web.Response:
        response = _text(401, "credentials needed\n", close=True)
        # No challenge for an expired session, nor for a request the console's script
        # made (fetch, EventSource: Sec-Fetch-Dest empty), whose cookie a logout in
        # another tab deleted: the browser would put up its own password dialog and hold
        # the request until it is answered, where the page goes to /login instead.
        scripted = request.headers.get("Sec-Fetch-Dest") == "empty"
        if _cookie(request) not in request.cookies and not scripted:
            response.headers["WWW-Authenticate"] = 'Basic realm="edge-stream"'
        return response

    async def _identity(self, request: web.Request) -> Identity | web.StreamResponse | None:
        token = request.cookies.get(_cookie(request))
        if token:
            # seen only once it is let in: a 503 (the users file broken) is not a use of
            # it, and must not keep it alive past its idle time
            session = self.sessions.get(token, seen=False)
            if session is not None:
                role = self._session_role(session)
                if role is not None:
                    self.sessions.seen(token)
                    return Identity(session.user, role, "session", session.csrf, token)
                if self.users.broken:  # it may be fine once the file is: refused, kept
                    return self._users_broken()
                self.sessions.drop(token)  # the account is gone or has a new password
        header = request.headers.get("Authorization", "")
        if header:
            return await self._basic(request, header)
        if not self.users.required and self.config.local_only:
            return Identity("", "operator", "open")
        return None

    def _session_role(self, session: access.Session) -> str | None:
        """The role of a session's account while the account is still there with the
        password it logged in with; None once it was removed or given a new password
        (`web passwd`): a stolen session cookie does not outlive a password change."""
        if self.users.credential(session.user) != session.credential:
            return None
        return self.users.role(session.user)

    def _users_broken(self) -> web.Response:
        """The answer to a login made before the users file broke (a typo in a hand edit):
        refused while it is broken, not ended, so that it holds again once it is fixed."""
        return _text(
            503,
            f"the console users file {self.users.path} cannot be used (the gateway's log"
            " says why); logins made before work again once it is fixed\n",
        )

    def _no_account(self) -> web.Response:
        """The answer, beyond localhost, once no account is left (the users file emptied
        or removed while the gateway runs): open is for a console on localhost only."""
        return _text(
            403,
            f"no console account exists any more, and the console listens on"
            f" {self.config.listen}, beyond localhost: add one with"
            " `edge-stream web passwd USER`\n",
        )

    async def _basic(self, request: web.Request, header: str) -> Identity | web.StreamResponse:
        # aiohttp reads header bytes as UTF-8 with surrogate escapes: give them back as sent
        key = hashlib.sha256(self._basic_salt + header.encode(errors="surrogateescape")).digest()
        known = self._basic_ok.get(key)
        if known is not None and time.monotonic() < known[1]:
            # a password changed since (`web passwd`) makes the remembered check void
            if self.users.credential(known[0]) == known[2]:
                role = self.users.role(known[0])
                if role is not None:
                    return Identity(known[0], role, "basic")
            if self.users.broken:
                return self._users_broken()
            del self._basic_ok[key]
        scheme, _, value = header.partition(" ")
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            sep = ""
        if scheme.lower() != "basic" or not sep:
            return self._unauthorized(request)
        credential = self.users.credential(user)  # before the check: what it checks
        if credential is None and self.users.broken:
            # maybe a user of the file: told so, not a 401 that says the password is wrong,
            # and not charged to the limiter (a script would be locked out by its 429s)
            return self._users_broken()
        role_or_wait = await self._try_password(request, user, password)
        if isinstance(role_or_wait, web.StreamResponse):
            return role_or_wait
        self._basic_ok[key] = (user, time.monotonic() + BASIC_TTL, credential)
        while len(self._basic_ok) > BASIC_CACHE:
            self._basic_ok.popitem(last=False)
        return Identity(user, role_or_wait, "basic")

    async def _try_password(
        self, request: web.Request, user: str, password: str
    ) -> str | web.StreamResponse:
        """The role of a right password; a 429 while the client must wait; a 401."""
        client = request.remote or "?"
        taken = await self.limiter.take(client)
        if taken.wait > 0:
            response = _text(429, "too many failed logins; try again later\n", close=True)
            response.headers["Retry-After"] = str(int(taken.wait) + 1)
            return response
        role = None
        try:
            async with self._scrypt:
                role = await self.users.check(user, password)
        finally:  # a check cut short counts as failed
            self.limiter.settled(taken, right=role is not None)
        if role is None:
            log.warning("web: a failed login as %r from %s", user[:64], client)
            return self._unauthorized(request)
        return role

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers["Content-Security-Policy"] = CSP
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "same-origin"
        headers.setdefault("Cache-Control", "no-store")

    # -- pages and login ------------------------------------------------------------------

    async def page(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(body=STATUS_PAGE.encode(), content_type="text/html", charset="utf-8")

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        page = LOGIN_FAILED_PAGE if "failed" in request.query else LOGIN_PAGE
        return web.Response(body=page.encode(), content_type="text/html", charset="utf-8")

    async def static(self, request: web.Request) -> web.StreamResponse:
        found = self._static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, kind = found
        return web.Response(body=body, headers={"Content-Type": kind, "Cache-Control": "no-cache"})

    async def favicon(self, _request: web.Request) -> web.StreamResponse:
        body, kind = self._static[ICON]
        return web.Response(body=body, headers={"Content-Type": kind, "Cache-Control": ICON_CACHE})

    async def login(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is None or _body_over(request, LOGIN_BODY):
            said = f"a login body of at most {LOGIN_BODY} bytes, with a Content-Length"
            return _too_large({"errors": [said]})
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        # JSON sent without its Content-Type (`curl -d '{"username": ...}'` says a form)
        # was read as a form, and answered "give username and password": no form
        # begins with '{'
        form = request.content_type != "application/json" and not body.lstrip().startswith(b"{")
        fields: dict[str, Any] = {}
        try:
            if form:
                fields = {k: v[0] for k, v in parse_qs(body.decode(), max_num_fields=8).items()}
            else:
                loaded = json.loads(body)
                fields = loaded if isinstance(loaded, dict) else {}
        except (ValueError, UnicodeDecodeError, RecursionError):  # [[[[...: not a 500
            pass
        user, password = fields.get("username"), fields.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            return _json({"errors": ["give username and password"]}, 400)
        if not self.users.required:
            if not self.config.local_only:
                return self._no_account()
            return _json({"errors": ["no accounts are set up: the console is open"]}, 409)
        credential = self.users.credential(user)  # before the check: what it checks
        if credential is None and self.users.broken:
            # maybe a user of the file: told so, not a 401 that says the password is wrong,
            # and not charged to the limiter (a script would be locked out by its 429s)
            return self._users_broken()
        role = await self._try_password(request, user, password)
        if isinstance(role, web.StreamResponse):
            if role.status == 401 and form:
                # a form posted without script: back to the login page, which says so
                # (relative, as the page's links are; the browser keeps no #view here,
                # since a form's post never carries the page's fragment)
                role = web.Response(status=303, headers={"Location": "login?failed=1"})
            elif role.status == 401:
                role = _json({"errors": ["wrong user name or password"]}, 401)
                role.force_close()
            return role
        token, session = self.sessions.create(user, credential)
        log.info("web: %s logged in (%s) from %s", user, role, request.remote)
        answer: web.Response
        if form:
            answer = web.Response(status=303, headers={"Location": "/"})
        else:
            answer = _json({"user": user, "role": role, "csrf": session.csrf})
        answer.set_cookie(
            _cookie(request),
            token,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
        )
        return answer

    async def logout(self, request: web.Request) -> web.StreamResponse:
        identity = request[IDENTITY]
        if identity.token:
            self.sessions.drop(identity.token)
        answer = _json({"user": identity.user, "logged_out": True})
        answer.del_cookie(_cookie(request), path="/")
        return answer

    async def api_session(self, request: web.Request) -> web.StreamResponse:
        identity = request[IDENTITY]
        doc: dict[str, Any] = {"user": identity.user, "role": identity.role, "auth": identity.auth}
        if identity.csrf:
            doc["csrf"] = identity.csrf
        return _json(doc)

    # -- the API ----------------------------------------------------------------------

    async def healthz(self, _request: web.Request) -> web.StreamResponse:
        if self._ready is not None and not self._ready.is_set():
            return _text(503, "starting\n")
        return _text(200, "ok\n")

    async def api_status(self, _request: web.Request) -> web.StreamResponse:
        return _json(self.engine.snapshot().to_json())

    def _status_now(self) -> bytes:
        """The status document, made at most once a second whatever the number of streams."""
        made, doc = self._status_doc
        now = time.monotonic()
        if now - made >= 0.9:
            doc = json.dumps(self.engine.snapshot().to_json(), separators=(",", ":")).encode()
            self._status_doc = (now, doc)
        return doc

    async def api_events(self, request: web.Request) -> web.StreamResponse:
        if self._streams >= MAX_STREAMS:
            return _text(503, f"at most {MAX_STREAMS} event streams at once\n")
        identity = request[IDENTITY]
        allowed, token = self._still_allowed(identity), identity.token
        self._streams += 1
        try:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
            )
            await response.prepare(request)
            last, quiet_since = b"", time.monotonic()
            while not self._closing.is_set() and allowed():
                doc = self._status_now()
                if doc != last or time.monotonic() - quiet_since > STREAM_PING:
                    # The newest document only: a reader that does not keep up skips some.
                    async with asyncio.timeout(STREAM_WRITE_TIMEOUT):
                        await response.write(b"data: " + doc + b"\n\n" if doc != last else b":\n\n")
                    last, quiet_since = doc, time.monotonic()
                    if token is not None:
                        # A page open and shown is a user: a wall display showing the
                        # pipeline was logged out after the idle time (no request came).
                        self.sessions.seen(token)
                try:
                    async with asyncio.timeout(1.0):
                        await self._closing.wait()
                except TimeoutError:
                    pass
        except (ConnectionError, TimeoutError):
            pass  # the reader went away or stopped reading
        finally:
            self._streams -= 1
        return response

    def _still_allowed(self, identity: Identity) -> Callable[[], bool]:
        """Whether the credentials a stream was opened with still hold: its session (not
        logged out nor over its time), the account and its password (basic auth), or
        still no account at all (an open console)."""
        if identity.auth == "open":
            return lambda: not self.users.required
        credential = self.users.credential(identity.user)

        def allowed() -> bool:
            if identity.token is not None and not self.sessions.alive(identity.token):
                return False
            if self.users.credential(identity.user) != credential:
                return False
            return self.users.role(identity.user) is not None

        return allowed

    async def api_dead_letters(self, request: web.Request) -> web.StreamResponse:
        try:
            limit = max(1, min(int(request.query.get("limit", "50")), 1000))
        except ValueError:
            return _text(400, "limit must be a number\n")
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

    async def _dead_letter(self, request: web.Request) -> Any:
        """The dead letter the path's SEQ names, or the answer to give instead (404, or
        the store's own refusal)."""
        text = request.match_info["seq"]
        if len(text) > 40:  # past any sequence number (and past int()'s 4,300 digits)
            return _json({"errors": [f"no dead letter {text[:40]}..."]}, 404)
        seq = int(text)
        record = await asyncio.to_thread(self._store_admin, lambda a: a.dead_letter(seq))
        if record is None:
            return _json({"errors": [f"no dead letter {seq}"]}, 404)
        return record

    async def api_dead_letter(self, request: web.Request) -> web.StreamResponse:
        record = await self._dead_letter(request)
        if isinstance(record, web.Response):
            return record
        return _json({
            "seq": record.seq,
            "id": record.id,
            "topic": record.topic,
            "attributes": record.attributes,
            "created_ns": record.created,
            "origin": record.origin,
            "sink": record.sink,
            "reason": record.reason,
            "bytes": len(record.content),
            **_content(record.content),
        })  # fmt: skip

    async def api_dead_letter_content(self, request: web.Request) -> web.StreamResponse:
        """The whole content, past the 64 KiB the console shows: a download, never a page
        (outside bytes are not rendered by the browser: nosniff and an attachment)."""
        record = await self._dead_letter(request)
        if isinstance(record, web.Response):
            return record
        return web.Response(
            body=record.content,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="dead-letter-{record.seq}.bin"',
            },
        )

    async def api_dead_letters_act(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        if _body_over(request, LOGIN_BODY):
            said = f"a body of at most {LOGIN_BODY} bytes, with a Content-Length"
            return _too_large({"errors": [said]})
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        try:
            asked = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # [[[[...: not a 500
            asked = None
        seqs = asked.get("seqs") if isinstance(asked, dict) else None
        # {"all": true, "topic": "x"} purged every dead letter, not those of x; as the
        # command refuses `replay --all 5`, {"all": true, "seqs": [5]} did only 5
        wrong = not_taken(asked, ("seqs", "all")) if isinstance(asked, dict) else ""
        if isinstance(asked, dict) and not wrong and {"seqs", "all"} <= asked.keys():
            wrong = "both"
        if wrong:
            shape = '{"seqs": [SEQ, ...]} or {"all": true}'
            return _json(
                {"errors": [f"{action} takes only seqs or all, not {wrong}: {shape}"]}, 400
            )
        if isinstance(asked, dict) and asked.get("all") is True and seqs is None:
            chosen: list[int] | None = None
        elif isinstance(seqs, list) and seqs and all(type(n) is int for n in seqs):
            chosen = seqs
        else:
            return _json({"errors": ['the body: {"seqs": [SEQ, ...]} or {"all": true}']}, 400)
        done = await asyncio.to_thread(
            self._store_admin, lambda a: a.replay(chosen) if action == "replay" else a.purge(chosen)
        )
        if isinstance(done, web.Response):
            return done
        # `missing`: the numbers asked for that name no dead letter (nothing done for them)
        missing = list(done.missing)
        if isinstance(done, admin.Replayed):
            note = done.note()
            log.info(
                "web: replay %s dead letter(s) through the console%s",
                done.count,
                f"; {note}" if note else "",
            )
            return _json({"action": action, "count": done.count, "note": note, "missing": missing})
        log.info("web: %s %s dead letter(s) through the console", action, done.count)
        return _json({"action": action, "count": done.count, "missing": missing})

    def _store_admin(self, do: Callable[[admin.StoreAdmin], Any]) -> Any:
        """`do` on a store admin connection of its own, as the CLI does (blocking: call it
        in a worker thread)."""
        try:
            with admin.open_admin(self.engine.store.path, in_gateway=True) as store:
                return do(store)
        except StoreError as err:
            return _json({"errors": [str(err)]}, 409)

    @property
    def metrics(self) -> CollectorRegistry:
        """The metrics registry, made (and prometheus_client imported) at the first scrape."""
        if self._metrics is None:
            self._metrics = registry_for(self.engine)
        return self._metrics

    async def metrics_text(self, _request: web.Request) -> web.StreamResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(
            body=generate_latest(self.metrics), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def api_reload(self, request: web.Request) -> web.StreamResponse:
        if _body_over(request, MAX_HEAD):
            return _too_large({"errors": ["a reload takes no body"]})
        if request.method != "POST":
            # JSON as the route's 413 and its answers are
            response = _json({"errors": ["a reload is a POST"]}, 405)
            response.headers["Allow"] = "POST"  # as RFC 9110 asks of a 405
            return response
        if self._reload is None:
            return _json({"errors": ["no config file to reload"]}, 404)
        # `edge-stream config rollback` says what it is, for the history
        trigger = "rollback" if request.query.get("trigger") == "rollback" else "api"
        answer = await self._reload_answer(request, self._reload(trigger))
        if self._config_file is not None:
            # the file read: `edge-stream reload -c FILE` tells it from another FILE whose
            # web.listen names this gateway (a copy being edited)
            answer = {**answer, "path": self._config_file}
        response = _json(answer)
        if self._closing.is_set():
            response.force_close()
        return response

    async def api_config(self, request: web.Request) -> web.StreamResponse:
        if _body_over(request, MAX_BODY):
            limit = f"a body of at most {MAX_BODY >> 10} KiB, with a Content-Length"
            return _too_large({"outcome": "refused", "errors": [limit], "version": None})
        if request.method not in SAFE_METHODS:
            said = _query_not_taken(request)
            if said:
                return _json({"outcome": "refused", "errors": [said], "version": None}, 400)
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        status, content_type, answer = await self._reload_answer(
            request,
            self.config_api.handle(
                request.method,
                request.path,
                body,
                check=_asks_check(request.query.get("check")),
                expect=request.query.get("hash"),
            ),
        )
        response = web.Response(status=status, body=answer, headers={"Content-Type": content_type})
        if status == 405:  # the methods the path takes, as RFC 9110 asks of a 405
            response.headers["Allow"] = ", ".join(self.config_api.allowed(request.path))
        if self._closing.is_set():
            response.force_close()
        return response

    async def api_console(self, request: web.Request) -> web.StreamResponse:
        """/api/topics, /api/routes/match, /api/series (gateway/web/console_api.py)."""
        view: Any = self.engine
        if request.path == "/api/topics":
            status, body = console_api.topics(view, request.query)
        elif request.path == "/api/routes/match":
            status, body = console_api.route_match(view, request.query)
        else:
            status, body = console_api.series(view)
        return _json(body, status)

    async def api_metrics(self, _request: web.Request) -> web.StreamResponse:
        return _json(metrics_json(self.metrics))


class _ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, but a request it cannot parse (an overlong line, a repeated
    Content-Length, a NUL in a header: a client's mistake, or someone probing) is one
    line at DEBUG, not an ERROR with a traceback that any client of the LAN could add to
    the gateway's log without credentials. A handler's failure (a 500) stays an ERROR."""

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        err = kwargs.get("exc_info")
        if isinstance(err, HttpProcessingError):
            said = (err.message.splitlines() or [""])[0].rstrip(":")[:200]
            client = args[0] if args else "?"
            log.debug(
                "web: a request from %s that is not valid HTTP: %s: %r", client, err.code, said
            )
            return
        super().exception(msg, *args, **kwargs)


class _Refused(asyncio.Protocol):
    """A connection turned away at once: every slot is busy answering."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


def _content(content: bytes) -> dict[str, Any]:
    """A payload for the console: text when it is UTF-8, hex otherwise; at most 64 KiB."""
    shown = content[:MAX_SHOWN]
    cut = len(content) > MAX_SHOWN
    text = preview_text(shown, cut)
    out: dict[str, Any] = {"content_hex": shown.hex()} if text is None else {"content": text}
    out["truncated"] = cut
    return out


def _cookie(request: web.Request) -> str:
    """The name of the session cookie for this request's Host (one per port)."""
    return access.session_cookie(request.headers.get("Host", ""))


def _query_not_taken(request: web.Request) -> str:
    """Why the query of a config API request that changes something is refused, or "":
    `?chek=1` or `?dry_run=1` wrote and applied the edit it meant to check. A rollback
    takes none (its ?check is refused by the config API, in words of its own)."""
    if request.path == ROLLBACK:
        wrong = not_taken([k for k in request.query if k != "check"], ())
        if wrong:
            return (
                f"a rollback takes no query parameters, not {wrong}: POST {ROLLBACK} with"
                ' the body {"version": NAME} or nothing (the newest)'
            )
        return ""
    wrong = not_taken(request.query, ("check", "hash"))
    if wrong:
        return f"the config API takes only ?check (show before apply) and ?hash, not {wrong}"
    return ""


def _asks_check(value: str | None) -> bool:
    """Does `?check=VALUE` ask for a check only? Any value but a plain no: `?check=true`
    must not write and apply the edit (only `?check=1` was a check)."""
    return value is not None and value.strip().lower() not in ("0", "false", "no", "off")


def _equal(a: str, b: str) -> bool:
    # a header's bytes that are not UTF-8 come as surrogate escapes: a mismatch, not a 500
    return hmac.compare_digest(a.encode(errors="surrogateescape"), b.encode())


def _text(status: int, text: str, close: bool = False) -> web.Response:
    response = web.Response(status=status, text=text, content_type="text/plain")
    if close:
        response.force_close()
    return response


def _body_over(request: web.Request, limit: int) -> bool:
    """Whether a request's body may be over `limit` bytes: its Content-Length says so,
    or it comes in chunks, with none (its size known only once it is all read)."""
    length = request.content_length
    return bool(request.headers.get("Transfer-Encoding")) or not 0 <= (length or 0) <= limit


def _too_large(doc: dict[str, Any]) -> web.Response:
    """A 413 as the route's other errors are, in JSON; the connection is closed rather
    than its body read."""
    response = _json(doc, 413)
    response.force_close()
    return response


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(value, indent=1).encode(),
        headers={"Content-Type": "application/json"},
    )
