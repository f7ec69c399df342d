"""Request planning: the reads that cover a device's values in as few requests as possible.

Pure functions and plain objects, no I/O. `plan` merges (start, width) spans
into blocks within the request limit, filling holes up to `max_gap`;
`plan_requests` groups a device's values by poll interval and table and turns
each block into a `Request`; `Request.split` re-plans a block without its
filler, or a block without filler in halves, for a device that refuses it
(illegal data address); each part keeps its `parent`, so the source can put a
split back together (see ModbusSource._replan).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from gateway.sources.modbus.codec import Decoder
from gateway.sources.modbus.config import Table


class Block(NamedTuple):
    """One read request: `length` registers (or bits) from `start`, and which items it covers."""

    start: int
    length: int
    items: tuple[int, ...]  # indexes into the planner's input
    runs: tuple[tuple[int, int], ...]  # contiguous (start, count) runs without filler


def plan(spans: Sequence[tuple[int, int]], max_count: int, max_gap: int) -> list[Block]:
    """Merge (start, width) spans into as few reads as possible.

    Spans sorted by address are merged while the block stays within `max_count`
    and the hole to the next span is at most `max_gap`; overlapping spans share
    a block. A span wider than `max_count` cannot be read and raises ValueError.
    """
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], -spans[i][1]))
    blocks: list[Block] = []
    cur_start = cur_end = -1
    cur_items: list[int] = []
    runs: list[tuple[int, int]] = []
    run_start = run_end = -1

    def flush() -> None:
        if cur_items:
            all_runs = (*runs, (run_start, run_end - run_start))
            blocks.append(Block(cur_start, cur_end - cur_start, tuple(cur_items), all_runs))

    for i in order:
        start, width = spans[i]
        width = max(width, 1)
        if width > max_count:
            raise ValueError(f"a value of {width} registers exceeds the request limit {max_count}")
        end = start + width
        if cur_items and start - cur_end <= max_gap and max(end, cur_end) - cur_start <= max_count:
            if start > run_end:
                runs.append((run_start, run_end - run_start))
                run_start = start
            run_end = max(run_end, end)
            cur_end = max(cur_end, end)
            cur_items.append(i)
            continue
        flush()
        cur_start, cur_end, cur_items = start, end, [i]
        runs, run_start, run_end = [], start, end
    flush()
    return blocks


def split_runs(spans: Sequence[tuple[int, int]], block: Block) -> list[Block]:
    """The block re-planned without filler between its runs (for devices that refuse holes)."""
    out: list[Block] = []
    for run_start, run_count in block.runs:
        run_end = run_start + run_count
        items = tuple(i for i in block.items if run_start <= spans[i][0] < run_end)
        out.append(Block(run_start, run_count, items, ((run_start, run_count),)))
    return out


class Readable(Protocol):
    """What the planner needs of a value: where it is, how wide, and how to decode it."""

    @property
    def table(self) -> Table: ...

    @property
    def protocol_address(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def interval(self) -> float: ...

    def decoder_at(self, offset: int) -> Decoder: ...


V = TypeVar("V", bound=Readable)


class Request(Generic[V]):
    """One planned read: a block of one table, and the values decoded from it."""

    __slots__ = (
        "count",
        "gapped",
        "held",
        "hold",
        "items",
        "merged",
        "parent",
        "refused",
        "runs",
        "split_for_good",
        "start",
        "table",
    )

    def __init__(self, table: Table, block: Block, values: list[V]) -> None:
        self.table = table
        self.start = block.start
        self.count = block.length
        self.runs = block.runs
        self.gapped = len(block.runs) > 1
        self.refused: str | None = None  # why the device refuses this read, while it does
        self.parent: Request[V] | None = None  # the read this one is a part of, when split
        self.merged = False  # put together again from its parts, not answered since
        self.split_for_good = False  # refused again once put together: stays in parts
        # (value, offset in the block, decoder) for each value in the block
        self.items: list[tuple[V, int, Decoder]] = [
            (v, v.protocol_address - block.start, v.decoder_at(v.protocol_address - block.start))
            for v in values
        ]

    def split(self) -> list[Request[V]]:
        """This read as its contiguous runs, without the filler between them; a read
        without filler, in two halves by value (values that overlap stay together), so
        that a value the device lacks is found in a few polls and the others are still
        read in few requests. One request when there is nothing to split."""
        spans = [(v.protocol_address, v.width) for v, _, _ in self.items]
        if self.gapped:
            block = Block(self.start, self.count, tuple(range(len(spans))), self.runs)
            blocks = split_runs(spans, block)
        else:
            parts = plan(spans, self.count, -1)  # a hole of -1: only overlaps merge
            if len(parts) > 2:
                half = len(parts) // 2
                parts = [_joined(parts[:half]), _joined(parts[half:])]
            blocks = parts
        values = [v for v, _, _ in self.items]
        requests = [Request(self.table, b, [values[j] for j in b.items]) for b in blocks]
        for part in requests:
            part.parent = self
        return requests

    def descends_from(self, other: Request[V]) -> bool:
        """This read is a part (or a part of a part) of `other`."""
        up = self.parent
        while up is not None:
            if up is other:
                return True
            up = up.parent
        return False


def _joined(blocks: Sequence[Block]) -> Block:
    """Adjacent blocks (in address order, without holes between them) as one."""
    start = blocks[0].start
    end = max(b.start + b.length for b in blocks)
    items = tuple(i for b in blocks for i in b.items)
    return Block(start, end - start, items, ((start, end - start),))


def plan_requests(
    values: Iterable[V], *, max_registers: int, max_bits: int, max_gap: int
) -> list[tuple[float, list[Request[V]]]]:
    """The reads of one device: (interval, requests) per poll interval, shortest first.

    Values of one interval and table share requests; bits (coils, discrete
    inputs) may fill holes 16 times as wide as registers.
    """
    by_key: dict[tuple[float, Table], list[V]] = {}
    for v in values:
        by_key.setdefault((v.interval, v.table), []).append(v)
    groups: dict[float, list[Request[V]]] = {}
    for (interval, table), vals in sorted(by_key.items(), key=_first):
        bits = table in ("coil", "discrete")
        spans = [(v.protocol_address, v.width) for v in vals]
        blocks = plan(spans, max_bits if bits else max_registers, max_gap * 16 if bits else max_gap)
        reqs = groups.setdefault(interval, [])
        for block in blocks:
            reqs.append(Request(table, block, [vals[i] for i in block.items]))
    return sorted(groups.items(), key=_first)


def _first(item: tuple[Any, Any]) -> Any:
    return item[0]
