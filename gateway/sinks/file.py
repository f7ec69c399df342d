"""Appends FlowFiles to a JSON Lines file, one object per line, with size-based rotation.

Each line reads
  {"id": "0190…", "topic": "sensors/a/telemetry", "ts": "2024-05-01T12:00:00.123456Z",
   "attributes": {"mqtt.qos": "1"}, "payload": {"temp": 21.5}}
`ts` is the FlowFile's creation time in UTC (RFC 3339, microseconds). The
content is written under one of three keys, so that a reader gets every byte back:
  "payload": {"temp": 21.5}       content that is JSON, as that JSON (on one line)
  "payload_text": "21.5 C"        other content that is valid UTF-8 text, as a string
  "payload_base64": "/wA…"        any other bytes, base64-encoded (RFC 4648)

Delivery is at least once: a batch is written with one append and, with
`fsync: true`, is on disk before the sink reports it delivered. If the
gateway stops between that and moving the sink's cursor, the batch is
written again after the restart, so a reader may see the same `id` twice;
de-duplicate on `id` if that matters. A line cut short by a power loss is
removed when the sink next opens the file (that batch was not yet reported
delivered, so it is written again in full).

Keys
  type: file
  path: telemetry.jsonl    the file; a relative path is under gateway.data_dir
                           (default: <data_dir>/<sink name>.jsonl)
  rotate_bytes: 64MiB      when a batch would take the file past this size, it is
                           renamed <path>.1 (older ones shift to .2 … .keep) and a
                           new file started; 0 never rotates (default 64MiB)
  keep: 5                  rotated files to keep; 0 keeps none (default 5)
  fsync: true              force each batch to disk before reporting it delivered
                           (default true; false is faster but an acknowledged
                           batch can be lost on power loss)
  and the delivery keys every sink has: batch, retry, rate_limit, overflow.

Example
  sinks:
    archive: {type: file, path: /mnt/usb/telemetry.jsonl, rotate_bytes: 256MiB, keep: 10}
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Annotated

from gateway.config.model import SinkConfig
from gateway.config.schema import Doc, Range, Size
from gateway.core.component import Context, Rejected, Sink
from gateway.core.errors import RetryableError
from gateway.core.flowfile import FlowFile

_TAIL_CHUNK = 65536

_NOT_JSON = object()


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads/json.dumps with keywords would build a new codec per call.
# ASCII output keeps even a lone surrogate (legal in a JSON escape) writable.
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_loads = json.JSONDecoder(parse_constant=_refuse_constant).decode


def _parse(text: str) -> object:
    try:
        return _loads(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


@dataclass(frozen=True, kw_only=True)
class FileSinkConfig(SinkConfig):
    """Keys of the `file` sink (plus batch, retry, rate_limit, overflow from SinkConfig)."""

    path: Annotated[
        str | None,
        Doc(
            "The JSON Lines file; a relative path is under `gateway.data_dir` (default"
            " `<data_dir>/<sink name>.jsonl`).",
            example="telemetry.jsonl",
        ),
    ] = None
    rotate_bytes: Annotated[
        Size,
        Doc(
            "When a batch would take the file past this size it is renamed `<path>.1`"
            " (older ones shift up to `.keep`) and a new one started; 0 never rotates,"
            " any other size is at least 4KiB."
        ),
    ] = 64 << 20
    keep: Annotated[
        int,
        Doc("Rotated files to keep; 0 keeps none."),
        Range(0, 1000, "must be between 0 and 1000"),
    ] = 5
    fsync: Annotated[
        bool,
        Doc(
            "Force each batch to disk before reporting it delivered; `false` is faster,"
            " but an acknowledged batch can be lost on power loss."
        ),
    ] = True

    def check(self) -> Iterator[tuple[str, str]]:
        if self.path is not None and (not self.path or self.path.endswith(os.sep)):
            yield "path", f"{self.path!r} must name a file, e.g. telemetry.jsonl"
        if 0 < self.rotate_bytes < 4096:
            yield "rotate_bytes", "must be 0 (never rotate) or at least 4KiB"


class FileSink(Sink):
    """Writes JSON Lines to one file, rotating it by size."""

    Config = FileSinkConfig

    def __init__(self, config: FileSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: FileSinkConfig = config
        self.path = os.path.join(ctx.data_dir, config.path or f"{ctx.name}.jsonl")
        self._file: IO[bytes] | None = None
        self._size = 0
        self._lock = asyncio.Lock()
        self._second = -1
        self._second_text = ""

    async def connect(self) -> None:
        async with self._lock:
            # File system calls block (an SD card can stall for a second); keep them off the loop.
            await asyncio.to_thread(self._open)

    async def write(self, batch: list[FlowFile]) -> list[Rejected]:
        if not batch:
            return []
        async with self._lock:
            # Encoding, write and fsync run in a worker thread: fsync on an SD card
            # can take tens of milliseconds, which must not stall the event loop.
            await asyncio.to_thread(self._write, batch)
        return []

    async def close(self) -> None:
        async with self._lock:
            if self._file is not None:
                await asyncio.to_thread(self._close)

    # Everything below runs in a worker thread, one call at a time (self._lock).

    def _open(self) -> None:
        if self._file is not None:
            return
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, exist_ok=True)
            existed = os.path.exists(self.path)
            # Append mode, also readable so a torn last line can be found; it stays
            # open across writes and _close closes it.
            f = open(self.path, "a+b")  # noqa: SIM115
            try:
                self._size = self._trim_torn_tail(f)
            except OSError:
                f.close()
                raise
        except OSError as err:
            raise RetryableError(f"cannot open {self.path}: {err.strerror or err}") from err
        self._file = f
        if not existed and self.config.fsync:
            self._sync_directory(directory)

    @staticmethod
    def _trim_torn_tail(f: IO[bytes]) -> int:
        """Cut a last line left unfinished by a crash; return the file size."""
        size = os.fstat(f.fileno()).st_size
        end = size
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            chunk = os.pread(f.fileno(), end - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end != size:
            f.truncate(end)
        return end

    def _write(self, batch: list[FlowFile]) -> None:
        data = b"".join([self._line(ff) for ff in batch])
        if self._file is None:
            self._open()
        limit = self.config.rotate_bytes
        if limit and self._size and self._size + len(data) > limit:
            self._rotate()
        f = self._file
        assert f is not None
        before = self._size
        try:
            f.write(data)
            f.flush()
            if self.config.fsync:
                os.fsync(f.fileno())
        except OSError as err:
            self._undo(before)
            raise RetryableError(f"cannot write to {self.path}: {err.strerror or err}") from err
        self._size = before + len(data)

    def _undo(self, size: int) -> None:
        """After a failed write (disk full), cut the partial batch so a retry starts clean."""
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.close()
        except OSError:
            pass  # the buffered bytes are what we are about to cut anyway
        try:
            os.truncate(self.path, size)
        except OSError as err:
            self.ctx.log.warning("could not cut a partial write from %s: %s", self.path, err)

    def _rotate(self) -> None:
        self._close()
        keep = self.config.keep
        try:
            if keep == 0:
                os.remove(self.path)
            else:
                for n in range(keep - 1, 0, -1):
                    older = f"{self.path}.{n}"
                    if os.path.exists(older):
                        os.replace(older, f"{self.path}.{n + 1}")
                os.replace(self.path, f"{self.path}.1")
        except OSError as err:
            raise RetryableError(f"cannot rotate {self.path}: {err.strerror or err}") from err
        self._open()
        self.ctx.log.info("rotated %s (keeping %d old files)", self.path, keep)

    def _close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()

    @staticmethod
    def _sync_directory(directory: str) -> None:
        # A new or renamed file survives a power loss only once its directory is synced.
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _timestamp(self, created: int) -> str:
        second, nanos = divmod(created, 1_000_000_000)
        if second != self._second:  # a batch mostly shares its second
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{nanos // 1000:06d}Z"

    def _line(self, ff: FlowFile) -> bytes:
        head = (
            f'{{"id":{_dumps(ff.id)},"topic":{_dumps(ff.topic)},'
            f'"ts":"{self._timestamp(ff.created)}","attributes":{_dumps(ff.attributes)},'
        )
        content = ff.content
        try:
            text = content.decode()
        except UnicodeDecodeError:
            text = None
        if text is not None:
            value = _parse(text)
            if value is not _NOT_JSON:
                if "\n" in text or "\r" in text:
                    # Pretty-printed JSON: re-encode it on one line. Compact JSON is copied as is.
                    text = _dumps(value)
                return f'{head}"payload":{text.strip()}}}\n'.encode()
            return f'{head}"payload_text":{_dumps(text)}}}\n'.encode()
        encoded = base64.b64encode(content).decode()
        return f'{head}"payload_base64":"{encoded}"}}\n'.encode()
