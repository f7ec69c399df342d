"""Console access rules: password hashes, the users file, sessions, the login limiter,
the Host and Origin checks, and the config's refusal of an open console beyond localhost."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import pytest

from gateway.config.load import load_data
from gateway.core.errors import ConfigError
from gateway.web import access

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_password_hash_is_salted_scrypt_and_checks_only_the_password() -> None:
    first, second = access.hash_password("correct horse"), access.hash_password("correct horse")
    assert first.startswith("scrypt$16384$8$1$") and first != second
    assert "correct horse" not in first
    assert access.verify_password("correct horse", first)
    assert not access.verify_password("correct horsE", first)
    assert not access.verify_password("x", "scrypt$oops")
    assert not access.verify_password("x", "md5$1$2$3$4$5")


def test_the_users_file_is_written_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "web-users"
    assert access.set_user(path, "ann", "operator", "pass-word-1") is True
    assert access.set_user(path, "bob", "viewer", "pass-word-2") is True
    assert access.set_user(path, "ann", "viewer", "pass-word-3") is False
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = access.read_users(path)
    assert {u.name: u.role for u in users.values()} == {"ann": "viewer", "bob": "viewer"}
    assert "pass-word" not in path.read_text()
    assert access.verify_password("pass-word-3", users["ann"].hash)
    path.chmod(0o644)
    access.set_user(path, "bob", "operator", "pass-word-4")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert access.read_users(tmp_path / "none") == {}


def test_a_named_pipe_as_the_users_file_is_not_waited_on(tmp_path: Path) -> None:
    # read with open(), it waited for a writer: `web passwd` and the console's start hung
    path = tmp_path / "web-users"
    os.mkfifo(path)
    found: list[dict[str, access.User]] = []
    reader = threading.Thread(target=lambda: found.append(access.read_users(path)), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # let it go: a writer that opens and closes is its EOF
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(0.1)
        pytest.fail("the read waited for a writer")
    assert found == [{}]


def test_a_users_file_over_1_mib_of_bytes_is_refused_not_cut(tmp_path: Path) -> None:
    # its size was counted in characters once decoded: 1 MiB + 1 bytes of 'é' read as
    # half that, and the users after them were silently dropped
    path = tmp_path / "web-users"
    path.write_bytes(
        b"#" + "é".encode() * (access.MAX_USERS_FILE // 2) + b"\nann:operator:scrypt$1\n"
    )
    with pytest.raises(ConfigError, match=r"web-users: the console users file is over 1 MiB"):
        access.read_users(path)


def test_a_users_file_that_is_a_folder_is_one_line_and_refused_by_the_check(
    tmp_path: Path,
) -> None:
    # The error named the file descriptor ("[Errno 21] Is a directory: 14"), and
    # check-config passed the folder: no user could log in, and a console with no
    # account was closed all the same.
    with pytest.raises(ConfigError) as info:
        access.read_users(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read the console users file (Is a directory)"
    with pytest.raises(ConfigError) as info:
        load_data({"web": {"users_file": str(tmp_path)}}, environ={})
    assert info.value.problems == [
        f"<config>: web.users_file: {tmp_path} is a folder; give the users file's path, e.g."
        " /var/lib/edge-stream/web-users"
    ]


def test_a_malformed_users_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "web-users"
    path.write_text("# users\nann:operator:scrypt$1\nbob:root:scrypt$1\n")
    with pytest.raises(ConfigError, match=r"web-users:3: not a console user line"):
        access.read_users(path)


async def test_users_are_checked_against_the_config_account_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "web-users"
    users = access.Users(path, "tech", "config-pass")
    assert users.required
    assert await users.check("tech", "config-pass") == "operator"
    assert await users.check("tech", "wrong") is None
    assert await users.check("ann", "ann-pass-1") is None
    access.set_user(path, "ann", "viewer", "ann-pass-1")
    assert await users.check("ann", "ann-pass-1") == "viewer"  # read again on change
    assert users.role("ann") == "viewer" and users.role("nobody") is None
    assert not access.Users(tmp_path / "none", None, None).required
    assert access.Users(path, None, None).required


async def test_a_wrong_password_is_checked_the_same_for_the_config_account_as_for_anyone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The config's account was checked at once and every other name (known or not)
    # with scrypt: the answer's time told which user name the config holds. Each name
    # now runs one scrypt check, against the dummy hash when it has no hash of its own.
    access.set_user(tmp_path / "web-users", "olga", "operator", "olga-pass-1")
    users = access.Users(tmp_path / "web-users", "tech", "config-pass")
    checked: list[str] = []

    def verify(password: str, stored: str) -> bool:
        checked.append(stored)
        return False

    monkeypatch.setattr(access, "verify_password", verify)
    for name in ("tech", "nobody", "olga"):
        checked.clear()
        assert await users.check(name, "a-guess") is None
        assert len(checked) == 1 and checked[0].startswith("scrypt$"), (name, checked)
    assert await users.check("tech", "config-pass") == "operator"
    assert len(checked) == 2


def test_sessions_are_bounded_and_expire() -> None:
    clock = Clock()
    sessions = access.Sessions(limit=3, idle=60, lifetime=300, clock=clock)
    tokens = [sessions.create(f"u{i}")[0] for i in range(5)]
    assert len(sessions) == 3
    assert sessions.get(tokens[0]) is None and sessions.get(tokens[1]) is None
    kept = sessions.get(tokens[4])
    assert kept is not None and kept.user == "u4" and len(kept.csrf) >= 32
    clock.now += 59
    assert sessions.get(tokens[4]) is not None  # seen: the idle time starts again
    clock.now += 59
    assert sessions.get(tokens[3]) is None  # idle for 118 s
    for _ in range(4):
        assert sessions.get(tokens[4]) is not None
        clock.now += 59
    assert clock.now - 1000 > 300
    assert sessions.get(tokens[4]) is None  # over its lifetime, though seen a minute ago
    token, _ = sessions.create("u5")
    sessions.drop(token)
    assert sessions.get(token) is None


def test_a_use_keeps_a_session_only_within_its_lifetime() -> None:
    # What the console's live stream calls at each document it sends: it keeps an idle
    # session (a wall display) going, but never past its lifetime, nor once it ended.
    clock = Clock()
    sessions = access.Sessions(idle=60, lifetime=300, clock=clock)
    token, _ = sessions.create("wall")
    for _ in range(5):
        clock.now += 50
        assert sessions.alive(token)
        sessions.seen(token)
    clock.now += 51
    assert not sessions.alive(token)  # 301 s after the login, seen 51 s ago
    sessions.seen(token)
    assert not sessions.alive(token) and sessions.get(token) is None
    idle, _ = sessions.create("idle")
    clock.now += 61
    sessions.seen(idle)  # over its idle time: not brought back
    assert sessions.get(idle) is None


def test_one_user_holds_at_most_a_quarter_of_the_sessions() -> None:
    # The sessions were bounded only in all: a viewer logging in 64 times (a right
    # password is never limited) ended the operators' sessions.
    sessions = access.Sessions(limit=8)
    operators = [sessions.create(f"op{i}")[0] for i in range(2)]
    viewer = [sessions.create("vic")[0] for _ in range(20)]
    assert all(sessions.get(t) is not None for t in operators)
    assert [sessions.get(t) is not None for t in viewer] == [False] * 18 + [True] * 2
    assert len(sessions) == 4


def test_failed_logins_are_limited_per_client_in_a_bounded_table() -> None:
    clock = Clock()
    limiter = access.LoginLimiter(burst=5, every=10, limit=100, clock=clock)
    for _ in range(5):
        assert limiter.wait("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    assert limiter.wait("10.0.0.1") == pytest.approx(10)
    assert limiter.wait("10.0.0.2") == 0  # another client is not held back
    clock.now += 10
    assert limiter.wait("10.0.0.1") == 0
    limiter.failed("10.0.0.1")
    assert limiter.wait("10.0.0.1") > 0
    for i in range(1000):
        limiter.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(limiter) == 101  # 100 clients and the one the others share
    # Held back clients were evicted by the 1,000 others: sending from 100 addresses gave
    # 10.0.0.1 five fresh tries. It stays, and the newcomers share one entry's tries.
    assert limiter.wait("10.0.0.1") > 0
    assert limiter.wait("10.2.0.1") > 0 and limiter.wait("10.2.0.2") > 0
    clock.now += 60  # all have their tries back: forgetting them changes nothing now
    assert limiter.wait("10.2.0.1") == 0
    limiter.failed("10.2.0.3")
    assert limiter.wait("10.2.0.3") == 0 and len(limiter) == 101


def test_an_ipv6_client_is_counted_by_its_address_and_by_its_64_prefix() -> None:
    # Each IPv6 address had its own five tries: a host rotating the addresses of its /64
    # (2^64 of them) guessed without limit. Then the /64 alone was counted: one host of a
    # LAN with an old password (a poller) locked every other host of it out, right
    # passwords included. Now each address has its 5 and the /64 a looser 50.
    limiter = access.LoginLimiter(burst=5, every=10, prefix_burst=50, prefix_every=1, clock=Clock())
    for _ in range(5):
        limiter.failed("fd00:1::50")
    assert limiter.wait("fd00:1::50") == pytest.approx(10)
    assert limiter.wait("fd00:1::a1b2") == 0  # another host of the /64 still logs in
    for i in range(44):
        limiter.failed(f"fd00:1::1:{i:x}")
    assert limiter.wait("fd00:1::a1b2") == 0  # 49 of the /64's 50 are used
    limiter.failed("fd00:1::2:1")
    assert limiter.wait("fd00:1:0:0:ffff:1:2:3") == pytest.approx(1)  # the /64 has none
    assert limiter.wait("fd00:1:0:1::1") == 0  # another /64: another client
    assert access.client_keys("2001:db8:1:2:abcd::1") == (
        "2001:db8:1:2:abcd::1",
        "2001:db8:1:2::/64",
    )
    assert access.client_keys("::ffff:10.0.0.7") == ("10.0.0.7",)
    assert access.client_keys("fe80::1%eth0") == ("fe80::1", "fe80::/64")
    assert access.client_keys("10.0.0.7") == ("10.0.0.7",)


async def test_a_try_waits_for_the_checks_under_way_before_it_is_refused() -> None:
    clock = Clock()
    limiter = access.LoginLimiter(burst=2, every=10, clock=clock)
    first, second = await limiter.take("c"), await limiter.take("c")
    assert first.wait == 0 and second.wait == 0
    third = asyncio.create_task(limiter.take("c"))
    await asyncio.sleep(0)
    assert not third.done()  # the two under way may be right: they would give theirs back
    limiter.settled(first, right=False)
    await asyncio.sleep(0)
    assert not third.done()  # one still under way
    limiter.settled(second, right=True)
    assert (await third).wait == 0  # the right one's try went to it
    limiter.settled(await third, right=False)
    assert (await limiter.take("c")).wait == pytest.approx(10)  # none under way: refused
    assert limiter.running("c") == 0
    # the addresses of one IPv6 /64 wait for each other's checks when the /64 has none left
    limiter = access.LoginLimiter(burst=2, every=10, prefix_burst=2, prefix_every=10, clock=clock)
    first, second = await limiter.take("2001:db8::1"), await limiter.take("2001:db8::2")
    assert first.wait == 0 and second.wait == 0
    waiting = asyncio.create_task(limiter.take("2001:db8::3"))
    await asyncio.sleep(0)
    assert not waiting.done()
    limiter.settled(first, right=True)
    assert (await waiting).wait == 0


async def test_the_clients_that_share_the_overflow_entry_wait_for_each_others_checks() -> None:
    # The checks under way were counted per client and the try charged to the overflow
    # entry: a right password from a client of the overflow was refused (429) while
    # the other clients' checks, any of which could give a try back, still ran.
    limiter = access.LoginLimiter(burst=5, every=10, limit=1, clock=Clock())
    for _ in range(5):
        limiter.failed("10.0.0.1")  # held back: the table is full of it
    taken = [await limiter.take(f"10.0.1.{i}") for i in range(5)]
    assert [t.entries for t in taken] == [(access.OVERFLOW,)] * 5
    waiting = asyncio.create_task(limiter.take("10.0.2.1"))
    await asyncio.sleep(0)
    assert not waiting.done()
    limiter.settled(taken[0], right=True)
    assert (await waiting).wait == 0


async def test_a_right_login_gives_its_try_back_to_the_entry_it_was_charged_to() -> None:
    # settled() gave a right password's try back to the entry of the moment: once the
    # client had left the overflow (an old entry had all its tries back), its own new
    # one, and the overflow never got the try back.
    clock = Clock()
    limiter = access.LoginLimiter(burst=5, every=10, limit=2, clock=clock)
    for _ in range(5):
        limiter.failed("10.0.0.1")
    clock.now += 20
    for _ in range(5):
        limiter.failed("10.0.0.2")
    clock.now += 20
    taken = await limiter.take("10.0.1.1")
    assert taken.wait == 0 and taken.entries == (access.OVERFLOW,)
    for _ in range(4):
        limiter.failed("10.0.1.2")  # the overflow has none left
    clock.now += 10  # 10.0.0.1 has all its tries back, the overflow one
    limiter.settled(taken, right=True)
    limiter.failed("10.0.1.3")  # a new client has the overflow's two
    assert limiter.wait("10.0.1.3") == 0
    limiter.failed("10.0.1.3")
    assert limiter.wait("10.0.1.3") == pytest.approx(10)


def test_a_client_leaving_the_overflow_has_no_more_tries_than_the_overflow() -> None:
    # A guesser that used up the overflow entry got five fresh tries of its own as soon
    # as an old client had all its tries back and made room.
    clock = Clock()
    limiter = access.LoginLimiter(burst=5, every=10, limit=2, clock=clock)
    for _ in range(5):
        limiter.failed("10.0.0.1")
    clock.now += 30
    for _ in range(5):
        limiter.failed("10.0.0.2")
        limiter.failed("10.0.9.9")  # the guesser, in the overflow
    assert limiter.wait("10.0.9.9") == pytest.approx(10)
    clock.now += 20  # 10.0.0.1 has all its tries back; the overflow two
    limiter.failed("10.0.9.9")
    limiter.failed("10.0.9.9")
    assert limiter.wait("10.0.9.9") == pytest.approx(10)
    assert len(limiter) == 3  # 10.0.0.2, the overflow and the guesser


async def test_one_64_rotating_its_addresses_takes_one_place_of_the_table() -> None:
    # Each IPv6 address had a place of its own in the table, and a refused try made one
    # too: one host rotating the addresses of its /64 filled the table with places held
    # back, and every new client (IPv4 too) shared the overflow entry it had drained: a
    # right password was a 429.
    clock = Clock()
    limiter = access.LoginLimiter(limit=8, clock=clock)
    for i in range(300):
        clock.now += 0.05
        taken = await limiter.take(f"2001:db8:1:2::{i:x}")
        if taken.wait == 0:
            limiter.settled(taken, right=False)
    assert len(limiter) == 1  # the /64's place: no overflow entry either
    for i in range(7):  # the table's other places
        taken = await limiter.take(f"10.9.0.{i}")
        assert taken.wait == 0 and taken.entries == (f"10.9.0.{i}",)
        limiter.settled(taken, right=True)


async def test_one_64_rotating_its_addresses_is_held_back_by_the_64() -> None:
    clock = Clock()
    limiter = access.LoginLimiter(clock=clock)
    checked = 0
    for i in range(200):
        taken = await limiter.take(f"2001:db8:1:2::{i:x}")
        if taken.wait == 0:
            limiter.settled(taken, right=False)
            checked += 1
    assert checked == 50
    assert (await limiter.take("2001:db8:1:2:ffff::1")).wait == pytest.approx(1)
    clock.now += 1
    taken = await limiter.take("2001:db8:1:2:ffff::1")
    assert taken.wait == 0  # one a second
    limiter.settled(taken, right=False)
    assert (await limiter.take("2001:db8:1:2:ffff::2")).wait > 0
    assert (await limiter.take("2001:db8:1:3::1")).wait == 0  # another /64


async def test_a_lan_host_with_an_old_password_does_not_lock_out_its_64() -> None:
    # A poller failing once a second, from one address, next to 15 other hosts of the
    # LAN that failed too: its own count holds it back, not the /64's, so another host
    # of the /64 still logs in.
    clock = Clock()
    limiter = access.LoginLimiter(clock=clock)
    for i in range(15):
        limiter.settled(await limiter.take(f"fd00:1::1:{i:x}"), right=False)
    refused = 0
    for _ in range(120):
        clock.now += 1
        taken = await limiter.take("fd00:1::50")
        if taken.wait == 0:
            limiter.settled(taken, right=False)
        else:
            refused += 1
    assert refused > 100
    taken = await limiter.take("fd00:1::a1b2")
    assert taken.wait == 0 and taken.entries == ("fd00:1::a1b2", "fd00:1::/64")


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8080", True),
        ("[::1]:8080", True),
        ("10.0.0.5", True),
        ("localhost:8080", True),
        ("gw.plant.example:8080", True),
        ("GW.Plant.Example.", True),
        ("evil.example:8080", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
    ],
)
def test_the_host_must_be_an_address_or_a_known_name(host: str, ok: bool) -> None:
    assert access.host_allowed(host, ["gw.plant.example"]) is ok


def test_the_session_cookie_is_named_after_the_port_of_the_host() -> None:
    assert access.session_cookie("localhost:8081") == "edge_stream_session_8081"
    assert access.session_cookie("[::1]:8082") == "edge_stream_session_8082"
    assert access.session_cookie("gw.plant.example") == "edge_stream_session"
    assert access.session_cookie("[::1]") == "edge_stream_session"
    assert access.session_cookie("a:b:c") == "edge_stream_session"  # no port to tell
    assert access.session_cookie("gw:\uff18\uff10") == "edge_stream_session"  # not ASCII digits


def test_same_origin_compares_scheme_host_and_port() -> None:
    assert access.same_origin("http://10.0.0.5:8080", "http", "10.0.0.5:8080")
    assert access.same_origin("http://10.0.0.5:8080/page?x", "http", "10.0.0.5:8080")
    assert access.same_origin("https://gw", "https", "gw:443")
    assert not access.same_origin("https://10.0.0.5:8080", "http", "10.0.0.5:8080")
    assert not access.same_origin("http://evil.example", "http", "10.0.0.5:8080")
    assert not access.same_origin("http://10.0.0.5:8081", "http", "10.0.0.5:8080")
    assert not access.same_origin("null", "http", "10.0.0.5:8080")


def test_beyond_localhost_the_config_needs_an_account(tmp_path: Path) -> None:
    base = {"gateway": {"data_dir": str(tmp_path)}}
    with pytest.raises(ConfigError, match=r"needs web\.username and web\.password, or a user in"):
        load_data({**base, "web": {"listen": "0.0.0.0:8080"}}, environ={})
    load_data({**base, "web": {"listen": "127.0.0.2:8080"}}, environ={})  # loopback
    load_data({**base, "web": {"listen": "0.0.0.0:8080", "enabled": False}}, environ={})
    access.set_user(tmp_path / "web-users", "ann", "viewer", "ann-pass-1")
    load_data({**base, "web": {"listen": "0.0.0.0:8080"}}, environ={})
    other = tmp_path / "other-users"
    with pytest.raises(ConfigError, match=r"other-users"):
        load_data({**base, "web": {"listen": "[::]:8080", "users_file": str(other)}}, environ={})


def test_https_needs_both_the_certificate_and_its_key() -> None:
    with pytest.raises(ConfigError, match=r"web\.tls_key: HTTPS needs both"):
        load_data({"web": {"tls_cert": "/etc/c.pem"}}, environ={})


def test_the_dummy_hash_is_the_hash_of_its_text() -> None:
    assert access.hash_password("no such user", salt=bytes(16)) == access._DUMMY_HASH
