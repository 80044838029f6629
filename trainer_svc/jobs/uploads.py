"""Uploaded images, assembled from CreateJob's ImageChunk stream into a staging directory.

Files are stored as ``<class index>/<sequence>.<format>`` (names made here: a client's labels and file
names never become paths), each checked whole with the shared image decoder as its last chunk arrives.
Limits are enforced as chunks come in. Until `commit` renames the staging directory into the job's
directory, nothing is visible; `abort` (any error, a cancelled stream) removes it all.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from trainer_svc.training.config import normalize_label, validate_file_name
from vision.errors import InvalidArgument, InvalidImage, LimitExceeded
from vision.image.decode import ImageLimits, decode_image, sniff_format

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}


class ImageChunk(Protocol):
    """A piece of one uploaded file (CreateJob's ImageChunk message has these fields)."""

    file_index: int
    class_name: str
    file_name: str
    data: bytes
    last: bool


class UploadTooLarge(LimitExceeded):
    """More files or bytes than the upload limits allow."""


@dataclass(frozen=True)
class UploadLimits:
    max_files: int = 10_000
    max_bytes: int = 2 * 1024**3
    image: ImageLimits = field(default_factory=ImageLimits)


class UploadWriter:
    """Receives the chunks of one upload, in order, one file at a time."""

    def __init__(self, staging_root: Path, class_names: list[str], limits: UploadLimits) -> None:
        self.class_index = {normalize_label(name): i for i, name in enumerate(class_names)}
        self.limits = limits
        self.dir = staging_root / f".staging-{uuid.uuid4().hex}"
        self.dir.mkdir(parents=True)
        self.counts: Counter[int] = Counter()
        self.total_bytes = 0
        self.files = 0
        self._current: int | None = None
        self._name = ""
        self._class = ""
        self._buffer = bytearray()

    def add(self, chunk: ImageChunk) -> None:
        if self._current is None:
            self._begin(chunk)
        elif chunk.file_index != self._current:
            raise InvalidArgument(
                f"file {self._current + 1} ({self._name!r}) ended without its last chunk before file "
                f"{chunk.file_index + 1} began: send each file's chunks in order, the last one marked"
            )
        self.total_bytes += len(chunk.data)
        if self.total_bytes > self.limits.max_bytes:
            raise UploadTooLarge(f"the upload is over the limit of {self.limits.max_bytes} bytes of images")
        if len(self._buffer) + len(chunk.data) > self.limits.image.max_bytes:
            raise UploadTooLarge(
                f"file {self._name!r} is over the limit of {self.limits.image.max_bytes} bytes per image"
            )
        self._buffer += chunk.data
        if chunk.last:
            self._finish_file()

    def _begin(self, chunk: ImageChunk) -> None:
        index = chunk.file_index
        validate_file_name(chunk.file_name, index)
        class_name = normalize_label(chunk.class_name)
        if class_name not in self.class_index:
            raise InvalidArgument(
                f"file {index + 1} ({chunk.file_name!r}) names the class {chunk.class_name!r}, which is not "
                "one of the job's labels"
            )
        if self.files >= self.limits.max_files:
            raise UploadTooLarge(f"the upload has more than {self.limits.max_files} files, the limit")
        self._current, self._name, self._class = (
            index,
            chunk.file_name or f"file {index + 1}",
            class_name,
        )

    def _finish_file(self) -> None:
        data = bytes(self._buffer)
        try:
            decode_image(data, self.limits.image)
        except InvalidImage as exc:
            raise InvalidArgument(
                f"{self._name!r} (class {self._class!r}) is not a usable image: {exc.message}"
            ) from exc
        label = self.class_index[self._class]
        extension = EXTENSIONS[sniff_format(data) or "JPEG"]
        target = self.dir / str(label) / f"{self.files:06d}.{extension}"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(data)
        self.counts[label] += 1
        self.files += 1
        self._current, self._buffer = None, bytearray()

    def finish(self) -> dict[int, int]:
        """After the last message: {class index: images}; a file left without its last chunk is an error."""
        if self._current is not None:
            raise InvalidArgument(f"the upload ended in the middle of {self._name!r} (no chunk marked last)")
        return {i: self.counts.get(i, 0) for i in self.class_index.values()}

    def commit(self, destination: Path) -> None:
        """Make the images the job's dataset (one rename, after they reached the disk)."""
        os.sync()
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.dir, destination)

    def abort(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
