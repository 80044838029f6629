"""What a training run reports while it runs (`TrainEvent`), and the clock behind its ETA estimates.

The same events feed a job's event stream (through the worker's pipe) and the CLI's progress bar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TrainEvent:
    """``kind``: "progress" (within an epoch), "epoch" (after validation) or "message" (a note).
    Losses are mean cross-entropy; accuracies in [0, 1]; ``epoch`` counts from 1."""

    kind: str
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    train_loss: float = 0.0
    train_accuracy: float = 0.0
    val_loss: float = 0.0
    val_accuracy: float = 0.0
    learning_rate: float = 0.0
    images_per_second: float = 0.0
    eta_seconds: float = 0.0
    message: str = ""


Report = Callable[[TrainEvent], None]


@dataclass
class Clock:
    """Throughput and ETA bookkeeping across the run."""

    epochs: int
    steps_per_epoch: int
    epoch_seconds: list[float] = field(default_factory=list)

    def eta(self, epoch: int, step: int, step_seconds: float) -> float:
        """Seconds left when ``step`` of ``epoch`` took ``step_seconds`` each."""
        per_epoch = (
            (sum(self.epoch_seconds) / len(self.epoch_seconds))
            if self.epoch_seconds
            else (step_seconds * self.steps_per_epoch)
        )
        return max(0.0, (self.steps_per_epoch - step) * step_seconds + (self.epochs - epoch) * per_epoch)

    def remaining_after(self, epoch: int) -> float:
        """Seconds left after ``epoch`` completed, at the mean epoch time so far."""
        if not self.epoch_seconds:
            return 0.0
        return (self.epochs - epoch) * sum(self.epoch_seconds) / len(self.epoch_seconds)
