"""What each batch command asks for one image and writes as its record, and the Python entry points
(`classify_paths`, `detect_paths`, `explain_paths`): the commands are these functions with arguments parsed.

Records (one JSON object per line; the CSV columns are the same keys, lists as JSON):
  classify: path, model, version, classes [{id, label, score}] (highest first)
  detect:   path, model, version, image_width, image_height, boxes [{x1, y1, x2, y2, class_id, class_name,
            confidence}] (original-image pixels), annotated (PNG file name in --annotated DIR, or "")
  explain:  path, model, version, method, layer, prediction, target {id, label, score}, top_k, overlay and
            heatmap (file names next to the index: the overlay .jpg, or .png with --overlay-format png;
            the heatmap .png)
and any record: error (why this image has no result) instead of the results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from vision.batch.inputs import expand
from vision.batch.results import ResultsFile
from vision.batch.runner import Summary, run
from vision.client.results import Classification, Detection, Explanation, ScoredClass

CLASSIFY_COLUMNS = ("path", "model", "version", "label", "score", "classes", "error")
DETECT_COLUMNS = ("path", "model", "version", "image_width", "image_height", "boxes", "annotated", "error")
EXPLAIN_COLUMNS = (
    "path", "model", "version", "method", "layer", "prediction", "target", "top_k", "overlay", "heatmap",
    "error",
)  # fmt: skip
EXPLAIN_INDEX = "index.jsonl"


class Classifier(Protocol):
    """A `VisionClient`, or a `LocalClassifier` (``--local``)."""

    def classify(self, image: Path, *, top_k: int = ...) -> Classification: ...


def _scored(c: ScoredClass) -> dict[str, Any]:
    return {"id": c.id, "label": c.label, "score": c.score}


def png_name(path: Path, suffix: str, extension: str = "png") -> str:
    """``<stem>.<8 hex of the path>.<suffix>.<extension>``: unique per input, whatever folder it came
    from."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"{path.stem}.{digest}.{suffix}.{extension}"


def classification_record(path: Path, result: Classification) -> dict[str, Any]:
    return {
        "path": str(path), "model": result.model.name, "version": result.model.version,
        "label": result.top.label, "score": result.top.score, "classes": [_scored(c) for c in result.classes],
    }  # fmt: skip


def detection_record(path: Path, result: Detection, annotated: Path | None) -> dict[str, Any]:
    name = ""
    if annotated is not None and result.annotated_png:
        name = png_name(path, "boxes")
        (annotated / name).write_bytes(result.annotated_png)
    return {
        "path": str(path), "model": result.model.name, "version": result.model.version,
        "image_width": result.image_width, "image_height": result.image_height,
        "boxes": [asdict(b) for b in result.boxes], "annotated": name,
    }  # fmt: skip


def explanation_record(path: Path, result: Explanation, out: Path) -> dict[str, Any]:
    extension = "jpg" if result.overlay_format == "jpeg" else result.overlay_format
    overlay, heatmap = png_name(path, "overlay", extension), png_name(path, "heatmap")
    (out / overlay).write_bytes(result.overlay)
    (out / heatmap).write_bytes(result.heatmap_png)
    return {
        "path": str(path), "model": result.model.name, "version": result.model.version,
        "method": result.method, "layer": result.layer, "prediction": _scored(result.prediction),
        "target": _scored(result.target), "top_k": [_scored(c) for c in result.top_k],
        "overlay": overlay, "heatmap": heatmap,
    }  # fmt: skip


def _run(
    inputs: Iterable[str | Path],
    output: Path,
    columns: tuple[str, ...],
    call: Callable[[Path], dict[str, Any]],
    concurrency: int,
    progress: bool,
) -> Summary:
    paths = expand(str(i) for i in inputs)
    return run(paths, call, ResultsFile(output, columns), concurrency=concurrency, progress=progress)


def classify_paths(
    classifier: Classifier,
    inputs: Iterable[str | Path],
    output: Path,
    *,
    top_k: int = 0,
    concurrency: int = 8,
    progress: bool = False,
    **options: Any,
) -> Summary:
    """Classify every image ``inputs`` name (files, folders, globs) into ``output`` (.jsonl or .csv),
    skipping those an earlier run finished. ``options``: model, version (as `VisionClient.classify`)."""

    def call(path: Path) -> dict[str, Any]:
        return classification_record(path, classifier.classify(path, top_k=top_k, **options))

    return _run(inputs, output, CLASSIFY_COLUMNS, call, concurrency, progress)


def detect_paths(
    client: Any,
    inputs: Iterable[str | Path],
    output: Path,
    *,
    annotated: Path | None = None,
    concurrency: int = 8,
    progress: bool = False,
    **options: Any,
) -> Summary:
    """Detect objects in every image into ``output``; with ``annotated``, the boxes drawn on each image are
    saved there too. ``options`` as `VisionClient.detect` (model, version, conf, iou, classes, ...)."""
    if annotated is not None:
        annotated.mkdir(parents=True, exist_ok=True)

    def call(path: Path) -> dict[str, Any]:
        result = client.detect(path, annotate=annotated is not None, **options)
        return detection_record(path, result, annotated)

    return _run(inputs, output, DETECT_COLUMNS, call, concurrency, progress)


def explain_paths(
    client: Any,
    inputs: Iterable[str | Path],
    out: Path,
    *,
    concurrency: int = 8,
    progress: bool = False,
    **options: Any,
) -> Summary:
    """A class activation map for every image: ``out/<name>.overlay.jpg`` (or .png) and ``.heatmap.png``,
    indexed by ``out/index.jsonl``. ``options`` as `VisionClient.explain` (model, version, method, ...)."""
    out.mkdir(parents=True, exist_ok=True)

    def call(path: Path) -> dict[str, Any]:
        return explanation_record(path, client.explain(path, **options), out)

    return _run(inputs, out / EXPLAIN_INDEX, EXPLAIN_COLUMNS, call, concurrency, progress)
