"""Appends FlowFiles to a JSON Lines or CSV file, one per line, rotated by size and time.

Each line reads
  {"id": "0190…", "topic": "sensors/a/telemetry", "ts": "2024-05-01T12:00:00.123456Z",
   "attributes": {"mqtt.qos": "1"}, "payload": {"temp": 21.5}}
`ts` is the FlowFile's creation time in UTC (RFC 3339, microseconds). The
content is written under one of three keys, so that a reader gets every byte back:
  "payload": {"temp": 21.5}       content that is JSON, as that JSON (on one line,
                                  its numbers as written: 1e400, every digit)
  "payload_text": "21.5 C"        other content that is valid UTF-8 text, as a string
  "payload_base64": "/wA…"        any other bytes, base64-encoded (RFC 4648)

`format: csv` writes a header line and then one line per FlowFile with the
`columns` you name (default `id, topic, ts, payload`), each written `source`
or `header: source` with these sources:
  id, topic, ts, attributes, payload   as above (payload: the content as text, or
                                       base64 when it is not UTF-8)
  topic.N                              topic level N (negative counts from the end)
  field.a.b                            a field of the JSON content (objects, lists
                                       as JSON; a number with every digit it was
                                       written with, as Python's Decimal writes
                                       it: 1.50 as 1.50, 1e5 as 1E+5, 1e400 as
                                       1E+400, 1e-3 as 0.001)
  attributes.KEY                       one attribute
A missing value is an empty cell. Values are quoted as RFC 4180 says; a line
break inside a value is written as the two characters `\\n` (or `\\r`), so that a
line is always one FlowFile. A FlowFile with a value UTF-8 cannot write (a lone
surrogate, `"\\ud800"`, in its topic, an attribute or a JSON field) goes to the
dead-letter table; the rest of its batch is written. A file whose header is not
the configured one (the columns changed), or with `format: jsonl` one that does
not start with a JSON Lines line (a CSV file on the same path), is rotated away
when the sink opens it (to `<path>.1`; with `keep: 0`, to the first free
`<path>.N`, over no other file).

Delivery is effectively once: a batch is written with one append and, with
`fsync: true`, is on disk before the sink reports it delivered. If the
gateway stops between that and moving the sink's cursor, the batch comes
again after the restart; the sink then reads the ids at the end of its file
and leaves out the FlowFiles already there (in CSV, when `id` is one of the
columns; without it, a reader may see a line twice). A line cut short by a
power loss is removed when the sink next opens the file (that batch was not
yet reported delivered, so it is written again in full).

The path must be a regular file (or name none yet: it is created). A folder, a FIFO,
a device or a socket there stops the sink with one line saying what is there, found
when the sink opens the file (check-config cannot know: the file may not exist yet);
the data stays buffered until the path is fixed and the config reloaded.

Keys
  type: file
  path: telemetry.jsonl    the file; a relative path is under gateway.data_dir
                           (default: <data_dir>/<sink name>.jsonl); its own: a
                           file of the gateway's (store.db, secret.key, broker/ ...)
                           or another file sink's (or its <path>.N) is refused
  format: jsonl            or csv (default jsonl)
  columns: [id, ts, device: field.device]   csv only: the columns, in order
  rotate_bytes: 64MiB      when a batch would take the file past this size, it is
                           renamed <path>.1 (older ones shift to .2 … .keep) and a
                           new file started; 0 never rotates (default 64MiB)
  rotate_interval: 1h      also rotate a file this long after it was started (or
                           opened, after a restart), at its next write; 0 never
                           (default 0)
  keep: 5                  rotated files to keep; 0 keeps none (default 5);
                           only with rotate_bytes or rotate_interval; after
                           `keep` is lowered (not to 0), the next rotation
                           removes the files beyond it that start as this sink
                           writes (a file of other columns or format set aside
                           as above, or one of yours, stays); lowered to 0,
                           the rotated files stay: remove them yourself. A file
                           not this sink's at <path>.<keep> is moved to the
                           first free <path>.N beyond keep (with a WARNING)
                           rather than replaced by the rotation
  fsync: true              force each batch to disk before reporting it delivered
                           (default true; false is faster but an acknowledged
                           batch can be lost on power loss)
  and the delivery keys every sink has: batch, retry, rate_limit, overflow.

Example
  sinks:
    archive: {type: file, path: /mnt/usb/telemetry.jsonl, rotate_bytes: 256MiB, keep: 10}
    table:   {type: file, path: readings.csv, format: csv, rotate_interval: 1h,
              columns: [id, ts, device: topic.1, temp: field.temp]}
"""

