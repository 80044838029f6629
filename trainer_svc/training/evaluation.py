"""The results of a run: accuracy, per-class precision / recall / F1, the confusion matrix and the two PNGs.

The metrics and the confusion-matrix chart are `vision.evaluation`'s (one implementation, shared with
`vision evaluate`); the training curves are the trainer's own (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence

from vision.evaluation.charts import confusion_matrix_png, png, pyplot
from vision.evaluation.metrics import ClassScores, Evaluation, evaluate_predictions, metrics_table

__all__ = [
    "ClassScores", "Evaluation", "confusion_matrix_png", "evaluate_predictions", "metrics_table",
    "training_curves_png",
]  # fmt: skip


def training_curves_png(history: Sequence[dict[str, float]]) -> bytes:
    """Loss and accuracy per epoch, train and validation."""
    epochs = [int(h["epoch"]) for h in history]
    figure, (loss_axes, acc_axes) = pyplot().subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    loss_axes.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    loss_axes.legend()
    acc_axes.plot(epochs, [h["train_accuracy"] for h in history], marker="o", label="train")
    acc_axes.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="validation")
    acc_axes.set_xlabel("epoch")
    acc_axes.set_ylabel("accuracy")
    acc_axes.set_ylim(0, 1)
    acc_axes.legend()
    figure.suptitle("Training curves")
    return png(figure)
