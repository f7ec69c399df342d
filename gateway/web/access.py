"""Who may use the console: users and their scrypt hashes, sessions, login rate limits,
and the Host and Origin checks. No aiohttp here; the server (server.py) applies it.

The users file (`web.users_file`, default `<data_dir>/web-users`, mode 0600) holds one
user a line, written by `edge-stream web passwd USER [--role viewer|operator]`:

    USER:ROLE:scrypt$N$r$p$SALT$HASH        (SALT and HASH base64)

Two roles: `viewer` reads every page and API; `operator` also changes things (config
edits, reload, and whatever else changes state). `web.username`/`web.password` in the
config is one more operator, checked before the file. The server reads the file again
when it changes, so `web passwd` needs no restart.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import files
from gateway.core.errors import ConfigError

log = logging.getLogger("gateway.web")

ROLES = ("viewer", "operator")
USERS_FILE = "web-users"  # under gateway.data_dir unless web.users_file names another

# scrypt cost: 16 MiB and ~50 ms per check on a Pi 4; logins are rate-limited per client.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
MAX_USERS_FILE = 1 << 20

Monotonic = Callable[[], float]


def users_path(users_file: str | None, data_dir: str) -> Path:
    """The users file a config names: `web.users_file`, else `<data_dir>/web-users`."""
    return Path(users_file) if users_file else Path(data_dir) / USERS_FILE


def check_user_name(name: str) -> str | None:
    """A problem with `name` as a console user name, or None."""
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
        return f"user name {name!r}: use 1 to 64 letters, digits, '.', '_', '-' or '@'"
    return None


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The scrypt hash of `password` as the users file stores it."""
    salt = salt if salt is not None else os.urandom(16)
    _give_back_scrypt_memory()
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


_MMAP_THRESHOLD_SET = False


def _give_back_scrypt_memory() -> None:
    """Make glibc hand scrypt's 16 MiB back to the system when it is freed.

    glibc raises its mmap threshold to the size of each large block freed, so after the
    first check the next 16 MiB come from a heap arena and stay there: every worker
    thread that ever checked a password would keep 16 MiB (measured: idle RSS 58 MB ->
    74 MB after one login, 107 MB after five at once). A fixed threshold turns that off."""
    global _MMAP_THRESHOLD_SET
    if _MMAP_THRESHOLD_SET:
        return
    _MMAP_THRESHOLD_SET = True
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(2 << 20))  # M_MMAP_THRESHOLD: 2 MiB
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a hash written by `hash_password` (slow: run it off the
    event loop)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or not (1 < int(n) <= 1 << 20 and 0 < int(r) <= 32):
            return False
        want = base64.b64decode(digest, validate=True)
        _give_back_scrypt_memory()
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=256 << 20,
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class User:
    name: str
    role: str
    hash: str


def parse_users(text: str, where: str) -> dict[str, User]:
    """The users of a users file's text; a malformed line is a ConfigError naming it."""
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        role, _, hashed = rest.partition(":")
        if check_user_name(name) or role not in ROLES or not hashed.startswith("scrypt$"):
            raise ConfigError(
                f"{where}:{number}: not a console user line (USER:ROLE:scrypt$...);"
                " write users with `edge-stream web passwd USER`"
            )
        users[name] = User(name, role, hashed)
    return users


def read_users(path: Path) -> dict[str, User]:
    """The users in the file at `path`; none when it does not exist."""
    try:  # a named pipe is not waited on: the console's start or `web passwd` hung
        raw = files.read_head(path, MAX_USERS_FILE + 1)
    except FileNotFoundError:
        return {}
    except OSError as err:
        # its words alone: a folder's error named the file descriptor ("Is a directory: 14")
        raise ConfigError(
            f"{path}: cannot read the console users file ({err.strerror or err})"
        ) from err
    if len(raw) > MAX_USERS_FILE:  # bytes: a count of characters let a longer file be cut
        raise ConfigError(f"{path}: the console users file is over 1 MiB")
    try:
        text = raw.decode()
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read the console users file ({err})") from err
    return parse_users(text, str(path))


def set_user(path: Path, name: str, role: str | None, password: str) -> bool:
    """Add or change one user of the users file (written atomically, mode 0600); True
    when the user was new. `role` None: a user's own (a new user is a viewer), so that
    an operator given a new password stays one."""
    users = read_users(path)
    new = name not in users
    if not new:
        os.chmod(path, 0o600)  # write_atomic keeps the old mode
    if role is None:
        role = "viewer" if new else users[name].role
    users[name] = User(name, role, hash_password(password))
    text = "".join(f"{u.name}:{u.role}:{u.hash}\n" for u in users.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, text)  # a new file is 0600
    return new


