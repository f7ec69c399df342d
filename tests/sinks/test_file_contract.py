"""The sink contract for the file sink: JSON Lines in a temp folder, at least once."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.schema import Problems, build_component
from gateway.core.component import Context
from gateway.sinks.file import FileSink

try:  # `tests` is not a package today; this also works if it becomes one.
    from tests.sinks.contract import SinkContract
except ImportError:
    from contract import SinkContract  # type: ignore[no-redef]


class TestFileContract(SinkContract):
    # A batch written again after a crash is appended again (documented in the sink).
    exactly_once = False

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "archive" / "telemetry.jsonl"

    @pytest.fixture
    def make_sink(self, tmp_path: Path, path: Path) -> Callable[[], Any]:
        async def make() -> FileSink:
            problems = Problems()
            raw = {"type": "file", "path": str(path)}
            config = build_component("sink", raw, ("sinks", "archive"), problems)
            assert not problems, problems.items
            sink = FileSink(config, Context(name="archive", kind="sink", data_dir=str(tmp_path)))
            await sink.connect()
            return sink

        return make

    @pytest.fixture
    def fetch_ids(self, path: Path) -> Callable[[], list[str]]:
        def fetch() -> list[str]:
            if not path.exists():
                return []
            return [json.loads(line)["id"] for line in path.read_text().splitlines()]

        return fetch

    @pytest.fixture
    def bad_flowfile(self) -> Callable[[], None]:
        return lambda: None  # a file takes any FlowFile

    @pytest.fixture
    def outage(self, path: Path) -> Callable[[], Any]:
        @contextlib.asynccontextmanager
        async def full() -> AsyncIterator[None]:
            with file_cannot_grow(path):
                yield

        return full


@contextlib.contextmanager
def file_cannot_grow(path: Path) -> Iterator[None]:
    """The file cannot grow, as on a full disk: writes fail with EFBIG instead of ENOSPC
    (SIGXFSZ ignored, or it would kill the process). The limit is the whole test
    process's, so it is lifted as soon as the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
