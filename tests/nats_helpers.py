"""Helpers the NATS tests share (sink, source, e2e, bench): reading a stream back, and
throwaway NKeys for the login tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nkeys
from nats.js import api as js_api


async def stream_messages(urls: list[str], stream: str, **connect: Any) -> list[Any]:
    """Every message in `stream` (an ephemeral consumer reads it from the start); `connect`
    goes to `nats.connect` (tls, credentials)."""
    nc = await nats.connect(servers=urls, **connect)
    try:
        js = nc.jetstream()
        try:
            total = (await js.stream_info(stream)).state.messages
        except nats.js.errors.NotFoundError:
            return []
        found: list[Any] = []
        if not total:
            return found
        sub = await js.pull_subscribe(
            "", stream=stream, config=js_api.ConsumerConfig(ack_policy=js_api.AckPolicy.NONE)
        )
        while len(found) < total:
            try:
                found += await sub.fetch(min(total - len(found), 1000), timeout=5)
            except nats.errors.TimeoutError:
                break
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


@dataclass(frozen=True)
class NKey:
    """A fresh NKey pair: `seed` (`S...`, the secret) and `public` (`U...` for a user)."""

    seed: str
    public: str

    def write_seed(self, path: Path) -> Path:
        path.write_text(self.seed + "\n")
        path.chmod(0o600)
        return path


def new_nkey(prefix: int = nkeys.PREFIX_BYTE_USER) -> NKey:
    """A random NKey of the kind `prefix` names (user by default)."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(bytearray(seed))
    return NKey(seed=seed.decode(), public=pair.public_key.decode())