class Users:
    """The console's accounts: the config's `web.username`/`web.password` (an operator)
    and the users file, read again when its stat changes."""

    def __init__(self, path: Path, username: str | None, password: str | None) -> None:
        self.path = path
        self._config_user = (username, password) if username and password else None
        self._stat: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        self._broken = False  # the file is there but unreadable or malformed

    def _file_users(self) -> dict[str, User]:
        try:
            st = os.stat(self.path)
            stat: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stat = None
        if stat != self._stat:
            self._stat = stat
            self._broken = False
            try:
                self._users = read_users(self.path) if stat is not None else {}
            except ConfigError as err:
                # Closed until it is fixed: no user of the file gets in (a request must
                # not be a 500), and `required` holds, so the console is not open either.
                log.error("web: %s; no user of that file can log in until it is fixed", err)
                self._users, self._broken = {}, True
        return self._users

    @property
    def broken(self) -> bool:
        """Whether the users file is there but cannot be read or is malformed (a typo in
        a hand edit): no user of it logs in until it is fixed, but what was checked
        against it holds again then."""
        self._file_users()
        return self._broken

    @property
    def required(self) -> bool:
        """Whether the console asks for credentials at all (any account exists)."""
        return self._config_user is not None or bool(self._file_users()) or self._broken

    def role(self, name: str) -> str | None:
        """The current role of an account, None when it is gone."""
        if self._config_user is not None and name == self._config_user[0]:
            return "operator"
        user = self._file_users().get(name)
        return user.role if user else None

    def credential(self, name: str) -> str | None:
        """What the account's password is checked against now (its stored hash), so
        that a check remembered earlier can tell the password has changed since."""
        if self._config_user is not None and name == self._config_user[0]:
            return "config"
        user = self._file_users().get(name)
        return user.hash if user else None

    async def check(self, name: str, password: str) -> str | None:
        """The role of `name` when `password` is its password, else None."""
        if self._config_user is not None and name == self._config_user[0]:
            # As long as any other check (the dummy hash's scrypt): answered at once, the
            # config's account would show its user name to whoever times wrong guesses.
            await asyncio.to_thread(verify_password, password, _DUMMY_HASH)
            # a lone surrogate (JSON "\ud800") matches no password: a mismatch, not a 500
            given = password.encode(errors="surrogatepass")
            ok = hmac.compare_digest(given, self._config_user[1].encode())
            return "operator" if ok else None
        user = self._file_users().get(name)
        # scrypt takes ~50 ms of CPU: in a worker thread. An unknown name costs the same.
        ok = await asyncio.to_thread(verify_password, password, user.hash if user else _DUMMY_HASH)
        return user.role if ok and user is not None else None


# hash_password("no such user", salt=bytes(16)), checked for an unknown name
_DUMMY_HASH = (
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$uRMxBjDlrxAU4KfwWeVeJGpGDPW5pIkkPOaTSynRzQM="
)


@dataclass
class Session:
    user: str
    csrf: str
    created: float
    seen: float
    # what the password was checked against at the login (Users.credential): a session
    # holds while it is still the account's, so a new password ends the old sessions
    credential: str | None = None


