"""A real OPC UA server (asyncua's) for the `opcua` source's tests and bench.

Run as its own process (`python tests/sources/opcua_server.py --port N ...`) so a
test can kill it and start it again on the same port. It serves, under
`Objects/2:Plant` in namespace `urn:edge-stream:test`, one writable variable of
each type the source claims, with string node ids `ns=2;s=<Name>`:

  Bool, SByte, Byte, Int16, UInt16, Int32, UInt32, Int64, UInt64, Float, Double, String,
  DateTime, ByteString, DoubleArray (Double[]), Int32Array (Int32[]), Counter (Int32)

Tests change them with a second client (the server's own write path). With
`--items N` it also serves `Objects/2:Bench/2:V0..V<N-1>` (Double), all changed
every `--period` seconds by the server itself (the bench's load).

Security: `--cert/--key` enable Basic256Sha256 Sign and SignAndEncrypt besides
None (`--secure-only` drops None), `--trust DIR` accepts only client certificates
in DIR, `--user name:password` requires that user (anonymous refused). Prints
`ready` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import UserManager

NAMESPACE = "urn:edge-stream:test"

# name -> (initial value, variant type)
VARIABLES: dict[str, tuple[Any, ua.VariantType]] = {
    "Bool": (False, ua.VariantType.Boolean),
    "SByte": (-7, ua.VariantType.SByte),
    "Byte": (200, ua.VariantType.Byte),
    "Int16": (-5, ua.VariantType.Int16),
    "UInt16": (5, ua.VariantType.UInt16),
    "Int32": (-70000, ua.VariantType.Int32),
    "UInt32": (70000, ua.VariantType.UInt32),
    "Int64": (-(2**40), ua.VariantType.Int64),
    "UInt64": (2**40, ua.VariantType.UInt64),
    "Float": (1.5, ua.VariantType.Float),
    "Double": (2.25, ua.VariantType.Double),
    "String": ("hello", ua.VariantType.String),
    "DateTime": (datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC), ua.VariantType.DateTime),
    "ByteString": (b"\x00\x01\xff", ua.VariantType.ByteString),
    "DoubleArray": ([1.0, 2.5, -3.0], ua.VariantType.Double),
    "Int32Array": ([1, 2, 3], ua.VariantType.Int32),
    "Counter": (0, ua.VariantType.Int32),
}


def make_certificate(folder: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    """A self-signed OPC UA application certificate (DER) and key (PEM) in `folder`."""
    from asyncua.crypto.cert_gen import generate_private_key, generate_self_signed_app_certificate
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = generate_private_key()
    cert = generate_self_signed_app_certificate(
        key,
        name,
        {},
        [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")],
        [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}-cert.der", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class OneUser(UserManager):
    """Admits exactly one user name and password."""

    def __init__(self, name: str, password: str) -> None:
        self.name = name
        self.password = password

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username == self.name and password == self.password:
            return User(role=UserRole.User)
        return None


async def serve(args: argparse.Namespace) -> None:
    users: UserManager | None = None
    if args.user:
        name, _, password = args.user.partition(":")
        users = OneUser(name, password)
    server = Server(user_manager=users)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/")
    server.set_server_name("edge-stream test server")
    policies = []
    if not args.secure_only:
        policies.append(ua.SecurityPolicyType.NoSecurity)
    if args.cert:
        await server.load_certificate(args.cert)
        await server.load_private_key(args.key)
        policies += [
            ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
        ]
    server.set_security_policy(policies)
    if users is not None:
        server.set_security_IDs(["Username"])
    if args.trust:
        store = TrustStore([Path(args.trust)], [])
        await store.load()
        validator = CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION
            | CertificateValidatorOptions.PEER_CLIENT,
            store,
        )
        server.set_certificate_validator(validator)
    ns = await server.register_namespace(NAMESPACE)
    plant = await server.nodes.objects.add_object(
        ua.NodeId("Plant", ns), ua.QualifiedName("Plant", ns)
    )
    for name, (value, vtype) in VARIABLES.items():
        var = await plant.add_variable(
            ua.NodeId(name, ns), ua.QualifiedName(name, ns), ua.Variant(value, vtype)
        )
        await var.set_writable()
    bench = []
    if args.items:
        folder = await server.nodes.objects.add_object(
            ua.NodeId("Bench", ns), ua.QualifiedName("Bench", ns)
        )
        for i in range(args.items):
            bench.append(
                await folder.add_variable(
                    ua.NodeId(f"V{i}", ns),
                    ua.QualifiedName(f"V{i}", ns),
                    ua.Variant(0.0, ua.VariantType.Double),
                )
            )
    async with server:
        print("ready", flush=True)
        tick = 0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            # on a fixed grid: a tick that took longer than the period is followed at once
            next_at += args.period
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if bench:
                tick += 1
                # the server's own write path, one call per item: what a PLC driver does;
                # each value is the tick's number, so a client can count the ticks it saw
                for node in bench:
                    await server.write_attribute_value(
                        node.nodeid, ua.DataValue(ua.Variant(float(tick), ua.VariantType.Double))
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--trust")
    parser.add_argument("--user")
    parser.add_argument("--secure-only", action="store_true")
    parser.add_argument("--items", type=int, default=0)
    parser.add_argument("--period", type=float, default=0.1)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
