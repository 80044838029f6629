"""The confusion-matrix PNG (matplotlib, Agg backend: no display needed). matplotlib is imported when a
chart is drawn: it comes with the trainer's and explain's extras, not with the shared package."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from vision.errors import VisionError


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise VisionError("drawing the charts needs matplotlib: pip install 'vision-mesh[trainer]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "Confusion matrix (validation)"
) -> bytes:
    """Rows: true class, columns: predicted. Counts are written in the cells up to 30 classes."""
    plt = pyplot()
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
    axes.set_title(title)
    return png(figure)
