"""A Modbus RTU device that answers correctly but, at first, too late.

The pymodbus server (tests/sources/modbus_plc.py) builds each answer from the
last request it received, which a newer request overwrites; a device that is
slow must answer each request on its own. This one reads RTU frames (CRC
checked), answers holding-register reads (function 3) from its table after
`delay` seconds, and the first `late` requests after `late_delay` seconds
instead: longer than the gateway waits, so their answers arrive late, while the
gateway is doing something else. Each answer is sent on its own timer, so the
order on the wire is the order of the deadlines, as on a real slow device.

`serve_pty(device, path)` serves it on one end of a socat pty pair (rtu://);
`serve_tcp(device)` serves RTU frames over TCP (rtu+tcp://).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import serial


def crc16(data: bytes) -> bytes:
    """The Modbus RTU CRC (polynomial 0xA001, start 0xFFFF), low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


class LateDevice:
    """One unit's holding registers, answered after a delay; the first few very late."""

    def __init__(
        self, unit: int, registers: dict[int, int], delay: float, late: int, late_delay: float
    ) -> None:
        self.unit = unit
        self.registers = registers
        self.delay = delay
        self.late = late
        self.late_delay = late_delay
        self.requests: list[tuple[int, int]] = []  # (address, count) of each read received
        self._buffer = b""
        self._handles: list[asyncio.TimerHandle] = []

    def feed(self, data: bytes, send: Callable[[bytes], Any]) -> None:
        """Take bytes from the line; schedule an answer for each whole request."""
        self._buffer += data
        while len(self._buffer) >= 8:
            frame, self._buffer = self._buffer[:8], self._buffer[8:]
            if crc16(frame[:6]) != frame[6:] or frame[0] != self.unit or frame[1] != 3:
                self._buffer = b""  # not a read of ours: resynchronise on the next frame
                return
            address, count = struct.unpack(">HH", frame[2:6])
            regs = [self.registers.get(a, 0) for a in range(address, address + count)]
            body = bytes([self.unit, 3, 2 * count]) + struct.pack(f">{count}H", *regs)
            wait = self.late_delay if len(self.requests) < self.late else self.delay
            self.requests.append((address, count))
            loop = asyncio.get_running_loop()
            self._handles.append(loop.call_later(wait, send, body + crc16(body)))

    def stop(self) -> None:
        for handle in self._handles:
            handle.cancel()


class PtyServer:
    """`device` on the serial port (a pty end) at `path`."""

    def __init__(self, device: LateDevice, path: str) -> None:
        self.device = device
        self.port = serial.Serial(path, 115200, timeout=0)  # raw mode, non-blocking
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.port.fileno(), self._readable)

    def _readable(self) -> None:
        data = self.port.read(4096)
        if data:
            self.device.feed(data, self._send)

    def _send(self, frame: bytes) -> None:
        if self.port.is_open:
            self.port.write(frame)

    def close(self) -> None:
        self.device.stop()
        self._loop.remove_reader(self.port.fileno())
        self.port.close()


class TcpServer:
    """`device` behind a TCP port, RTU frames over TCP; `port` once started."""

    def __init__(self, device: LateDevice) -> None:
        self.device = device
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> TcpServer:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)

        def send(frame: bytes) -> None:
            if not writer.is_closing():
                writer.write(frame)

        while data := await reader.read(4096):
            self.device.feed(data, send)
        writer.close()

    async def close(self) -> None:
        self.device.stop()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
