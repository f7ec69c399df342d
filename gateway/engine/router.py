"""Routes: which FlowFiles go through which processors to which sinks.

Every route whose `match` filter fits a FlowFile's topic gets it (fan-out).
A route runs its processors in order; what comes out is stored for the
route's sinks. A FlowFile that a processor refuses goes to the dead letters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.core.component import Processor
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile
from gateway.core.topics import TopicMatcher
from gateway.store.sqlite import DeadLetter

# The label of a route's processor, and so the origin of the dead letters it refuses: a
# replay finds that processor again by it. Made and recognised here only.
_PROCESSOR_LABEL = re.compile(r"route .+: processor \d+ \([^()]*\)")

# The topics of dropped FlowFiles (no route took them) a router notes for the engine to
# name in the log, each once: at most this many, and this many bytes of names (a topic
# has at most 65535). Past either, a router notes no more of them.
UNROUTED_NAMED = 200
UNROUTED_NAMED_BYTES = 64 * 1024


def processor_label(route: str, index: int, kind: str) -> str:
    """The label of processor `index` (of type `kind`) of route `route`."""
    return f"route {route}: processor {index} ({kind})"


def is_processor_label(origin: str) -> bool:
    """Whether a dead letter's `origin` is a processor's label (see `processor_label`),
    not a source's, a sink's or the store's."""
    return _PROCESSOR_LABEL.fullmatch(origin) is not None


@dataclass
class Route:
    name: str
    filters: tuple[str, ...]
    processors: list[tuple[str, Processor]]
    mask: int
    # counted for /metrics: FlowFiles that matched, that came out of the processors,
    # that a processor refused (dead-lettered) and that a processor failed on (a bug)
    received: int = 0
    emitted: int = 0
    dead_lettered: int = 0
    errors: int = 0


class Router:
    """Runs FlowFiles through the matching routes."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = {r.name: r for r in routes}
        self._matcher = TopicMatcher((r.name, f) for r in routes for f in r.filters)
        self.unrouted = 0
        self.errors = 0
        # The topics of the FlowFiles dropped so far (see UNROUTED_NAMED), and those of
        # them not yet taken by `take_unrouted`: noted where they are dropped, so a
        # one-off is not missed, and a topic once only, so a steady drop costs a lookup.
        self._unrouted_topics: set[str] = set()
        self._unrouted_bytes = 0
        self._unrouted_new: list[str] = []

    def run(
        self,
        flowfiles: list[FlowFile],
        out: dict[str, list[FlowFile | int]],
        dead: list[DeadLetter],
    ) -> None:
        """Route `flowfiles`, adding outputs to `out` (id -> [FlowFile, sink mask]).

        Outputs with the same id (the same FlowFile reaching several routes
        unchanged) are stored once with the union of their sinks.
        """
        # TopicMatcher.lookup, inline: the cache only for topics of CACHED_TOPIC or fewer
        cached, compute = self._matcher.cached, self._matcher.compute
        longest = self._matcher.CACHED_TOPIC
        by_name = self.routes
        for ff in flowfiles:
            topic = ff.topic
            names = cached(topic) if len(topic) <= longest else compute(topic)
            if not names:
                self.unrouted += 1
                if topic not in self._unrouted_topics:
                    self._note_unrouted(topic)
                continue
            for name in names:
                route = by_name[name]
                route.received += 1
                if route.processors:
                    self._emit(route, self._through(route, [ff], route.processors, dead), out)
                    continue
                # a route without processors (the usual one): `_emit` of [ff], inline
                route.emitted += 1
                entry = out.get(ff.id)
                if entry is None:
                    out[ff.id] = [ff, route.mask]
                else:
                    entry[1] = entry[1] | route.mask  # type: ignore[operator]

    def rerun(
        self,
        ff: FlowFile,
        origin: str,
        out: dict[str, list[FlowFile | int]],
        dead: list[DeadLetter],
    ) -> bool:
        """A replayed dead letter that the processor labelled `origin` refused: through
        that processor and the ones after it, to that route's sinks only (the other
        routes had it already; the processors before made it). With no processor of
        that label now (its route removed, or the route's processors changed), back to
        the dead letters under the same origin, saying so (False)."""
        for route in self.routes.values():
            for i, (label, _) in enumerate(route.processors):
                if label == origin:
                    route.received += 1
                    self._emit(route, self._through(route, [ff], route.processors[i:], dead), out)
                    return True
        reason = (
            f"replayed, but {origin} is no longer in the config (the route was removed, or"
            " its processors changed): put it back to replay it, or purge it"
        )
        dead.append(DeadLetter(ff, origin, reason))
        return False

    def _note_unrouted(self, topic: str) -> None:
        if len(self._unrouted_topics) >= UNROUTED_NAMED:
            return
        size = len(topic.encode("utf-8", "surrogatepass"))
        if self._unrouted_bytes + size > UNROUTED_NAMED_BYTES:
            return
        self._unrouted_topics.add(topic)
        self._unrouted_bytes += size
        self._unrouted_new.append(topic)

    def take_unrouted(self) -> list[str]:
        """The topics of dropped FlowFiles (no route took them) not taken before, in the
        order they were first dropped: each topic once in this router's life, at most
        UNROUTED_NAMED of them (and UNROUTED_NAMED_BYTES of names)."""
        new, self._unrouted_new = self._unrouted_new, []
        return new

    def match(self, topic: str) -> list[str]:
        """The routes whose filters match `topic` (the console's "which routes" box)."""
        return list(self._matcher.lookup(topic))

    def tick(
        self, now_ns: int, out: dict[str, list[FlowFile | int]], dead: list[DeadLetter]
    ) -> None:
        """Call `tick` on every stateful processor; what one emits (a window closed by
        its timer) goes on through the processors after it to the route's sinks."""
        for route in self.routes.values():
            procs = route.processors
            for i, (_label, processor) in enumerate(procs):
                if not processor.stateful:
                    continue
                try:
                    items = processor.tick(now_ns)
                except Exception:  # the supervisor boundary for processors
                    self.errors += 1
                    route.errors += 1
                    processor.ctx.log.exception("failed on its timer")
                    continue
                self._emit(route, self._through(route, items, procs[i + 1 :], dead), out)

    def _through(
        self,
        route: Route,
        items: list[FlowFile],
        processors: list[tuple[str, Processor]],
        dead: list[DeadLetter],
    ) -> list[FlowFile]:
        """`items` through `processors` in order; what one refuses goes to `dead`."""
        for label, processor in processors:
            if not items:
                break
            next_items: list[FlowFile] = []
            for item in items:
                try:
                    next_items.extend(processor.process(item))
                except PermanentError as err:
                    route.dead_lettered += 1
                    dead.append(DeadLetter(item, label, str(err)))
                except Exception as err:  # the supervisor boundary for processors
                    self.errors += 1
                    route.errors += 1
                    route.dead_lettered += 1
                    processor.ctx.log.exception("failed on FlowFile %s", item.id)
                    dead.append(DeadLetter(item, label, f"internal error: {err!r}"))
            items = next_items
        return items

    @staticmethod
    def _emit(route: Route, items: list[FlowFile], out: dict[str, list[FlowFile | int]]) -> None:
        """Add a route's outputs to `out`: one entry per id, with the union of sinks."""
        route.emitted += len(items)
        for item in items:
            entry = out.get(item.id)
            if entry is None:
                out[item.id] = [item, route.mask]
            else:
                entry[1] = entry[1] | route.mask  # type: ignore[operator]

    def stateful(self) -> list[tuple[str, Processor]]:
        return [(label, p) for r in self.routes.values() for label, p in r.processors if p.stateful]
