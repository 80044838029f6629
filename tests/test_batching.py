"""Dynamic batching: concurrent submissions share one call, per model, with a bounded queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from vision.errors import Overloaded
from vision.serving.batching import DynamicBatcher


def test_concurrent_requests_are_grouped_into_one_call_per_model() -> None:
    calls: list[tuple[str, list[int]]] = []
    gate = threading.Event()

    def run(key: str, items: Sequence[int]) -> list[int]:
        gate.wait(5)  # hold the first call so the rest queue up behind it
        calls.append((key, list(items)))
        return [i * 10 for i in items]

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch_size=8, max_delay_s=0.05, max_queue=64)
    first = batcher.submit("a", 0)
    time.sleep(0.1)  # the worker is now blocked in the first call
    futures = [batcher.submit("a" if i % 2 else "b", i) for i in range(1, 7)]
    gate.set()
    assert first.result(5).value == 0
    results = [f.result(5) for f in futures]
    assert [r.value for r in results] == [i * 10 for i in range(1, 7)]
    assert sorted(calls[1:]) == [("a", [1, 3, 5]), ("b", [2, 4, 6])]
    assert {r.batch_size for r in results} == {3}
    batcher.close(5)


def test_batches_never_exceed_the_max_size() -> None:
    sizes: list[int] = []

    def run(_: str, items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.01)
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch_size=4, max_delay_s=0.01, max_queue=100)
    futures = [batcher.submit("m", i) for i in range(40)]
    assert [f.result(5).value for f in futures] == list(range(40))
    assert max(sizes) <= 4 and sum(sizes) == 40
    batcher.close(5)


def test_a_full_queue_answers_overloaded_at_once() -> None:
    gate = threading.Event()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        lambda _k, items: (gate.wait(5), list(items))[1], max_batch_size=1, max_delay_s=0, max_queue=2
    )
    held = batcher.submit("m", 0)
    time.sleep(0.05)
    queued = [batcher.submit("m", 1), batcher.submit("m", 2)]
    start = time.perf_counter()
    with pytest.raises(Overloaded, match="queue is full"):
        batcher.submit("m", 3)
    assert time.perf_counter() - start < 0.1
    gate.set()
    assert [f.result(5).value for f in [held, *queued]] == [0, 1, 2]
    batcher.close(5)


def test_a_failing_batch_fails_its_callers_and_the_worker_carries_on() -> None:
    def run(_: str, items: Sequence[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad item")
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch_size=1, max_delay_s=0)
    with pytest.raises(ValueError, match="bad item"):
        batcher.submit("m", -1).result(5)
    assert batcher.submit("m", 7).result(5).value == 7
    batcher.close(5)


def test_cancelled_requests_are_skipped() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def run(_: str, items: Sequence[int]) -> list[int]:
        gate.wait(5)
        seen.extend(items)
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch_size=1, max_delay_s=0)
    first = batcher.submit("m", 1)
    time.sleep(0.05)
    abandoned = batcher.submit("m", 2)
    assert abandoned.cancel()
    gate.set()
    first.result(5)
    assert batcher.submit("m", 3).result(5).value == 3
    assert seen == [1, 3]
    batcher.close(5)
