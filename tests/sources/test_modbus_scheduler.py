"""The Modbus source's scheduling pieces as pure logic: groups' due times, device backoff,
and the jobs the source runs in its TaskGroup."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest

from gateway.config.schema import Problems, build_dataclass
from gateway.sources.modbus import ModbusSourceConfig
from gateway.sources.modbus.device import Device
from gateway.sources.modbus.scheduler import NEVER, Group, Jobs, next_due

pytestmark = pytest.mark.unit


def device(**raw: Any) -> Device:
    problems = Problems()
    config = build_dataclass(
        ModbusSourceConfig,
        {"type": "modbus", "url": "tcp://127.0.0.1:5020", "registers": {"x": {"address": 0}}} | raw,
        (),
        problems,
    )
    assert not problems, problems.items
    ((name, dev),) = config.device_configs("plc").items()
    return Device(name, dev, config)


def test_a_group_keeps_its_grid_and_skips_missed_polls() -> None:
    group = Group(device(), 1.0, [])
    group.due = 10.0
    group.start(10.0)
    assert group.due == 11.0
    group.start(11.3)  # a little late: the grid holds
    assert group.due == 12.0
    group.start(15.5)  # whole intervals missed: re-anchored, not run back to back
    assert group.due == 16.5


def test_next_due_waits_for_an_offline_device() -> None:
    dev = device()
    group = Group(dev, 1.0, [])
    group.due = 5.0
    assert next_due([]) == NEVER
    assert next_due([group]) == 5.0
    dev.retry_at = 8.0
    assert next_due([group]) == 8.0


def test_an_offline_device_is_retried_on_its_interval_doubling_up_to_backoff_max() -> None:
    dev = device(interval="500ms", backoff_max="5s")
    assert [dev.backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    slow = device(interval="60s")  # backoff_max (30 s) below the interval still caps it
    assert slow.backoff.next() == 30.0
    fast = device(registers={"x": {"address": 0}, "y": {"address": 1, "interval": "100ms"}})
    assert fast.backoff.next() == 0.1  # the device's shortest interval


async def test_stop_cancels_the_jobs_and_waits_for_them() -> None:
    ended = asyncio.Event()
    jobs = Jobs(ended.set)
    await jobs.start()
    job = jobs.spawn(asyncio.sleep(3600))
    await asyncio.sleep(0)
    assert not job.done()
    await jobs.stop()
    assert job.done() and job.task is not None and job.task.cancelled()
    with pytest.raises(asyncio.CancelledError):
        job.result()
    with pytest.raises(RuntimeError, match="between connect"):
        jobs.spawn(asyncio.sleep(0))
    await jobs.stop()  # twice is fine


async def test_a_job_stopped_before_it_began_is_closed_quietly() -> None:
    jobs = Jobs(lambda: None)
    await jobs.start()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        job = jobs.spawn(asyncio.sleep(0))  # read() spawns, returns, and close() follows
        await jobs.stop()
        del job
        gc.collect()
    assert [w for w in seen if "never awaited" in str(w.message)] == []


async def test_a_failing_job_keeps_its_error_and_cancels_nobody() -> None:
    ended = asyncio.Event()
    jobs = Jobs(ended.set)
    await jobs.start()
    sibling = jobs.spawn(asyncio.sleep(3600))

    async def fail() -> list[int]:
        raise ValueError("a bug in a poll")

    job = jobs.spawn(fail())
    await asyncio.wait_for(ended.wait(), 5)
    await asyncio.sleep(0.01)  # the task that entered the group is still running
    assert job.done() and not sibling.done()
    with pytest.raises(ValueError, match="a bug in a poll"):
        job.result()
    await jobs.stop()
    assert sibling.done()


async def test_jobs_started_in_one_task_are_stopped_from_another() -> None:
    # the engine connects a source in its runner's task and closes it from its own
    jobs = Jobs(lambda: None)
    holder: list[Any] = []

    async def connect_and_read() -> None:
        await jobs.start()
        holder.append(jobs.spawn(asyncio.sleep(3600)))

    await asyncio.create_task(connect_and_read())
    await jobs.stop()
    assert holder[0].done()


async def test_the_source_holds_no_task_after_close() -> None:
    from gateway.core.component import Context
    from gateway.sources.modbus import ModbusSource

    problems = Problems()
    config = build_dataclass(
        ModbusSourceConfig,
        # nothing listens there: the device goes offline, its port is retried
        {"type": "modbus", "url": "tcp://127.0.0.1:9", "timeout": "50ms", "interval": "10ms",
         "registers": {"x": {"address": 0}}},
        (),
        problems,
    )  # fmt: skip
    source = ModbusSource(config, Context(name="plc", kind="source"))
    before = asyncio.all_tasks()
    await source.connect()
    reader = asyncio.ensure_future(source.read())
    await asyncio.sleep(0.2)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await source.close()
    assert asyncio.all_tasks() - before == set()
    assert source.status()["devices"]["plc"]["state"] == "offline"