class Sessions:
    """Login sessions by their cookie value: at most `limit` (the least recently used
    goes first), and at most a quarter of them one user's (that user's least recently
    used goes first), each ending `idle` seconds after its last use (a request, or a
    document its console's live stream sent: a wall display showing a page is in use)
    or `lifetime` after the login, used or not. Without the share, one account (a
    viewer) logging in 64 times ended every other user's session."""

    def __init__(
        self,
        limit: int = 64,
        idle: float = 2 * 3600,
        lifetime: float = 12 * 3600,
        clock: Monotonic = time.monotonic,
    ) -> None:
        self.limit = limit
        self.idle = idle
        self.lifetime = lifetime
        self._clock = clock
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: str, credential: str | None = None) -> tuple[str, Session]:
        now = self._clock()
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), now, now, credential)
        own = [t for t, held in self._by_token.items() if held.user == user]  # oldest first
        for old in own[: max(0, len(own) + 1 - max(1, self.limit // 4))]:
            del self._by_token[old]
        self._by_token[token] = session
        while len(self._by_token) > self.limit:
            self._by_token.popitem(last=False)
        return token, session

    def get(self, token: str, seen: bool = True) -> Session | None:
        """The session of `token` while it is in its time; `seen`: a request of it, which
        starts its idle time again (see `seen` once it is known to be answered)."""
        session = self._by_token.get(token)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > self.idle or now - session.created > self.lifetime:
            del self._by_token[token]
            return None
        if seen:
            self.seen(token)
        return session

    def seen(self, token: str) -> None:
        """A use of the session of `token` (a request, a live document sent): its idle
        time starts again, while it is in its time (an ended one stays ended)."""
        if self.alive(token):
            self._by_token[token].seen = self._clock()
            self._by_token.move_to_end(token)

    def alive(self, token: str) -> bool:
        """Whether the session is still there and in its time (a look: not a request)."""
        session = self._by_token.get(token)
        if session is None:
            return False
        now = self._clock()
        return now - session.seen <= self.idle and now - session.created <= self.lifetime

    def drop(self, token: str) -> None:
        self._by_token.pop(token, None)

    def __len__(self) -> int:
        return len(self._by_token)


@dataclass(slots=True)
class _Count:
    """A count's rule: `burst` tries at once, then one each `every` seconds."""

    burst: int
    every: float


@dataclass(slots=True, eq=False)
class _Bucket:
    """The tries one entry has left as of `at`, the checks charged to it still running,
    and the event the tries waiting on those checks wait for."""

    count: _Count
    tokens: float
    at: float
    running: int = 0
    ended: asyncio.Event | None = None

    def left(self, now: float) -> float:
        """Its tries at `now` (a look: nothing changes)."""
        return min(float(self.count.burst), self.tokens + (now - self.at) / self.count.every)

    def idle(self, now: float) -> bool:
        """Whether forgetting it changes nothing: all its tries back, no check running."""
        return not self.running and self.left(now) >= self.count.burst


@dataclass(slots=True, eq=False)
class _Slot:
    """A client of the limiter's table: an IPv4 address (`own` counts it), or an IPv6 /64
    (`own` counts the /64, `hosts` at most HOSTS of its addresses one by one)."""

    own: _Bucket
    hosts: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def idle(self, now: float) -> bool:
        return self.own.idle(now) and all(host.idle(now) for host in self.hosts.values())


@dataclass(slots=True)
class _Charge:
    """One entry a try would be charged to: its name, its rule, its tries now, its bucket
    (None: made when a try is charged), and the bucket whose running checks may give it
    tries back (its own, or the shared one a new entry starts from)."""

    name: str
    count: _Count
    tokens: float
    bucket: _Bucket | None
    pending: _Bucket | None

    def wait(self) -> float:
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) * self.count.every


@dataclass(slots=True)
class _Plan:
    """Where a try of a client goes now: the entries charged and what charging it makes:
    a slot (evicting `evict`), a host entry in a /64's slot (evicting `evict_host`), the
    overflow entry."""

    charges: list[_Charge]
    key: str
    host: str | None = None
    new_slot: bool = False
    evict: str | None = None
    new_host: bool = False
    evict_host: str | None = None
    overflow: bool = False


def client_keys(address: str) -> tuple[str, ...]:
    """What the login limiter counts a client by: its address, and for an IPv6 address
    also its /64 prefix. A host is given a whole /64 and may send from any address of it
    (privacy addresses rotate), so counting IPv6 addresses one by one would give a guesser
    an unbounded number of fresh tries; counting by the /64 alone let one host of a LAN (a
    poller left with an old password) lock every other host of it out."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return (address,)  # not an IP address (a Unix socket): as it is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return (str(ip.ipv4_mapped),)
        return (str(ip), str(ipaddress.IPv6Network((ip, 64), strict=False)))
    return (str(ip),)


OVERFLOW = "*"  # the clients that found the table full of clients still held back
HOSTS = 16  # the addresses of an IPv6 /64 counted one by one; the others by the /64 alone


@dataclass(frozen=True)
class Taken:
    """What `LoginLimiter.take` answers: the seconds the client must wait (0: its try is
    taken, and `settled` must follow) and the entries the try was charged to."""

    wait: float
    entries: tuple[str, ...] = ()
    buckets: tuple[_Bucket, ...] = field(default=(), repr=False, compare=False)


@dataclass
class LoginLimiter:
    """Failed logins per client address: `burst` at once, then one each `every` seconds;
    for an IPv6 address, also per /64 prefix (`client_keys`): `prefix_burst` at once, then
    one each `prefix_every` seconds. A try is refused when either count has none left: a
    host rotating the addresses of its /64 is held back by the looser prefix count, and a
    host of a LAN failing again and again (a poller with an old password) uses up its own
    address's tries long before the prefix's, so the other hosts still log in.

    The table holds at most `limit` clients, each an IPv4 address or an IPv6 /64: a host
    rotating the 2^64 addresses of its /64 takes one place, not all. A /64's place counts
    at most HOSTS of its addresses one by one; while those are all held back, its other
    addresses are counted by the /64 alone (which holds back a rotating host anyway).
    When the table is full, the client charged longest ago goes only if it has all its
    tries back (forgetting it changes nothing); otherwise a new client shares one more
    entry with every other client not in the table. Evicting a client still held back
    would give its guesser fresh tries for the price of sending from `limit` other
    addresses; for the same reason a client leaving that shared entry starts with no more
    tries than the shared entry has. Only a try that is charged makes or evicts entries:
    looking, and a refused try, change nothing.

    A try is counted before its password is checked (`take`), so that tries sent at once
    are limited as tries one after the other are, and given back when the password was
    right (`settled`, to the entries `take` charged). A try that finds an entry's tries
    taken only by checks still running waits for them to end instead of being refused: a
    right password sent by several requests at once (a dashboard polling in parallel) is
    not a 429."""

    burst: int = 5
    every: float = 10.0
    prefix_burst: int = 50
    prefix_every: float = 1.0
    limit: int = 1024
    clock: Monotonic = time.monotonic
    _address: _Count = field(init=False)
    _prefix: _Count = field(init=False)
    _slots: OrderedDict[str, _Slot] = field(init=False, default_factory=OrderedDict)
    _overflow: _Bucket | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._address = _Count(self.burst, self.every)
        self._prefix = _Count(self.prefix_burst, self.prefix_every)

    def _plan(self, client: str, now: float) -> _Plan:
        """Where a try of `client` goes now (a look: nothing changes)."""
        keys = client_keys(client)  # the address, and an IPv6 address's /64
        key, host = keys[-1], (keys[0] if len(keys) > 1 else None)
        slot = self._slots.get(key)
        if slot is None:
            shared = self._overflow
            evict = None
            if len(self._slots) >= self.limit:
                evict = next(iter(self._slots))
                if not self._slots[evict].idle(now):
                    # forgetting it would give it fresh tries: the client shares the overflow
                    tokens = float(self.burst) if shared is None else shared.left(now)
                    charge = _Charge(OVERFLOW, self._address, tokens, shared, shared)
                    return _Plan([charge], key, overflow=True)
            # A client may have been one of the overflow's: it starts with no more tries
            # than the overflow has left, or a guesser that drained it would get new ones.
            cap = math.inf if shared is None else shared.left(now)
            own = self._prefix if host is not None else self._address
            charges = [_Charge(key, own, min(own.burst, cap), None, shared)]
            if host is not None:
                start = min(self.burst, cap)
                charges.insert(0, _Charge(host, self._address, start, None, shared))
            return _Plan(charges, key, host, new_slot=True, evict=evict, new_host=bool(host))
        own_charge = _Charge(key, slot.own.count, slot.own.left(now), slot.own, slot.own)
        if host is None:
            return _Plan([own_charge], key)
        bucket = slot.hosts.get(host)
        if bucket is not None:
            charge = _Charge(host, self._address, bucket.left(now), bucket, bucket)
            return _Plan([charge, own_charge], key, host)
        evict_host = None
        if len(slot.hosts) >= HOSTS:
            evict_host = next(iter(slot.hosts))
            if not slot.hosts[evict_host].idle(now):
                return _Plan([own_charge], key)  # counted by the /64 alone
        charge = _Charge(host, self._address, float(self.burst), None, None)
        return _Plan([charge, own_charge], key, host, new_host=True, evict_host=evict_host)

    def _charge(self, plan: _Plan, now: float, check: bool) -> tuple[_Bucket, ...]:
        """Charge a try to the entries of `plan`, made as needed; `check`: its check
        runs now (`settled` follows)."""
        if plan.overflow:
            if self._overflow is None:
                self._overflow = _Bucket(self._address, float(self.burst), now)
            plan.charges[0].bucket = self._overflow
        else:
            if plan.new_slot:
                if plan.evict is not None:
                    del self._slots[plan.evict]  # it has all its tries back: nothing is lost
                own = plan.charges[-1]
                own.bucket = _Bucket(own.count, own.tokens, now)
                self._slots[plan.key] = _Slot(own.bucket)
            slot = self._slots[plan.key]
            self._slots.move_to_end(plan.key)
            if plan.new_host and plan.host is not None:
                if plan.evict_host is not None:
                    del slot.hosts[plan.evict_host]
                host = plan.charges[0]
                host.bucket = slot.hosts[plan.host] = _Bucket(host.count, host.tokens, now)
            if plan.host is not None and plan.host in slot.hosts:
                slot.hosts.move_to_end(plan.host)
        buckets = []
        for charge in plan.charges:
            bucket = charge.bucket
            assert bucket is not None  # made above
            bucket.tokens, bucket.at = max(0.0, charge.tokens - 1), now
            bucket.running += check
            buckets.append(bucket)
        return tuple(buckets)

    def wait(self, client: str) -> float:
        """Seconds before `client` may try again; 0 when it may now."""
        return max(charge.wait() for charge in self._plan(client, self.clock()).charges)

    def failed(self, client: str) -> None:
        """Count a failed try of `client` (one that `take` did not count)."""
        now = self.clock()
        self._charge(self._plan(client, now), now, check=False)

    def running(self, client: str) -> int:
        """How many checks are under way (taken, not settled) on `client`'s entry."""
        bucket = self._plan(client, self.clock()).charges[0].bucket
        return bucket.running if bucket is not None else 0

    async def take(self, client: str) -> Taken:
        """Take a try for `client` before its password is checked, or tell the seconds it
        must wait. While an entry's tries are out only because checks are still running,
        one of which may give its try back, wait for them."""
        while True:
            now = self.clock()
            plan = self._plan(client, now)
            empty = [charge for charge in plan.charges if charge.tokens < 1]
            if not empty:
                buckets = self._charge(plan, now, check=True)
                return Taken(0.0, tuple(charge.name for charge in plan.charges), buckets)
            pending = [charge.pending for charge in empty]
            if not all(bucket is not None and bucket.running for bucket in pending):
                return Taken(max(charge.wait() for charge in empty))
            bucket = pending[0]
            assert bucket is not None
            if bucket.ended is None:
                bucket.ended = asyncio.Event()
            await bucket.ended.wait()

    def settled(self, taken: Taken, right: bool) -> None:
        """The check `take` allowed has ended; a right password's try does not count."""
        now = self.clock()
        for bucket in taken.buckets:
            bucket.running = max(0, bucket.running - 1)
            if right:
                bucket.tokens, bucket.at = min(bucket.count.burst, bucket.left(now) + 1), now
            if bucket.ended is not None:
                bucket.ended.set()
                bucket.ended = None

    def __len__(self) -> int:
        """The clients in the table, and the overflow entry the others share."""
        return len(self._slots) + (self._overflow is not None)


LOCAL_NAMES = ("localhost", "localhost.localdomain")


def host_allowed(host_header: str, allowed: Iterable[str]) -> bool:
    """Whether a request's Host names this gateway: an IP address (an address cannot be
    rebound by a DNS answer), `localhost`, or one of `allowed` (the listen host, the
    machine's name and `web.allowed_hosts`), without the port, case-insensitive."""
    host = host_header.strip().lower()
    if not host:
        return False
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name in LOCAL_NAMES or name in {a.lower().rstrip(".") for a in allowed}


SESSION_COOKIE = "edge_stream_session"


def session_cookie(host_header: str) -> str:
    """The session cookie's name for a request's Host: `edge_stream_session`, followed by
    the Host's port when it has one. A browser keeps a cookie per host name whatever the
    port, so two gateways it reaches on one host (SSH tunnels to localhost:8081 and
    localhost:8082, a router forwarding two ports, two gateways on a laptop) shared one
    cookie: logging in to one logged the browser out of the other."""
    host = host_header.strip()
    port = host.rpartition("]")[2] if host.startswith("[") else host
    port = port.rpartition(":")[2] if port.count(":") == 1 else ""
    return f"{SESSION_COOKIE}_{port}" if port.isascii() and port.isdigit() else SESSION_COOKIE


def same_origin(origin: str, scheme: str, host_header: str) -> bool:
    """Whether an Origin (or a Referer's scheme://host[:port]) is this server's own."""
    scheme_given, sep, rest = origin.partition("://")
    if not sep:
        return False
    given_host = rest.split("/", 1)[0].lower()
    own = host_header.strip().lower()
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return scheme_given.lower() == scheme and (
        given_host == own or given_host == own.removesuffix(default) or given_host + default == own
    )


def loopback(host: str) -> bool:
    """Whether a listen host is this machine only."""
    host = host.strip("[]")
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
