"""Fixtures of the source tests."""

from tests.sources.engine_run import run_engine

__all__ = ["run_engine"]
