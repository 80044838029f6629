"""The CLI's progress bar and epoch lines (on stderr), fed the same TrainEvents a job streams."""

from __future__ import annotations

import sys
from types import TracebackType

from tqdm import tqdm

from trainer_svc.training.events import TrainEvent


class ProgressBar:
    """One bar over every step of the run; a line per epoch with the validation results."""

    def __init__(self) -> None:
        self._bar: tqdm[None] | None = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()

    def __call__(self, event: TrainEvent) -> None:
        if event.kind == "message":
            tqdm.write(event.message, file=sys.stderr)
            return
        if self._bar is None:
            self._bar = tqdm(
                total=event.total_epochs * event.steps_per_epoch, unit="step", dynamic_ncols=True
            )
        self._bar.n = (event.epoch - 1) * event.steps_per_epoch + event.step
        self._bar.set_postfix(
            epoch=f"{event.epoch}/{event.total_epochs}",
            loss=f"{event.train_loss:.3f}",
            acc=f"{event.train_accuracy:.3f}",
            lr=f"{event.learning_rate:.2e}",
            img_s=f"{event.images_per_second:.0f}",
        )
        if event.kind == "epoch":
            note = f" | {event.message}" if event.message else ""
            tqdm.write(
                f"epoch {event.epoch}/{event.total_epochs}: train loss {event.train_loss:.4f} "
                f"acc {event.train_accuracy:.3f} | val loss {event.val_loss:.4f} acc {event.val_accuracy:.3f}"
                f" | {event.images_per_second:.0f} img/s{note}",
                file=sys.stderr,
            )
