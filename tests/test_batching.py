"""Dynamic batching: concurrent submissions share one call, per model, with a bounded queue.

No test orders threads with sleeps: `HeldModel` holds the worker inside a call until the test releases it,
so what is queued meanwhile is known exactly, and every assertion is about which items shared a call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from vision.errors import Overloaded
from vision.serving.batching import Batched, DynamicBatcher

pytestmark = pytest.mark.fast

HOLD = "hold"  # the key of the item that keeps the worker busy


def times_ten(items: Sequence[int]) -> list[int]:
    return [i * 10 for i in items]


class HeldModel:
    """A ``run_batch`` that records each call; a call for `HOLD` blocks until `release()`."""

    def __init__(
        self,
        fail_if: Callable[[Sequence[int]], bool] = lambda _items: False,
        answer: Callable[[Sequence[int]], list[int]] | None = None,
    ) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.busy = threading.Event()
        self._released = threading.Event()
        self._fail_if = fail_if
        self._answer = answer or times_ten

    def __call__(self, key: str, items: Sequence[int]) -> list[int]:
        self.calls.append((key, list(items)))
        if key == HOLD:
            self.busy.set()
            assert self._released.wait(10), "the test never released the worker"
        if self._fail_if(items):
            raise ValueError(f"bad items {list(items)}")
        return times_ten(items) if key == HOLD else self._answer(items)

    def hold(self, batcher: DynamicBatcher[int, int]) -> None:
        """Occupy the worker: when this returns, it is inside a call and takes nothing from the queue."""
        self.held = batcher.submit(HOLD, -100)
        assert self.busy.wait(5), "the worker never started the first call"

    def release(self) -> None:
        self._released.set()
        assert self.held.result(5).value == -1000

    @property
    def batches(self) -> list[tuple[str, list[int]]]:
        """The calls after the holding one."""
        return [call for call in self.calls if call[0] != HOLD]


def test_concurrent_requests_are_grouped_into_one_call_per_model() -> None:
    model = HeldModel()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(model, max_batch_size=8, max_delay_s=0, max_queue=64)
    model.hold(batcher)
    futures = [batcher.submit("a" if i % 2 else "b", i) for i in range(1, 7)]
    model.release()
    results = [f.result(5) for f in futures]
    assert [r.value for r in results] == [i * 10 for i in range(1, 7)]
    assert model.batches == [("a", [1, 3, 5]), ("b", [2, 4, 6])]
    assert [r.batch_size for r in results] == [3] * 6
    batcher.close(5)


def test_submissions_from_many_threads_share_calls() -> None:
    model = HeldModel()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(model, max_batch_size=64, max_delay_s=0, max_queue=64)
    model.hold(batcher)
    start = threading.Barrier(16)
    futures: dict[int, Future[Batched[int]]] = {}

    def client(i: int) -> None:
        start.wait(5)
        futures[i] = batcher.submit("m", i)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    model.release()
    assert {i: f.result(5).value for i, f in futures.items()} == {i: i * 10 for i in range(16)}
    assert len(model.batches) == 1 and sorted(model.batches[0][1]) == list(range(16))
    batcher.close(5)


def test_batches_never_exceed_the_max_size() -> None:
    model = HeldModel()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(model, max_batch_size=4, max_delay_s=0, max_queue=100)
    model.hold(batcher)
    futures = [batcher.submit("m", i) for i in range(38)]
    model.release()
    assert [f.result(5).value for f in futures] == [i * 10 for i in range(38)]
    assert [items for _, items in model.batches] == [list(range(i, min(i + 4, 38))) for i in range(0, 38, 4)]
    assert [f.result().batch_size for f in futures[-2:]] == [2, 2]
    batcher.close(5)


def test_a_full_batch_runs_without_waiting_out_the_delay() -> None:
    # With a minute to fill a batch of 3, the third item completes it and the call runs at once.
    model = HeldModel()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(model, max_batch_size=3, max_delay_s=60, max_queue=8)
    futures = [batcher.submit("m", i) for i in range(3)]
    assert [f.result(10).value for f in futures] == [0, 10, 20]
    assert model.calls == [("m", [0, 1, 2])]
    batcher.close(5)


def test_a_full_queue_answers_overloaded_at_once() -> None:
    model = HeldModel()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(model, max_batch_size=1, max_delay_s=0, max_queue=2)
    model.hold(batcher)
    queued = [batcher.submit("m", 1), batcher.submit("m", 2)]
    assert batcher.queued == 2
    # Were submit to wait for room, it would get it only once the worker is released (never, here).
    with pytest.raises(Overloaded, match=r"queue is full \(2 waiting\)"):
        batcher.submit("m", 3)
    model.release()
    assert [f.result(5).value for f in queued] == [10, 20]
    assert batcher.submit("m", 4).result(5).value == 40  # room again once the queue drains
    batcher.close(5)


def test_a_failing_batch_fails_every_caller_in_it_and_the_worker_carries_on() -> None:
    model = HeldModel(fail_if=lambda items: -1 in items)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(model, max_batch_size=8, max_delay_s=0)
    model.hold(batcher)
    same_call = [batcher.submit("m", i) for i in (1, -1, 2)]
    other_model = batcher.submit("n", 3)
    model.release()
    for future in same_call:
        with pytest.raises(ValueError, match=r"bad items \[1, -1, 2\]"):
            future.result(5)
    assert other_model.result(5).value == 30  # another model's call in the same round is unaffected
    assert batcher.submit("m", 7).result(5).value == 70
    batcher.close(5)


def test_a_wrong_number_of_results_fails_every_caller_of_that_call() -> None:
    model = HeldModel(answer=lambda items: [0])
    batcher: DynamicBatcher[int, int] = DynamicBatcher(model, max_batch_size=8, max_delay_s=0)
    model.hold(batcher)
    futures = [batcher.submit("m", i) for i in (1, 2)]
    model.release()
    for future in futures:
        with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
            future.result(5)
    batcher.close(5)


def test_cancelled_requests_are_skipped() -> None:
    model = HeldModel()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(model, max_batch_size=8, max_delay_s=0)
    model.hold(batcher)
    abandoned = batcher.submit("m", 1)
    assert abandoned.cancel()
    with pytest.raises(FutureTimeout):  # run() gives up waiting and withdraws its item
        batcher.run("m", 2, timeout=0.01)
    kept = batcher.submit("m", 3)
    model.release()
    assert kept.result(5).value == 30
    assert model.batches == [("m", [3])]
    batcher.close(5)


def test_close_finishes_what_is_queued_then_refuses_new_work() -> None:
    model = HeldModel()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(model, max_batch_size=2, max_delay_s=0, max_queue=8)
    model.hold(batcher)
    queued = [batcher.submit("m", i) for i in range(5)]
    closer = threading.Thread(target=batcher.close, args=(10,))
    closer.start()
    deadline = time.monotonic() + 5
    while batcher.queued < 6 and time.monotonic() < deadline:  # the 5 items and the stop marker
        time.sleep(0.001)
    assert batcher.queued == 6
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.submit("m", 99)
    model.release()
    closer.join(10)
    assert not closer.is_alive()
    assert all(f.done() for f in queued)  # close() returned only after every queued item was answered
    assert [f.result().value for f in queued] == [0, 10, 20, 30, 40]
    assert [items for _, items in model.batches] == [[0, 1], [2, 3], [4]]
