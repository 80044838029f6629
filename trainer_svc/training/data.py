"""Datasets as lists of (file, label): uploads, ImageFolder directories, the stratified split, and the
torch side (decoding, augmentation, serving-identical validation preprocessing, DataLoaders).

Pure Python + torch; no gRPC. Labels are indices into ``class_names``.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from vision.errors import InvalidArgument, InvalidImage
from vision.image.decode import ImageLimits, decode_image
from vision.image.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
LOADER_START_METHOD = "fork" if sys.platform == "linux" else None


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass
class DatasetSplit:
    """Train and validation samples over ``class_names`` (label i is class_names[i])."""

    class_names: list[str]
    train: list[Sample]
    val: list[Sample]

    def class_counts(self) -> dict[str, int]:
        """Images per class, train + validation."""
        return label_counts([*self.train, *self.val], self.class_names)


def label_counts(samples: Sequence[Sample], class_names: Sequence[str]) -> dict[str, int]:
    counts = Counter(s.label for s in samples)
    return {name: counts.get(i, 0) for i, name in enumerate(class_names)}


def check_min_per_class(counts: Mapping[str, int], minimum: int) -> None:
    """Raise `InvalidArgument` naming every class with fewer than ``minimum`` images ({class: images})."""
    short = [f"{name!r} has {n}" for name, n in counts.items() if n < minimum]
    if short:
        raise InvalidArgument(
            f"every class needs at least {minimum} images: {'; '.join(short)}. Add images to those classes"
        )


def stratified_split(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Per class: shuffle with ``seed``, put round(n * val_fraction) (at least 1, at most n - 1) into
    validation. The same inputs always give the same split."""
    rng = random.Random(seed)
    by_label: dict[int, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: (s.label, s.path)):
        by_label.setdefault(sample.label, []).append(sample)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n_val = min(max(1, round(len(group) * val_fraction)), len(group) - 1)
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def _shown(path: Path, within: Path | None) -> str:
    """``path`` as a client may read it: relative to the datasets root (no server paths in messages)."""
    if within is None:
        return str(path)
    try:
        return str(path.relative_to(within)) or "."
    except ValueError:
        return path.name


def _contained(path: Path, within: Path | None, shown: str) -> Path:
    """``path`` with symlinks resolved; `InvalidArgument` (naming ``shown``) if that leaves ``within``
    (None: anywhere is fine, as for the local CLI)."""
    resolved = path.resolve()
    if within is not None and not resolved.is_relative_to(within):
        raise InvalidArgument(
            f"{shown!r} is a link to outside the trainer's datasets directory: "
            "copy the images into the dataset instead of linking them"
        )
    return resolved


