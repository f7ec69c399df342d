"""Helpers the NATS tests share (sink, source, e2e, bench): reading a stream back, and
throwaway NKeys for the login tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nkeys
from nats.js import api as js_api

# The tests' JetStream API requests (a stream made, its info read) wait this long: a 3-node
# cluster on a loaded 2-core machine took longer than nats-py's 5 s to make a stream.
JS_TIMEOUT = 10.0


async def stream_messages(urls: list[str], stream: str, **connect: Any) -> list[Any]:
    """Every message in `stream` (an ephemeral consumer reads it from the start); `connect`
    goes to `nats.connect` (tls, credentials). A JetStream request that times out is asked
    again for 90 s: after a node was killed, the cluster may still be electing leaders."""
    deadline = time.monotonic() + 90
    while True:
        try:
            return await _stream_messages(urls, stream, **connect)
        except TimeoutError:  # nats-py's, or asyncio's from a fetch
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _stream_messages(urls: list[str], stream: str, **connect: Any) -> list[Any]:
    nc = await nats.connect(servers=urls, **connect)
    try:
        js = nc.jetstream(timeout=JS_TIMEOUT)
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
            except TimeoutError:  # nats-py's or, between its two pull requests, asyncio's
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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(claims: dict[str, Any], signer: NKey) -> str:
    """A NATS JWT (v2): `claims` signed with ed25519 by `signer` (its `iss`)."""
    claims = {"iat": int(time.time()), "iss": signer.public, **claims}
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(claims).encode())
    pair = nkeys.from_seed(bytearray(signer.seed.encode()))
    signature = pair.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64(signature)}"


@dataclass(frozen=True)
class Operator:
    """A decentralized-auth setup for one nats-server: an operator, a system account and
    an account with JetStream, with `creds(user_nkey)` making a user's credentials file
    text (what `nsc generate creds` writes)."""

    operator_jwt: str
    system_account: str
    accounts: dict[str, str]  # public key -> account JWT, for `resolver_preload`
    account: NKey

    def server_config(self) -> list[str]:
        """nats-server config lines: operator mode with a memory resolver."""
        preload = ", ".join(f'{key}: "{jwt}"' for key, jwt in self.accounts.items())
        return [
            f'operator: "{self.operator_jwt}"',
            f'system_account: "{self.system_account}"',
            "resolver: MEMORY",
            f"resolver_preload: {{ {preload} }}",
        ]

    def creds(self, user: NKey, account: NKey | None = None) -> str:
        """A credentials file for `user`, signed by `account` (this setup's by default)."""
        signer = account or self.account
        jwt = _jwt(
            {
                "sub": user.public,
                "name": "edge",
                "nats": {
                    "pub": {},
                    "sub": {},
                    "subs": -1,
                    "data": -1,
                    "payload": -1,
                    "type": "user",
                    "version": 2,
                },
            },
            signer,
        )
        return (
            f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n"
        )


def new_operator() -> Operator:
    """An operator, its system account and one account with unlimited JetStream."""
    operator = new_nkey(nkeys.PREFIX_BYTE_OPERATOR)
    system = new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    account = new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    unlimited = {
        "subs": -1,
        "data": -1,
        "payload": -1,
        "imports": -1,
        "exports": -1,
        "wildcards": True,
        "conn": -1,
        "leaf": -1,
    }
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}

    def account_jwt(key: NKey, name: str, limits: dict[str, Any]) -> str:
        nats_claims = {"limits": limits, "type": "account", "version": 2}
        return _jwt({"sub": key.public, "name": name, "nats": nats_claims}, operator)

    operator_jwt = _jwt(
        {"sub": operator.public, "name": "edge-test", "nats": {"type": "operator", "version": 2}},
        operator,
    )
    return Operator(
        operator_jwt=operator_jwt,
        system_account=system.public,
        accounts={
            system.public: account_jwt(system, "SYS", unlimited),
            account.public: account_jwt(account, "EDGE", {**unlimited, **jetstream}),
        },
        account=account,
    )
