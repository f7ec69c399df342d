"""The typed shape of the gateway's one config file.

Sections: `gateway`, `buffer`, `mqtt`, `sources`, `routes`, `sinks`, `web`,
`remote_config`, `status`, `alerts`, `state`.
Sources, routes, sinks and alert rules are mappings keyed by the name you give
them (letters, digits, `_` and `-`: `name_problem`); routes name the sinks they
feed. Every component's own keys are documented in its module.
Each key carries its description (`Doc`) and simple bounds (`Range`), from which
`edge-stream docs` writes docs/reference/ and `edge-stream schema` the JSON Schema.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.config.schema import (
    CheckProblem,
    Component,
    Doc,
    Duration,
    Range,
    Size,
    Valid,
    check_location,
    did_you_mean,
    mask_password,
    port_number,
    post_url_problem,
    redis_url_problem,
    url_syntax_problem,
)
from gateway.config.tls import ServedTlsError, served_tls
from gateway.core.component import MAX_SINKS
from gateway.core.errors import ConfigError
from gateway.core.schedule import Schedule, cron_problem
from gateway.core.topics import template_fields, unsendable, validate_filter, validate_topic
from gateway.mqtt.urls import (
    client_cert_problems,
    parse_url,
    too_long,
    unsendable_keys,
    url_problem,
)

Overflow = Literal["drop_oldest", "block"]
GATEWAY_ID_MAX = 256  # bytes of UTF-8
NAME_MAX = 128  # characters of a source, route, sink or alert rule name


@dataclass(frozen=True)
class GatewaySection:
    """Identity and where the gateway keeps its data."""

    id: Annotated[
        str,
        Doc(
            "The gateway's name: the `{gateway}` of sink topics and keys, and part of the"
            " default MQTT client ids (`edge-stream-<id>`), so each gateway on one broker"
            " needs its own (two with one id take each other's sessions). One level of MQTT"
            " topics (`edge-stream/<id>/status`): not empty, no `/`, `+`, `#`; at most 256"
            " bytes.",
            example="pi-01",
        ),
    ] = "edge-stream"
    data_dir: Annotated[
        str,
        Doc(
            "The folder of the store (`store.db`), the default secret key file and the"
            " file sink's relative paths; one gateway at a time may run on it.",
            example="/var/lib/edge-stream",
        ),
    ] = "./data"
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"],
        Doc("The least severe log lines written; `edge-stream run --log-level` overrides it."),
    ] = "info"
    secret_key_file: Annotated[
        str | None,
        Doc(
            "The key that decrypts `ENC(...)` values (default `<data_dir>/secret.key`;"
            " `EDGE_STREAM_SECRET_KEY` may hold the key instead)."
        ),
    ] = None
    watch_config: Annotated[
        bool,
        Doc(
            "Reload the config file when it changes (its stat is looked at every 0.5 s;"
            " a change that holds still for 1 s is read, also a file renamed over it),"
            " as SIGHUP does; an invalid file is refused and the running config stays."
        ),
    ] = True

    def check(self) -> Iterator[tuple[str, str]]:
        # The id is one level of the status, stats, alerts and remote-config topics
        # (edge-stream/<id>/status): 'a+b' passed check-config and the status topic was
        # then refused by the broker for ever.
        bad = sorted({c for c in self.id if c in "/+#" or not c.isprintable()})
        if not self.id or bad:
            what = ", ".join(repr(c) for c in bad) if bad else "nothing"
            yield (
                "id",
                f"{self.id!r} holds {what}: the id is one level of MQTT topics"
                " (edge-stream/<id>/status), so not empty and without '/', '+', '#' or"
                " control characters",
            )
        elif len(self.id.encode()) > GATEWAY_ID_MAX:
            # 70,000 characters passed: no status topic or client id could be encoded
            yield (
                "id",
                f"{self.id[:20]!r}... is {len(self.id.encode())} bytes; at most {GATEWAY_ID_MAX}",
            )
        for key, path, example in (
            ("data_dir", self.data_dir, "/var/lib/edge-stream"),
            # '' is the default key file, as web.users_file '' is the default users file
            ("secret_key_file", self.secret_key_file or None, "/var/lib/edge-stream/secret.key"),
        ):
            problem = path_problem(path, example)
            if problem:
                yield key, problem


# The files of the store in data_dir (gateway/store/): store.db and its -wal, -shm and
# -journal, the store.db.new a new store is made as, a store.db.corrupt-<time> set aside
# (with its -wal and -shm). Not any name starting store.db: store.dbx.csv is no store's.
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
_STORE_FILE = re.compile(r"store\.db(\.new|\.corrupt-.+)?(-wal|-shm|-journal)?")


def _rotated_of(path: str, other: str) -> bool:
    """Whether `path` is `other` rotated: <other>.N, N as the sink writes it (1, 2 ...;
    not 05, nor a digit of another script, ², which str.isdigit takes)."""
    number = path.removeprefix(other + ".")
    return number != path and number.isascii() and number.isdigit() and not number.startswith("0")


def path_problem(path: str | None, example: str, under: str | None = None) -> str | None:
    """Why `path` (gateway.data_dir, secret_key_file, web.users_file; a file sink's path,
    relative to `under`, gateway.data_dir) names no place the user meant, or None: ''
    was the current folder (/ for a service), '~/data' a folder named '~' in it."""
    if path is None:
        return None
    if not path.strip():
        return f"{path!r} is no path; write one, e.g. {example}"
    if path.startswith("~"):
        if under is not None:
            return (
                f"{path!r}: ~ is not expanded (it would be a folder named '~' under {under});"
                f" write the path in full, e.g. {example}"
            )
        made = os.path.abspath(path)
        # the folder a release before made, holding a store's backlog: say where it is
        there = f" (what it wrote is in {made})" if os.path.lexists(made) else ""
        return (
            f"{path!r}: ~ is not expanded (it would be a folder named '~' in the current"
            f" one); write the path in full, e.g. {example}{there}"
        )
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in path):  # C0, DEL, C1
        return f"{path!r} holds a control character"
    return None


@dataclass(frozen=True)
class BufferSection:
    """The SQLite store that holds every FlowFile until all its sinks have it."""

    max_bytes: Annotated[
        Size,
        Doc(
            "The store's budget: what the buffered FlowFiles may take (content, topic,"
            " attributes and a per-row overhead).",
            example="1GiB",
        ),
        Range(1 << 20, message="must be at least 1MiB"),
    ] = 1 << 30
    dead_letters_max_bytes: Annotated[
        Size,
        Doc(
            "The dead letters' own budget, outside `max_bytes`: what they may take (content,"
            " topic, attributes, reason and a per-row overhead). Past it, the oldest dead"
            " letters are deleted down to 90% of it (counted and logged).",
            example="256MiB",
        ),
        Range(1 << 20, message="must be at least 1MiB"),
    ] = 64 << 20
    overflow: Annotated[
        Overflow,
        Doc(
            "What happens when the budget is full: `drop_oldest` deletes the oldest"
            " FlowFiles (counted and logged); `block` keeps them and stops taking input"
            " (no acks, no polls) until the sinks drain. A sink may set its own."
        ),
    ] = "drop_oldest"
    synchronous: Annotated[
        Literal["normal", "full"],
        Doc(
            "SQLite's `synchronous`: `normal` keeps acknowledged data through a killed"
            " process, `full` also through a power cut (slower commits)."
        ),
    ] = "normal"
    batch_max: Annotated[
        int,
        Doc("The most messages one store transaction (one commit) takes in."),
        Range(1, 10000, "must be between 1 and 10000"),
    ] = 500
    batch_linger: Annotated[
        Duration,
        Doc(
            "How long a commit waits for more messages to fill its batch (not while only"
            " senders that wait for the commit, such as HTTP clients, have handed data over);"
            " at most 10s, as what it waits with is not acknowledged yet."
        ),
        Range(0, 10, "must be between 0s and 10s (what a commit waits with is not acknowledged)"),
    ] = 0.005


@dataclass(frozen=True)
class MqttSection:
    """The gateway's broker: what MQTT sources without a `url` and Modbus write-back use.

    `url: auto` (the default): the broker at `embedded_listen`; one that already
    answers there (the system's Mosquitto) is used, otherwise the gateway starts
    its own Mosquitto there, and only when some component uses it.
    `url: embedded`: always start and supervise a local Mosquitto (the
    `mosquitto` package must be installed) on `embedded_listen`.
    `url: mqtt://host:port` (or mqtts://): a broker run elsewhere.
    `embedded_listen` is host:port, an IPv6 address in brackets (`[::1]:1883`).
    `client_id`, `username`, `password`, `keepalive` and, with mqtts://, `ca_file`,
    `cert_file` and `key_file` are the defaults of every client on this broker: the
    status topics (and the alerts sent over MQTT), the remote config channel without a
    `broker`, MQTT sources without a `url` and write-back without a `url`.
    gateway/mqtt/broker.py says more.
    """

    url: Annotated[
        str,
        Doc(
            "`auto`: the broker at `embedded_listen`, started by the gateway if none"
            " answers there and some component needs one; `embedded`: always start one;"
            " `mqtt://host:port` or `mqtts://host:port`: a broker run elsewhere (it may hold"
            " `user:password@`, percent-encoded, which `username` and `password` override).",
            example="mqtt://127.0.0.1:1883",
        ),
    ] = "auto"
    client_id: Annotated[
        str | None,
        Doc(
            "The prefix of the client ids on this broker (default `edge-stream-<gateway"
            " id>`); each source adds `-<source name>`, the status topics' client adds"
            " `.status` and the remote config channel's `.remote-config` (a component name"
            " has no `.`, so a source named `status` keeps its own session)."
        ),
    ] = None
    username: Annotated[
        str | None,
        Doc("The user name of every component on this broker that sets none of its own."),
    ] = None
    password: Annotated[
        str | None,
        Doc("Its password (may be `ENC(...)`); never logged."),
    ] = None
    ca_file: Annotated[
        str | None,
        Doc(
            "For `mqtts://`: the CA that signed the broker's certificate, for every component"
            " on this broker that sets none of its own (default: the system's CAs)."
        ),
    ] = None
    cert_file: Annotated[
        str | None,
        Doc(
            "For `mqtts://`: a client certificate (PEM), for every component on this broker"
            " that sets none of its own; its key is `key_file`, or without one in this file"
            " too (a combined PEM)."
        ),
    ] = None
    key_file: Annotated[
        str | None,
        Doc("The client certificate's private key (PEM; default: read from `cert_file`)."),
    ] = None
    embedded_listen: Annotated[
        str,
        Doc(
            "host:port of the embedded (or `auto`) broker; an IPv6 address in brackets,"
            " `[::1]:1883`."
        ),
    ] = "127.0.0.1:1883"
    keepalive: Annotated[
        Duration,
        Doc(
            "The MQTT keepalive (whole seconds) of the components on this broker that set"
            " none of their own, and of the status connection (its last will goes when the"
            " broker has heard nothing for 1.5 times it; 0s: none, and a gateway gone is"
            " never noticed)."
        ),
        Range(0, 65535, "must be between 0s (none) and 65535s, MQTT's limit"),
    ] = 30.0

    def check(self) -> Iterator[tuple[str, str]]:
        # The broker refused the connect at every try.
        yield from unsendable_keys(self, ("client_id", "username"))
        if problem := keepalive_problem(self.keepalive):
            yield "keepalive", problem
        if self.url not in ("auto", "embedded") and not self.url.startswith(
            ("mqtt://", "mqtts://")
        ):
            yield (
                "url",
                f"{mask_password(self.url)!r} must be 'auto', 'embedded', mqtt://host:port"
                " or mqtts://host:port",
            )
        elif self.url not in ("auto", "embedded"):
            # mqtt://h:99999 or mqtt:// passed check-config; the sources crashed at start
            problem = url_problem(self.url)
            if problem:
                yield "url", problem
        if not self.url.startswith("mqtts://"):
            # The status topics, write-back and the sources on this broker would speak
            # plain MQTT, the files silently unused.
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(self, name):
                    yield (
                        name,
                        f"needs TLS: url {mask_password(self.url)!r} is not mqtts://host:port",
                    )
        yield from client_cert_problems(self.cert_file, self.key_file)
        host, _, port = self.embedded_listen.rpartition(":")
        if not host or port_number(port) is None:
            yield (
                "embedded_listen",
                f"{self.embedded_listen!r} must read host:port, e.g. 127.0.0.1:1883",
            )
        elif host.startswith("[") and host.endswith("]"):
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                yield "embedded_listen", f"{host} is not an IPv6 address, e.g. [::1]:1883"
        elif ":" in host or "[" in host or "]" in host:
            yield (
                "embedded_listen",
                f"{self.embedded_listen!r}: write an IPv6 address in brackets, e.g. [::1]:1883",
            )


def keepalive_problem(keepalive: float | None) -> str | None:
    """An MQTT keepalive is whole seconds: 500ms was sent as 0, no keepalive at all (the
    broker never noticed a gateway gone, and the status topic's last will never went)."""
    if keepalive is not None and not _whole(keepalive):
        return f"must be whole seconds, as MQTT counts it ({keepalive:g}s is not), or 0s for none"
    return None


def _whole(seconds: float) -> bool:
    """Whether `seconds` is whole, as written: 4.1m is 245.99999999999997 s as a float
    (sent rounded, never cut to 245)."""
    whole = round(seconds)
    return abs(seconds - whole) < 1e-6 and (whole > 0 or seconds == 0)  # 1e-7 is not 0


def whole_seconds_problem(seconds: float | None) -> str | None:
    """An MQTT duration (a Session Expiry Interval, a keepalive) is whole seconds: a
    session_expiry of 500ms was sent as 0, a session the broker ends at each disconnect,
    so what was published while the gateway was away (a restart, a network blip) was
    lost; 1.5s was 1s."""
    if seconds is not None and not _whole(seconds):
        return f"must be whole seconds, as MQTT counts it ({seconds:g}s is not)"
    return None


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a source, route, sink or alert rule (None: it can). Names
    become parts of keys joined with `.`, `:` and `/` (metrics labels, MQTT client ids,
    alert keys `<rule>:<subject>`, the store's ROUTE.N), so they hold none of them."""
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        return "names use letters, digits, '_' and '-'"
    if len(name) > NAME_MAX:
        # the config API (and the console) edits names of at most this many: a longer
        # one passed check-config, then could be neither changed nor removed there
        return f"a name has at most {NAME_MAX} characters (this one {len(name)})"
    return None


def _filter_problem(topic_filter: str) -> str | None:
    problem = validate_filter(topic_filter)
    if problem:
        return f"{topic_filter!r} is not a valid MQTT topic filter: {problem}"
    return None


@dataclass(frozen=True)
class RouteSection:
    """Sends every FlowFile whose topic matches `match` through processors to sinks."""

    match: Annotated[
        list[Annotated[str, Valid(_filter_problem)]],
        Doc(
            "The MQTT topic filters (`+` one level, `#` the rest) a FlowFile's topic must"
            " match, one or a list.",
            example="sensors/+/telemetry",
        ),
    ]
    sinks: Annotated[
        list[str],
        Doc("The names of the sinks (under `sinks:`) the route feeds.", example=["warehouse"]),
    ]
    processors: Annotated[
        list[Annotated[Any, Component("processor")]],
        Doc(
            "Processors run in turn on each FlowFile, each picked by its `type` (see the"
            " processor pages).",
            example=[{"type": "json"}],
        ),
    ] = field(default_factory=list)

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.match:  # `match: []` matched nothing, and the route sat there unused
            yield "match", "a route needs at least one topic filter, e.g. sensors/+/telemetry"
        if not self.sinks:
            yield "sinks", "a route needs at least one sink"


@dataclass(frozen=True)
class WebSection:
    """The console: status page, JSON API, live events and /metrics.

    It listens on localhost unless credentials are set (`username` and `password`, or a
    user in the users file, see `edge-stream web passwd`); asking for another address
    without them is refused.
    """

    listen: Annotated[
        str,
        Doc(
            "host:port of the console; an address other than localhost needs credentials:"
            " `username` and `password`, or a user in `users_file`.",
            example="127.0.0.1:8080",
        ),
    ] = "127.0.0.1:8080"
    username: Annotated[
        str | None,
        Doc(
            "An operator account's name (no ':'), asked for by the login page and HTTP basic"
            " auth; set with `password` (one without the other is refused)."
        ),
    ] = None
    password: Annotated[str | None, Doc("Its password (may be `ENC(...)`); never logged.")] = None
    enabled: Annotated[bool, Doc("Serve the page, the API and /metrics at all.")] = True
    users_file: Annotated[
        str | None,
        Doc(
            "The console's users and their scrypt hashes, one a line, written by"
            " `edge-stream web passwd USER --role viewer|operator` (default:"
            " `<data_dir>/web-users`, mode 0600).",
            example="/var/lib/edge-stream/web-users",
        ),
    ] = None
    allowed_hosts: Annotated[
        list[str],
        Doc(
            "More names the console may be reached by (the `Host` of a request), besides"
            " IP addresses, `localhost`, the listen host and this machine's name; a"
            " request for any other name is refused (DNS rebinding). Names alone: no"
            " scheme, port or wildcard.",
            example=["gateway.plant.example"],
        ),
    ] = field(default_factory=list)
    metrics_open: Annotated[
        bool,
        Doc(
            "Serve /metrics without credentials (for a Prometheus without them); the"
            " rest of the console still asks."
        ),
    ] = False
    tls_cert: Annotated[
        str | None,
        Doc(
            "A PEM certificate (chain) file: serve HTTPS with it; needs `tls_key`.",
            example="/etc/edge-stream/console.crt",
        ),
    ] = None
    tls_key: Annotated[
        str | None,
        Doc("The PEM private key file of `tls_cert`.", example="/etc/edge-stream/console.key"),
    ] = None

    def check(self) -> Iterator[tuple[str, str]]:
        problem = self.listen_problem()
        if problem:
            yield "listen", problem
        problem = path_problem(self.users_file or None, "/var/lib/edge-stream/web-users")
        if not problem and self.users_file and os.path.isdir(self.users_file):
            # it passed, then no user could log in (the file unreadable), and a console
            # with no account was closed all the same
            problem = (
                f"{self.users_file} is a folder; give the users file's path, e.g."
                " /var/lib/edge-stream/web-users"
            )
        if problem:
            yield "users_file", problem
        # HTTP basic auth sends "user:password" and splits at the first ':', so a name
        # holding one could never log in that way; a control character cannot be typed.
        bad = sorted({c for c in self.username or "" if c == ":" or not c.isprintable()})
        if bad:
            yield (
                "username",
                f"{self.username!r} holds {', '.join(repr(c) for c in bad)}: a console user"
                " name has no ':' (HTTP basic auth sends user:password) and no control"
                " characters",
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            missing = "tls_key" if self.tls_cert else "tls_cert"
            yield missing, "HTTPS needs both web.tls_cert and web.tls_key"
        for index, name in enumerate(self.allowed_hosts):
            # A request's Host is matched by its name alone: 'gw.example:8080' (the Host
            # header as sent), a URL or '*.example' passed check-config and matched no
            # request, each answered 421 as if the name had not been added.
            if not _HOST_NAME.fullmatch(name) and not _ip_address(name.strip("[]")):
                yield (
                    f"allowed_hosts.{index}",
                    f"{name!r} is not a host name (letters, digits, '-', '_' and '.'): write"
                    " the name alone, without scheme, port, path or wildcard, e.g."
                    " 'gateway.plant.example'; it is let in on the console's port",
                )

    def listen_problem(self) -> str | None:
        """Why `listen` is no host:port to listen on, or None (a port over 65535 passed
        check-config and the web server then crashed at start with a traceback)."""
        host, colon, _ = self.listen.rpartition(":")
        problem: str | None
        if "://" in self.listen:  # `http://0.0.0.0:8080` read "write an IPv6 address in brackets"
            problem = "an address, without a scheme such as http://"
        elif any(c.isspace() for c in self.listen):
            # ' 127.0.0.1:8080' was taken for an address beyond localhost: "listening on
            # 127.0.0.1 needs web.username and web.password"
            problem = "it holds a space"
        elif not (problem := check_location(self.listen)) and colon and not host:
            problem = "it has no host; 0.0.0.0:PORT listens on every address"  # Go's `:8080`
        elif not problem and (not colon or self.listen.endswith("]")):
            problem = "it has no port"
        if problem:
            return f"{self.listen!r} must read host:port, e.g. 127.0.0.1:8080 ({problem})"
        return None

    @property
    def local_only(self) -> bool:
        """Whether `listen` is a loopback address."""
        host = self.listen.rpartition(":")[0].strip("[]")
        if host in ("localhost", "localhost.localdomain"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def _ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _half_an_account(web: WebSection, users_file: str) -> tuple[str, str]:
    """web.username without web.password, or the other way round: one without the other
    made no account, and the console stayed open on localhost (its user believing it
    asked for that password), with no word said."""
    given, missing = ("username", "password") if web.username else ("password", "username")
    state = "empty" if getattr(web, missing) == "" else "missing"
    if _has_console_users(users_file):
        # the users file's accounts hold: the console asks for a password all the same
        what = f"remove web.{given} or set web.{missing} ({users_file} has the console's accounts)"
    else:
        what = (
            "the console's account needs both (without an account the console asks for"
            " no password at all)"
        )
    how = "in the file (as is or as ENC(...))" if missing == "password" else "in the file"
    return (
        f"web.{missing}",
        f"{state} while web.{given} is set: {what}; web.{missing} is set {how} or by"
        f" EDGE_STREAM__WEB__{missing.upper()} in the environment (a value kept only in"
        " /etc/edge-stream/environment is not seen by check-config run from a shell)",
    )


def _has_console_users(path: str) -> bool:
    """Whether the console users file at `path` has a user (gateway/web/access.py
    reads it in full)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return any(":scrypt$" in line for line in f.read(1 << 20).splitlines())
    except (OSError, ValueError):  # ValueError: a NUL in the path (said as users_file's)
        return False


@dataclass(frozen=True)
class RemoteConfigSection:
    """Signed configs pushed from a fleet server over MQTT (off by default).

    The gateway subscribes to `edge-stream/<gateway id>/config/set`; a document
    signed with the Ed25519 key whose public half is `public_key`, for this
    gateway and with a version above the last applied, is written to the config
    file (the old text kept under config-history/) and applied as a reload. The
    outcome goes to `edge-stream/<id>/config/result`, the active config's
    version and hash (retained) to `edge-stream/<id>/config/active`.
    `edge-stream config keygen-signing`, `config sign` and `config push` are the
    operator's side. gateway/config/remote.py says more.
    """

    enabled: Annotated[
        bool, Doc("Take signed configs from `broker`; without it nothing is subscribed.")
    ] = False
    broker: Annotated[
        str | None,
        Doc(
            "`mqtt://host:port` or `mqtts://host:port` of the fleet's broker (default: the"
            " gateway's broker, `mqtt.url`); it may hold `user:password@` (percent-encoded),"
            " which `username` and `password` override.",
            example="mqtts://fleet.example.com:8883",
        ),
    ] = None
    public_key: Annotated[
        str | None,
        Doc(
            "The file of the Ed25519 public key that signs configs: PEM, or its 32 bytes in"
            " base64 (`edge-stream config keygen-signing` writes one), or those 32 bytes in"
            " base64 written here instead of a file. Needed when enabled.",
            example="/etc/edge-stream/fleet.pub",
        ),
    ] = None
    username: Annotated[
        str | None,
        Doc("The user name on `broker` (default on the gateway's broker: `mqtt.username`)."),
    ] = None
    password: Annotated[
        str | None,
        Doc(
            "Its password (may be `ENC(...)`; default on the gateway's broker:"
            " `mqtt.password`); never logged."
        ),
    ] = None
    ca_file: Annotated[
        str | None,
        Doc(
            "CA bundle that verifies an mqtts:// broker (default on the gateway's broker:"
            " `mqtt.ca_file`, else the system's)."
        ),
    ] = None
    cert_file: Annotated[
        str | None,
        Doc(
            "Client certificate (PEM) for mqtts:// (default on the gateway's broker:"
            " `mqtt.cert_file` and `mqtt.key_file`); its key is `key_file`, or without one"
            " in this file too (a combined PEM)."
        ),
    ] = None
    key_file: Annotated[
        str | None, Doc("Its private key (PEM; default: read from `cert_file`).")
    ] = None

    def check(self) -> Iterator[tuple[str, str]]:
        if self.broker is not None and not self.broker.startswith(("mqtt://", "mqtts://")):
            yield (
                "broker",
                f"{mask_password(self.broker)!r} must be mqtt://host:port or mqtts://host:port",
            )
        elif self.broker is not None:
            problem = url_problem(self.broker)
            if problem:
                yield "broker", problem
        yield from client_cert_problems(self.cert_file, self.key_file)
        if not self.enabled:
            return
        if not self.public_key:
            yield "public_key", "remote_config needs the public key file that signs configs"
            return
        from gateway.config.remote import load_public_key  # cryptography, only when enabled

        try:
            load_public_key(self.public_key)
        except ConfigError as err:
            yield "public_key", str(err)


STATS_MIN = 0.1  # seconds: the shortest status.stats_interval but 0 (off)


@dataclass(frozen=True)
class StatusSection:
    """The gateway's own topics on its broker: `edge-stream/<id>/status` and `.../stats`.

    On the gateway's broker (`mqtt.url`; nothing is published when the gateway has
    none), a retained `online` goes to `edge-stream/<id>/status` on connect, with a
    retained `offline` as the connection's last will: when the gateway dies (kill -9,
    power cut, network gone) the broker itself says `offline`; a clean stop says it too.
    Every `stats_interval` a retained JSON summary (per source, route and sink counters,
    the store's bytes and dead letters, uptime, active alerts) goes to
    `edge-stream/<id>/stats`. The alerts' MQTT notifier publishes on this connection.
    """

    enabled: Annotated[
        bool, Doc("Publish the status topic (with its last will) and the stats at all.")
    ] = True
    stats_interval: Annotated[
        Duration,
        Doc(
            "How often the retained summary goes to `edge-stream/<id>/stats`; `0s`: never"
            " (and a summary retained there before is removed); else at least 100ms."
        ),
        Range(0, 86400, "must be between 0s (off) and 1 day"),
    ] = 60.0

    def check(self) -> Iterator[tuple[str, str]]:
        # Each summary is a status snapshot, published retained: a few a second at most.
        if self.stats_interval is not None and 0 < self.stats_interval < STATS_MIN:
            yield "stats_interval", "must be 0s (off) or at least 100ms"


AlertCondition = Literal[
    "sink_backlog", "sink_failing", "source_offline", "no_data", "dead_letters", "store_budget"
]
ALERT_CONDITIONS: tuple[str, ...] = typing.get_args(AlertCondition)
# The built-in rules (`alerts.defaults`), each named after its condition, with the
# thresholds of AlertRule; `no_data` needs a topic, so it is not among them.
DEFAULT_ALERTS: tuple[str, ...] = (
    "sink_backlog",
    "sink_failing",
    "source_offline",
    "dead_letters",
    "store_budget",
)
MQTT_TOPIC_MAX = 65535  # bytes of UTF-8: the length of an MQTT string is two bytes
NO_DATA_MIN_FOR = 1.0  # seconds: the shortest silence a no_data rule may watch for
# `for` when a rule sets none: the conditions that say "for X" take X from it.
DEFAULT_FOR = {"sink_failing": 300.0, "source_offline": 300.0, "no_data": 300.0}


@dataclass(frozen=True)
class AlertRule:
    """One alert: a condition on the gateway's own state with a threshold, that must
    hold for `for` before the alert fires; it resolves once it has not held for 5 s
    (a `no_data` alert: as soon as data comes on its topic).

    Conditions, each per component (the alert's subject): `sink_backlog` (the oldest
    FlowFile waiting for a sink is older than `older_than`), `sink_failing` (a sink
    fails to deliver: retrying or stopped), `source_offline` (a source is not running,
    or a Modbus device is offline: subject `<source>/<device>`), `no_data` (no FlowFile
    from a source on `topic` for `for`), `dead_letters` (more than `per_minute` FlowFiles
    dead-lettered in the last minute: it resolves about a minute after them),
    `store_budget` (the store holds more than `percent` of `buffer.max_bytes`).
    """

    condition: Annotated[
        AlertCondition | None,
        Doc(
            "What is watched; default: the rule's name when it names a condition"
            " (`sink_backlog: {older_than: 5m}` changes the built-in rule)."
        ),
    ] = None
    for_: Annotated[
        Duration | None,
        Doc(
            "How long the condition must hold before the alert fires (default 0s; 5m for"
            " `sink_failing`, `source_offline` and `no_data`, whose threshold it is; at least 1s"
            " for `no_data`)."
        ),
    ] = None
    older_than: Annotated[
        Duration,
        Doc("`sink_backlog`: the age of the oldest waiting FlowFile that is too old."),
    ] = 600.0
    per_minute: Annotated[
        int,
        Doc("`dead_letters`: more than this many dead letters in a minute fire."),
        Range(0, None, "must be 0 or more"),
    ] = 10
    percent: Annotated[
        float,
        Doc("`store_budget`: the share of `buffer.max_bytes` the store may fill."),
        Range(0, 100, "must be between 0 and 100"),
    ] = 90.0
    topic: Annotated[
        str | None,
        Doc(
            "`no_data`: the MQTT topic filter that must see data: FlowFiles from the"
            " sources, by the topic they arrive on (what processors make does not count).",
            example="sensors/#",
        ),
    ] = None
    components: Annotated[
        list[str],
        Doc(
            "The sinks (`sink_backlog`, `sink_failing`) or sources and Modbus devices"
            " (`source_offline`), by name, the rule watches; default: all of them."
        ),
    ] = field(default_factory=list)
    enabled: Annotated[bool, Doc("`false` turns the rule (a built-in one too) off.")] = True

    def check(self) -> Iterator[tuple[str, str]]:
        if self.condition == "no_data" and not self.topic:
            yield "topic", "a no_data rule needs the topic filter it watches"
        if self.topic:
            problem = _filter_problem(self.topic)
            if problem:
                yield "topic", problem


# Each threshold key and the condition it belongs to; another rule ignoring it silently
# would hide a mistake (`sink_failing: {older_than: 1m}`).
_THRESHOLD_OF = {
    "older_than": "sink_backlog",
    "per_minute": "dead_letters",
    "percent": "store_budget",
    "topic": "no_data",
}
_RULE_DEFAULTS = {key: getattr(AlertRule(), key) for key in _THRESHOLD_OF}


@dataclass(frozen=True)
class WebhookSettings:
    """An HTTP endpoint that gets every alert event as a JSON POST."""

    url: Annotated[
        str | None,
        Doc(
            "`http://` or `https://` URL the events are POSTed to (default: no webhook).",
            example="https://hooks.example.com/edge-stream",
        ),
    ] = None
    timeout: Annotated[
        Duration,
        Doc("How long one POST may take."),
        # aiohttp takes a total of 0 as no timeout: a webhook that never answers would
        # hold every event after it for ever
        Range(0, None, "must be more than 0", above=True),
    ] = 10.0
    queue: Annotated[
        int,
        Doc("Events kept for the webhook while it is down; past it the oldest are dropped."),
        Range(1, 10000, "must be between 1 and 10000"),
    ] = 1000
    retry: Annotated[
        RetrySettings, Doc("Capped exponential backoff with jitter between failed POSTs.")
    ] = field(default_factory=lambda: RetrySettings())

    def check(self) -> Iterator[tuple[str, str]]:
        if self.url is None:
            return
        if not self.url.startswith(("http://", "https://")):
            yield "url", f"{mask_password(self.url)!r} must be an http:// or https:// URL"
            return
        # What the webhook's POST will read (yarl): a URL it refuses crashed the alerts at
        # their first event, over and over, and no event went anywhere; then, logged at
        # each, the events waited for ever.
        if problem := url_syntax_problem(self.url):  # "http://[::1/x", "http://h:99999/"
            yield "url", problem
        elif not urlsplit(self.url).hostname:
            yield "url", "the host must be written out (http://host/path)"
        elif problem := post_url_problem(self.url):  # "http://[::1]x/", "http://h\\x/"
            yield "url", problem


@dataclass(frozen=True)
class AlertsSection:
    """Alerts on the gateway's own state: rules, and where firing and resolved go.

    Each rule's alert fires once when its condition has held for `for`, and
    resolves once; both events go to every notifier (`mqtt_topic`, `webhook`) and
    to the console (`alerts` in /api/status); docs/metrics.md tells the details.
    Alert state is kept in the store, so a restart neither fires an active alert
    again nor forgets it. The built-in
    rules (`defaults`) are sink_backlog (older than 10m), sink_failing (5m),
    source_offline (5m), dead_letters (more than 10 a minute) and store_budget
    (90%); a rule under `rules:` with the same name changes or (`enabled: false`)
    turns one off.
    """

    enabled: Annotated[bool, Doc("Evaluate the rules at all.")] = True
    defaults: Annotated[bool, Doc("Run the built-in rules (each can be changed by name).")] = True
    rules: Annotated[
        dict[str, AlertRule],
        Doc(
            "Rules by name (letters, digits, `_` and `-`); a name that is a condition needs"
            " no `condition`.",
            example={"warehouse_behind": {"condition": "sink_backlog", "older_than": "5m"}},
        ),
    ] = field(default_factory=dict)
    resolve_after: Annotated[
        Duration,
        Doc(
            "How long a rule's condition must have stopped holding before its alert resolves,"
            " so that a sink between two reconnects does not resolve and fire again (a"
            " `no_data` alert resolves as soon as data comes)."
        ),
        Range(0, 3600, "must be between 0s and 1h"),
    ] = 5.0
    mqtt_topic: Annotated[
        str | None,
        Doc(
            "The topic of the events on the gateway's broker (`{gateway}`: the gateway id);"
            " `null`: none. Needs the gateway to have a broker (none is started for the"
            " alerts alone) and `status.enabled`; without them no event goes to MQTT, and"
            " those that waited are given up (logged)."
        ),
    ] = "edge-stream/{gateway}/alerts"
    webhook: Annotated[
        WebhookSettings, Doc("An HTTP endpoint that gets every event as a JSON POST.")
    ] = field(default_factory=WebhookSettings)

    # check() runs even when a key failed (None there): a webhook.queue: 0 hid every
    # problem of the rules; the rules and mqtt_topic are skipped when they failed.
    check_incomplete: ClassVar[bool] = True

    def check(self) -> Iterator[CheckProblem]:
        if self.mqtt_topic is not None:
            topic = self.mqtt_topic.replace("{gateway}", "id")
            problem = validate_topic(topic)
            if problem is None and ("{" in topic or "}" in topic):
                problem = "only {gateway} is replaced (by the gateway id)"
            # What the broker refuses: it closed the status connection at each event (the
            # status topic went `offline` each time), or refused it for ever: Mosquitto
            # refuses a PUBLISH to a topic that begins with `$SYS` (`$SYSTEM/a` too) or
            # `$share`. Other topics beginning with '$' are a client's: `$aws/rules/...`
            # (AWS IoT Core's Basic Ingest), `$iothub/...`.
            if problem is None:
                problem = unsendable(topic)
            if problem is None and topic.startswith(("$SYS", "$share")):
                problem = "topics beginning with $SYS or $share are the broker's, not a client's"
            # With the longest id in each {gateway}: the PUBLISH could not be encoded, and
            # the alerts crashed at each event.
            longest = len(self.mqtt_topic.replace("{gateway}", "").encode())
            longest += self.mqtt_topic.count("{gateway}") * GATEWAY_ID_MAX
            if problem is None and longest > MQTT_TOPIC_MAX:
                problem = (
                    f"longer than an MQTT topic may be ({MQTT_TOPIC_MAX} bytes, each {{gateway}}"
                    f" counted as {GATEWAY_ID_MAX}, the longest id)"
                )
            if problem:
                shown = repr(self.mqtt_topic)
                if len(shown) > 80:
                    shown = shown[:60] + "..."
                yield "mqtt_topic", f"{shown} is not a topic to publish on: {problem}"
        for name, rule in (self.rules or {}).items():
            if problem := name_problem(name):
                yield ("rules", name), problem
                continue
            if rule is None:
                continue
            if rule.condition is None and name not in ALERT_CONDITIONS:
                close = did_you_mean(name, ALERT_CONDITIONS)
                if close:  # a built-in rule's name mistyped
                    yield (
                        f"rules.{name}",
                        f"no built-in rule is named {name!r}{close}; a rule of your own"
                        " needs a condition:",
                    )
                    continue
                yield (
                    f"rules.{name}.condition",
                    f"required when the rule's name is not a condition (one of"
                    f" {', '.join(ALERT_CONDITIONS)})",
                )
                continue
            condition = rule.condition or name
            if condition == "no_data" and rule.for_ is not None and rule.for_ < NO_DATA_MIN_FOR:
                # Held every second against when a topic was last seen (noted every half
                # second): a shorter silence fired while data flowed, and resolved, each second.
                yield (
                    f"rules.{name}.for",
                    "a no_data rule's for is the silence that fires it: at least 1s (the"
                    " rules are held against the gateway's state every second)",
                )
            for key, owner in _THRESHOLD_OF.items():
                if condition != owner and getattr(rule, key) != _RULE_DEFAULTS[key]:
                    # a value of its default there is harmless: it cannot be told from none
                    yield (
                        f"rules.{name}.{key}",
                        f"applies to {owner} rules only; this one watches {condition}",
                    )

    def effective(self) -> dict[str, tuple[str, AlertRule]]:
        """The rules that run: name -> (condition, rule), built-ins first."""
        if not self.enabled:
            return {}
        rules: dict[str, AlertRule] = {}
        if self.defaults:
            rules.update({name: AlertRule() for name in DEFAULT_ALERTS})
        rules.update(self.rules)
        return {
            name: (rule.condition or name, rule)
            for name, rule in rules.items()
            if rule.enabled and (rule.condition or name) in ALERT_CONDITIONS
        }


@dataclass(frozen=True)
class ReplicateSettings:
    """Where the processors' state is copied for a standby gateway."""

    redis: Annotated[
        str | None,
        Doc(
            "`redis://` or `rediss://` URL (the password may be `ENC(...)`; never logged)"
            " of the Redis that gets each checkpoint's state changes (default: none).",
            example="redis://standby-store:6379/0",
        ),
    ] = None
    prefix: Annotated[
        str,
        Doc(
            "The hash of a component is `<prefix>:<component>` (`{gateway}`: the gateway"
            " id); a standby uses the same config, so the same keys."
        ),
    ] = "edge-stream:{gateway}:state"
    max_pending: Annotated[
        int,
        Doc(
            "State changes held for Redis while it is slow or down; past it they are"
            " dropped and the whole state is copied again once Redis is back."
        ),
        Range(100, 10_000_000, "must be between 100 and 10000000"),
    ] = 100_000
    timeout: Annotated[
        Duration,
        Doc("How long one write to Redis may take."),
        Range(0, None, "must be more than 0", above=True),
    ] = 5.0
    restore_wait: Annotated[
        Duration,
        Doc(
            "A gateway that starts with an empty store reads its state from Redis before its"
            " first batch; while Redis does not answer it waits up to this long (sources not"
            " started: the broker keeps their messages), then starts without that state."
            " 0: do not wait. At most 2m: systemd gives the start 3 minutes"
            " (TimeoutStartSec in systemd/edge-stream.service)."
        ),
        Range(0, 120, "must be between 0 and 2m"),
    ] = 60.0

    def check(self) -> Iterator[tuple[str, str]]:
        # redis://h:99999/0 passed check-config and the gateway crashed at start with
        # urllib's traceback; a prefix {nope} was written as is into every key.
        problem = None if self.redis is None else redis_url_problem(self.redis)
        if problem:
            yield "redis", problem
        unknown = sorted(set(re.findall(r"\{([^{}]*)\}", self.prefix)) - {"gateway"})
        if unknown:
            yield "prefix", f"unknown placeholder {{{unknown[0]}}} (use {{gateway}})"


@dataclass(frozen=True)
class StateSection:
    """The processors' state (open windows, deadband values) beyond the local store.

    With `replicate.redis`, each checkpoint's state changes are written to Redis
    after the local commit, one hash per component, pipelined and bounded: when
    Redis is slow or down the gateway runs on, says so in /api/status
    (`replication`), and once Redis is back catches up (from the current state
    when more than `max_pending` changes piled up). A gateway that starts with an
    empty store and this setting restores the state from Redis: a standby with
    the same config continues the windows of a gateway that died. It may lose
    the changes of the last commits the dead gateway had not yet copied
    (`replication.pending` shows how many are in flight), and whatever the dead
    gateway stored but its sinks had not delivered (that stays in its store).
    """

    replicate: Annotated[
        ReplicateSettings,
        Doc("Copy each checkpoint's state changes to Redis for a standby gateway."),
    ] = field(default_factory=ReplicateSettings)


@dataclass(frozen=True)
class Config:
    """The whole gateway configuration."""

    gateway: Annotated[GatewaySection, Doc("Identity and where the gateway keeps its data.")] = (
        field(default_factory=GatewaySection)
    )
    buffer: Annotated[
        BufferSection, Doc("The SQLite store that holds every FlowFile until its sinks have it.")
    ] = field(default_factory=BufferSection)
    mqtt: Annotated[
        MqttSection,
        Doc(
            "The gateway's broker, used by the status topics, the alerts sent over MQTT, the"
            " remote config without a `broker`, MQTT sources without a `url` and write-back"
            " without a `url`."
        ),
    ] = field(default_factory=MqttSection)
    sources: Annotated[
        dict[str, Annotated[Any, Component("source")]],
        Doc(
            "The sources, by the name you give them (letters, digits, `_` and `-`); each"
            " picks its kind by `type`."
        ),
    ] = field(default_factory=dict)
    routes: Annotated[
        dict[str, RouteSection],
        Doc(
            "The routes, by name (letters, digits, `_` and `-`): which topics go through"
            " which processors to which sinks."
        ),
    ] = field(default_factory=dict)
    sinks: Annotated[
        dict[str, Annotated[Any, Component("sink")]],
        Doc(
            "The sinks, by the name routes use (letters, digits, `_` and `-`); each picks"
            " its kind by `type`."
        ),
    ] = field(default_factory=dict)
    web: Annotated[WebSection, Doc("The status page, JSON API and /metrics.")] = field(
        default_factory=WebSection
    )
    remote_config: Annotated[
        RemoteConfigSection,
        Doc("Signed configs pushed from a fleet server over MQTT (off by default)."),
    ] = field(default_factory=RemoteConfigSection)
    status: Annotated[
        StatusSection,
        Doc("The gateway's status (with a last will) and stats topics on its broker."),
    ] = field(default_factory=StatusSection)
    alerts: Annotated[
        AlertsSection,
        Doc("Alerts on the gateway's own state, to MQTT, a webhook and the console."),
    ] = field(default_factory=AlertsSection)
    state: Annotated[
        StateSection,
        Doc("The processors' state: replicated to Redis for a standby gateway (off by default)."),
    ] = field(default_factory=StateSection)

    # The references between sections are checked even when a section has problems
    # of its own; a field or an entry that failed is None here.
    check_incomplete: ClassVar[bool] = True
    # Keys a user may write for one of ours, named by what the docs and /api/status call
    # it: `store: {max_bytes: ...}` was met with "did you mean 'sources'?".
    key_hints: ClassVar[dict[str, str]] = {
        "store": "did you mean 'buffer'? the store's max_bytes, overflow and synchronous"
        " are set there"
    }

    def _check_alerts_topic(self) -> Iterator[tuple[str, str]]:
        """`alerts.mqtt_topic` with this gateway's id in `{gateway}`: the section's own
        check puts a stand-in there, and an id such as `$SYS` at the front made a topic
        of the broker's, whose PUBLISH Mosquitto answers by closing the connection (the
        status went `offline` at each event, and no event went out)."""
        topic = self.alerts.mqtt_topic if self.alerts is not None else None
        if topic is None or self.gateway is None or not topic.startswith("{gateway}"):
            return
        real = topic.replace("{gateway}", self.gateway.id)
        if real.startswith(("$SYS", "$share")):
            yield (
                "alerts.mqtt_topic",
                f"{topic!r} would be {real[:80]!r} with gateway.id {self.gateway.id!r}: topics"
                " beginning with $SYS or $share are the broker's, not a client's",
            )

    def _check_mqtt_sink_topics(self) -> Iterator[tuple[str, str]]:
        """An `mqtt` sink's topic with this gateway's id and the sink's name in it. One
        beginning with $SYS or $share is the broker's: Mosquitto refuses a client's PUBLISH
        there, so every message went to the dead letters, and with `protocol: 4` it
        acknowledges it and drops it, every message lost without a word. One whose fixed
        part is longer than an MQTT topic may be dead-lettered every message."""
        if self.gateway is None:
            return
        for name, sink in (self.sinks or {}).items():
            topic = getattr(sink, "topic", None)
            if sink is None or sink.type != "mqtt" or not isinstance(topic, str):
                continue
            try:
                fixed = topic.replace("{topic}", "").format(gateway=self.gateway.id, sink=name)
            except (ValueError, KeyError, IndexError):
                continue  # the sink's own check said why
            real = topic.replace("{topic}", "\0").format(gateway=self.gateway.id, sink=name)
            key = f"sinks.{name}.topic"
            if real.startswith(("$SYS", "$share")):
                shown = f" with gateway.id {self.gateway.id!r}" if "{gateway}" in topic else ""
                yield (
                    key,
                    f"{topic[:80]!r} would publish on {real[:80].replace(chr(0), '...')!r}"
                    f"{shown}: topics beginning with $SYS or $share are the broker's, not a"
                    " client's (Mosquitto refuses them, or with protocol: 4 drops them)",
                )
            shortest = len(fixed.encode(errors="surrogatepass")) + ("{topic}" in topic)
            if shortest > MQTT_TOPIC_MAX:
                yield (
                    key,
                    f"{topic[:40]!r}... makes topics of {shortest} bytes or more, longer than an"
                    f" MQTT topic may be ({MQTT_TOPIC_MAX} bytes)",
                )

    def _check_amqp_routing_keys(self) -> Iterator[tuple[str, str]]:
        """An `amqp` sink's routing key with this gateway's id and the sink's name in it,
        against the queue the default exchange routes it to (the sink's own check sees a
        key without placeholders only)."""
        gateway_id = self.gateway.id if self.gateway else None
        for name, sink in (self.sinks or {}).items():
            check = getattr(sink, "default_exchange_problem", None)
            if sink is None or sink.type != "amqp" or check is None:
                continue
            routing_key = getattr(sink, "routing_key", None)
            try:
                if not isinstance(routing_key, str) or not template_fields(routing_key):
                    continue  # none, or checked by the sink itself
            except ValueError:
                continue  # the sink's own check said why
            problem = check(gateway_id, name)
            if problem:
                yield f"sinks.{name}.routing_key", problem

    def _check_alert_components(self) -> Iterator[tuple[str, str]]:
        """An alert rule's `components` name sinks, or sources and Modbus devices, that
        exist: a mistyped name would leave the rule watching nothing, silently."""
        if self.alerts is None:
            return
        sinks = set(self.sinks or {})
        sources = set(self.sources or {})
        for source in (self.sources or {}).values():
            devices = getattr(source, "devices", None)
            if isinstance(devices, Mapping):
                sources.update(devices)
        for name, rule in (self.alerts.rules or {}).items():
            if rule is None or not rule.components:
                continue
            condition = rule.condition or name
            if condition in ("sink_backlog", "sink_failing"):
                known, what = sinks, "sink"
            elif condition == "source_offline":
                known, what = sources, "source or Modbus device"
            else:
                yield (
                    f"alerts.rules.{name}.components",
                    "only sink_backlog, sink_failing and source_offline rules watch components",
                )
                continue
            for i, component in enumerate(rule.components):
                if component not in known:
                    yield (
                        f"alerts.rules.{name}.components.{i}",
                        f"no {what} named {component!r} is defined{did_you_mean(component, known)}",
                    )

    def _embedded_claim(self) -> Claim | None:
        """`mqtt.embedded_listen`, when the gateway starts a broker there: `embedded`, or
        `auto` with a component on the gateway's broker (else none is started)."""
        from gateway.mqtt.broker import broker_users  # it reads this module's Config

        mqtt = self.mqtt
        if mqtt is None or mqtt.url not in ("auto", "embedded") or mqtt.embedded_listen is None:
            return None
        if any(key == "embedded_listen" for key, _ in mqtt.check()):
            return None
        if mqtt.url == "auto" and (
            self.sources is None or self.sinks is None or not broker_users(self)
        ):
            return None
        return listen_claim("embedded_listen", mqtt.embedded_listen)

    def _check_claims(self) -> Iterator[tuple[str, str]]:
        """One serial port, one source; one address, one listener (a source's or the
        console's): the second would retry forever ("cannot connect", "in use")."""
        taken: list[tuple[Claim, str]] = []  # (claim, whose)
        web = self.web
        if web is not None and web.enabled and not web.listen_problem():
            taken.append((listen_claim("listen", web.listen), "web.listen (the console)"))
        # The embedded broker starts first: a console or source on its address then stopped
        # the start with "web.listen ... is in use by another program", the gateway's own.
        if (broker := self._embedded_claim()) is not None:
            other = next((who for held, who in taken if _claims_clash(held, broker)), None)
            if other is not None:
                yield (
                    "mqtt.embedded_listen",
                    f"the {broker.shown} is also used by {other}: only one of them can open it",
                )
            taken.append((broker, "mqtt.embedded_listen (the gateway's broker)"))
        for name, source in (self.sources or {}).items():
            if source is None:
                continue
            for claim in source.claims():
                other = next((who for held, who in taken if _claims_clash(held, claim)), None)
                if other is None:
                    taken.append((claim, f"source {name!r}"))
                    continue
                hint = (
                    "; Modbus devices on one line go under one source's devices:"
                    if claim.identity[0] == "serial"
                    else ""
                )
                why = claim.why or f"only one of them can open it{hint}"
                yield (
                    f"sources.{name}.{claim.key}",
                    f"the {claim.shown} is also used by {other}: {why}",
                )

    def _check_file_sink_paths(self) -> Iterator[tuple[str, str]]:
        """A file sink's file is its own: not a file of the gateway's (a sink set to
        store.db moved the live store aside as "no JSON Lines" and intake stopped), nor
        another file sink's or one of its rotated files (two sinks appending to one file,
        a rotation of one moving the other's file away)."""
        data_dir = self.gateway.data_dir if self.gateway else "./data"
        web = self.web

        def where(path: str) -> str:
            return os.path.realpath(os.path.join(data_dir, path))

        own = {
            where(name): f"the gateway's {what}"
            for name, what in (
                ("store.reserve", "store's disk reserve"),
                ("store.new", "store's disk reserve"),  # made so, then renamed store.reserve
                (".lock", "lock file"),
                ("remote-config.json", "remote config state"),
            )
        }
        # Set, these two are opened as written: a relative one from the working directory
        # (the CLI, the loader, the console), not under data_dir; only the defaults are.
        key_file = self.gateway.secret_key_file if self.gateway else ""
        users_file = web.users_file if web else ""
        for path, default, what in (
            (key_file, "secret.key", "secret key file"),
            (users_file, "web-users", "console users file"),
        ):
            if path and path_problem(path, ""):
                continue  # refused by its own check
            try:
                own[os.path.realpath(path) if path else where(default)] = f"the gateway's {what}"
            except (OSError, ValueError):
                continue
        own_dirs = [where(name) for name in ("broker", "config-history")]
        home = where(".")
        taken: dict[str, str] = {}
        for name, sink in (self.sinks or {}).items():
            if sink is None or sink.type != "file":
                continue
            if any(key == "path" for key, _ in sink.check()):  # a FileSinkConfig
                # refused by the sink's own check (blank, ~, a control character): a
                # second line on it said the same path again, a line break and all
                continue
            path = getattr(sink, "path", None)
            ext = "csv" if getattr(sink, "format", None) == "csv" else "jsonl"
            try:
                target = where(path or f"{name}.{ext}")
            except (OSError, ValueError):
                continue
            clash = own.get(target) and f"is {own[target]}"
            if os.path.dirname(target) == home and _STORE_FILE.fullmatch(os.path.basename(target)):
                clash = "is the gateway's store, or one of its files"
            for folder in own_dirs:
                if not clash and target.startswith(folder + os.sep):
                    clash = f"is in the gateway's {os.path.basename(folder)}/ folder"
            for held, who in taken.items():
                if clash:
                    break
                if target == held:
                    clash = f"is the file of sink {who!r} too"
                elif _rotated_of(target, held):
                    clash = f"is where sink {who!r} rotates its file"
                elif _rotated_of(held, target):
                    clash = f"is rotated to where sink {who!r} writes"
            if clash:
                yield (
                    f"sinks.{name}.path",
                    f"{path or f'{name}.{ext}'!r}{'' if path else ' (the default)'}:"
                    f" {target!r} {clash}; give this sink a file of its own",
                )
            else:
                taken[target] = name

    def _check_dedupe_prefixes(self) -> Iterator[tuple[str, str]]:
        """Redis sinks that dedupe on the same host, port and database in their URLs keep
        their recent ids apart: with one `dedupe_prefix` (or one set to another's default,
        edge:<name>), a FlowFile routed to both was written by the first and left out by
        the second as "written already", and reported delivered. Two names of one server
        (an address and a host name) are not seen as one."""
        taken: dict[tuple[str, str], str] = {}
        for name, sink in (self.sinks or {}).items():
            if sink is None or sink.type != "redis" or getattr(sink, "mode", None) == "hash":
                continue
            url = getattr(sink, "url", None)
            if not getattr(sink, "dedupe", True) or not isinstance(url, str):
                continue
            try:
                parts = urlsplit(url)
                host = (parts.hostname or "").lower()
                server = f"{f'[{host}]' if ':' in host else host}:{parts.port or 6379}"
            except ValueError:
                continue  # refused by the sink's own check
            if getattr(sink, "cluster", False):
                # a cluster has database 0 alone, and its recent ids are keyed by slot
                server += " (cluster)"
            else:
                # the database as redis-py takes it: `?db=N` before the path's /N
                db = (parse_qs(parts.query).get("db") or [unquote(parts.path).replace("/", "")])[0]
                try:
                    server += f"/{int(db or 0)}"
                except ValueError:
                    continue  # redis-py refuses the url when the sink connects
            prefix = getattr(sink, "dedupe_prefix", None) or f"edge:{name}"
            other = taken.get((server, prefix))
            if other is None:
                taken[(server, prefix)] = name
                continue
            yield (
                f"sinks.{name}.dedupe_prefix",
                f"{prefix!r} is the dedupe_prefix of sink {other!r} too, on the same Redis"
                f" ({server}): a FlowFile routed to both would be written by one and left out"
                " by the other as written already; give each sink its own",
            )

    def _check_client_ids(self) -> Iterator[tuple[str, str]]:
        """One MQTT client id per broker: two clients with the same one take the session
        from each other for ever (each connect closes the other), and share its
        subscriptions. Sources and sinks, by their effective ids. The gateway's own status
        and remote config clients are `<prefix>.status` and `<prefix>.remote-config`,
        which no default id can be (a component name has no `.`)."""
        gateway, mqtt = self.gateway, self.mqtt
        if gateway is None or mqtt is None:
            return
        if mqtt.url in ("auto", "embedded"):
            own: str | None = f"mqtt://{mqtt.embedded_listen}"
        else:
            own = None if url_problem(mqtt.url) else mqtt.url
        prefix = mqtt.client_id or f"edge-stream-{gateway.id}"
        taken: dict[tuple[str, int, str], str] = {}

        def claim(url: str | None, client_id: str, key: str, who: str) -> Iterator[tuple[str, str]]:
            if url is None or url_problem(url):
                return
            host, port, _ = parse_url(url)
            where = (host.lower(), port, client_id)
            if where in taken:
                yield (
                    key,
                    f"{client_id!r} on {host}:{port} is the MQTT client id of {taken[where]} too:"
                    " the broker lets only one of them connect at a time (give each its own"
                    " client_id)",
                )
            else:
                taken[where] = who

        # A long mqtt.client_id made ids no CONNECT can hold (the status topics and the
        # sources on the gateway's broker crashed at every connect); their own client_id
        # keys are checked with the component's.
        derived = [f"{prefix}.remote-config"] if mqtt.client_id is not None else []
        for name, source in (self.sources or {}).items():
            if source is not None and source.type == "mqtt":
                url = getattr(source, "url", None)
                client_id = getattr(source, "client_id", None) or f"{prefix}-{name}"
                if not getattr(source, "client_id", None):
                    derived.append(client_id)
                yield from claim(
                    url or own, client_id, f"sources.{name}.client_id", f"source {name!r}"
                )
        longest = max(derived, key=lambda client_id: len(client_id.encode()), default="")
        if problem := too_long(longest):
            yield "mqtt.client_id", f"makes a client id that {problem}"
        for name, sink in (self.sinks or {}).items():
            if sink is not None and sink.type == "mqtt":
                client_id = getattr(sink, "client_id", None) or f"edge-stream-{gateway.id}-{name}"
                yield from claim(
                    getattr(sink, "url", None),
                    client_id,
                    f"sinks.{name}.client_id",
                    f"sink {name!r}",
                )

    def _check_command_topics(self) -> Iterator[tuple[str, str]]:
        """Two Modbus sources taking write-back commands on one topic of one broker, with
        a device of the same name: a command for it would be written by both. (Sources
        with different devices share a topic: each subscribes to its own devices.)"""
        mqtt = self.mqtt
        if mqtt is None:
            own: str | None = None
        elif mqtt.url in ("auto", "embedded"):
            own = f"mqtt://{mqtt.embedded_listen}"
        else:
            own = None if url_problem(mqtt.url) else mqtt.url
        taken: dict[tuple[str, int, str, str], str] = {}
        for name, source in (self.sources or {}).items():
            wb = getattr(source, "writeback", None)
            if source is None or source.type != "modbus" or wb is None or not wb.enabled:
                continue
            url = wb.url or own
            if url is None or url_problem(url):
                continue
            host, port, _ = parse_url(url)
            commands = re.sub(r"\{(device|register)\}", "+", wb.topic)
            devices = source.device_configs(name) if "{device}" in wb.topic else {"": None}
            for device in devices:
                where = (host.lower(), port, commands, device)
                other = taken.setdefault(where, name)
                if other == name:
                    continue
                named = f"device {device!r}" if device else "its devices"
                yield (
                    f"sources.{name}.writeback.topic",
                    f"commands on {commands!r} at {host}:{port} for {named} would be written"
                    f" by source {other!r} too: give each source its own command topic, e.g."
                    f" '{name}/{{device}}/{{register}}/set', or the devices other names",
                )
                break

    def _check_tls_files(self) -> Iterator[tuple[str, str]]:
        """An MQTT source on the gateway's broker (no `url`) with TLS files needs that
        broker to be mqtts://: otherwise they were silently unused, the source on plain
        MQTT. So does the remote config channel (on its `broker` or the gateway's)."""
        mqtt = self.mqtt
        remote = self.remote_config
        if remote is not None and remote.enabled:
            # the same for the remote config channel: it spoke plain MQTT, its files unused
            if remote.broker:
                broker = f"remote_config.broker {mask_password(remote.broker)!r}"
                tls = remote.broker.startswith("mqtts://")
                fix = "set remote_config.broker: mqtts://host:port"
            else:
                url = mqtt.url if mqtt is not None else "auto"
                broker = f"the gateway's broker (mqtt.url {mask_password(url)!r})"
                tls = url.startswith("mqtts://")
                fix = "set remote_config.broker: mqtts://host:port, or mqtt.url"
            for key in ("ca_file", "cert_file", "key_file"):
                if not tls and getattr(remote, key):
                    yield f"remote_config.{key}", f"needs TLS: {broker} is not mqtts://; {fix}"
        if mqtt is None or mqtt.url.startswith("mqtts://"):
            return
        for name, source in (self.sources or {}).items():
            if source is None or source.type != "mqtt" or getattr(source, "url", None):
                continue
            for key in ("ca_file", "cert_file", "key_file"):
                if getattr(source, key, None):
                    yield (
                        f"sources.{name}.{key}",
                        f"needs TLS: the gateway's broker (mqtt.url {mqtt.url!r}) is not"
                        " mqtts://; set url: mqtts://host:port here, or mqtt.url",
                    )

    def _check_served_tls(self) -> Iterator[tuple[str, str]]:
        """The certificate and key files the console and the sources serve HTTPS with can
        be read and used: else check-config passed and only the start failed."""
        served: list[tuple[str, str, str]] = []  # (where, certificate, key)
        for name, source in (self.sources or {}).items():
            files = None if source is None else source.served_tls()
            if files is not None:
                served.append((f"sources.{name}", *files))
        web = self.web
        if web is not None and web.enabled and web.tls_cert and web.tls_key:
            served.append(("web", web.tls_cert, web.tls_key))
        for where, cert, key in served:
            try:
                served_tls(cert, key)
            except ServedTlsError as err:
                yield f"{where}.{err.key}", str(err)

    def check(self) -> Iterator[CheckProblem]:
        routes: Mapping[str, RouteSection | None] = self.routes or {}
        for name, route in routes.items():
            if route is None or self.sinks is None:
                continue
            for i, sink in enumerate(route.sinks):
                if sink not in self.sinks:
                    yield (
                        f"routes.{name}.sinks.{i}",
                        (
                            f"no sink named {sink!r} is defined under sinks:"
                            f"{did_you_mean(sink, self.sinks)}"
                        ),
                    )
        if self.sinks and len(self.sinks) > MAX_SINKS:
            # each sink has a bit in every stored FlowFile: the start failed, after
            # check-config had said ok
            yield "sinks", f"{len(self.sinks)} sinks, more than the {MAX_SINKS} one store can keep"
        yield from self._check_alert_components()
        yield from self._check_alerts_topic()
        yield from self._check_mqtt_sink_topics()
        yield from self._check_amqp_routing_keys()
        yield from self._check_claims()
        yield from self._check_served_tls()
        yield from self._check_client_ids()
        yield from self._check_command_topics()
        yield from self._check_tls_files()
        yield from self._check_file_sink_paths()
        yield from self._check_dedupe_prefixes()
        for section in ("sources", "sinks", "routes"):
            for name in getattr(self, section) or {}:
                if problem := name_problem(name):
                    yield (section, name), problem
        yield from self._check_console_account()

    def _check_console_account(self) -> Iterator[tuple[str, str]]:
        """Half an account, or a console beyond localhost without one (a method of its
        own: its returns once skipped whatever the whole-config check did after them)."""
        web = self.web
        if web is None or not web.enabled:
            return
        users_file = web.users_file or os.path.join(
            self.gateway.data_dir if self.gateway else "./data", "web-users"
        )
        if bool(web.username) != bool(web.password):
            yield _half_an_account(web, users_file)
            return
        if web.username or web.local_only or web.listen_problem() or _has_console_users(users_file):
            return  # an account, or only localhost (a listen problem is said as such)
        host = web.listen.rpartition(":")[0]
        yield (
            "web.listen",
            f"listening on {host} needs web.username and web.password, or a user in"
            f" {users_file} (`edge-stream web passwd USER`); without them the"
            " console stays on 127.0.0.1",
        )


@dataclass(frozen=True)
class BatchSettings:
    """How a sink groups FlowFiles: up to `max_rows` and up to `max_bytes`; an idle sink
    woken by new FlowFiles waits `linger` for more before it writes.

    batch:
      max_rows: 1000      FlowFiles per write
      max_bytes: 4MiB     their sizes (payload, topic, attributes) per write; a single
                          FlowFile larger than this still goes, alone. The sink holds
                          at most two batches in memory (one written, one read ahead).
      linger: 0s          how long an idle sink, woken by new FlowFiles, waits for
                          more before it writes. 0 writes at once: what arrives while
                          a write is under way forms the next batch, and the store's
                          commits already group what came in within
                          buffer.batch_linger. A longer linger means fewer, larger
                          writes at low rates (a metered or far upstream), at that
                          much latency; a sink with a backlog never lingers. At
                          most 1d.
    """

    max_rows: Annotated[
        int,
        Doc("The most FlowFiles one write takes."),
        Range(1, 50000, "must be between 1 and 50000"),
    ] = 1000
    max_bytes: Annotated[
        Size,
        Doc(
            "The most bytes (payload, topic, attributes) one write takes; a single larger"
            " FlowFile still goes, alone. The sink holds at most two batches in memory."
        ),
        Range(64 << 10, 256 << 20, "must be between 64KiB and 256MiB"),
    ] = 4 << 20
    linger: Annotated[
        Duration,
        Doc(
            "How long an idle sink, woken by new FlowFiles, waits for more before it writes"
            " (0: at once; what arrives during a write forms the next batch). Longer means"
            " fewer, larger writes at low rates, at that much latency; at most 1d."
        ),
        Range(0, 86400, "must be between 0s and 1d (what lingers is not delivered yet)"),
    ] = 0.0


RETRY_MAX = 86400.0  # seconds: the longest wait between two tries of a failed upstream


@dataclass(frozen=True)
class RetrySettings:
    """Capped exponential backoff with jitter, from `initial` up to `max`."""

    # At least 10ms each: `max: 0s` retried a dead upstream a thousand times a second.
    initial: Annotated[
        Duration,
        Doc("The first wait after a failed write or connect."),
        Range(0.01, RETRY_MAX, "must be between 10ms and 1d"),
    ] = 0.5
    max: Annotated[
        Duration,
        Doc(
            "The longest wait; each failure doubles the wait up to this. An `initial` above"
            " it is taken as it. At most 1d, so that an upstream that is back is tried"
            " within a day (a wait an upstream asks for, `Retry-After`, is cut to it too)."
        ),
        Range(0.01, RETRY_MAX, "must be between 10ms and 1d"),
    ] = 30.0


@dataclass(frozen=True, kw_only=True)
class SinkConfig:
    """Delivery settings every sink shares; each sink's config extends this class.

    `rate_limit` (rows per second) paces delivery, e.g. while a backlog drains
    over a thin uplink after an outage; `overflow` overrides `buffer.overflow`
    for the FlowFiles routed to this sink.
    """

    # A sink's check() runs even when one of its keys failed (None there), so that a
    # mistake in one key hides none in the others: each sink's check copes with None.
    check_incomplete: ClassVar[bool] = True

    type: Annotated[str, Doc("The kind of sink.")]
    batch: Annotated[BatchSettings, Doc("How the sink groups FlowFiles into one write.")] = field(
        default_factory=BatchSettings
    )
    retry: Annotated[
        RetrySettings,
        Doc("Capped exponential backoff with jitter between failed writes or connects."),
    ] = field(default_factory=lambda: RetrySettings())
    rate_limit: Annotated[
        float | None,
        Doc(
            "At most this many FlowFiles per second (default, or 0: no limit), e.g. while a"
            " backlog drains over a thin uplink. A write then takes at most one second's"
            " worth (at least one FlowFile), so a whole number holds in every second; a"
            " fraction holds on average (2.5: two FlowFiles, then 0.8 s; 0.5: one, then 2 s)."
        ),
        Range(0, None, "must be 0 (no limit) or more"),
    ] = None
    overflow: Annotated[
        Overflow | None,
        Doc(
            "Overrides `buffer.overflow` for the FlowFiles routed to this sink (default:"
            " `buffer.overflow`)."
        ),
    ] = None


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """Keys every source shares; each source's config extends this class."""

    type: Annotated[str, Doc("The kind of source.")]

    def claims(self) -> list[Claim]:
        """What this source holds that no other component can hold at the same time: a
        serial port, a listening address. Two sources claiming one are refused by the
        config check; otherwise the second could never open it and retried forever."""
        return []

    def served_tls(self) -> tuple[str, str] | None:
        """The PEM certificate and key files this source serves HTTPS with, or None: the
        config check reads them (`gateway/config/tls.py`), as it reads the console's."""
        return None


class Claim(typing.NamedTuple):
    """A serial port or listening address a component holds: the key that names it, how
    the config writes it, and what it is (for comparing); `why` two cannot share it, when
    not that only one can open it."""

    key: str
    shown: str
    identity: tuple[str, str, str]
    why: str = ""


def serial_claim(key: str, port: str) -> Claim:
    """A serial port: symbolic links resolved, so that /dev/serial/by-id/... and the
    /dev/ttyUSB0 it points to are one port."""
    try:
        where = os.path.realpath(port)
    except ValueError:  # a NUL in the path: refused by the source's own check
        where = port
    return Claim(key, f"serial port {port}", ("serial", where, ""))


def listen_claim(key: str, listen: str) -> Claim:
    """A host:port listened on (an IPv6 host in brackets, as configs write it)."""
    host, _, port = listen.rpartition(":")
    return Claim(key, f"address {listen}", ("address", host.strip("[]"), port))


def _claims_clash(a: Claim, b: Claim) -> bool:
    """The same serial port, or addresses on one port where one of them listens on every
    address of the other's family: 0.0.0.0 on every IPv4 one, :: on every IPv6 one (the
    gateway's listeners are IPv6-only, so 0.0.0.0 and :: share a port), an empty host on
    all. A host name may be either family."""
    kind_a, where_a, port_a = a.identity
    kind_b, where_b, port_b = b.identity
    if kind_a != kind_b or port_a != port_b:
        return False
    if where_a == where_b:
        return True
    if kind_a != "address":
        return False
    # localhost binds 127.0.0.1 and ::1: the console on localhost:1883 passed the check
    # beside the embedded broker on 127.0.0.1:1883, then stopped the start with "in use
    # by another program", the gateway's own broker
    if _loopback_names(where_a) & _loopback_names(where_b):
        return True
    families_a, families_b = _families(where_a), _families(where_b)
    for wildcard, other in ((where_a, families_b), (where_b, families_a)):
        if wildcard in ("", "*") or (wildcard == "0.0.0.0" and "4" in other):
            return True
        if wildcard == "::" and "6" in other:
            return True
    return False


def _loopback_names(host: str) -> set[str]:
    """The addresses a listen host binds of those `localhost` names (127.0.0.1, ::1)."""
    if host.lower().rstrip(".") == "localhost":
        return {"127.0.0.1", "::1"}
    try:
        return {str(ipaddress.ip_address(host))} & {"127.0.0.1", "::1"}
    except ValueError:
        return set()


def _families(host: str) -> str:
    """The address families a listen host may bind: "4", "6" or both for a name."""
    if host in ("", "*"):
        return "46"
    try:
        return str(ipaddress.ip_address(host).version)
    except ValueError:
        return "46"


def _schedule_problem(value: str | None) -> str | None:
    return None if value is None else cron_problem(value)


@dataclass(frozen=True, kw_only=True)
class ScheduleKeys:
    """The keys of a polled source's schedule (`interval` is the source's own key)."""

    schedule: Annotated[
        str | None,
        Doc(
            "A cron schedule in UTC (`minute hour day month weekday`, an optional 6th field"
            " after weekday for seconds: `* * * * * */10` every 10 s) at whose times the"
            " source polls; when set, `interval` is not used. Default: none, poll every"
            " `interval`.",
            example="*/5 * * * *",
        ),
        Valid(_schedule_problem),
    ] = None
    jitter: Annotated[
        Duration,
        Doc(
            "Delay each poll by a random time up to this, so that many gateways on one"
            " schedule do not query the same server at the same instant; less than"
            " `interval` (or the time between two runs of `schedule`). Default: 0s.",
            example="5s",
        ),
        Range(0, message="must not be negative"),
    ] = 0.0
    missed: Annotated[
        Literal["skip", "catch_up"],
        Doc(
            "What to do when poll times passed without a poll (a poll slower than the"
            " interval, intake blocked by a full buffer, the clock jumping forward):"
            " `skip` waits for the next time ahead; `catch_up` polls once at once for all"
            " of them, then keeps to the schedule. Missed times are counted in"
            " `missed_runs` in /api/status."
        ),
    ] = "skip"

    def schedule_problems(self, interval: float) -> Iterator[tuple[str, str]]:
        """A `jitter` as long as the time between two polls: every poll then risks passing
        the next poll's time, and most are skipped (interval 10s, jitter 1h: 40 polls a
        day instead of 8640, the rest counted as missed)."""
        if not self.jitter:
            return
        if self.schedule is None:
            if self.jitter >= interval:
                yield "jitter", f"must be less than interval ({interval:g}s)"
            return
        if cron_problem(self.schedule) is not None:
            return  # said where `schedule` is checked
        from croniter import croniter

        times = croniter(self.schedule, datetime(2024, 1, 1, tzinfo=UTC))
        runs = [times.get_next(float) for _ in range(60)]
        gap = min(b - a for a, b in itertools.pairwise(runs))
        if self.jitter >= gap:
            yield "jitter", f"must be less than the time between two runs of schedule ({gap:g}s)"

    def poll_schedule(self, interval: float) -> Schedule:
        """The runtime schedule of these keys with the source's `interval`."""
        return Schedule(
            interval=interval, cron=self.schedule, jitter=self.jitter, missed=self.missed
        )
