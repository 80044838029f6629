"""The results of a run: accuracy, per-class precision / recall / F1 (scikit-learn), the confusion matrix,
and the two PNGs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


@dataclass
class ClassScores:
    class_name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Evaluation:
    """Validation results. ``confusion[i][j]``: images of true class i predicted as class j."""

    accuracy: float
    loss: float
    per_class: list[ClassScores]
    confusion: list[list[int]]
    best_epoch: int = 0
    epochs_run: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        return cls(
            accuracy=float(data["accuracy"]),
            loss=float(data["loss"]),
            per_class=[ClassScores(**c) for c in data["per_class"]],
            confusion=[[int(v) for v in row] for row in data["confusion"]],
            best_epoch=int(data.get("best_epoch", 0)),
            epochs_run=int(data.get("epochs_run", 0)),
            history=list(data.get("history", [])),
        )

    def summary_metrics(self) -> dict[str, float]:
        """Flat numbers for the model's metadata (shown by GET /models)."""
        n = max(len(self.per_class), 1)
        return {
            "val_accuracy": self.accuracy,
            "val_loss": self.loss,
            "macro_precision": sum(c.precision for c in self.per_class) / n,
            "macro_recall": sum(c.recall for c in self.per_class) / n,
            "macro_f1": sum(c.f1 for c in self.per_class) / n,
            "best_epoch": float(self.best_epoch),
            "epochs_run": float(self.epochs_run),
        }


def evaluate_predictions(
    y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str], loss: float
) -> Evaluation:
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    correct = sum(int(t == p) for t, p in zip(y_true, y_pred, strict=True))
    per_class = [
        ClassScores(name, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(class_names)
    ]
    return Evaluation(
        accuracy=correct / max(len(y_true), 1),
        loss=loss,
        per_class=per_class,
        confusion=matrix.astype(int).tolist(),
    )


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def confusion_matrix_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> bytes:
    """Rows: true class, columns: predicted. Counts are written in the cells up to 30 classes."""
    data = np.asarray(matrix)
    n = len(class_names)
    side = min(max(4.0, 0.45 * n + 2), 30.0)
    figure, axes = plt.subplots(figsize=(side, side))
    image = axes.imshow(data, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    if n <= 50:
        axes.set_xticks(range(n), labels=list(class_names), rotation=90)
        axes.set_yticks(range(n), labels=list(class_names))
    if n <= 30:
        threshold = data.max() / 2 if data.size else 0
        for i in range(n):
            for j in range(n):
                colour = "white" if data[i, j] > threshold else "black"
                axes.text(j, i, str(data[i, j]), ha="center", va="center", color=colour, fontsize=8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title("Confusion matrix (validation)")
    return _png(figure)


def training_curves_png(history: Sequence[dict[str, float]]) -> bytes:
    """Loss and accuracy per epoch, train and validation."""
    epochs = [int(h["epoch"]) for h in history]
    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(10, 4))
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
    return _png(figure)


def metrics_table(evaluation: Evaluation) -> str:
    """The per-class table the CLI prints (like sklearn's classification_report)."""
    width = max([len(c.class_name) for c in evaluation.per_class] + [12])
    lines = [f"{'class':<{width}}  precision  recall      f1  support"]
    for c in evaluation.per_class:
        lines.append(
            f"{c.class_name:<{width}}  {c.precision:9.3f}  {c.recall:6.3f}  {c.f1:6.3f}  {c.support:7d}"
        )
    total = sum(c.support for c in evaluation.per_class)
    summary = evaluation.summary_metrics()
    lines.append(
        f"{'macro avg':<{width}}  {summary['macro_precision']:9.3f}  {summary['macro_recall']:6.3f}  "
        f"{summary['macro_f1']:6.3f}  {total:7d}"
    )
    lines.append(f"{'accuracy':<{width}}  {evaluation.accuracy:9.3f}")
    return "\n".join(lines)
