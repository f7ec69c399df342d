"""The console's access rules through a real (in-process) gateway's web server: logins,
sessions, CSRF and Origin checks, roles, the login limiter, the Host check, headers, TLS,
event streams, and secrets that never appear in an answer."""

from __future__ import annotations

import asyncio
import base64
import datetime
import gzip
import json
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.app import Gateway, Reloads
from gateway.config.load import load, load_data
from gateway.web import access, server
from tests.web.test_web import free_port

pytestmark = pytest.mark.integration

WEB_PASS = "PLAINTEXT-web-pass-123"
DB_PASS = "PLAINTEXT-db-pass-456"
TEXT = """\
gateway: {id: sec-test, data_dir: DATA}
mqtt: {url: "mqtt://127.0.0.1:1"}
routes:
  all: {match: "#", sinks: [out, db]}
sinks:
  out: {type: file}
  db: {type: postgres, dsn: "postgresql://gw:DBPASS@127.0.0.1:1/x", table: readings}
web:
  listen: "LISTEN"
  username: tech
  password: "WEBPASS"
EXTRA
"""


@dataclass
class Served:
    url: str
    port: int
    path: Path
    data: Path
    gateway: Gateway | None = None


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def _start(tmp_path: Path, extra: str = "") -> tuple[Gateway, asyncio.Task[None], Served]:
    port = free_port()
    data = tmp_path / "data"
    text = (
        TEXT.replace("DATA", str(data))
        .replace("LISTEN", f"127.0.0.1:{port}")
        .replace("WEBPASS", WEB_PASS)
        .replace("DBPASS", DB_PASS)
        .replace("EXTRA", extra)
    )
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    access.set_user(data / "web-users", "olga", "operator", "olga-pass-1")
    access.set_user(data / "web-users", "vic", "viewer", "vic-pass-1")
    gateway = Gateway(load(path, environ={}), str(path))
    gateway.reload_now = Reloads(gateway, str(path), lambda: False).api
    task = asyncio.create_task(gateway.run())
    async with asyncio.timeout(10):
        await gateway.ready.wait()
    scheme = "https" if "tls_cert" in extra else "http"
    return gateway, task, Served(f"{scheme}://127.0.0.1:{port}", port, path, data, gateway)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    gateway, task, info = await _start(tmp_path)
    yield info
    gateway.stop()
    await task


async def call(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: Any = None,
    basic: tuple[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Answer:
    """One request on a fresh connection, no cookie jar: every header is the test's."""
    headers = dict(headers or {})
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False}
    if isinstance(body, dict):
        kwargs["json"] = body
    elif body is not None:
        kwargs["data"] = body
    if ssl_context is not None:
        kwargs["ssl"] = ssl_context
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.request(method, url, **kwargs) as response,
    ):
        return Answer(response.status, response.headers, await response.read())


def cookie_name(served: Served) -> str:
    """The session cookie's name: it carries the port (see access.session_cookie)."""
    return f"edge_stream_session_{served.port}"


def session_cookie(served: Served, token: str) -> dict[str, str]:
    return {"Cookie": f"{cookie_name(served)}={token}"}


async def login(
    served: Served, user: str, password: str, ssl_context: ssl.SSLContext | None = None
) -> tuple[str, str]:
    """The session cookie value and the CSRF token of a login."""
    answer = await call(
        f"{served.url}/login",
        "POST",
        body={"username": user, "password": password},
        ssl_context=ssl_context,
    )
    assert answer.status == 200, answer.body
    cookie = answer.headers["Set-Cookie"]
    token = re.match(rf"{cookie_name(served)}=([^;]+);", cookie)
    assert token, cookie
    return token.group(1), answer.json()["csrf"]


