"""Histograms counted on the hot path in plain integers, exported at scrape time.

`Buckets` holds a fixed list of upper bounds and one int per bucket; the engine
adds a whole batch at once (`add_ages`, `add`), and gateway/metrics.py turns the
counts into a Prometheus histogram only when /metrics is scraped. A batch whose
values all fall into one bucket (the usual case: a batch's FlowFiles were made
within a few milliseconds of each other) costs a min, a max and a sum, not a
lookup per FlowFile.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Seconds: from a millisecond (a commit on a quiet gateway) to a day (a backlog drained
# after an outage).
LATENCY_BOUNDS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    86400.0,
)
# FlowFiles per batch (a commit takes at most 10000, a sink write at most 50000).
BATCH_BOUNDS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Buckets:
    """One histogram: `counts[i]` values fell at or below `bounds[i]` and above the bound
    before it; `counts[-1]` above the last bound (the +Inf bucket). Not cumulative."""

    __slots__ = ("_ns_bounds", "bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._ns_bounds = [int(b * 1e9) for b in self.bounds]
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def add(self, value: float, n: int = 1) -> None:
        """Count `n` observations of `value` (a batch size: once per batch)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def add_ages(self, now_ns: int, created: Sequence[int]) -> None:
        """Count the ages (in seconds) at `now_ns` of things made at `created` (ns)."""
        n = len(created)
        if not n:
            return
        bounds = self._ns_bounds
        counts = self.counts
        oldest = now_ns - min(created)
        newest = now_ns - max(created)
        i = bisect_left(bounds, newest)
        if i == bisect_left(bounds, oldest):
            counts[i] += n
        else:
            for c in created:
                counts[bisect_left(bounds, now_ns - c)] += 1
        self.sum += (now_ns * n - sum(created)) / 1e9
        self.count += n

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound as Prometheus writes it, cumulative count), +Inf last."""
        out = []
        total = 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += c
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out
