"""Food-101 through kagglehub, in its official layout and split.

The dataset directory (found anywhere under what kagglehub returns) holds ``meta/classes.txt``,
``meta/train.txt`` and ``meta/test.txt`` (lines ``apple_pie/1005649``) and ``images/<class>/<id>.jpg``:
101 classes, 750 training and 250 test images each; the test list is our validation set.

kagglehub reads credentials from the environment only (KAGGLE_USERNAME + KAGGLE_KEY, or KAGGLE_API_TOKEN);
nothing here takes or stores them. Offline, an unversioned handle cannot be resolved to a version, so the
newest complete copy in the kagglehub cache is used instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trainer_svc.errors import logged
from trainer_svc.training.config import FOOD101_HANDLE
from trainer_svc.training.data import DatasetSplit, Sample, check_min_per_class, label_counts
from vision.errors import InvalidArgument, NotReady

log = logging.getLogger(__name__)

_SEARCH_DEPTH = 4


@contextmanager
def _kagglehub_cache(cache_dir: Path | None) -> Iterator[None]:
    """KAGGLEHUB_CACHE set to ``cache_dir`` for the duration (kagglehub reads it on every call)."""
    if cache_dir is None:
        yield
        return
    previous = os.environ.get("KAGGLEHUB_CACHE")
    os.environ["KAGGLEHUB_CACHE"] = str(cache_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("KAGGLEHUB_CACHE", None)
        else:
            os.environ["KAGGLEHUB_CACHE"] = previous


def _cached_versions(handle: str) -> list[int]:
    """Versions of ``owner/dataset`` with a completed download in the kagglehub cache, newest first."""
    from kagglehub.config import get_cache_folder

    owner, dataset = handle.split("/")[:2]
    versions = Path(get_cache_folder()) / "datasets" / owner / dataset / "versions"
    if not versions.is_dir():
        return []
    return sorted((int(p.name) for p in versions.iterdir() if p.name.isdigit()), reverse=True)


def download(handle: str = FOOD101_HANDLE, cache_dir: Path | None = None) -> Path:
    """The local directory of the dataset (downloaded into the kagglehub cache if not there yet)."""
    import kagglehub

    with _kagglehub_cache(cache_dir):
        try:
            return Path(kagglehub.dataset_download(handle))
        except Exception as exc:  # kagglehub raises requests', its own and OS errors alike
            if "/versions/" in handle:
                raise NotReady(logged(log, f"Food-101 ({handle}) could not be downloaded", exc)) from exc
            for version in _cached_versions(handle):
                try:
                    path = Path(kagglehub.dataset_download(f"{handle}/versions/{version}"))
                except Exception:
                    continue
                log.warning("kagglehub could not reach Kaggle (%s); using cached version %d", exc, version)
                return path
            what = logged(
                log, f"Food-101 ({handle}) is not in the kagglehub cache and could not be downloaded", exc
            )
            raise NotReady(
                f"{what}. Online, set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN) in the trainer's "
                "environment"
            ) from exc


def find_root(path: Path) -> Path:
    """The directory holding ``meta/train.txt`` at or below ``path`` (Kaggle copies nest it)."""
    for depth in range(_SEARCH_DEPTH + 1):
        for candidate in sorted(
            path.glob("/".join(["*"] * depth) + "/meta/train.txt" if depth else "meta/train.txt")
        ):
            return candidate.parent.parent
    log.error("no Food-101 layout (meta/train.txt) under %s", path)
    raise InvalidArgument("the downloaded Food-101 has no meta/train.txt: it is not in the Food-101 layout")


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise InvalidArgument(f"Food-101 is incomplete: meta/{path.name} is missing")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _samples(root: Path, entries: list[str], index: dict[str, int], cap: int) -> list[Sample]:
    """``class/id`` entries as samples; entries that would leave ``images/`` are refused."""
    images = (root / "images").resolve()
    taken: dict[int, int] = {}
    samples = []
    for entry in entries:
        name, _, image_id = entry.partition("/")
        if name not in index or not image_id or "/" in image_id or ".." in entry:
            raise InvalidArgument(f"Food-101 list entry {entry!r} is not 'class/image_id'")
        label = index[name]
        if cap and taken.get(label, 0) >= cap:
            continue
        taken[label] = taken.get(label, 0) + 1
        samples.append(Sample(str(images / name / f"{image_id}.jpg"), label))
    return samples


def load_food101(
    handle: str = FOOD101_HANDLE,
    cache_dir: Path | None = None,
    *,
    max_images_per_class: int = 0,
    min_per_class: int = 1,
) -> DatasetSplit:
    """The official split: meta/train.txt for training, meta/test.txt for validation; class order from
    meta/classes.txt. ``max_images_per_class`` (0: all) caps both lists per class for quick runs."""
    root = find_root(download(handle, cache_dir))
    class_names = _read_list(root / "meta" / "classes.txt")
    index = {name: i for i, name in enumerate(class_names)}
    train = _samples(root, _read_list(root / "meta" / "train.txt"), index, max_images_per_class)
    val = _samples(root, _read_list(root / "meta" / "test.txt"), index, max_images_per_class)
    check_min_per_class(label_counts(train, class_names), min_per_class)
    check_min_per_class(label_counts(val, class_names), 1)
    return DatasetSplit(class_names, train, val)