def _image_files(directory: Path, within: Path | None) -> list[Path]:
    """The images under ``directory``, each checked to lie inside ``within`` once links are resolved."""
    files = []
    for path in sorted(directory.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        shown = _shown(path, within)
        resolved = _contained(path, within, shown)
        if resolved.is_file():
            files.append(path)
    return files


def _class_dirs(root: Path, within: Path | None) -> list[Path]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for path in dirs:
        _contained(path, within, _shown(path, within))
    return dirs


def _folder_samples(root: Path, class_names: list[str], within: Path | None) -> list[Sample]:
    return [
        Sample(str(f), i) for i, name in enumerate(class_names) for f in _image_files(root / name, within)
    ]


def load_image_folder(
    root: Path, val_fraction: float, seed: int, min_per_class: int, *, within: Path | None = None
) -> DatasetSplit:
    """``root/train/<class>/*`` + ``root/val/<class>/*``, or ``root/<class>/*`` split stratified.

    With ``within`` (the trainer's datasets root), every class folder and image must lie inside it once
    symlinks are resolved, and messages name folders relative to it, never as server paths. None (the local
    CLI): links are followed anywhere.
    """
    limit = within.resolve() if within is not None else None
    shown = _shown(root, limit)
    if not root.is_dir():
        raise InvalidArgument(
            f"dataset directory {shown!r} does not exist in the trainer's datasets directory"
        )
    _contained(root, limit, shown)
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        class_names = [p.name for p in _class_dirs(train_dir, limit)]
        missing = sorted(set(class_names) - {p.name for p in _class_dirs(val_dir, limit)})
        if missing:
            raise InvalidArgument(
                f"{_shown(val_dir, limit)!r} has no folder for the classes {', '.join(missing)}"
            )
        train = _folder_samples(train_dir, class_names, limit)
        val = _folder_samples(val_dir, class_names, limit)
        check_min_per_class(label_counts([*train, *val], class_names), min_per_class)
        return DatasetSplit(class_names, train, val)
    class_names = [p.name for p in _class_dirs(root, limit)]
    if len(class_names) < 2:
        raise InvalidArgument(
            f"{shown!r} needs one sub-folder per class (at least 2), or train/ and val/ folders of them"
        )
    samples = _folder_samples(root, class_names, limit)
    check_min_per_class(label_counts(samples, class_names), min_per_class)
    return DatasetSplit(class_names, *stratified_split(samples, val_fraction, seed))


def load_uploaded(
    root: Path, class_names: list[str], val_fraction: float, seed: int, min_per_class: int
) -> DatasetSplit:
    """An upload stored by trainer_svc.jobs.uploads: ``root/<class index>/<server-made name>``."""
    within = root.resolve()
    samples = [
        Sample(str(f), i) for i in range(len(class_names)) for f in _image_files(root / str(i), within)
    ]
    check_min_per_class(label_counts(samples, class_names), min_per_class)
    return DatasetSplit(list(class_names), *stratified_split(samples, val_fraction, seed))


def train_transform(img_size: int, horizontal_flip: bool = True) -> transforms.Compose:
    """Augmentation: random resized crop, optional flip, small rotation, colour jitter, then normalise."""
    steps: list[Callable[..., object]] = [transforms.RandomResizedCrop(img_size, scale=(0.5, 1.0))]
    if horizontal_flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [
        transforms.RandomRotation(10),
        transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    return transforms.Compose(steps)


def eval_transform(img_size: int, resize_size: int) -> Callable[..., torch.Tensor]:
    """Exactly what serving does for a model published with this input and resize size."""
    return Preprocessing(resize_size=resize_size, input_size=img_size)


class ImageFiles(Dataset[tuple[torch.Tensor, int]]):
    """Decodes each file like serving does (EXIF orientation, RGB) and applies ``transform``."""

    def __init__(
        self, samples: Sequence[Sample], transform: Callable[..., torch.Tensor], limits: ImageLimits
    ):
        self.samples = list(samples)
        self.transform = transform
        self.limits = limits

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        try:
            image = decode_image(Path(sample.path).read_bytes(), self.limits)
        except (InvalidImage, OSError) as exc:
            message = exc.message if isinstance(exc, InvalidImage) else (exc.strerror or type(exc).__name__)
            raise InvalidArgument(f"cannot read training image {Path(sample.path).name}: {message}") from exc
        return self.transform(image), sample.label


def make_loader(
    dataset: Dataset[tuple[torch.Tensor, int]],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    workers: int,
    pin_memory: bool = False,
    sampler: Sampler[int] | None = None,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A loader whose shuffling and worker seeds come from its own generator (saved in checkpoints); with a
    ``sampler`` (a rank's shard), the order is the sampler's and ``shuffle`` is ignored.

    Workers are re-created every epoch (not persistent) so their seeds come from that generator each epoch:
    a run resumed from a checkpoint draws exactly what an uninterrupted run would have drawn. They are
    forked on Linux: in a job's worker process (itself spawned) the inherited default would be 'spawn',
    which re-imports torch in every loader worker every epoch.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        pin_memory=pin_memory,
        drop_last=False,
        multiprocessing_context=LOADER_START_METHOD if workers else None,
    )
