"""The router: fan-out by topic filter, processors in order, dead letters, shared outputs."""

from __future__ import annotations

import pytest

from gateway.core.component import Context, Processor
from gateway.core.errors import PermanentError
from gateway.core.flowfile import FlowFile
from gateway.engine.router import Route, Router, is_processor_label, processor_label
from gateway.store.sqlite import DeadLetter

pytestmark = pytest.mark.unit


class Upper(Processor):
    def process(self, flowfile: FlowFile) -> list[FlowFile]:
        if flowfile.content == b"bad":
            raise PermanentError("content is bad")
        if flowfile.content == b"drop":
            return []
        return [flowfile.derive(content=flowfile.content.upper())]


class Broken(Processor):
    def process(self, flowfile: FlowFile) -> list[FlowFile]:
        raise ZeroDivisionError("bug")


def proc(cls: type[Processor]) -> tuple[str, Processor]:
    return (processor_label("x", 0, cls.__name__), cls(None, Context("p", "processor")))


def test_a_processor_label_is_recognised_and_no_other_origin_is() -> None:
    """A processor's label is the origin of the dead letters it refuses; a replay reruns
    one from that processor only when it recognises the label (else it routes it again
    from the start). The label was written in the engine and recognised by a regex in
    the replay, two copies of one format."""
    for route, index, kind in (("r", 0, "json"), ("plant-1_\u00fc", 12, "window")):
        label = processor_label(route, index, kind)
        assert label == f"route {route}: processor {index} ({kind})"
        assert is_processor_label(label)
    for origin in ("source plant", "sink a", "store", "replay", "route r: processor 0"):
        assert not is_processor_label(origin)


def run(router: Router, *flowfiles: FlowFile) -> tuple[dict[str, list], list[DeadLetter]]:
    out: dict[str, list] = {}
    dead: list[DeadLetter] = []
    router.run(list(flowfiles), out, dead)
    return out, dead


def test_unchanged_flowfile_reaching_two_routes_is_stored_once_for_both() -> None:
    router = Router([Route("a", ("plant/#",), [], 0b01), Route("b", ("plant/+/temp",), [], 0b10)])
    f = FlowFile.create("plant/boiler/temp", b"1")
    out, dead = run(router, f)
    assert out == {f.id: [f, 0b11]} and dead == []


def test_processors_derive_and_filter_and_dead_letter() -> None:
    router = Router([Route("up", ("#",), [proc(Upper)], 0b1)])
    ok, dropped, bad = (FlowFile.create("t", c) for c in (b"ok", b"drop", b"bad"))
    out, dead = run(router, ok, dropped, bad)
    ((child, mask),) = out.values()
    assert child.content == b"OK" and child.lineage == (ok.id,) and mask == 0b1
    assert [(d.flowfile.id, d.reason) for d in dead] == [(bad.id, "content is bad")]
    assert dead[0].origin.startswith("route x: processor 0")


def test_a_processor_bug_dead_letters_the_input_and_keeps_going() -> None:
    router = Router([Route("b", ("#",), [proc(Broken)], 0b1), Route("c", ("#",), [], 0b10)])
    f = FlowFile.create("t", b"1")
    out, dead = run(router, f)
    assert out == {f.id: [f, 0b10]}
    assert "internal error" in dead[0].reason and router.errors == 1


def test_unrouted_flowfiles_are_counted_not_stored() -> None:
    router = Router([Route("a", ("a/#",), [], 0b1)])
    out, dead = run(router, FlowFile.create("b/c", b""), FlowFile.create("$SYS/x", b""))
    assert out == {} and dead == [] and router.unrouted == 2


def test_the_topics_of_dropped_flowfiles_are_noted_where_dropped_each_once_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine guessed the unrouted topics every second by matching the topics seen
    against the routes again: a cost each second while anything stayed unrouted, and a
    one-off missed when its commit took longer than two looks. The router notes them
    where it drops the FlowFiles, each topic once, at most so many topics and bytes."""
    router = Router([Route("a", ("a/#",), [], 0b1)])
    run(router, *(FlowFile.create(t, b"") for t in ("b/1", "a/1", "b/2", "b/1")))
    assert router.take_unrouted() == ["b/1", "b/2"]
    assert router.take_unrouted() == []
    run(router, FlowFile.create("b/1", b""), FlowFile.create("b/3", b""))
    assert router.take_unrouted() == ["b/3"], "a topic once in the router's life"
    monkeypatch.setattr("gateway.engine.router.UNROUTED_NAMED", 5)
    run(router, *(FlowFile.create(f"c/{i}", b"") for i in range(5)))
    assert router.take_unrouted() == ["c/0", "c/1"], "at most UNROUTED_NAMED topics"
    monkeypatch.setattr("gateway.engine.router.UNROUTED_NAMED", 100)
    monkeypatch.setattr("gateway.engine.router.UNROUTED_NAMED_BYTES", 30)
    run(router, FlowFile.create("d/" + "x" * 20, b""), FlowFile.create("e/1", b""))
    assert router.take_unrouted() == ["e/1"], "at most UNROUTED_NAMED_BYTES of names"
    assert router.unrouted == 12


def test_long_topics_are_routed_without_being_cached() -> None:
    router = Router([Route("a", ("plant/#",), [], 0b1)])
    long = FlowFile.create("plant/" + "x" * 5000, b"1")
    other = FlowFile.create("b/" + "x" * 5000, b"1")
    out, dead = run(router, long, other, FlowFile.create("plant/1", b"1"))
    assert next(iter(out)) == long.id and len(out) == 2 and dead == [] and router.unrouted == 1
    assert router._matcher.cache_info().currsize == 1  # plant/1 only