async def test_a_login_sets_an_httponly_strict_session_cookie(served: Served) -> None:
    answer = await call(f"{served.url}/login", "POST", body={"username": "olga", "password": "x"})
    assert answer.status == 401 and "Set-Cookie" not in answer.headers
    answer = await call(
        f"{served.url}/login", "POST", body={"username": "olga", "password": "olga-pass-1"}
    )
    assert answer.status == 200
    assert answer.json()["user"] == "olga" and answer.json()["role"] == "operator"
    cookie = answer.headers["Set-Cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain HTTP here; see the TLS test
    token, csrf = await login(served, "olga", "olga-pass-1")
    me = await call(f"{served.url}/api/session", headers=session_cookie(served, token))
    assert me.json() == {"user": "olga", "role": "operator", "auth": "session", "csrf": csrf}
    status = await call(f"{served.url}/api/status", headers=session_cookie(served, token))
    assert status.status == 200 and status.json()["gateway"]["id"] == "sec-test"
    # a form login (no script) goes to the page
    form = await call(
        f"{served.url}/login",
        "POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=b"username=vic&password=vic-pass-1",
    )
    assert form.status == 303 and form.headers["Location"] == "/"
    assert f"{cookie_name(served)}=" in form.headers["Set-Cookie"]
    # without credentials: the page sends the browser to the login page, the API says 401
    assert (await call(f"{served.url}/")).status == 303
    assert (await call(f"{served.url}/api/status")).status == 401
    assert (await call(f"{served.url}/login")).status == 200
    # logging out ends the session
    cookie_header = session_cookie(served, token)
    out = await call(
        f"{served.url}/logout",
        "POST",
        headers={**cookie_header, "X-CSRF-Token": csrf, "Origin": served.url},
    )
    assert out.status == 200
    assert (await call(f"{served.url}/api/status", headers=cookie_header)).status == 401


async def test_credentials_that_are_not_utf_8_are_refused_not_a_500(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp reads header bytes as UTF-8 with surrogate escapes, which .encode() refused:
    # an Authorization header of other bytes, from anyone, was a 500 and an ERROR with a
    # traceback in the log; a session's X-CSRF-Token of them too
    token, _csrf = await login(served, "olga", "olga-pass-1")
    own = f"Host: 127.0.0.1:{served.port}\r\nOrigin: {served.url}\r\n".encode()
    cases = [
        (b"Authorization: Basic \xff\xfe\r\n", b" 401 "),
        (b"Authorization: \xff\xfe \xc3\xa9\r\n", b" 401 "),
        (
            f"Cookie: {cookie_name(served)}={token}\r\n".encode() + b"X-CSRF-Token: \xff\xc3\r\n",
            b" 403 ",
        ),
    ]
    for header, status in cases:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"POST /api/config/reload HTTP/1.1\r\n" + own + header)
        writer.write(b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        assert status in (await reader.read()).split(b"\r\n")[0], header
        writer.close()
    # a JSON password with a lone surrogate, for the config's account: a 500 too
    for user in ("tech", "olga"):
        body = b'{"username": "%s", "password": "\\ud800"}' % user.encode()
        answer = await call(
            f"{served.url}/login", "POST", headers={"Content-Type": "application/json"}, body=body
        )
        assert answer.status == 401, (user, answer.body)
    assert not [r for r in caplog.records if r.exc_info or r.name.startswith("aiohttp")]


async def test_a_change_needs_the_csrf_token_and_this_origin(served: Served) -> None:
    token, csrf = await login(served, "olga", "olga-pass-1")
    cookie = session_cookie(served, token)
    reload = f"{served.url}/api/config/reload"
    no_token = await call(reload, "POST", headers={**cookie, "Origin": served.url})
    assert no_token.status == 403 and b"X-CSRF-Token" in no_token.body
    wrong = await call(
        reload, "POST", headers={**cookie, "Origin": served.url, "X-CSRF-Token": "x"}
    )
    assert wrong.status == 403
    foreign = {**cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert (await call(reload, "POST", headers=foreign)).status == 403
    referer = {**cookie, "X-CSRF-Token": csrf, "Referer": "http://evil.example/x"}
    assert (await call(reload, "POST", headers=referer)).status == 403
    nothing = await call(reload, "POST", headers={**cookie, "X-CSRF-Token": csrf})
    assert nothing.status == 403 and b"Origin or Referer" in nothing.body
    put = await call(
        f"{served.url}/api/config/sinks/extra",
        "PUT",
        headers={**cookie, "Origin": "http://evil.example", "X-CSRF-Token": csrf},
        body={"type": "file"},
    )
    assert put.status == 403 and "extra" not in served.path.read_text()
    ok = await call(reload, "POST", headers={**cookie, "X-CSRF-Token": csrf, "Origin": served.url})
    assert ok.status == 200 and ok.json()["outcome"] == "applied"
    ok = await call(
        reload,
        "POST",
        headers={**cookie, "X-CSRF-Token": csrf, "Referer": f"{served.url}/"},
    )
    assert ok.status == 200
    # HTTP basic auth (scripts, `edge-stream reload`) needs no token, but no foreign page
    assert (await call(reload, "POST", basic=("tech", WEB_PASS))).status == 200
    assert (await call(reload, "POST", basic=("olga", "olga-pass-1"))).status == 200
    cross = await call(
        reload, "POST", basic=("tech", WEB_PASS), headers={"Origin": "http://evil.example"}
    )
    assert cross.status == 403
    # A browser that kept basic-auth credentials posts them for any site's page: one with
    # no Referer (Referrer-Policy: no-referrer, a sandboxed frame) sends `Origin: null`,
    # which passed as a script's request; and Fetch metadata says cross-site outright.
    purge = f"{served.url}/api/dead-letters/purge"
    for foreign_page in ({"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        for url in (reload, purge):
            answer = await call(
                url, "POST", basic=("tech", WEB_PASS), headers=foreign_page, body=b'{"all":true}'
            )
            assert answer.status == 403, (url, foreign_page)
    own = {"Origin": "null", "Referer": f"{served.url}/", "Sec-Fetch-Site": "same-origin"}
    assert (await call(reload, "POST", basic=("tech", WEB_PASS), headers=own)).status == 200
    # The console's own page under Referrer-Policy: no-referrer (a proxy adding it) sends
    # `Origin: null` and no Referer too, but its browser says same-origin: the form login
    # (no script) and a change with the session's token were refused 403.
    no_referrer = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    form = await call(
        f"{served.url}/login",
        "POST",
        headers={**no_referrer, "Content-Type": "application/x-www-form-urlencoded"},
        body=b"username=vic&password=vic-pass-1",
    )
    assert form.status == 303 and f"{cookie_name(served)}=" in form.headers["Set-Cookie"]
    own_page = {**cookie, **no_referrer, "X-CSRF-Token": csrf}
    assert (await call(reload, "POST", headers=own_page)).status == 200


async def test_a_viewer_can_read_but_not_change(served: Served) -> None:
    token, csrf = await login(served, "vic", "vic-pass-1")
    headers = {**session_cookie(served, token), "X-CSRF-Token": csrf, "Origin": served.url}
    assert (await call(f"{served.url}/api/status", headers=headers)).status == 200
    assert (await call(f"{served.url}/api/config", headers=headers)).status == 200
    assert (await call(f"{served.url}/api/dead-letters", headers=headers)).status == 200
    before = served.path.read_text()
    for method, path, body in (
        ("POST", "/api/config/reload", None),
        ("PUT", "/api/config/sinks/extra", {"type": "file"}),
        ("DELETE", "/api/config/sinks/out", None),
    ):
        answer = await call(f"{served.url}{path}", method, headers=headers, body=body)
        assert answer.status == 403 and b"viewer" in answer.body, (path, answer)
    basic = await call(f"{served.url}/api/config/reload", "POST", basic=("vic", "vic-pass-1"))
    assert basic.status == 403
    assert served.path.read_text() == before


async def test_wrong_passwords_are_rate_limited(served: Served) -> None:
    login_url = f"{served.url}/login"
    for _ in range(5):
        answer = await call(login_url, "POST", body={"username": "olga", "password": "guess"})
        assert answer.status == 401
    limited = await call(login_url, "POST", body={"username": "olga", "password": "olga-pass-1"})
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    basic = await call(f"{served.url}/api/status", basic=("tech", "guess"))
    assert basic.status == 429
    # the session of an earlier login still works; /healthz is never limited
    assert (await call(f"{served.url}/healthz")).status == 200


async def test_a_changed_password_ends_the_old_one_for_basic_auth_at_once(
    served: Served,
) -> None:
    # A checked basic-auth header was kept for 5 minutes whatever happened to the
    # account: after `web passwd olga` the old password still read and changed things.
    url = f"{served.url}/api/session"
    assert (await call(url, basic=("olga", "olga-pass-1"))).status == 200
    await asyncio.to_thread(
        access.set_user, served.data / "web-users", "olga", "operator", "olga-pass-2"
    )
    assert (await call(url, basic=("olga", "olga-pass-1"))).status == 401
    assert (await call(url, basic=("olga", "olga-pass-2"))).status == 200


async def test_a_changed_password_or_a_removed_user_ends_its_sessions(served: Served) -> None:
    # A session cookie kept working after `web passwd olga` (only a removed user's was
    # refused): a stolen cookie outlived the password change meant to shut it out.
    olga = session_cookie(served, (await login(served, "olga", "olga-pass-1"))[0])
    vic = session_cookie(served, (await login(served, "vic", "vic-pass-1"))[0])
    url = f"{served.url}/api/session"
    assert (await call(url, headers=olga)).status == 200
    users = served.data / "web-users"
    await asyncio.to_thread(access.set_user, users, "olga", "operator", "olga-pass-2")
    assert (await call(url, headers=olga)).status == 401
    assert (await call(url, headers=vic)).status == 200  # another user's session holds
    # removed, then added again with the same password: a new account, a new login
    text = users.read_text()
    users.write_text("".join(line for line in text.splitlines(True) if line.startswith("olga:")))
    assert (await call(url, headers=vic)).status == 401
    await asyncio.to_thread(access.set_user, users, "vic", "viewer", "vic-pass-1")
    assert (await call(url, headers=vic)).status == 401
    fresh = session_cookie(served, (await login(served, "olga", "olga-pass-2"))[0])
    assert (await call(url, headers=fresh)).status == 200


async def test_wrong_passwords_sent_at_once_are_limited_too(served: Served) -> None:
    # Each attempt was counted only once its check failed: guesses sent at the same
    # time all passed the limiter (256 guesses each time a token came, not one).
    answers = await asyncio.gather(
        *(call(f"{served.url}/api/status", basic=("olga", f"guess-{i}")) for i in range(20))
    )
    statuses = sorted(a.status for a in answers)
    assert statuses == [401] * 5 + [429] * 15, statuses


async def test_a_right_password_sent_at_once_is_never_refused_for_tries_under_way(
    served: Served,
) -> None:
    # Each try took a token before its check and gave it back once right: 8 requests
    # of a dashboard with the right basic auth (or 7 logins) at once got 3 (2) 429s.
    login = {"username": "olga", "password": "olga-pass-1"}
    answers = await asyncio.gather(
        *(call(f"{served.url}/api/status", basic=("tech", WEB_PASS)) for _ in range(8)),
        *(call(f"{served.url}/login", "POST", body=login) for _ in range(7)),
    )
    assert [a.status for a in answers] == [200] * 15, [a.status for a in answers]


async def test_a_failed_form_login_goes_back_to_the_login_page_and_counts(
    served: Served,
) -> None:
    # A form posted without script got the JSON 401 as its page; now it goes back to the
    # login page, which says why, whether the user exists or not. JSON keeps its 401.
    login_url = f"{served.url}/login"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    answers = [
        await call(login_url, "POST", headers=form, body=b"username=olga&password=guess"),
        await call(login_url, "POST", headers=form, body=b"username=nobody&password=guess"),
    ]
    for answer in answers:
        assert answer.status == 303 and answer.headers["Location"] == "login?failed=1"
        assert "Set-Cookie" not in answer.headers and answer.body == b""
    page = await call(f"{served.url}/{answers[0].headers['Location']}")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert b'role="alert">Wrong user name or password.</div>' in page.body
    assert b"Wrong user name" not in (await call(login_url)).body
    json_answer = await call(login_url, "POST", body={"username": "olga", "password": "guess"})
    assert json_answer.status == 401
    assert json_answer.json() == {"errors": ["wrong user name or password"]}
    # the form's failures count as the JSON ones do: five in all, then even a right one waits
    for _ in range(2):
        await call(login_url, "POST", headers=form, body=b"username=olga&password=guess")
    limited = await call(
        login_url, "POST", headers=form, body=b"username=olga&password=olga-pass-1"
    )
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert "Set-Cookie" not in limited.headers


async def test_a_foreign_host_is_refused(tmp_path: Path) -> None:
    gateway, task, served = await _start(tmp_path, "  allowed_hosts: [gw.plant.example]")
    try:
        basic = ("tech", WEB_PASS)
        for host, status in (
            ("evil.example", 421),
            (f"evil.example:{served.port}", 421),
            (f"127.0.0.1:{served.port}", 200),
            (f"localhost:{served.port}", 200),
            (f"gw.plant.example:{served.port}", 200),
        ):
            answer = await call(f"{served.url}/api/status", headers={"Host": host}, basic=basic)
            assert answer.status == status, (host, answer)
        foreign_login = await call(
            f"{served.url}/login",
            "POST",
            headers={"Host": "evil.example"},
            body={"username": "tech", "password": WEB_PASS},
        )
        assert foreign_login.status == 421 and "Set-Cookie" not in foreign_login.headers
        assert (await call(f"{served.url}/healthz", headers={"Host": "evil.example"})).status == 200
    finally:
        gateway.stop()
        await task


async def _beyond_localhost(tmp_path: Path) -> tuple[Gateway, asyncio.Task[None], str, Path]:
    """A gateway listening on every address whose one account is in the users file."""
    port, data = free_port(), tmp_path / "data"
    users = data / "web-users"
    await asyncio.to_thread(access.set_user, users, "olga", "operator", "olga-pass-1")
    config = load_data(
        {
            "gateway": {"id": "wide", "data_dir": str(data)},
            "mqtt": {"url": "mqtt://127.0.0.1:1"},
            "status": {"enabled": False},
            "routes": {"all": {"match": "#", "sinks": ["out"]}},
            "sinks": {"out": {"type": "file"}},
            "web": {"listen": f"0.0.0.0:{port}"},
        },
        environ={},
    )
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    async with asyncio.timeout(10):
        await gateway.ready.wait()
    return gateway, task, f"http://127.0.0.1:{port}", users


async def test_beyond_localhost_a_removed_users_file_does_not_open_the_console(
    tmp_path: Path,
) -> None:
    # With no account left the console was open to everyone as an operator, on every
    # address: "open" is for a console on localhost only (check-config refuses the rest).
    gateway, task, url, users = await _beyond_localhost(tmp_path)
    try:
        assert (await call(f"{url}/api/session")).status == 401
        await asyncio.to_thread(users.unlink)
        for method, path, body in (
            ("GET", "/api/session", None),
            ("GET", "/api/status", None),
            ("POST", "/api/dead-letters/purge", {"all": True}),
        ):
            answer = await call(f"{url}{path}", method, body=body)
            assert answer.status == 403 and b"web passwd" in answer.body, (path, answer)
        login = await call(f"{url}/login", "POST", body={"username": "x", "password": "y"})
        assert login.status == 403 and "Set-Cookie" not in login.headers
    finally:
        gateway.stop()
        await task


async def test_a_users_file_spoilt_while_running_refuses_in_one_log_line_and_ends_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A malformed users file (an editor's half-written save, a stray line) made every
    # request but /healthz a 500 with a traceback in the log.
    gateway, task, url, users = await _beyond_localhost(tmp_path)
    try:
        answer = await call(
            f"{url}/login", "POST", body={"username": "olga", "password": "olga-pass-1"}
        )
        session = {"Cookie": answer.headers["Set-Cookie"].split(";", 1)[0]}
        script = ("olga", "olga-pass-1")
        assert (await call(f"{url}/api/session", basic=script)).status == 200
        assert gateway.web is not None
        held = next(iter(gateway.web.sessions._by_token.values()))
        seen = held.seen
        good = await asyncio.to_thread(users.read_text)
        await asyncio.to_thread(users.write_text, "olga:operator\n")
        unchecked = {"Authorization": "basic " + base64.b64encode(b"olga:olga-pass-1").decode()}
        for _ in range(2):
            assert (await call(f"{url}/api/session")).status == 401
            # A basic auth not checked before (or whose check was no longer remembered)
            # was a 401 and charged to the limiter: a script with the right password was
            # told it was wrong, then refused 429. It is refused 503 now, not charged.
            for _ in range(3):
                for basic in (None, ("olga", "olga-pass-0")):
                    headers = unchecked if basic is None else None
                    answer = await call(f"{url}/api/session", headers=headers, basic=basic)
                    assert answer.status == 503 and b"web-users" in answer.body
            # A login made before, a session or a script's checked basic auth, was ended
            # for good by a typo in a hand edit: now it is refused until the file is fixed.
            broken = await call(f"{url}/api/session", headers=session)
            assert broken.status == 503 and b"web-users" in broken.body
            assert (await call(f"{url}/api/session", basic=script)).status == 503
        # a 503 was taken for a use of the session: its idle time started again at each
        assert held.seen == seen
        problems = [r for r in caplog.records if "web-users:1" in r.getMessage()]
        assert len(problems) == 1 and problems[0].levelname == "ERROR"
        assert not any(r.exc_info for r in caplog.records)
        await asyncio.to_thread(users.write_text, good)
        assert (await call(f"{url}/api/session", headers=session)).status == 200
        assert (await call(f"{url}/api/session", basic=script)).status == 200
        await asyncio.to_thread(users.unlink)
        await asyncio.to_thread(access.set_user, users, "olga", "operator", "olga-pass-2")
        assert (await call(f"{url}/api/session", basic=("olga", "olga-pass-2"))).status == 200
    finally:
        gateway.stop()
        await task


async def test_a_reload_that_restarts_the_web_server_is_answered(served: Served) -> None:
    # The web server's restart waited for the request asking for the reload (which
    # waited for the restart), then cut it: `edge-stream reload` said "no gateway
    # answers" after 4 s though the reload was applied.
    text = served.path.read_text().replace(
        "  username: tech", "  metrics_open: true\n  username: tech"
    )
    await asyncio.to_thread(served.path.write_text, text)
    answer = await call(f"{served.url}/api/config/reload", "POST", basic=("tech", WEB_PASS))
    assert answer.status == 200, answer
    assert answer.json()["outcome"] == "applied"
    assert any("web server restarted" in c for c in answer.json()["changes"])
    assert (await call(f"{served.url}/metrics")).status == 200  # the new server runs it


async def test_a_reload_that_moves_data_dir_checks_the_users_of_the_new_one(
    served: Served,
) -> None:
    # The users file is <data_dir>/web-users, but a reload that moved gateway.data_dir
    # (web: unchanged) kept the web server checking the old folder's file: a user that
    # `edge-stream web passwd -c FILE` added (to the new folder's file) could not log in
    # until a restart, while one removed from it still could.
    moved = served.data.parent / "moved"
    await asyncio.to_thread(access.set_user, moved / "web-users", "nina", "viewer", "nina-pass-1")
    text = served.path.read_text().replace(str(served.data), str(moved))
    await asyncio.to_thread(served.path.write_text, text)
    answer = await call(f"{served.url}/api/config/reload", "POST", basic=("tech", WEB_PASS))
    assert answer.status == 200 and answer.json()["outcome"] == "applied", answer.body
    assert (await call(f"{served.url}/api/status", basic=("nina", "nina-pass-1"))).status == 200
    assert (await call(f"{served.url}/api/status", basic=("vic", "vic-pass-1"))).status == 401


async def test_two_gateways_on_one_host_keep_their_sessions_apart(tmp_path: Path) -> None:
    # A browser keeps a cookie per host name whatever the port: logging in to a second
    # gateway on the same host (SSH tunnels to localhost:8081 and :8082, a router's port
    # forwards) replaced the first one's session cookie, which logged it out.
    one, one_task, first = await _start(tmp_path / "one")
    two, two_task, second = await _start(tmp_path / "two")
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            for served in (first, second):
                base = f"http://localhost:{served.port}"
                answer = await browser.post(
                    f"{base}/login", json={"username": "olga", "password": "olga-pass-1"}
                )
                assert answer.status == 200, await answer.text()
            for served in (first, second):
                me = await browser.get(f"http://localhost:{served.port}/api/session")
                assert me.status == 200 and (await me.json())["auth"] == "session"
    finally:
        one.stop()
        two.stop()
        await one_task
        await two_task


async def test_every_answer_carries_the_security_headers(served: Served) -> None:
    basic = ("tech", WEB_PASS)
    page = await call(f"{served.url}/", basic=basic)
    for answer in (page, await call(f"{served.url}/login"), await call(f"{served.url}/nope")):
        csp = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "same-origin"
    for html in (page.body, (await call(f"{served.url}/login")).body):
        assert not re.search(rb"<script(?![^>]*\bsrc=)", html)  # no inline script
        assert b"<style" not in html and b"style=" not in html
        assert not re.search(rb"<[^>]*\son[a-z]+\s*=", html)  # no inline event handler
    script = await call(f"{served.url}/static/console.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert (await call(f"{served.url}/static/nope.js")).status == 404


async def test_the_icon_needs_no_login_and_the_pages_link_it(served: Served) -> None:
    # Browsers ask for /favicon.ico with every page, before a login too: it answered 401
    # (with a basic-auth challenge) or, on an open console, 404.
    icon = await call(f"{served.url}/favicon.ico")
    assert icon.status == 200 and icon.headers["Content-Type"] == "image/svg+xml"
    assert icon.body.startswith(b"<svg") and len(icon.body) < 1024
    assert "max-age=" in icon.headers["Cache-Control"]
    assert "WWW-Authenticate" not in icon.headers
    assert icon.headers["X-Content-Type-Options"] == "nosniff"
    assert (await call(f"{served.url}/static/favicon.svg")).body == icon.body
    assert (await call(f"{served.url}/favicon.ico", headers={"Host": "evil.example"})).status == 421
    page = await call(f"{served.url}/", basic=("tech", WEB_PASS))
    for html in (page.body, (await call(f"{served.url}/login")).body):
        assert b'<link rel="icon" href="static/favicon.svg" type="image/svg+xml">' in html


async def test_a_script_s_401_asks_for_no_password_dialog(served: Served) -> None:
    # After a logout in another tab (the cookie gone), the console's requests were
    # answered with a basic-auth challenge: the browser put its own password dialog over
    # the page and held the request, where the page goes to the login page on a 401.
    script = {"Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors"}
    for path in ("/api/session", "/api/events", "/api/config/routes/x"):
        answer = await call(f"{served.url}{path}", headers=script)
        assert answer.status == 401 and "WWW-Authenticate" not in answer.headers, path
    # an address typed in the browser, or curl without -u: asked for a password
    for headers in ({"Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate"}, {}):
        answer = await call(f"{served.url}/api/status", headers=headers)
        assert answer.headers["WWW-Authenticate"] == 'Basic realm="edge-stream"'


async def test_a_401_closes_the_connection(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()  # to the end: the server closed the connection
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401") and b"Connection: close" in answer


async def test_metrics_are_behind_credentials_unless_opened(tmp_path: Path) -> None:
    gateway, task, served = await _start(tmp_path / "a")
    try:
        assert (await call(f"{served.url}/metrics")).status == 401
        assert (await call(f"{served.url}/metrics", basic=("vic", "vic-pass-1"))).status == 200
    finally:
        gateway.stop()
        await task
    gateway, task, served = await _start(tmp_path / "b", "  metrics_open: true")
    try:
        answer = await call(f"{served.url}/metrics")
        assert answer.status == 200 and b"edge_stream_store_depth" in answer.body
        assert (await call(f"{served.url}/api/status")).status == 401
    finally:
        gateway.stop()
        await task


async def test_events_stream_the_status_and_are_bounded(served: Served) -> None:
    auth = "Basic " + base64.b64encode(f"tech:{WEB_PASS}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as session:
        streams = []
        for _ in range(16):
            response = await session.get(f"{served.url}/api/events")
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            streams.append(response)
        first = await streams[0].content.readline()
        assert first.startswith(b"data: ")
        assert json.loads(first[6:])["gateway"]["id"] == "sec-test"
        second = [await streams[0].content.readline() for _ in range(3)]
        assert second[0] == b"\n" and second[1].startswith(b"data: ")  # the next second's
        over = await session.get(f"{served.url}/api/events")
        assert over.status == 503
        over.release()
        streams.pop().close()
        await asyncio.sleep(1.5)  # the server notices at its next write
        again = await session.get(f"{served.url}/api/events")
        assert again.status == 200
        again.close()
        for response in streams:
            response.close()


async def test_an_event_stream_ends_with_its_session(served: Served) -> None:
    # A stream opened with a session went on sending the status after the logout (or
    # the session's end), for as long as its reader kept it open.
    token, csrf = await login(served, "olga", "olga-pass-1")
    cookie = session_cookie(served, token)
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.get(f"{served.url}/api/events", headers=cookie) as stream,
    ):
        assert stream.status == 200
        assert (await stream.content.readline()).startswith(b"data: ")
        out = await call(
            f"{served.url}/logout",
            "POST",
            headers={**cookie, "X-CSRF-Token": csrf, "Origin": served.url},
        )
        assert out.status == 200
        async with asyncio.timeout(3):
            rest = await stream.content.read()  # to the stream's end
        assert rest.count(b"data: ") <= 1


async def test_an_event_stream_keeps_its_session_until_its_lifetime(served: Served) -> None:
    # A wall display showing the pipeline makes no request: its live stream is all it
    # has. The session ended 2 hours after the login, the page sent to the login page.
    assert served.gateway is not None and served.gateway.web is not None
    sessions = served.gateway.web.sessions
    now = [1000.0]
    sessions._clock = lambda: now[0]
    token, _ = await login(served, "olga", "olga-pass-1")
    cookie = session_cookie(served, token)

    async def documents(stream: aiohttp.ClientResponse, count: int) -> None:
        seen = 0
        while seen < count:
            line = await stream.content.readline()
            assert line, "the stream ended"
            seen += line.startswith(b"data: ")

    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.get(f"{served.url}/api/events", headers=cookie) as stream,
    ):
        assert stream.status == 200
        async with asyncio.timeout(20):  # a document a second
            await documents(stream, 1)
            for _ in range(3):  # 5.7 hours after the login, no request but the stream
                now[0] += 1.9 * 3600
                await documents(stream, 2)  # the second sent after the clock moved on
        answer = await call(f"{served.url}/api/session", headers=cookie)
        assert answer.status == 200 and answer.json()["user"] == "olga"
        now[0] = 1000.0 + 12 * 3600 + 1  # its lifetime is up, however much it was used
        async with asyncio.timeout(5):
            rest = await stream.content.read()  # to the stream's end
        assert rest.count(b"data: ") <= 1
    assert (await call(f"{served.url}/api/session", headers=cookie)).status == 401


async def test_an_event_stream_that_keeps_its_session_ends_at_a_new_password(
    served: Served,
) -> None:
    # The stream is a use of its session (a wall display), not a way around a password
    # change meant to shut a stolen cookie out.
    token, _ = await login(served, "olga", "olga-pass-1")
    cookie = session_cookie(served, token)
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.get(f"{served.url}/api/events", headers=cookie) as stream,
    ):
        assert stream.status == 200
        assert (await stream.content.readline()).startswith(b"data: ")
        users = served.data / "web-users"
        await asyncio.to_thread(access.set_user, users, "olga", "operator", "olga-pass-2")
        async with asyncio.timeout(5):
            rest = await stream.content.read()  # to the stream's end
        assert rest.count(b"data: ") <= 1
    assert (await call(f"{served.url}/api/session", headers=cookie)).status == 401


async def test_a_deeply_nested_json_body_is_a_400_not_a_traceback(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # json.loads raised RecursionError, which the handlers did not catch: a 500 and an
    # ERROR traceback in the log, from anyone (POST /login needs no credentials).
    nested = b"[" * 5000
    json_type = {"Content-Type": "application/json"}
    login = await call(f"{served.url}/login", "POST", headers=json_type, body=nested)
    assert login.status == 400, login
    for action in ("replay", "purge"):
        answer = await call(
            f"{served.url}/api/dead-letters/{action}",
            "POST",
            headers=json_type,
            body=nested,
            basic=("tech", WEB_PASS),
        )
        assert answer.status == 400, (action, answer)
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


async def test_connections_slow_to_send_a_body_do_not_lock_out_healthz(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # A connection was only closed to make room while it sent its request head: one
    # that had sent a login's head and kept its body coming held its slot for good, so
    # 256 of them (no credentials needed) locked out /healthz and every user. Then each
    # connection closed so was logged as an ERROR with a traceback (the body's read
    # raised ConnectionResetError out of the handler).
    head = (
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 8000\r\n\r\n{"
    )
    held = []
    try:
        for _ in range(260):
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(head)
            held.append((reader, writer))
        await asyncio.gather(*(w.drain() for _r, w in held))
        await asyncio.sleep(0.5)  # every head is read and its body awaited
        async with asyncio.timeout(2):
            answer = await call(f"{served.url}/healthz")
        assert answer.status == 200
        async with asyncio.timeout(2):  # the oldest were closed to make room
            assert [await r.read() for r, _w in held[:5]] == [b""] * 5
        await asyncio.sleep(0.2)  # their handlers have seen it
    finally:
        for _reader, writer in held:
            writer.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]


async def test_no_answer_carries_a_secret(served: Served) -> None:
    token, _csrf = await login(served, "tech", WEB_PASS)
    cookie = session_cookie(served, token)
    await asyncio.sleep(1.5)  # the postgres sink has failed to connect by now
    seen = []
    for path in (
        "/",
        "/login",
        "/api/session",
        "/api/status",
        "/api/config",
        "/api/dead-letters",
        "/metrics",
        "/static/console.js",
        "/nope",
    ):
        answer = await call(f"{served.url}{path}", headers=cookie)
        seen.append(answer.body)
        assert answer.status in (200, 404), (path, answer)
    config = json.loads(seen[4])["config"]
    assert config["web"]["password"] == "***" and "***" in config["sinks"]["db"]["dsn"]
    for wrong in (
        (await call(f"{served.url}/api/status", basic=("tech", "nope"))).body,
        (
            await call(f"{served.url}/login", "POST", body={"username": "tech", "password": "x"})
        ).body,
    ):
        seen.append(wrong)
    auth = "Basic " + base64.b64encode(f"tech:{WEB_PASS}".encode()).decode()
    async with (
        aiohttp.ClientSession(headers={"Authorization": auth}) as session,
        session.get(f"{served.url}/api/events") as response,
    ):
        seen.append(await response.content.readline())
    for body in seen:
        assert WEB_PASS.encode() not in body and DB_PASS.encode() not in body


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "console.crt", folder / "console.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_the_console_serves_https_with_a_certificate_file(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path / "pki")
    extra = f'  tls_cert: "{cert}"\n  tls_key: "{key}"'
    gateway, task, served = await _start(tmp_path, extra)
    try:
        assert gateway.web_url == served.url and served.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert))
        answer = await call(f"{served.url}/healthz", ssl_context=trust)
        assert answer.status == 200 and answer.body == b"ok\n"
        answer = await call(
            f"{served.url}/login",
            "POST",
            body={"username": "olga", "password": "olga-pass-1"},
            ssl_context=trust,
        )
        assert answer.status == 200 and "secure" in answer.headers["Set-Cookie"].lower()
        with pytest.raises(aiohttp.ClientError):
            await call(f"http://127.0.0.1:{served.port}/healthz")  # no plain HTTP
    finally:
        gateway.stop()
        await task


async def test_a_reload_serves_a_renewed_certificate(tmp_path: Path) -> None:
    # The certificate was read when the web server started, and only a change of web:
    # restarted it: a renewed certificate written over the files, then `systemctl reload
    # edge-stream`, still served the old one (expired, soon) until the gateway restarted.
    cert, key = _self_signed(tmp_path / "pki")
    extra = f'  tls_cert: "{cert}"\n  tls_key: "{key}"'
    gateway, task, served = await _start(tmp_path, extra)
    try:
        old = ssl.create_default_context(cafile=str(cert))
        assert (await call(f"{served.url}/healthz", ssl_context=old)).status == 200
        token, _csrf = await login(served, "olga", "olga-pass-1", old)
        renewed, renewed_key = _self_signed(tmp_path / "renewed")
        cert.write_bytes(renewed.read_bytes())
        key.write_bytes(renewed_key.read_bytes())
        new = ssl.create_default_context(cafile=str(cert))
        answer = await call(
            f"{served.url}/api/config/reload", "POST", basic=("tech", WEB_PASS), ssl_context=old
        )
        assert answer.status == 200 and answer.json()["outcome"] == "applied", answer.body
        assert (await call(f"{served.url}/healthz", ssl_context=new)).status == 200
        with pytest.raises(aiohttp.ClientError):
            await call(f"{served.url}/healthz", ssl_context=old)
        # served anew in place: a login made before holds
        me = await call(
            f"{served.url}/api/session", headers=session_cookie(served, token), ssl_context=new
        )
        assert me.status == 200
    finally:
        gateway.stop()
        await task


def _listening_inode(gateway: Gateway) -> int:
    assert gateway.web is not None and gateway.web._listener is not None
    return os.fstat(gateway.web._listener.sockets[0].fileno()).st_ino


async def test_a_renewed_certificate_is_served_on_the_socket_that_listens(tmp_path: Path) -> None:
    # Before: the renewal closed the listening socket and opened another, so a connection
    # coming in meanwhile was refused and another program could take the port; now each
    # handshake on that socket switches to the context checked last.
    cert, key = _self_signed(tmp_path / "pki")
    gateway, task, served = await _start(tmp_path, f'  tls_cert: "{cert}"\n  tls_key: "{key}"')
    try:
        listening = _listening_inode(gateway)
        old = ssl.create_default_context(cafile=str(cert))
        renewed, renewed_key = _self_signed(tmp_path / "renewed")
        cert.write_bytes(renewed.read_bytes())
        key.write_bytes(renewed_key.read_bytes())
        assert gateway.web is not None and await gateway.web.renew_tls()
        assert _listening_inode(gateway) == listening
        new = ssl.create_default_context(cafile=str(cert))
        assert (await call(f"{served.url}/healthz", ssl_context=new)).status == 200
        with pytest.raises(aiohttp.ClientError):
            await call(f"{served.url}/healthz", ssl_context=old)
        assert not await gateway.web.renew_tls()  # nothing changed since
    finally:
        gateway.stop()
        await task


async def test_files_changed_again_after_their_check_leave_the_checked_ones_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the checked files were loaded again into the context that served, and a
    # key written back in between (the new certificate, the old key) left it half-loaded;
    # the listening socket was then closed and opened anew with the checked context.
    cert, key = _self_signed(tmp_path / "pki")
    old_key = key.read_bytes()
    gateway, task, served = await _start(tmp_path, f'  tls_cert: "{cert}"\n  tls_key: "{key}"')
    checked = server.served_tls

    def then_changed(cert_file: str, key_file: str) -> ssl.SSLContext:
        context = checked(cert_file, key_file)
        key.write_bytes(old_key)  # no longer the certificate's key
        return context

    monkeypatch.setattr(server, "served_tls", then_changed)
    try:
        listening = _listening_inode(gateway)
        renewed, renewed_key = _self_signed(tmp_path / "renewed")
        cert.write_bytes(renewed.read_bytes())
        key.write_bytes(renewed_key.read_bytes())
        assert gateway.web is not None and await gateway.web.renew_tls()
        assert _listening_inode(gateway) == listening
        new = ssl.create_default_context(cafile=str(cert))
        assert (await call(f"{served.url}/healthz", ssl_context=new)).status == 200
    finally:
        gateway.stop()
        await task


async def test_a_renewal_with_files_that_cannot_be_served_keeps_the_old_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The files changed since the reload's check read them: the certificate served stays,
    # on the same socket, and an ERROR names the files (the renewal needs the operator).
    cert, key = _self_signed(tmp_path / "pki")
    gateway, task, served = await _start(tmp_path, f'  tls_cert: "{cert}"\n  tls_key: "{key}"')
    try:
        listening = _listening_inode(gateway)
        old = ssl.create_default_context(cafile=str(cert))
        renewed, _renewed_key = _self_signed(tmp_path / "renewed")
        cert.write_bytes(renewed.read_bytes())  # the new certificate, the old key
        assert gateway.web is not None and not await gateway.web.renew_tls()
        assert _listening_inode(gateway) == listening
        assert (await call(f"{served.url}/healthz", ssl_context=old)).status == 200
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [
            f"web: web.tls_key: {key} is not the key of tls_cert {cert}; the console still"
            " serves the certificate it had"
        ]
    finally:
        gateway.stop()
        await task


async def test_a_compressed_body_is_refused_in_one_line(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: a broken gzip body was answered 500 'Server got itself in trouble', br and
    # zstd 400 in aiohttp's words ('Please install `Brotli`'), each with an ERROR
    # traceback in the log that any client could provoke, even without credentials.
    gzipped = gzip.compress(b'{"type": "file"}')
    for coding, body in [
        ("gzip", b"not gzip at all"),
        ("gzip", gzipped[:-6]),
        ("gzip", gzipped),
        ("br", b"\x8b\x00\x80not brotli"),
        ("zstd", b"not zstd"),
        ("x-unknown", b"{}"),
    ]:
        put = await call(
            f"{served.url}/api/config/sinks/extra",
            "PUT",
            headers={"Content-Type": "application/json", "Content-Encoding": coding},
            body=body,
            basic=("tech", WEB_PASS),
        )
        assert (put.status, put.body.decode()) == (
            415,
            f"the console takes a body as it is, not with Content-Encoding {coding!r}\n",
        )
        login = await call(
            f"{served.url}/login", "POST", headers={"Content-Encoding": coding}, body=body
        )
        assert login.status == 415 and login.body.count(b"\n") == 1, login.body
    assert "extra" not in served.path.read_text()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    # a body as it is, said so or not, is taken as before
    for headers in ({}, {"Content-Encoding": "identity"}):
        plain = await call(f"{served.url}/login", "POST", headers=headers, body={"x": 1})
        assert plain.status == 400 and plain.json() == {"errors": ["give username and password"]}


async def test_a_body_over_its_bound_is_a_413_in_the_route_s_json(served: Served) -> None:
    # The 413s were plain text where every other answer of these routes is JSON: the
    # console's script and scripts reading "errors" found none. A chunked body (no
    # Content-Length) to a dead-letter action was read up to 256 KiB past its 8 KiB.
    basic = "Basic " + base64.b64encode(f"tech:{WEB_PASS}".encode()).decode()
    cases = [
        ("PUT", "/api/config/sinks/extra", 300 << 10, "a body of at most 256 KiB"),
        ("POST", "/api/config/rollback", 300 << 10, "a body of at most 256 KiB"),
        ("POST", "/api/dead-letters/replay", 9000, "a body of at most 8192 bytes"),
        ("POST", "/api/dead-letters/purge", 9000, "a body of at most 8192 bytes"),
        ("POST", "/api/config/reload", 9000, "a reload takes no body"),
        ("POST", "/login", 9000, "a login body of at most 8192 bytes"),
    ]
    for method, path, length, said in cases:
        for size in (f"Content-Length: {length}", "Transfer-Encoding: chunked"):
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {basic}\r\n"
                f"Content-Type: application/json\r\n{size}\r\n\r\n".encode()
            )
            await writer.drain()
            async with asyncio.timeout(5):  # answered before the body comes
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
                assert length, head
                body = await reader.readexactly(int(length.group(1)))
            writer.close()
            assert head.startswith(b"HTTP/1.1 413 "), (path, size, head)
            assert b"\r\nConnection: close\r\n" in head
            assert b"Content-Type: application/json" in head, (path, head)
            doc = json.loads(body)
            assert doc["errors"][0].startswith(said), (path, doc)
            if path.startswith("/api/config/") and path != "/api/config/reload":
                assert (doc["outcome"], doc["version"]) == ("refused", None)
    assert "extra" not in served.path.read_text()


async def test_a_json_login_sent_as_a_form_is_read_as_json(served: Served) -> None:
    # `curl -d '{"username": ..., "password": ...}'` sends it as a form
    # (application/x-www-form-urlencoded): it was answered 400 "give username and
    # password", though both were given.
    for kind in ("application/x-www-form-urlencoded", "text/plain"):
        answer = await call(
            f"{served.url}/login",
            "POST",
            headers={"Content-Type": kind},
            body=json.dumps({"username": "olga", "password": "olga-pass-1"}).encode(),
        )
        assert answer.status == 200, answer.body
        assert answer.json()["user"] == "olga" and "Set-Cookie" in answer.headers
    # a form is still a form: its login goes to the page
    form = await call(
        f"{served.url}/login",
        "POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=b"username=olga&password=olga-pass-1",
    )
    assert form.status == 303 and form.headers["Location"] == "/"
