"""Many calls with bounded concurrency, for a folder of images: at most ``limit`` in flight, results in
completion order, each image's failure kept with it (`Outcome`) while the others go on. Sources are taken
from the iterable only as slots free up, so a long generator of paths is never read ahead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from vision.client.errors import ServiceError
from vision.client.results import Outcome

S = TypeVar("S")
# What becomes an Outcome's error: a call that failed, or a file that could not be read. Anything else is a
# bug and propagates.
ITEM_ERRORS = (ServiceError, OSError)


def _outcome(source: Any, error: BaseException | None, result: Callable[[], Any]) -> Outcome:
    if error is None:
        return Outcome(source, result())
    if isinstance(error, ITEM_ERRORS):
        return Outcome(source, error=error)
    raise error


def thread_map(call: Callable[[S], Any], sources: Iterable[S], limit: int) -> Iterator[Outcome]:
    """``call(source)`` for each source on ``limit`` threads (for a thread-safe client)."""
    remaining = iter(sources)
    with ThreadPoolExecutor(limit, thread_name_prefix="vision-client") as pool:
        pending: dict[Future[Any], S] = {}
        while True:
            for source in remaining:
                pending[pool.submit(call, source)] = source
                if len(pending) >= limit:
                    break
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield _outcome(pending.pop(future), future.exception(), future.result)


async def task_map(
    call: Callable[[S], Awaitable[Any]], sources: Iterable[S], limit: int
) -> AsyncIterator[Outcome]:
    """``await call(source)`` for each source, ``limit`` tasks at a time; a caller that stops early
    cancels the calls still in flight."""
    remaining = iter(sources)
    pending: dict[asyncio.Future[Any], S] = {}
    try:
        while True:
            for source in remaining:
                pending[asyncio.ensure_future(call(source))] = source
                if len(pending) >= limit:
                    break
            if not pending:
                return
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield _outcome(pending.pop(task), task.exception(), task.result)
    finally:
        for task in pending:
            task.cancel()
