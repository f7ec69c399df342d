"""Capped exponential backoff: how long to wait before the next attempt.

One helper for every retry in the gateway: the engine's runners (with full
jitter, so that many components do not retry in step) and the Modbus source's
offline devices and write-back connection (without, so that a device is tried
again on its own poll grid). It computes waits only; the caller sleeps, on
whatever clock it uses.
"""

from __future__ import annotations

import random


class Backoff:
    """Capped exponential backoff: the n-th wait is `initial * 2**n`, at most `maximum`.

    With `jitter` (the default, full jitter) each wait is random in
    [initial / 2, that]; without, it is exactly that. An `initial` above
    `maximum` is taken as `maximum`: no wait is longer than `maximum`.
    """

    def __init__(self, initial: float, maximum: float, *, jitter: bool = True) -> None:
        self.initial = max(min(initial, maximum), 0.001)
        self.maximum = maximum
        self.jitter = jitter
        self.attempt = 0

    def next(self) -> float:
        cap = min(self.maximum, self.initial * 2.0**self.attempt)
        self.attempt = min(self.attempt + 1, 32)
        if not self.jitter:
            return cap
        return random.uniform(self.initial / 2, cap)

    def reset(self) -> None:
        self.attempt = 0
