"""The one runner behind `vision classify`, `detect` and `explain`: each image's call on a pool of threads,
at most ``concurrency`` in flight (so the service batches them), results written in completion order.

Ctrl-C (SIGINT) stops submitting, lets the calls in flight finish (each has its deadline), writes them,
fsyncs the file and returns ``interrupted``; the command then exits 130, and the same command resumes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from vision.batch.progress import Progress
from vision.batch.results import ResultsFile
from vision.errors import VisionError

Call = Callable[[Path], dict[str, Any]]


@dataclass(frozen=True)
class Summary:
    """What a run did: ``total`` inputs, ``skipped`` (done by an earlier run), ``done`` now, ``errors``
    among them, ``seconds`` of wall time, and whether Ctrl-C (or ``stop``) ended it early."""

    total: int
    skipped: int
    done: int
    errors: int
    seconds: float
    interrupted: bool

    @property
    def images_per_second(self) -> float:
        return self.done / max(self.seconds, 1e-9)


def error_text(exc: BaseException) -> str:
    """One line saying why an image has no result."""
    if isinstance(exc, OSError):
        return f"cannot read the file: {exc.strerror or type(exc).__name__}"
    message = exc.message if isinstance(exc, VisionError) else str(exc)
    return " ".join(message.split())


def _guarded(call: Call, path: Path) -> dict[str, Any]:
    """``call(path)``; a file that cannot be read or an image the service refuses becomes an error record."""
    try:
        return call(path)
    except (OSError, VisionError) as exc:
        return {"path": str(path), "error": error_text(exc)}


class _StopFlag:
    """Set by SIGINT (while the run is on, in the main thread) or by the caller's ``stop`` event."""

    def __init__(self, stop: threading.Event | None) -> None:
        self.event = stop or threading.Event()
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run(
    paths: Sequence[Path],
    call: Call,
    results: ResultsFile,
    *,
    concurrency: int,
    progress: bool = True,
    stop: threading.Event | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> Summary:
    """``call`` each of ``paths`` not already in ``results``; write each record as it comes (``on_record``
    sees it first). Returns the `Summary`; ``results`` is closed (fsynced) when it returns."""
    start = time.monotonic()
    with results:
        todo = [p for p in paths if str(p) not in results.done]
        bar = Progress(len(todo), len(paths) - len(todo), progress)
        pending: set[Future[dict[str, Any]]] = set()
        remaining = iter(todo)
        with (
            _StopFlag(stop) as flag,
            ThreadPoolExecutor(concurrency, thread_name_prefix="vision-batch") as pool,
        ):
            try:
                while True:
                    while not flag.event.is_set() and len(pending) < concurrency:
                        path = next(remaining, None)
                        if path is None:
                            break
                        pending.add(pool.submit(_guarded, call, path))
                    if not pending:
                        break
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in done:
                        record = future.result()
                        if on_record is not None:
                            on_record(record)
                        results.write(record)
                        bar.update("error" in record)
            finally:
                bar.close()
        interrupted = flag.event.is_set() and bar.count < len(todo)
    return Summary(
        len(paths), len(paths) - len(todo), bar.count, bar.errors, time.monotonic() - start, interrupted
    )