from __future__ import annotations

import asyncio
import base64
import csv
import decimal
import errno
import io
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Annotated, Any, Literal

from gateway.config.model import SinkConfig, path_problem
from gateway.config.schema import Doc, Duration, Range, Size
from gateway.core.component import Context, Rejected, Sink
from gateway.core.errors import PermanentError, RetryableError
from gateway.core.flowfile import FlowFile
from gateway.sinks._columns import dig, json_text, level, loads, loads_exact, refuse_constant

_TAIL_CHUNK = 65536
TAIL_IDS = 10_000  # the fewest last lines whose ids are read back at open (see _tail_ids)

_NOT_JSON = object()


# Built once: json.loads/json.dumps with keywords would build a new codec per call.
# ASCII output keeps even a lone surrogate (legal in a JSON escape) writable.
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _decimal_or_double(text: str) -> decimal.Decimal | float:
    try:
        return decimal.Decimal(text)
    except decimal.InvalidOperation:
        return float(text)


_loads_beyond = json.JSONDecoder(
    parse_constant=refuse_constant, parse_float=_decimal_or_double
).decode
# The tokens of JSON text: a string (its blanks kept), or a run of anything else but
# whitespace. Joined, they are the text without the whitespace between its tokens.
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^ \t\n\r"]+')


def _parse(text: str, decode: Callable[[str], Any] = loads) -> object:
    try:
        return decode(text)
    except (ValueError, RecursionError):
        return _NOT_JSON
    except decimal.InvalidOperation:
        # an exponent beyond a Decimal's (1e9999999999999999999): raised out of write,
        # the sink crashed and restarted on the same batch for ever. Rare: read again,
        # such a number as a double (infinity, or 0), the others still as Decimals.
        return _parse(text, _loads_beyond)


def _one_line(text: str) -> str:
    """Valid JSON text written over several lines, on one line as it was written: its
    numbers as they read (a double would round 12345678901234.5678 and turn 1e400 into
    Infinity, which is no JSON). A valid JSON string holds no raw line break, so every
    one is whitespace between tokens."""
    # One findall and a join: a substitution calling Python for each string and each run
    # of blanks took 3.4 times as long as the double round trip it replaced.
    return "".join(_JSON_TOKENS.findall(text))


CSV_DEFAULT = ["id", "topic", "ts", "payload"]
_FIXED = ("id", "topic", "ts", "attributes", "payload")
_LEVEL = re.compile(r"topic\.(-?\d+)$")


def csv_columns(columns: list[str | dict[str, str]] | None) -> list[tuple[str, str]]:
    """(header, source) of each CSV column."""
    out: list[tuple[str, str]] = []
    for column in columns if columns is not None else CSV_DEFAULT:
        if isinstance(column, dict):
            out.extend((str(k), str(v)) for k, v in column.items())
        else:
            out.append((column, column))
    return out


