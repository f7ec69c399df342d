"""Key/value state of one component, kept in memory and checkpointed with its batch.

A stateful processor (or source) keeps what it must remember (the open windows
of a `window` processor, the last value sent per field of a `deadband`) in a
`State`: get, put and delete by key, scoped to the component. The engine takes
the keys changed since the last checkpoint (`changes`) and writes them in the
same store transaction as the outputs of the batch that changed them, so a
gateway killed at any point restarts from a state that matches what it stored.
Only changed keys are written: 10,000 open windows cost one row each on the
commit that touched them, not a rewrite of everything.

State is bounded by a byte budget. Over it, the oldest keys (the first put) are
evicted and counted; the owner takes them with `take_evicted` and decides what
eviction means (a window closes early and is emitted), or, with `keep_evicted=False`,
they are only counted (a deadband forgets a group: nothing is kept for it). Keys
starting with `~` (the owner's own bookkeeping) are never evicted, unless the owner's
keys are data it does not choose (a deadband's are topics or field values):
`bookkeeping=False`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

# What one key costs besides its value: the dict slots, the key string, the size
# and order bookkeeping (an estimate, to keep the budget honest for small values).
KEY_OVERHEAD = 120


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()


def decode_json(data: bytes) -> Any:
    return json.loads(data)


class State:
    """The key/value state of the component `component`, at most `max_bytes`.

    Values are JSON-encodable Python objects, encoded only when checkpointed. A
    value changed in place must be `put` again so that the next checkpoint writes
    it. `size(value)` estimates a value's bytes in memory (default: its encoded
    length, which costs an encode per put: give a cheap one for hot paths).
    """

    def __init__(
        self,
        component: str,
        max_bytes: int,
        size: Callable[[Any], int] | None = None,
        bookkeeping: bool = True,
        keep_evicted: bool = True,
    ) -> None:
        self.component = component
        self._keep_evicted = keep_evicted  # False: never taken, so never held
        self._pinned = "~" if bookkeeping else None  # the first character of kept keys
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evicted = 0  # keys evicted over the budget since start
        self._size = size or (lambda value: len(encode_json(value)))
        self._data: dict[str, Any] = {}  # oldest first
        self._sizes: dict[str, int] = {}
        self._seqs: dict[str, int] = {}
        self._seq = 0
        self._dirty: set[str] = set()
        self._evicted_items: list[tuple[str, Any]] = []

    # -- the processor's side ----------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> Iterator[str]:
        """Keys, oldest first."""
        return iter(list(self._data))

    def items(self) -> Iterator[tuple[str, Any]]:
        """(key, value) pairs, oldest first."""
        return iter(list(self._data.items()))

    def put(self, key: str, value: Any, evict: bool = True) -> None:
        """Set `key` (a new key is the newest; an existing one keeps its age), then
        evict the oldest other keys while over the budget (`evict=False`: not now, as
        the owner puts next the key that counts this one's bytes, and that must not be
        the one evicted)."""
        size = self._size(value) + len(key) + KEY_OVERHEAD
        old = self._sizes.get(key)
        if old is None:
            self._seq += 1
            self._seqs[key] = self._seq
            old = 0
        self._data[key] = value
        self._sizes[key] = size
        self.bytes += size - old
        self._dirty.add(key)
        if evict and self.bytes > self.max_bytes:
            self._evict(key)

    def delete(self, key: str) -> None:
        if key in self._data:
            del self._data[key]
            self.bytes -= self._sizes.pop(key)
            del self._seqs[key]
            self._dirty.add(key)

    def clear(self) -> None:
        """Forget every key (each one is deleted at the next checkpoint), and the keys
        evicted but not taken yet."""
        self._dirty.update(self._data)
        self._evicted_items.clear()
        self._data.clear()
        self._sizes.clear()
        self._seqs.clear()
        self.bytes = 0

    def take_evicted(self) -> list[tuple[str, Any]]:
        """The (key, value) pairs evicted over the budget since the last call."""
        taken, self._evicted_items = self._evicted_items, []
        return taken

    def trim(self) -> None:
        """Evict the oldest keys while over the budget, after puts made with
        `evict=False` (no key is kept: the owner has put every key it needs counted)."""
        if self.bytes > self.max_bytes:
            self._evict(None)

    def _evict(self, keep: str | None) -> None:
        for key in list(self._data):
            if self.bytes <= self.max_bytes:
                return
            if key == keep or key[:1] == self._pinned:
                continue
            value = self._data[key]
            self.delete(key)
            if self._keep_evicted:
                self._evicted_items.append((key, value))
            self.evicted += 1

    # -- the engine's side ----------------------------------------------------------

    def changes(self) -> list[tuple[str, int, bytes | None]]:
        """(key, seq, encoded value or None for a deleted key) of every key changed
        since the last call; the engine writes them with the batch."""
        if not self._dirty:
            return []
        data, seqs = self._data, self._seqs
        dirty = self._dirty
        held: set[str] = set()
        if self._evicted_items:
            # Evicted and not taken yet (a restore over a smaller budget: the owner emits
            # them at its next call): deleted in the checkpoint of the commit that takes
            # them, so that a kill before it loses nothing.
            held = {key for key, _ in self._evicted_items if key not in data} & dirty
            dirty = dirty - held
        out: list[tuple[str, int, bytes | None]] = [
            (key, seqs[key], encode_json(data[key])) if key in data else (key, 0, None)
            for key in dirty
        ]
        self._dirty = held
        return out

    def mark_all_changed(self) -> None:
        """Have the next checkpoint write every key (state restored from elsewhere)."""
        self._dirty.update(self._data)

    def discard(self, keys: list[str]) -> None:
        """Have the next checkpoint delete `keys`, which this state does not hold (rows
        in the store that were not restored)."""
        self._dirty.update(k for k in keys if k not in self._data)

    def forget_changes(self) -> None:
        """Drop the pending changes (the store forgot this component: see reset)."""
        self._dirty.clear()

    def snapshot(self) -> list[tuple[str, int, bytes]]:
        """Every key as (key, seq, encoded value), oldest first."""
        return [(k, self._seqs[k], encode_json(v)) for k, v in self._data.items()]

    def restore(self, rows: list[tuple[str, int, bytes]]) -> None:
        """Replace the state with checkpointed rows (key, seq, encoded value); nothing
        is dirty afterwards. Rows over the budget (a smaller budget than before) are
        evicted like new ones."""
        self.clear()
        self._dirty.clear()
        for key, seq, data in sorted(rows, key=lambda row: row[1]):
            value = decode_json(data)
            self._data[key] = value
            size = self._size(value) + len(key) + KEY_OVERHEAD
            self._sizes[key] = size
            self.bytes += size
            self._seqs[key] = seq
            self._seq = max(self._seq, seq)
        if self.bytes > self.max_bytes and self._data:
            self._evict(next(reversed(self._data)))
