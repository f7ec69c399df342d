"""Finds component classes by kind and `type`: built-ins first, then plugins.

A plugin package declares entry points in the group `edge_stream.components`
named `<kind>.<type>` (for example `sink.kafka = my_pkg.kafka:KafkaSink`). The
class carries its config dataclass as the attribute `Config`. Modules are
imported only when a config uses them, which keeps the gateway small.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from typing import Any

BUILTINS: dict[tuple[str, str], str] = {
    ("source", "mqtt"): "gateway.sources.mqtt:MqttSource",
    ("source", "system"): "gateway.sources.system:SystemSource",
    ("source", "modbus"): "gateway.sources.modbus:ModbusSource",
    ("source", "serial"): "gateway.sources.serial:SerialSource",
    ("source", "mysql"): "gateway.sources.mysql:MysqlSource",
    ("source", "postgres"): "gateway.sources.postgres:PostgresSource",
    ("source", "redis"): "gateway.sources.redis:RedisSource",
    ("source", "opcua"): "gateway.sources.opcua:OpcuaSource",
    ("source", "nats"): "gateway.sources.nats:NatsSource",
    ("source", "http"): "gateway.sources.http:HttpSource",
    ("source", "rest"): "gateway.sources.rest:RestSource",
    ("processor", "json"): "gateway.processors.json:JsonProcessor",
    ("processor", "transform"): "gateway.processors.transform:TransformProcessor",
    ("processor", "filter"): "gateway.processors.filter:FilterProcessor",
    ("processor", "window"): "gateway.processors.window:WindowProcessor",
    ("processor", "deadband"): "gateway.processors.deadband:DeadbandProcessor",
    ("sink", "postgres"): "gateway.sinks.postgres:PostgresSink",
    ("sink", "file"): "gateway.sinks.file:FileSink",
    ("sink", "mysql"): "gateway.sinks.mysql:MysqlSink",
    ("sink", "redis"): "gateway.sinks.redis:RedisSink",
    ("sink", "mqtt"): "gateway.sinks.mqtt:MqttSink",
    ("sink", "amqp"): "gateway.sinks.amqp:AmqpSink",
    ("sink", "nats"): "gateway.sinks.nats:NatsSink",
    ("sink", "http"): "gateway.sinks.http:HttpSink",
}

GROUP = "edge_stream.components"


KINDS = ("source", "processor", "sink")


@dataclass(frozen=True)
class Entry:
    """A component: its kind, its `type`, its class and the module that documents it."""

    kind: str
    type: str
    cls: Any
    module: str = ""

    @property
    def config(self) -> Any:
        return self.cls.Config


@cache
def _plugins() -> dict[tuple[str, str], Any]:
    from importlib.metadata import entry_points  # 0.2 MB of RSS: only for plugins

    found: dict[tuple[str, str], Any] = {}
    for ep in entry_points(group=GROUP):
        kind, _, type_name = ep.name.partition(".")
        found[(kind, type_name)] = ep
    return found


def _available(kind: str, type_name: str) -> bool:
    target = BUILTINS.get((kind, type_name))
    if target is None:
        return (kind, type_name) in _plugins()
    try:
        return importlib.util.find_spec(target.split(":")[0]) is not None
    except ModuleNotFoundError:
        return False


def types(kind: str) -> list[str]:
    """Every type name known for `kind`."""
    names = {t for (k, t) in BUILTINS if k == kind and _available(k, t)}
    names |= {t for (k, t) in _plugins() if k == kind}
    return sorted(names)


@cache
def find(kind: str, type_name: str) -> Entry | None:
    """The component registered as `type_name` for `kind`, or None."""
    target = BUILTINS.get((kind, type_name))
    if target is not None and _available(kind, type_name):
        module, _, attr = target.partition(":")
        return Entry(kind, type_name, getattr(importlib.import_module(module), attr), module)
    ep = _plugins().get((kind, type_name))
    if ep is not None:
        return Entry(kind, type_name, ep.load(), ep.module)
    return None


def entries() -> list[Entry]:
    """Every component that can be used, built-ins and plugins, by kind and type
    (this imports them all: for the docs and the schema, not for running)."""
    found = (find(kind, type_name) for kind in KINDS for type_name in types(kind))
    return [entry for entry in found if entry is not None]
