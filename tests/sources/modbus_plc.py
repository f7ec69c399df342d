"""A pymodbus server playing the PLC for the Modbus tests and the benchmark.

In the tests it runs in-process (`serve_tcp`, `serve_rtu`); the benchmark starts
it as a separate process:

    python tests/sources/modbus_plc.py tcp --devices 10 --registers 100
    python tests/sources/modbus_plc.py tcp --tcp-port 5020   (again on the port it had)
    python tests/sources/modbus_plc.py rtu --port /dev/pts/7 --units 1,2 --pace 115200

It prints one JSON line ({"ports": [...]} or {"ready": true}), then serves until
its stdin closes; the line `stats` on stdin makes it print its request counts, and
`mute` makes every unit stop answering (then prints them: the reads it answered).

The datastore is our own (`PlcStore`), handed to pymodbus's server in place of
its simulator: it holds plain tables per unit id, logs every request (so tests
count what reached the server), can stop answering for a unit (`muted`), can
refuse addresses (`holes`), and can pace answers to a serial wire's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import struct
import sys
import time
from collections.abc import Iterable
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer, ModbusUdpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding",
            16: "holding", 22: "holding", 23: "holding", 4: "input"}  # fmt: skip
READS = (1, 2, 3, 4)


class PlcStore:
    """Tables per unit id, a request log, and knobs to misbehave."""

    def __init__(self, units: Iterable[int] = (1,), size: int = 4096) -> None:
        self.size = size
        self.tables: dict[int, dict[str, list[Any]]] = {
            u: {
                "coil": [False] * size,
                "discrete": [False] * size,
                "holding": [0] * size,
                "input": [0] * size,
            }
            for u in units
        }
        self.requests: list[tuple[int, int, int, int]] = []  # (unit, fc, address, count) reads
        self.times: list[float] = []  # when each read arrived (time.monotonic)
        self.answered: list[float] = []  # when each read's answer was ready
        self.writes: list[tuple[int, int, int, list[Any]]] = []
        self.muted: set[int] = set()
        self.holes: dict[int, set[int]] = {}  # unit -> holding addresses that do not exist
        self.pace_baud: int | None = None
        self.busy = 0
        self.max_busy = 0

    def device_ids(self) -> list[int]:
        return list(self.tables)

    def reads(
        self, unit: int | None = None, fc: int | None = None
    ) -> list[tuple[int, int, int, int]]:
        return [r for r in self.requests
                if (unit is None or r[0] == unit) and (fc is None or r[1] == fc)]  # fmt: skip

    def set(self, unit: int, table: str, address: int, values: list[Any]) -> None:
        self.tables[unit][table][address : address + len(values)] = values

    async def async_getValues(  # pymodbus's name
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[Any] | ExcCodes:
        if device_id in self.muted or device_id not in self.tables:
            raise NoSuchIdException(f"unit {device_id} is not answering")
        if func_code in READS:
            self.requests.append((device_id, func_code, address, count))
            self.times.append(time.monotonic())
        self.busy += 1
        self.max_busy = max(self.max_busy, self.busy)
        try:
            table = FC_TABLE[func_code]
            if address + count > self.size:
                return ExcCodes.ILLEGAL_ADDRESS
            holes = self.holes.get(device_id)
            if (
                holes
                and table == "holding"
                and any(a in holes for a in range(address, address + count))
            ):
                return ExcCodes.ILLEGAL_ADDRESS
            if self.pace_baud and func_code in READS:
                await self._pace(table, count)
            return list(self.tables[device_id][table][address : address + count])
        finally:
            self.busy -= 1
            if func_code in READS:
                self.answered.append(time.monotonic())

    async def async_setValues(  # pymodbus's name
        self, device_id: int, func_code: int, address: int, values: list[Any]
    ) -> ExcCodes | None:
        if device_id in self.muted or device_id not in self.tables:
            raise NoSuchIdException(f"unit {device_id} is not answering")
        table = FC_TABLE[func_code]
        if address + len(values) > self.size:
            return ExcCodes.ILLEGAL_ADDRESS
        self.writes.append((device_id, func_code, address, list(values)))
        self.tables[device_id][table][address : address + len(values)] = list(values)
        return None

    async def _pace(self, table: str, count: int) -> None:
        """Answer no sooner than a real line would: request + gap + answer on the wire."""
        assert self.pace_baud
        bits = table in ("coil", "discrete")
        answer = 5 + ((count + 7) // 8 if bits else 2 * count)
        wire = (8 + answer) * 10 / self.pace_baud + 0.00175
        deadline = time.monotonic() + wire
        await asyncio.sleep(max(0.0, wire - 0.0015))
        # The last stretch yields in a loop instead: sleep() overshoots by about 1 ms.
        while time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0)


def _placeholder() -> SimDevice:
    # pymodbus's server insists on a simulator context at construction; the real
    # datastore (a PlcStore) replaces it right after.
    return SimDevice(0, simdata=[SimData(0, values=0, datatype=DataType.REGISTERS)])


async def serve_tcp(
    store: PlcStore, host: str = "127.0.0.1", port: int = 0, rtu_framing: bool = False
) -> tuple[Any, int]:
    """Start a Modbus TCP server for `store` (RTU frames over TCP with `rtu_framing`)."""
    framer = FramerType.RTU if rtu_framing else FramerType.SOCKET
    server = ModbusTcpServer(
        _placeholder(), framer=framer, address=(host, port), ignore_missing_devices=True
    )
    server.context = store  # type: ignore[assignment]
    await server.serve_forever(background=True)
    return server, server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]


async def serve_udp(store: PlcStore, host: str = "127.0.0.1") -> tuple[Any, int]:
    """Start a Modbus UDP server for `store`; returns (server, port)."""
    server = ModbusUdpServer(_placeholder(), address=(host, 0), ignore_missing_devices=True)
    server.context = store  # type: ignore[assignment]
    await server.serve_forever(background=True)
    return server, server.transport.get_extra_info("sockname")[1]


async def serve_rtu(store: PlcStore, path: str, baudrate: int = 115200) -> Any:
    """Start a Modbus RTU server on the serial port (a pty) at `path`."""
    server = ModbusSerialServer(
        _placeholder(), port=path, baudrate=baudrate, ignore_missing_devices=True
    )
    server.context = store  # type: ignore[assignment]
    await server.serve_forever(background=True)
    return server


def layout(code: str, value: Any, order: str) -> list[int]:
    """Registers holding `value` (struct code) as a device with byte order `order` has them.

    Independent of the gateway's codec: pack big-endian, name the bytes A, B, C...
    and lay them out in the order's letter sequence (ABCD, CDAB, BADC, DCBA, ...).
    """
    data = struct.pack(">" + code, value)
    laid = bytes(data["ABCDEFGH".index(ch)] for ch in order)
    return [int.from_bytes(laid[i : i + 2], "big") for i in range(0, len(laid), 2)]


def fill_pattern(store: PlcStore, unit: int, registers: int) -> None:
    """Holding registers 0..registers-1 hold unit*1000 + address (recognisable, distinct)."""
    store.set(unit, "holding", 0, [(unit * 1000 + a) & 0xFFFF for a in range(registers)])


def stats(stores: list[PlcStore]) -> dict[str, Any]:
    """Request counts, and for one line the turnaround: an answer to the next request."""
    out: dict[str, Any] = {
        "requests": sum(len(s.requests) for s in stores),
        "max_busy": max(s.max_busy for s in stores),
    }
    if len(stores) == 1:
        s = stores[0]
        turns = sorted(b - a for a, b in zip(s.answered, s.times[1:], strict=False) if b > a)
        if turns:
            out["turnaround_median"] = turns[len(turns) // 2]
            out["turnaround_mean"] = sum(turns) / len(turns)
    return out


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", choices=("tcp", "rtu"))
    parser.add_argument("--devices", type=int, default=1, help="tcp: one server port each")
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--port", help="rtu: the serial port (pty) to serve on")
    parser.add_argument(
        "--tcp-port", type=int, default=0, help="tcp, one device: serve on this port (a restart)"
    )
    parser.add_argument("--units", default="1", help="rtu: unit ids, comma separated")
    parser.add_argument("--pace", type=int, default=0, help="rtu: answer at this baud rate")
    args = parser.parse_args()
    # The gateway hangs up mid-request when a benchmark run ends; pymodbus would
    # print that, with a frame dump, on stderr.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    stores: list[PlcStore] = []
    servers: list[Any] = []
    if args.mode == "tcp":
        ports = []
        for _ in range(args.devices):
            store = PlcStore(units=(1,))
            fill_pattern(store, 1, args.registers)
            server, port = await serve_tcp(store, port=args.tcp_port)
            stores.append(store)
            servers.append(server)
            ports.append(port)
        print(json.dumps({"ports": ports}), flush=True)
    else:
        units = [int(u) for u in args.units.split(",")]
        store = PlcStore(units=units)
        for u in units:
            fill_pattern(store, u, args.registers)
        store.pace_baud = args.pace or None
        servers.append(await serve_rtu(store, args.port))
        stores.append(store)
        print(json.dumps({"ready": True}), flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"mute":
            for store in stores:
                store.muted.update(store.tables)
        if line.strip() in (b"stats", b"mute"):
            print(json.dumps(stats(stores)), flush=True)
    for server in servers:
        await server.shutdown()


if __name__ == "__main__":
    asyncio.run(_main())
