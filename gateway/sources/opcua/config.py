"""The `opcua` source's config: the server, its security, the nodes, write-back.

Strict, frozen dataclasses read by `gateway.config.schema`; `check()` reports every
problem with the key it belongs to. The user documentation is the package's
(`gateway.sources.opcua`). Nothing here imports asyncua: a config is checked without it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import urlsplit

from gateway.config.model import ScheduleKeys, SourceConfig
from gateway.config.schema import Doc, Duration, Range, Size, url_syntax_problem
from gateway.core.schedule import INTERVAL_MAX
from gateway.core.topics import template_fields, validate_topic
from gateway.mqtt.urls import url_problem

# ns=<index>; then i= (numeric), s= (string), g= (guid) or b= (opaque, base64)
NODE_ID = re.compile(
    r"(?:ns=\d+;)?(?:i=\d+|s=.+|g=[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}"
    r"-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|b=[A-Za-z0-9+/=]+)"
)
# one level of a browse path: an optional namespace index and a browse name
PATH_LEVEL = re.compile(r"(?:\d+:)?[^/:]+")
_NAME_CHARS = set(string.ascii_letters + string.digits + "_-.")


def template_problem(template: str, allowed: set[str]) -> str | None:
    """Why `template` is no usable topic template with these placeholders, or None."""
    try:
        names = set(template_fields(template))
    except ValueError as err:
        return str(err)
    unknown = names - allowed
    if unknown:
        return (
            f"{template!r} uses {', '.join(sorted(unknown))};"
            f" available: {', '.join('{' + a + '}' for a in sorted(allowed))}"
        )
    problem = validate_topic(template.format(**{k: "x" for k in names}))
    if problem:
        return f"{template!r} does not make a valid topic: {problem}"
    return None


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """One variable read from the server (see the package documentation for each key)."""

    node: Annotated[
        str | None,
        Doc(
            "The node id: `ns=2;s=Temperature`, `ns=2;i=1001`, `i=2258`"
            " (`g=` a GUID, `b=` opaque bytes in base64). Either this or `path`.",
            example="ns=2;s=Temperature",
        ),
    ] = None
    path: Annotated[
        str | None,
        Doc(
            "Or a browse path from the Objects folder: browse names separated by `/`, each"
            " with its namespace index (`2:Plant/2:Line1/2:Temperature`; no index: 0). It is"
            " resolved to a node id at each connection."
        ),
    ] = None
    mode: Annotated[
        Literal["subscribe", "poll"] | None,
        Doc(
            "`subscribe` (monitored item: the server reports changes) or `poll` (read on"
            " the source's `interval`/`schedule`). Default: the source's `mode`."
        ),
    ] = None
    sampling_interval: Annotated[
        Duration | None,
        Doc(
            "Subscribed nodes only: how often the server samples this node (default: the source's)."
        ),
        Range(0, message="must not be negative"),
    ] = None
    deadband: Annotated[
        float | None,
        Doc(
            "Subscribed numbers only: the server reports a change only when the value moved"
            " more than this (an absolute OPC UA deadband filter, applied by the server)."
        ),
        Range(0, message="must not be negative"),
    ] = None
    deadband_percent: Annotated[
        float | None,
        Doc(
            "Numbers only: a value is sent only when it moved more than this percentage of"
            " the last value sent (applied by the source, as the Modbus source does; not"
            " the server's EURange-based percent deadband, which many servers lack)."
        ),
        Range(0, 100, "must be 0..100"),
    ] = None
    writable: Annotated[bool, Doc("Accept write-back commands for this node (default: false).")] = (
        False
    )
    topic: Annotated[
        str | None,
        Doc(
            "This node's topic (default: the source's `topic` template): a template too,"
            " with `{source}` and `{node}`; `{{` and `}}` for a literal brace."
        ),
    ] = None

    def check(self) -> Iterator[tuple[str, str]]:
        if self.node is None and self.path is None:
            yield "node", "give `node` (a node id) or `path` (a browse path)"
        elif self.node is not None and self.path is not None:
            yield "node", "give either `node` (a node id) or `path` (a browse path), not both"
        if self.node is not None and not NODE_ID.fullmatch(self.node):
            yield (
                "node",
                f"{self.node!r} is not an OPC UA node id; write e.g. ns=2;s=Temperature or"
                " ns=2;i=1001",
            )
        elif self.node is not None:
            # the protocol's sizes (UInt16, UInt32): beyond them asyncua's struct.error came
            # out of every connect
            ns = re.match(r"ns=(\d+);", self.node)
            numeric = re.match(r"(?:ns=\d+;)?i=(\d+)$", self.node)
            if ns and int(ns.group(1)) > 65535:
                yield "node", f"namespace index {ns.group(1)} is out of range (0..65535)"
            if numeric and int(numeric.group(1)) > 4294967295:
                yield "node", f"numeric id {numeric.group(1)} is out of range (0..4294967295)"
        if self.path is not None:
            levels = self.path.strip("/").split("/")
            bad = [lv for lv in levels if not PATH_LEVEL.fullmatch(lv)]
            if bad or not self.path.strip("/"):
                yield (
                    "path",
                    f"{self.path!r} is not a browse path; write e.g. 2:Plant/2:Temperature",
                )
            else:
                for lv in levels:
                    index = lv.partition(":")[0] if ":" in lv else "0"
                    if int(index) > 65535:
                        yield "path", f"namespace index {index} is out of range (0..65535)"
                        break
        if self.topic is not None:
            # a template, as the source's `topic` is (it was used as written: a node's
            # topic "plant/{node}" was published on "plant/{node}")
            problem = template_problem(self.topic, {"source", "node"})
            if problem:
                yield "topic", problem


@dataclass(frozen=True, kw_only=True)
class OpcuaWritebackConfig:
    """Write-back commands over MQTT."""

    enabled: Annotated[
        bool, Doc("Take write commands from MQTT for the nodes marked `writable`.")
    ] = False
    url: Annotated[
        str | None,
        Doc(
            "The broker (default: the top-level `mqtt.url`, whose username, password and"
            " client id prefix then apply unless set here)."
        ),
    ] = None
    topic: Annotated[
        str,
        Doc(
            "Where commands come: `{source}` and `{node}` (the node's name in this config),"
            ' each a whole topic level; the payload is a JSON value or `{"value": ...,'
            ' "id": ...}`.'
        ),
    ] = "opcua/{source}/{node}/set"
    result_topic: Annotated[
        str, Doc("Where the outcome of each command is published: `{source}`, `{node}`.")
    ] = "opcua/{source}/{node}/set/result"
    client_id: Annotated[
        str | None,
        Doc("The client id (default: derived from `mqtt.client_id` and the source name)."),
    ] = None
    username: Annotated[
        str | None, Doc("The user name (default on the gateway's broker: `mqtt.username`).")
    ] = None
    password: Annotated[str | None, Doc("The password, may be `ENC(...)`; never logged.")] = None

    def check(self) -> Iterator[tuple[str, str]]:
        for key in ("topic", "result_topic"):
            problem = template_problem(getattr(self, key), {"source", "node"})
            if problem:
                yield key, problem
        levels = self.topic.split("/")
        if "{node}" not in levels or any(
            "{" in lv and lv not in ("{source}", "{node}") for lv in levels
        ):
            yield (
                "topic",
                "the command topic needs {node} (and may have {source}), each a whole level",
            )
        problem = None if self.url is None else url_problem(self.url)
        if problem:
            yield "url", problem


@dataclass(frozen=True, kw_only=True)
class OpcuaSourceConfig(ScheduleKeys, SourceConfig):
    """Keys of the `opcua` source."""

    url: Annotated[
        str,
        Doc("The server's endpoint URL.", example="opc.tcp://10.0.0.7:4840"),
    ]
    nodes: Annotated[
        dict[str, NodeConfig],
        Doc(
            "The variables to read, by name (the name is the `{node}` of topics and"
            " write-back commands: letters, digits, `_`, `-`, `.`).",
            example={
                "temperature": {"node": "ns=2;s=Temperature", "deadband": 0.5},
                "counter": {"node": "ns=2;i=1001", "mode": "poll"},
            },
        ),
    ]
    mode: Annotated[
        Literal["subscribe", "poll"],
        Doc("How nodes are read unless they say otherwise: `subscribe` or `poll`."),
    ] = "subscribe"
    publishing_interval: Annotated[
        Duration,
        Doc("How often the server sends the changes of subscribed nodes.", example="1s"),
        Range(0.01, message="must be at least 10ms"),
    ] = 1.0
    sampling_interval: Annotated[
        Duration | None,
        Doc("How often the server samples subscribed nodes (default: `publishing_interval`)."),
        Range(0, message="must not be negative"),
    ] = None
    queue_size: Annotated[
        int,
        Doc(
            "Changes the server keeps per node between two publishes (1: only the latest;"
            " more: every change within the publishing interval, oldest dropped first)."
        ),
        Range(1, 10_000, "must be 1..10000"),
    ] = 1
    interval: Annotated[
        Duration,
        Doc("How often polled nodes are read (or see `schedule`).", example="10s"),
        Range(0.05, INTERVAL_MAX, "must be between 50ms and 100 years"),
    ] = 10.0
    topic: Annotated[
        str,
        Doc(
            "The topic of each value: `{source}`, `{node}` (the node's name in this config);"
            " `{{` and `}}` for a literal brace."
        ),
    ] = "opcua/{source}/{node}"
    security_policy: Annotated[
        Literal["None", "Basic256Sha256"],
        Doc(
            "`None` or `Basic256Sha256` (then `certificate`, `private_key` and"
            " `server_certificate`)."
        ),
    ] = "None"
    security_mode: Annotated[
        Literal["Sign", "SignAndEncrypt"] | None,
        Doc("With `Basic256Sha256`: `Sign` or `SignAndEncrypt` (the default)."),
    ] = None
    certificate: Annotated[
        str | None,
        Doc(
            "The gateway's client certificate (PEM or DER file); the server must trust it."
            " Its subject alternative name URI is the application URI the gateway announces."
        ),
    ] = None
    private_key: Annotated[
        str | None, Doc("The client certificate's private key (PEM or DER file).")
    ] = None
    private_key_password: Annotated[
        str | None, Doc("The private key's password, if it has one; may be `ENC(...)`.")
    ] = None
    server_certificate: Annotated[
        str | None,
        Doc(
            "The server's certificate (PEM or DER file): the only one the gateway talks to"
            " (a server presenting another one is refused)."
        ),
    ] = None
    username: Annotated[str | None, Doc("User name (default: anonymous).")] = None
    password: Annotated[
        str | None, Doc("The user's password, may be `ENC(...)`; never logged.")
    ] = None
    timeout: Annotated[
        Duration,
        Doc("The longest a connection or one request may take."),
        # sent to the server in milliseconds as a UInt32: past 49 days asyncua's
        # struct.error came out of every connect as a traceback
        Range(0.1, 3600, "must be between 100ms and 1h"),
    ] = 5.0
    watchdog: Annotated[
        Duration,
        Doc(
            "How often the connection is checked when nothing else is sent (at most 1h, the"
            " session timeout the source asks for)."
        ),
        # a watchdog of years never checked a connection gone silent
        Range(0.1, 3600, "must be between 100ms and 1h"),
    ] = 2.0
    max_queue_bytes: Annotated[
        Size,
        Doc(
            "Values received but not yet taken by the gateway, in bytes; beyond it the"
            " oldest are dropped and counted (`dropped`)."
        ),
        Range(64 * 1024, message="must be at least 64KiB"),
    ] = 4 * 1024 * 1024
    writeback: Annotated[
        OpcuaWritebackConfig,
        Doc("Write-back: MQTT commands written to nodes marked `writable`."),
    ] = field(default_factory=OpcuaWritebackConfig)

    def check(self) -> Iterator[tuple[str, str]]:
        yield from self.schedule_problems(self.interval)
        if not self.url.startswith("opc.tcp://"):
            yield "url", f"{self.url!r} must read opc.tcp://host:port[/path]"
        elif problem := url_syntax_problem(self.url):
            yield "url", problem
        elif "@" in urlsplit(self.url).netloc:  # it would show on the status page
            yield "url", "put credentials in username and password, not in the url"
        elif not urlsplit(self.url).hostname:
            yield "url", f"{self.url!r} names no host: opc.tcp://host:port[/path]"
        if not self.nodes:
            yield "nodes", "name at least one node to read"
        seen: dict[str, str] = {}
        for name, node in self.nodes.items():
            if not name or not set(name) <= _NAME_CHARS:
                yield (
                    f"nodes.{name}",
                    f"{name!r}: names use letters, digits, '_', '-' and '.'"
                    " (they become topic levels)",
                )
            if node.deadband is not None and (node.mode or self.mode) == "poll":
                yield (
                    f"nodes.{name}.deadband",
                    "applied by the server to subscribed nodes only, and this node is polled:"
                    " use deadband_percent (applied by the gateway), or mode: subscribe",
                )
            if node.sampling_interval is not None and (node.mode or self.mode) == "poll":
                # taken and ignored: the node was read every `interval`
                yield (
                    f"nodes.{name}.sampling_interval",
                    "how often the server samples a subscribed node, and this node is polled:"
                    " it is read every `interval`, or set mode: subscribe",
                )
            ident = node.node or f"path:{node.path}"
            if ident in seen:
                yield f"nodes.{name}", f"reads the same node as {seen[ident]!r}"
            seen[ident] = name
        modes = {node.mode or self.mode for node in self.nodes.values()}
        # taken and ignored: each key reads nodes of one mode only
        if self.nodes and "poll" not in modes:
            for key, changed in (("schedule", self.schedule is not None), ("jitter", self.jitter)):
                if changed:
                    yield key, "applies to polled nodes, and every node here is subscribed"
        if self.nodes and "subscribe" not in modes:
            for key, changed in (
                ("sampling_interval", self.sampling_interval is not None),
                ("queue_size", self.queue_size != 1),
            ):
                if changed:
                    yield key, "applies to subscribed nodes, and every node here is polled"
        problem = template_problem(self.topic, {"source", "node"})
        if problem:
            yield "topic", problem
        if self.security_policy != "None":
            for key in ("certificate", "private_key", "server_certificate"):
                if getattr(self, key) is None:
                    yield key, f"security_policy {self.security_policy} needs `{key}` (a file)"
        else:
            # Without a policy these were ignored: the channel was neither signed nor
            # encrypted, whatever security_mode said and whichever certificates were given.
            for key in (
                "security_mode",
                "certificate",
                "private_key",
                "private_key_password",
                "server_certificate",
            ):
                if getattr(self, key) is not None:
                    yield (
                        key,
                        "only used with security_policy: Basic256Sha256; without it the"
                        " connection is neither signed nor encrypted",
                    )
        if self.password is not None and self.username is None:
            yield "password", "a password needs a `username`"
