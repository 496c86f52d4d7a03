"""Handing partitions to a stream's workers (``tm_export.jobs``)."""

from __future__ import annotations

import anyio
import pytest

from tm_export.jobs import JobSource


def test_iterator_jobs_in_order() -> None:
    source: JobSource[int, int] = JobSource(iter([1, 2, 3]))
    jobs: list[int | None] = []

    async def main() -> None:
        for _ in range(4):
            jobs.append(await source.next())

    anyio.run(main)

    assert jobs == [1, 2, 3, None]


def test_one_value_feeds_idle_workers() -> None:
    """Two jobs from one value go to two waiting workers, not both to the reader."""
    send, receive = anyio.create_memory_object_stream[int](4)
    ends: list[str] = []
    source: JobSource[str, int] = JobSource(
        values=receive,
        expand=lambda value: [f"{value}a", f"{value}b"],
        on_end=lambda: ends.append("end"),
    )
    got: dict[str, list[str]] = {"first": [], "second": []}
    release = anyio.Event()

    async def worker(name: str) -> None:
        while (job := await source.next()) is not None:
            got[name].append(job)
            # Each worker keeps its job until released, so one worker cannot take both.
            await release.wait()

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(worker, "first")
            group.start_soon(worker, "second")
            await anyio.wait_all_tasks_blocked()
            await send.send(1)
            await anyio.wait_all_tasks_blocked()
            assert sorted(got.values()) == [["1a"], ["1b"]]
            release.set()
            send.close()
        receive.close()

    anyio.run(main)

    assert ends == ["end"]


def test_source_needs_jobs_or_values() -> None:
    with pytest.raises(
        ValueError, match="invalid job source: give either jobs or values, not both or neither"
    ):
        JobSource()


def test_drain_queues_buffered_values() -> None:
    """After the sender closes, drain expands every buffered value and ends at once."""
    send, receive = anyio.create_memory_object_stream[int](4)
    expanded: list[int] = []
    ends: list[int] = []

    def expand(value: int) -> list[int]:
        expanded.append(value)
        return [value]

    source: JobSource[int, int] = JobSource(
        values=receive, expand=expand, on_end=lambda: ends.append(len(expanded))
    )
    jobs: list[int | None] = []

    async def main() -> None:
        for value in (1, 2, 3):
            send.send_nowait(value)
        send.close()
        source.drain()
        assert ends == [3]
        for _ in range(4):
            jobs.append(await source.next())
        receive.close()

    anyio.run(main)

    assert jobs == [1, 2, 3, None]
    assert ends == [3]


def test_drain_after_receiver_closed() -> None:
    """A stream that stopped on a fatal error has closed its end. A parent that ends after
    it then finds nothing to queue, rather than an error."""
    send, receive = anyio.create_memory_object_stream[int](4)
    ends: list[int] = []
    source: JobSource[int, int] = JobSource(
        values=receive, expand=lambda value: [value], on_end=lambda: ends.append(1)
    )
    send.send_nowait(1)
    send.close()
    receive.close()

    source.drain()

    assert ends == []


def test_drain_waits_for_the_reader() -> None:
    """A worker that has received the last value when drain runs queues it before the end."""
    send, receive = anyio.create_memory_object_stream[int](4)
    ends: list[list[int]] = []
    expanded: list[int] = []

    def expand(value: int) -> list[int]:
        expanded.append(value)
        return [value]

    source: JobSource[int, int] = JobSource(
        values=receive, expand=expand, on_end=lambda: ends.append(list(expanded))
    )
    jobs: list[int | None] = []

    async def worker() -> None:
        while (job := await source.next()) is not None:
            jobs.append(job)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(worker)
            await anyio.wait_all_tasks_blocked()
            send.send_nowait(1)  # handed to the waiting worker, which has not run yet
            send.send_nowait(2)  # buffered
            send.close()
            source.drain()
            assert ends == []
        receive.close()

    anyio.run(main)

    # The drained value is queued first, and the worker's own value after it.
    assert jobs == [2, 1]
    assert ends == [[2, 1]]
