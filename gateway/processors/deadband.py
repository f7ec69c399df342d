"""Report by exception: passes a reading only when a field moved beyond its deadband.

Per group (by default the topic), the processor remembers the values it last
let through. A reading passes when any configured field moved more than its
band since then (or has not been seen yet); otherwise it is dropped (filtered,
not an error). A field missing from a reading (or null) is not compared; one that
is not a number, or an integer past a double's ±1.8e308, dead-letters the reading.

  fields: {temp: {absolute: 0.5}, pressure: {percent: 2}}
    absolute   passes when |new - last| > absolute
    percent    passes when |new - last| > |last| * percent / 100 (any change
               when the last value was 0)
    both given: passes when either is exceeded
  heartbeat: 5m    after this long without passing anything for a group, the
                   last reading received is sent again (a new FlowFile, the same
                   content), even when no new reading arrives (checked every second);
                   its values are then the last sent, which the next readings are
                   compared with; a clock set back by more than a heartbeat sends
                   it too, and the silence is counted from the new time

State: per group the last values sent and the last reading (`max_state` bounds
it; over it the oldest groups are forgotten, so their next reading passes). It
is written to the store with each batch, like the window processor's. A restart
or reload that changed group_by drops the groups kept under the old one (a WARNING
says how many): never met again, their heartbeats would go on for ever.

Example
  routes:
    telemetry:
      match: "sensors/+/telemetry"
      processors:
        - type: deadband
          fields: {temp: {absolute: 0.5}, humidity: {percent: 5}}
          heartbeat: 10m
      sinks: [warehouse]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from gateway.config.schema import Doc, Duration, Range, Size
from gateway.core.component import Context, Processor
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile
from gateway.core.state import State
from gateway.processors.json import (
    FLOAT_MAX,
    MISSING,
    check_path,
    decode_object,
    kind,
    lookup,
    shown,
    split_path,
)
from gateway.processors.window import MAX_SPAN, _check_group, _grouper


@dataclass(frozen=True)
class Band:
    """The deadband of one field."""

    absolute: Annotated[
        float | None,
        Doc("Pass when the value moved more than this."),
        Range(0, None, "must not be negative"),
    ] = None
    percent: Annotated[
        float | None,
        Doc("Pass when the value moved more than this percentage of the last one sent."),
        Range(0, None, "must not be negative"),
    ] = None

    def check(self) -> Iterator[tuple[str, str]]:
        if self.absolute is None and self.percent is None:
            yield "", "give absolute, percent or both"


@dataclass(frozen=True)
class DeadbandProcessorConfig:
    """Keys of the `deadband` processor."""

    type: Annotated[str, Doc("The kind of processor.")]
    fields: Annotated[
        dict[str, Band],
        Doc(
            "Per JSON field, its band: `{absolute: 0.5}`, `{percent: 2}` or both.",
            example={"temp": {"absolute": 0.5}},
        ),
    ]
    heartbeat: Annotated[
        Duration | None,
        Doc("Send the last reading again after this long without sending one (default: never)."),
        Range(0, MAX_SPAN, "must be more than 0s and at most 100 years", above=True),
    ] = None
    group_by: Annotated[
        str, Doc("topic, topic.N or field.PATH: whose readings are compared (default: topic).")
    ] = "topic"
    max_state: Annotated[
        Size,
        Doc("The state budget; over it the oldest groups are forgotten (counted)."),
        Range(4096, None, "must be at least 4096 bytes"),
    ] = 16 << 20

    def check(self) -> Iterator[tuple[str, str]]:
        if not self.fields:
            yield "fields", "give at least one field with its band, e.g. {temp: {absolute: 0.5}}"
        for path in self.fields:
            problem = check_path(path)
            if problem:
                yield f"fields.{path}", problem
        problem = _check_group(self.group_by)
        if problem:
            yield "group_by", problem


def _size(entry: dict[str, Any]) -> int:
    """A group's entry in bytes: the last reading's content, topic and attributes (all
    from outside, and as long as a sender likes) are counted, not only its content."""
    size = 200 + len(entry["c"]) * 2 + len(entry["t"]) + 40 * len(entry["v"])
    for key, value in entry["a"].items():
        size += 60 + len(key) + len(value)
    return size


class DeadbandProcessor(Processor):
    """Drops readings whose fields stayed within their deadbands; sends heartbeats."""

    Config = DeadbandProcessorConfig
    stateful = True

    def __init__(self, config: DeadbandProcessorConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: DeadbandProcessorConfig = config
        self._fields = [(p, split_path(p), b.absolute, b.percent) for p, b in config.fields.items()]
        self._group = _grouper(config.group_by)
        self._heartbeat = round(config.heartbeat * 1e9) if config.heartbeat else None
        # Its keys are groups (topics, field values) from outside: none is bookkeeping
        # kept over the budget, whatever its first character.
        # A group evicted over the budget is forgotten: nothing is kept for it (kept for
        # `take_evicted`, which nothing here calls, every evicted reading stayed in memory).
        self.kv = State(
            ctx.name, config.max_state, size=_size, bookkeeping=False, keep_evicted=False
        )

    def _values(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The configured fields a reading holds; PermanentError for one not a number."""
        values: dict[str, Any] = {}
        for path, parts, _, _ in self._fields:
            v = lookup(obj, parts)
            if v is MISSING or v is None:
                continue
            if type(v) is not float and not (type(v) is int and -FLOAT_MAX <= v <= FLOAT_MAX):
                # (an integer past a double's range could not be compared with a float)
                raise PermanentError(
                    f"field {path!r} is {kind(v)} ({shown(v)}), deadband needs a number"
                    " (within ±1.8e308)"
                )
            values[path] = v
        return values

    def process(self, flowfile: FlowFile) -> list[FlowFile]:
        obj = decode_object(flowfile.content, "deadband")
        values = self._values(obj)
        group = self._group(flowfile, obj)
        kv = self.kv
        assert kv is not None
        now = self.ctx.clock.now_ns()
        entry = kv.get(group)
        passes = entry is None or self._moved(entry["v"], values)
        # A clock set back by more than a heartbeat (a board without RTC that ran ahead,
        # corrected by NTP) owes it too, the silence counted from the new time: else none
        # went until the clock came back to `at`, years later maybe. (Inline: this runs
        # for every reading dropped.)
        hb = self._heartbeat
        if not passes and hb is not None and abs(now - entry["at"]) >= hb:
            passes = True
        record = {
            "v": entry["v"] if entry is not None else {},
            "at": entry["at"] if entry is not None else now,
            "c": flowfile.content.decode("utf-8", "replace"),
            "t": flowfile.topic,
            "a": flowfile.attributes,
            "by": self.config.group_by,
        }
        if passes:
            record["v"] = {**record["v"], **values}
            record["at"] = now
        kv.put(group, record)
        return [flowfile] if passes else []

    def owns_state(self, key: str, value: Any) -> bool:
        return isinstance(value, dict) and {"v", "at", "c"} <= value.keys()

    def restored(self) -> None:
        # A group kept under another group_by (a reload from topic to field.device) is
        # never met again, and its heartbeat would repeat its last reading for ever next
        # to the new group's. A group written before "by" was kept is taken as made by
        # this group_by, and stamped so: a later change of group_by drops it too.
        kv = self.kv
        assert kv is not None
        by = self.config.group_by
        for key, entry in kv.items():
            if "by" not in entry:
                kv.put(key, {**entry, "by": by})
        stale = [key for key, entry in kv.items() if entry["by"] != by]
        for key in stale:
            kv.delete(key)
        if stale:
            self.ctx.log.warning(
                "group_by is %s now: the last values of %d groups made under another"
                " group_by were dropped",
                by,
                len(stale),
            )

    def _moved(self, last: dict[str, Any], values: dict[str, Any]) -> bool:
        for path, _, absolute, percent in self._fields:
            if path not in values:
                continue
            if path not in last:
                return True
            new, old = values[path], last[path]
            change = abs(new - old)
            if absolute is not None and change > absolute:
                return True
            if percent is not None:
                if old == 0 and change > 0:
                    return True
                # abs(old) * percent first overflowed to inf near a double's range: no change passed
                if change > abs(old) * (percent / 100):
                    return True
        return False

    def tick(self, now_ns: int) -> list[FlowFile]:
        hb = self._heartbeat
        if hb is None:
            return []
        kv = self.kv
        assert kv is not None
        out = []
        for group, entry in kv.items():
            if abs(now_ns - entry["at"]) >= hb:  # (a clock set back by one too: see process)
                entry["at"] = now_ns
                # The heartbeat sent the last reading: its values are the last sent now.
                # Compared with the older ones, a value going back was not passed
                # (absolute 0.5: 20.0 sent, 20.4 sent by the heartbeat, then 19.8, 0.6
                # from 20.4 but within 0.5 of 20.0), the receiver left with 20.4.
                try:
                    sent = self._values(decode_object(entry["c"].encode(), "deadband"))
                except PermanentError:  # fields changed by a reload: compared as before
                    sent = {}
                entry["v"] = {**entry["v"], **sent}
                kv.put(group, entry)
                out.append(
                    FlowFile.create(entry["t"], entry["c"].encode(), dict(entry["a"]), now_ns)
                )
        return out
