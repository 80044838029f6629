"""Accuracy, per-class precision / recall / F1 / support and the confusion matrix from true and predicted
labels (numpy; the same numbers as scikit-learn's ``precision_recall_fscore_support(zero_division=0)`` and
``confusion_matrix``, which tests/test_cli_evaluate.py checks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


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


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n: int) -> np.ndarray:
    """(n, n) counts: row = true label, column = predicted."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def evaluate_predictions(
    y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str], loss: float
) -> Evaluation:
    """The `Evaluation` of predictions ``y_pred`` against ``y_true`` (label i is ``class_names[i]``)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    matrix = confusion(y_true, y_pred, len(class_names))
    hits = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _ratio(hits, matrix.sum(axis=0).astype(np.float64))
    recall = _ratio(hits, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    per_class = [
        ClassScores(name, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(class_names)
    ]
    return Evaluation(
        accuracy=float(hits.sum()) / max(len(y_true), 1),
        loss=loss,
        per_class=per_class,
        confusion=matrix.astype(int).tolist(),
    )


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
