"""What a reload must do: the difference between the running config and a new one.

A reload is applied as a diff (see `Engine.apply`): only the sources, routes and
sinks whose effective config changed are stopped and started, everything else
keeps running. A sink whose change is only in the delivery settings the engine
applies itself (`batch`, `retry`, `rate_limit`, `overflow`) is updated in place
when the sink agrees (`Sink.update`). `buffer.batch_max` and `buffer.batch_linger`
are read by the commit loop on every batch.

A few settings reach every component or the store itself: the gateway's id and
data_dir, the `mqtt` section (the broker and client settings components get from
the engine) and the store's budget and durability. A change there runs a new
engine on the same store (`restart` names why). Sections outside the engine
(`web`, `gateway.log_level`, `gateway.watch_config`, ...) are the process's.
Pure functions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gateway.config.model import Config
from gateway.config.units import duration_text

# Sink keys the engine's runner applies itself, without restarting the sink.
RUNNER_KEYS = frozenset({"batch", "retry", "rate_limit", "overflow"})


@dataclass
class Plan:
    """The work of one reload. Names are component names; a changed component is both
    stopped and started (a new instance from its new config)."""

    restart: str | None = None  # why the whole engine is run again; None: a diff does it
    sources_stop: list[str] = field(default_factory=list)
    sources_start: list[str] = field(default_factory=list)
    sinks_stop: list[str] = field(default_factory=list)
    sinks_start: list[str] = field(default_factory=list)
    sinks_update: list[str] = field(default_factory=list)  # in place (RUNNER_KEYS only)
    routes: bool = False  # the router is built again (reusing unchanged routes)
    changes: list[str] = field(default_factory=list)  # "sink warehouse changed", ...

    @property
    def empty(self) -> bool:
        return not self.changes


def _by_name(
    kind: str, old: dict[str, Any], new: dict[str, Any], changes: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """(removed, added, changed) names, in config order; `changes` gets a line each."""
    removed = [n for n in old if n not in new]
    added = [n for n in new if n not in old]
    changed = [n for n in new if n in old and old[n] != new[n]]
    changes.extend(f"{kind} {n} removed" for n in removed)
    changes.extend(f"{kind} {n} added" for n in added)
    changes.extend(f"{kind} {n} changed" for n in changed)
    return removed, added, changed


def _only_runner_keys(old: Any, new: Any) -> bool:
    """True when two sink configs of one type differ only in RUNNER_KEYS."""
    if type(old) is not type(new) or not dataclasses.is_dataclass(old):
        return False
    return all(
        getattr(old, f.name) == getattr(new, f.name)
        for f in dataclasses.fields(old)
        if f.name not in RUNNER_KEYS
    )


def _restart_reason(old: Config, new: Config) -> str | None:
    if old.gateway.id != new.gateway.id:
        return "gateway.id changed"
    if old.gateway.data_dir != new.gateway.data_dir:
        return "gateway.data_dir changed"
    if old.mqtt != new.mqtt:
        return "mqtt changed"
    if old.state != new.state:
        return "state changed"
    a, b = old.buffer, new.buffer
    kept = ("max_bytes", "overflow", "synchronous", "dead_letters_max_bytes")
    if any(getattr(a, key) != getattr(b, key) for key in kept):
        return "the store's settings (buffer) changed"
    return None


def plan(old: Config, new: Config) -> Plan:
    """What applying `new` over the running `old` stops, starts and updates."""
    p = Plan(restart=_restart_reason(old, new))
    if old.buffer.batch_max != new.buffer.batch_max:
        p.changes.append(f"buffer.batch_max {old.buffer.batch_max} -> {new.buffer.batch_max}")
    if old.buffer.batch_linger != new.buffer.batch_linger:
        # as a config writes it, as `config diff` says it: it said 0.005 -> 3600.0
        before, after = old.buffer.batch_linger, new.buffer.batch_linger
        p.changes.append(f"buffer.batch_linger {duration_text(before)} -> {duration_text(after)}")
    removed, added, changed = _by_name("source", old.sources, new.sources, p.changes)
    p.sources_stop = removed + changed
    p.sources_start = added + changed
    removed, added, changed = _by_name("sink", old.sinks, new.sinks, p.changes)
    in_place = [n for n in changed if _only_runner_keys(old.sinks[n], new.sinks[n])]
    p.sinks_update = in_place
    p.sinks_stop = removed + [n for n in changed if n not in in_place]
    p.sinks_start = added + [n for n in changed if n not in in_place]
    removed, added, changed = _by_name("route", old.routes, new.routes, p.changes)
    p.routes = bool(removed or added or changed)
    if p.restart:
        p.changes.insert(0, f"engine restarted ({p.restart})")
    return p