def _source_problem(source: str) -> str | None:
    if source in _FIXED or _LEVEL.match(source):
        return None
    for prefix in ("field.", "attributes."):
        if source.startswith(prefix) and len(source) > len(prefix):
            return None
    return (
        f"{source!r} is not a column source: id, topic, ts, attributes, payload, topic.N,"
        " field.NAME or attributes.KEY"
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        text = value
    elif type(value) is decimal.Decimal:
        text = str(value)  # finite, as read from JSON: its spelling is a JSON number
    else:
        text = json_text(value, _dumps)
    if "\n" in text or "\r" in text:
        text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text


@dataclass(frozen=True, kw_only=True)
class FileSinkConfig(SinkConfig):
    """Keys of the `file` sink (plus batch, retry, rate_limit, overflow from SinkConfig)."""

    path: Annotated[
        str | None,
        Doc(
            "The file; a relative path is under `gateway.data_dir` (default"
            " `<data_dir>/<sink name>.jsonl`, or `.csv`). Its own: a file of the gateway's"
            " (`store.db`, `secret.key` ...) or another file sink's is refused.",
            example="telemetry.jsonl",
        ),
    ] = None
    format: Annotated[
        Literal["jsonl", "csv"],
        Doc(
            "`jsonl`: one JSON object per line (id, topic, ts, attributes, payload);"
            " `csv`: a header line, then one line per FlowFile with `columns`.",
            example="csv",
        ),
    ] = "jsonl"
    columns: Annotated[
        list[str | dict[str, str]] | None,
        Doc(
            "CSV only: the columns in order, each `source` or `{header: source}`; a source"
            " is `id`, `topic`, `ts`, `attributes`, `payload`, `topic.N` (a topic level),"
            " `field.a.b` (a JSON field) or `attributes.KEY`. Keep `id` among them: it is"
            " how a batch sent again after a crash is recognised. Default:"
            " `[id, topic, ts, payload]`.",
            example=["id", "ts", {"device": "topic.1"}, {"temp": "field.temp"}],
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
    rotate_interval: Annotated[
        Duration,
        Doc(
            "Also rotate a file at its first write this long after it was started (or"
            " opened, after a restart); 0 rotates by size only.",
            example="1h",
        ),
        Range(0, message="must not be negative"),
    ] = 0.0
    keep: Annotated[
        int,
        Doc(
            "Rotated files to keep; 0 keeps none. Only with `rotate_bytes` or"
            " `rotate_interval`. Lowered (not to 0), the next rotation removes the files"
            " beyond it that start as this sink writes (a file of other columns or format"
            " set aside, or one of yours, stays); lowered to 0, the rotated files stay for"
            " you to remove. A file not this sink's at `<path>.<keep>` is moved to the first"
            " free `<path>.N` beyond it, with a WARNING, rather than replaced by a rotation."
        ),
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
        if self.path is not None and (
            not self.path
            or self.path.endswith(os.sep)
            or os.path.basename(self.path) in (".", "..")
        ):
            yield "path", f"{self.path!r} must name a file, e.g. telemetry.jsonl"
        elif self.path is not None and "\0" in self.path:  # open() would raise ValueError
            yield "path", f"{self.path!r} cannot hold a NUL character"
        # blank (a file named "  "), ~ (a folder named '~'), a line break pasted with it
        elif problem := path_problem(self.path, "/home/pi/telemetry.jsonl", "gateway.data_dir"):
            yield "path", problem
        if self.rotate_bytes is not None and 0 < self.rotate_bytes < 4096:
            yield "rotate_bytes", "must be 0 (never rotate) or at least 4KiB"
        if self.keep not in (None, 5) and self.rotate_bytes == 0 and self.rotate_interval == 0:
            yield "keep", "keep applies only with rotation (rotate_bytes or rotate_interval)"
        if self.columns is not None:
            if self.format is not None and self.format != "csv":
                yield "columns", "applies to format: csv only"
            if not self.columns:
                yield "columns", "needs at least one column"
            headers: set[str] = set()
            for i, column in enumerate(self.columns):
                if column is None:
                    continue  # of the wrong type, reported where it is
                if column == {}:  # [{}] wrote an empty header, then an empty line per FlowFile
                    yield f"columns.{i}", "names no column: write `source` or `{header: source}`"
                for header, source in csv_columns([column]):
                    problem = _source_problem(source)
                    if problem:
                        yield f"columns.{i}", problem
                    if header in headers:
                        yield f"columns.{i}", f"header {header!r} is used twice"
                    if "\n" in header or "\r" in header:  # a header of two lines
                        yield f"columns.{i}", f"header {header!r} cannot hold a line break"
                    headers.add(header)


class FileSink(Sink):
    """Writes JSON Lines to one file, rotating it by size."""

    Config = FileSinkConfig

    def __init__(self, config: FileSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: FileSinkConfig = config
        self.csv = config.format == "csv"
        self.path = os.path.join(
            ctx.data_dir, config.path or f"{ctx.name}.{'csv' if self.csv else 'jsonl'}"
        )
        self._file: IO[bytes] | None = None
        self._size = 0
        self._lock = asyncio.Lock()
        self._second = -1
        self._second_text = ""
        self._started = 0.0  # monotonic: when the current file was started or opened
        # Ids at the end of the file when it was opened: a batch sent again after a crash
        # starts with them, and they are left out (None once a new FlowFile is written).
        self._recent: set[str] | None = None
        columns = csv_columns(config.columns)
        self._header = b""
        self._id_column: int | None = None
        self._cells: list[Callable[[FlowFile, list[str], Any], Any]] = []
        if self.csv:
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerow([h for h, _ in columns])
            self._header = out.getvalue().encode()
            self._cells = [self._getter(source) for _, source in columns]
            sources = [source for _, source in columns]
            self._id_column = sources.index("id") if "id" in sources else None
            self._needs_json = any(src.startswith("field.") for src in sources)
            self._needs_levels = any(_LEVEL.match(src) for src in sources)

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
            return await asyncio.to_thread(self._write, batch)

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
            f = self._open_file()
            try:
                self._size = self._trim_torn_tail(f)
                if self._size and not self._has_header(f):
                    f.close()
                    # the columns or the format changed: start a file of its own, the old
                    # one kept aside, also with keep: 0 (it may be no file of ours)
                    self._set_aside()
                    self.ctx.log.info(
                        "%s: %s starts anew",
                        "the columns changed" if self.csv else "it held no JSON Lines",
                        self.path,
                    )
                    existed = False
                    f = self._open_file()
                    self._size = 0
                if self._size == 0 and self._header:
                    f.write(self._header)
                    f.flush()
                    self._size = len(self._header)
                if self._recent is None and self._size > len(self._header):
                    self._recent = self._tail_ids(f, self._size)
            except OSError:
                f.close()
                raise
        except OSError as err:
            raise RetryableError(f"cannot open {self.path}: {err.strerror or err}") from err
        self._file = f
        self._started = self.ctx.clock.monotonic()
        if not existed and self.config.fsync:
            self._sync_directory(directory)

    def _open_file(self) -> IO[bytes]:
        """The file at `path`, opened to append and to read (so a torn last line can be
        found); it stays open across writes and _close closes it. A folder, a FIFO, a
        device or a socket there is a PermanentError naming it: each was retried for ever
        (a FIFO as "not seekable"), which no retry could fix. Opened O_NONBLOCK, so that a
        FIFO or a device there cannot hold this thread waiting for its other end; its kind
        is read from the open descriptor, so that a file replaced between a look and the
        open cannot slip through."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as err:
            if err.errno in (errno.EISDIR, errno.ENXIO):  # ENXIO: a socket, a device
                raise PermanentError(self._not_a_file(None)) from err
            raise
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise PermanentError(self._not_a_file(mode))
            os.set_blocking(fd, True)
            return os.fdopen(fd, "a+b")
        except BaseException:
            os.close(fd)
            raise

    def _not_a_file(self, mode: int | None) -> str:
        """One line: what is at `path` instead of a regular file, and what to do."""
        if mode is None:
            try:
                mode = os.stat(self.path).st_mode
            except OSError:
                mode = 0
        if stat.S_ISDIR(mode):
            name = f"{self.ctx.name}.{'csv' if self.csv else 'jsonl'}"
            return (
                f"{self.path} is a folder, not a file: set path to a file in it"
                f" (e.g. {os.path.join(self.path, name)})"
            )
        if stat.S_ISFIFO(mode):
            kind = "a FIFO (named pipe)"
        elif stat.S_ISSOCK(mode):
            kind = "a socket"
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = "a device"
        else:
            kind = "no regular file"
        return (
            f"{self.path} is {kind}: the sink appends to, trims and rotates a regular file;"
            " set path to one (or remove what is there)"
        )

    def _has_header(self, f: IO[bytes]) -> bool:
        """Whether the file starts as this sink writes it: the CSV header of its columns,
        or a JSON Lines line (a CSV file left by `format: csv` on the same path is not)."""
        if not self.csv:
            return _JSONL_ID.match(os.pread(f.fileno(), 64, 0)) is not None
        head = os.pread(f.fileno(), len(self._header), 0)
        return head == self._header

    def _tail_ids(self, f: IO[bytes], size: int) -> set[str]:
        """The ids of the last lines of the file: as many as one batch may hold, and at
        least TAIL_IDS (the batch sent again after a restart may have been written under a
        larger batch.max_rows than the sink now has, its first rows further back), within
        what a batch of batch.max_bytes can take up. Read back a chunk at a time, only the
        ids kept: reading the whole span at once held three copies of it (70 MB for one
        of 22 MB)."""
        rows = max(self.config.batch.max_rows, TAIL_IDS)
        # a batch holds at most max_bytes of content, and a line less than 3x its content
        # (base64, escapes) plus its head; read that much of the end at most
        floor = size - min(size, 3 * self.config.batch.max_bytes + rows * 1024)
        ids: set[str] = set()
        start, lines = size, 0
        carry: list[bytes] = []  # the start of the line the chunks read so far begin in
        fd = f.fileno()
        while start > floor and lines < rows:  # back from the end, a chunk a time
            step = min(_TAIL_CHUNK, start - floor)
            start -= step
            chunk = os.pread(fd, step, start)
            if b"\n" not in chunk:
                carry.append(chunk)  # inside one long line
                continue
            carry.append(chunk)
            parts = b"".join(reversed(carry)).split(b"\n")
            carry = [parts[0]]  # may be cut: the next chunk back has its start
            for line in reversed(parts[1:]):
                if line and lines < rows:
                    lines += 1
                    found = self._line_id(line)
                    if found:
                        ids.add(found)
        if start == 0 and carry and lines < rows:  # the file's first line, whole
            found = self._line_id(b"".join(reversed(carry)))
            if found:
                ids.add(found)
        return ids

    def _line_id(self, line: bytes) -> str | None:
        if not self.csv:
            match = _JSONL_ID.match(line)
            return match.group(1).decode() if match else None
        if self._id_column is None or line + b"\n" == self._header:
            return None
        try:
            cells = next(csv.reader([line.decode()]))
        except (UnicodeDecodeError, csv.Error, StopIteration):
            return None
        return cells[self._id_column] if self._id_column < len(cells) else None

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

    def _write(self, batch: list[FlowFile]) -> list[Rejected]:
        if self._file is None:
            self._open()
        recent = self._recent
        if recent is not None:
            # Each one, not only the batch's first ones: a FlowFile the batch's first try
            # refused (a dead letter, see _lines) is not in the file, the ones after it are.
            left = [ff for ff in batch if ff.id not in recent]
            if len(left) < len(batch):
                self.ctx.log.info(
                    "left out %d FlowFiles already at the end of %s (written before a restart)",
                    len(batch) - len(left),
                    self.path,
                )
                batch = left
            if batch:
                self._recent = None
            if not batch:
                return []
        refused: list[Rejected] = []
        if self.csv:
            data, refused = self._lines(batch)
        else:
            data = b"".join([self._line(ff) for ff in batch])
        if not data:
            return refused
        limit = self.config.rotate_bytes
        written = self._size > len(self._header)
        if (written and limit and self._size + len(data) > limit) or (
            written
            and self.config.rotate_interval
            and self.ctx.clock.monotonic() - self._started >= self.config.rotate_interval
        ):
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
        return refused

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
        self._shift_old_files()
        self._open()
        self.ctx.log.info("rotated %s (keeping %d old files)", self.path, self.config.keep)

    def _set_aside(self) -> None:
        """Move a file that is not this sink's own out of its way: rotated as usual, or
        with keep: 0 (no rotated file kept) to the first free <path>.N, over nothing."""
        if self.config.keep:
            self._shift_old_files()
            return
        try:
            os.replace(self.path, self._free_number(1))
        except OSError as err:
            raise RetryableError(f"cannot set {self.path} aside: {err.strerror or err}") from err

    def _shift_old_files(self, keep: int | None = None) -> None:
        keep = self.config.keep if keep is None else keep
        try:
            if keep == 0:
                os.remove(self.path)
            else:
                self._remove_beyond(keep)
                self._move_beyond(keep)
                for n in range(keep - 1, 0, -1):
                    older = f"{self.path}.{n}"
                    if os.path.exists(older):
                        os.replace(older, f"{self.path}.{n + 1}")
                os.replace(self.path, f"{self.path}.1")
        except OSError as err:
            raise RetryableError(f"cannot rotate {self.path}: {err.strerror or err}") from err

    def _remove_beyond(self, keep: int) -> None:
        """Remove the rotated files beyond `keep` left by a larger `keep` before (the
        oldest), and only those that start as this sink writes its files: a file set aside
        (not this sink's, moved to the first free <path>.N) and a file of the user's that
        happens to be numbered stay."""
        end = keep + 1
        while os.path.isfile(f"{self.path}.{end}"):
            end += 1
        for n in range(end - 1, keep, -1):
            old = f"{self.path}.{n}"
            if self._ours(old):
                os.remove(old)
                self.ctx.log.warning("removed %s: keep is %d now", old, keep)

    def _move_beyond(self, keep: int) -> None:
        """Before the shift replaces <path>.<keep> (the oldest kept file): a file there that
        is not this sink's (set aside, or the user's) goes to the first free <path>.N
        beyond `keep` instead, where no rotation replaces or removes it."""
        last = f"{self.path}.{keep}"
        if not os.path.lexists(last) or (os.path.isfile(last) and self._ours(last)):
            return
        free = self._free_number(keep + 1)
        os.replace(last, free)
        self.ctx.log.warning(
            "moved %s to %s: it is not a file this sink wrote, and rotation would replace it",
            last,
            free,
        )

    def _free_number(self, n: int) -> str:
        """The first <path>.N from `n` on that names nothing."""
        while os.path.lexists(f"{self.path}.{n}"):
            n += 1
        return f"{self.path}.{n}"

    def _ours(self, path: str) -> bool:
        """Whether the file at `path` starts as this sink writes its files."""
        try:
            # O_NONBLOCK: a FIFO put there since it was looked at must not hold the thread
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # unreadable: not known to be ours
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            with os.fdopen(fd, "rb", closefd=False) as f:
                return self._has_header(f)
        except OSError:
            return False
        finally:
            os.close(fd)

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
                    # Pretty-printed JSON: on one line. Compact JSON is copied as is.
                    text = _one_line(text)
                return f'{head}"payload":{text.strip()}}}\n'.encode()
            return f'{head}"payload_text":{_dumps(text)}}}\n'.encode()
        encoded = base64.b64encode(content).decode()
        return f'{head}"payload_base64":"{encoded}"}}\n'.encode()

    # -- CSV ----------------------------------------------------------------------------

    def _getter(self, source: str) -> Callable[[FlowFile, list[str], Any], Any]:
        if source == "id":
            return lambda ff, _levels, _value: ff.id
        if source == "topic":
            return lambda ff, _levels, _value: ff.topic
        if source == "ts":
            return lambda ff, _levels, _value: self._timestamp(ff.created)
        if source == "attributes":
            return lambda ff, _levels, _value: _dumps(ff.attributes)
        if source == "payload":
            return lambda ff, _levels, _value: _payload_text(ff.content)
        match = _LEVEL.match(source)
        if match:
            n = int(match.group(1))
            return lambda _ff, levels, _value: level(levels, n)
        if source.startswith("attributes."):
            key = source.removeprefix("attributes.")
            return lambda ff, _levels, _value: ff.attributes.get(key)
        path = tuple(source.removeprefix("field.").split("."))
        return lambda _ff, _levels, value: dig(value, path)

    def _lines(self, batch: list[FlowFile]) -> tuple[bytes, list[Rejected]]:
        """The CSV lines of `batch`, and the FlowFiles refused (see below)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        cells = self._cells
        for ff in batch:
            value = None
            if self._needs_json:
                try:
                    value = _parse(ff.content.decode(), loads_exact)
                except UnicodeDecodeError:
                    value = None
            levels = ff.topic.split("/") if self._needs_levels else []
            writer.writerow([_cell(get(ff, levels, value)) for get in cells])
        text = out.getvalue()
        try:
            return text.encode(), []
        except UnicodeEncodeError:
            pass
        # A lone surrogate (a topic, an attribute or a JSON field "\ud800") has no UTF-8:
        # that row goes to the dead letters (it raised out of write, the sink crashing on
        # the batch for ever); the rows are one line each (line breaks are escaped).
        rows: list[bytes] = []
        refused: list[Rejected] = []
        # (not splitlines: it breaks at U+2028, \x0c and others that a value keeps)
        for ff, line in zip(batch, text.split("\n")[:-1], strict=True):
            try:
                rows.append(line.encode() + b"\n")
            except UnicodeEncodeError:
                refused.append(
                    Rejected(ff, "file: a value is not valid Unicode text (a lone surrogate)")
                )
        return b"".join(rows), refused


_JSONL_ID = re.compile(rb'\{"id":"([^"\\]+)"')


def _payload_text(content: bytes) -> str:
    try:
        text = content.decode()
    except UnicodeDecodeError:
        return base64.b64encode(content).decode()
    value = _parse(text)
    if value is not _NOT_JSON and ("\n" in text or "\r" in text):
        return _one_line(text)  # pretty-printed JSON, on one line
    return text.strip() if value is not _NOT_JSON else text
