"""`vision evaluate DIR`: a classifier measured on an ImageFolder (``DIR/<class>/*``, searched recursively,
as the trainer reads one). Folders are matched to the model's class names by name; a folder no class is
called after is reported (its images are not scored), as is a class with no folder. A file that cannot be
read or decoded is listed with the reason and left out of the scores."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vision.errors import InvalidArgument, VisionError
from vision.evaluation.charts import confusion_matrix_png
from vision.evaluation.metrics import Evaluation, evaluate_predictions, metrics_table

REPORT_FILE = "report.json"
CONFUSION_FILE = "confusion_matrix.png"
MISCLASSIFIED_FILE = "misclassified.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")  # the trainer's (trainer_svc.training.data)
TOP_K = 5


@dataclass(frozen=True)
class Misclassified:
    path: str
    true: str
    predicted: str
    score: float  # the predicted class's probability


@dataclass(frozen=True)
class Unreadable:
    path: str
    error: str


@dataclass(frozen=True)
class FolderReport:
    """What `vision evaluate` prints and writes. ``top5`` is top-min(5, classes) accuracy."""

    model: str
    version: str
    folder: str
    images: int
    top1: float
    top5: float
    evaluation: Evaluation
    misclassified: tuple[Misclassified, ...]
    unreadable: tuple[Unreadable, ...]
    unknown_folders: dict[str, int]  # folder name -> images in it, not scored
    classes_without_folder: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["evaluation"] = {
            k: v for k, v in self.evaluation.to_dict().items() if k in ("per_class", "confusion")
        }
        data["class_names"] = [c.class_name for c in self.evaluation.per_class]
        return data

    def text(self) -> str:
        """The summary `vision evaluate` prints."""
        lines = [
            f"{self.model} version {self.version} on {self.folder}: {self.images} images",
            f"top-1 accuracy {self.top1:.4f}   top-5 accuracy {self.top5:.4f}",
            "",
            metrics_table(self.evaluation),
        ]
        if self.unknown_folders:
            found = ", ".join(f"{k} ({n} images)" for k, n in sorted(self.unknown_folders.items()))
            lines.append(f"\nnot scored: folders the model has no class for: {found}")
        if self.classes_without_folder:
            lines.append(f"classes with no folder: {', '.join(self.classes_without_folder)}")
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} files could not be read or decoded (see {REPORT_FILE})")
        return "\n".join(lines)

    def write(self, out: Path) -> list[Path]:
        """``out/report.json``, ``out/confusion_matrix.png``, ``out/misclassified.csv``."""
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_FILE).write_text(json.dumps(self.to_dict(), indent=1))
        names = [c.class_name for c in self.evaluation.per_class]
        title = f"Confusion matrix: {self.model} v{self.version} on {Path(self.folder).name}"
        (out / CONFUSION_FILE).write_bytes(confusion_matrix_png(self.evaluation.confusion, names, title))
        with (out / MISCLASSIFIED_FILE).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "true", "predicted", "score"])
            writer.writerows([m.path, m.true, m.predicted, m.score] for m in self.misclassified)
        return [out / REPORT_FILE, out / CONFUSION_FILE, out / MISCLASSIFIED_FILE]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_files(root: Path) -> list[Path]:
    """Every image in a class folder of ``root``, whatever the folder's name; `InvalidArgument` if none."""
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory of class folders (DIR/<class>/<image>)")
    found = [
        f for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".") for f in _files(d)
    ]
    if not found:
        raise InvalidArgument(f"{root} holds no images in class folders (DIR/<class>/<image>)")
    return found


def labelled_files(root: Path, class_names: Sequence[str]) -> tuple[list[tuple[Path, int]], dict[str, int]]:
    """((file, label) of every image in a folder named after a class, {unknown folder: its image count})."""
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory of class folders (DIR/<class>/<image>)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    index = {name: i for i, name in enumerate(class_names)}
    samples = [(f, index[d.name]) for d in folders if d.name in index for f in _files(d)]
    unknown = {d.name: len(_files(d)) for d in folders if d.name not in index}
    if not samples:
        raise InvalidArgument(
            f"{root} has no images in folders named after the model's classes ({', '.join(class_names[:10])}"
            f"{', ...' if len(class_names) > 10 else ''}); folders found: {', '.join(unknown) or 'none'}"
        )
    return samples, unknown


Classify = Callable[[Path, int], Any]  # (path, k) -> a Classification: its top k, highest first


def evaluate_folder(
    root: Path,
    classify: Classify,
    class_names: Sequence[str],
    *,
    model: str,
    version: str,
    concurrency: int = 8,
) -> FolderReport:
    """Score ``classify`` (asked for its top min(5, classes)) on the images under ``root``; label i is
    ``class_names[i]`` and the answers' class ids index the same list."""
    samples, unknown = labelled_files(root, class_names)
    k = min(TOP_K, len(class_names))

    def one(sample: tuple[Path, int]) -> tuple[Path, int, Any, str]:
        try:
            return sample[0], sample[1], classify(sample[0], k), ""
        except (OSError, VisionError) as exc:
            reason = exc.message if isinstance(exc, VisionError) else f"cannot read the file: {exc.strerror}"
            return sample[0], sample[1], None, reason

    with ThreadPoolExecutor(concurrency, thread_name_prefix="vision-evaluate") as pool:
        answers = list(pool.map(one, samples))
    scored = [(p, t, r) for p, t, r, e in answers if r is not None]
    unreadable = tuple(Unreadable(str(p), e) for p, _, r, e in answers if r is None)
    y_true = [t for _, t, _ in scored]
    y_pred = [r.classes[0].id for _, _, r in scored]
    in_top5 = sum(int(t in [c.id for c in r.classes[:k]]) for _, t, r in scored)
    evaluation = evaluate_predictions(y_true, y_pred, class_names, loss=0.0)
    wrong = tuple(
        Misclassified(str(p), class_names[t], r.classes[0].label, r.classes[0].score)
        for p, t, r in scored
        if r.classes[0].id != t
    )
    folders = {class_names[t] for _, t in samples}
    return FolderReport(
        model=model,
        version=version,
        folder=str(root),
        images=len(scored),
        top1=evaluation.accuracy,
        top5=in_top5 / max(len(scored), 1),
        evaluation=evaluation,
        misclassified=wrong,
        unreadable=unreadable,
        unknown_folders=unknown,
        classes_without_folder=tuple(n for n in class_names if n not in folders),
    )
