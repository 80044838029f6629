"""Many JPEGs in, one normalised float batch on a device out: nvJPEG on CUDA, libjpeg-turbo on the CPU.

The result of `decode_image` + `Preprocessing` (Resize(short side) -> CenterCrop -> ToTensor -> Normalize,
EXIF orientation applied), computed on tensors where the model runs, so a GPU server does not spend 4-8 ms of
CPU per photo decoding it. Two stages, so that bad input is refused in the caller's thread before it queues:

* `BatchDecoder.prepare` (request thread): the checks of `decode_image` that need no pixels (size, magic
  bytes, the declared pixel count, read from the header by PIL without decoding). A plain 3-channel JPEG
  becomes a `CheckedJpeg` for the device; anything else (PNG, WebP, BMP, CMYK or grayscale JPEG, a header
  PIL doubts) goes through the CPU path right there, which decodes it or raises its own error: bad input
  gets exactly the error type and message `decode_image` gives.
* `BatchDecoder.decode` (batch thread): one ``torchvision.io.decode_jpeg(list, device=...)`` call for the
  checked JPEGs, then per image orientation, antialiased resize and centre crop on uint8 tensors, then one
  /255 + normalise for the batch. A JPEG the decoder refuses (nvJPEG lacks arithmetic coding, corrupt scan
  data) falls back to the CPU path for that image alone; its error, if it has one, is returned in its slot,
  never raised for the whole batch.

Tolerance against the CPU path (tests/test_batch_decode.py, measured on CPU where decode_jpeg is
libjpeg-turbo, the same decoder PIL uses): decoding is bit-identical, the tensor resize differs from PIL's
by at most 1 uint8 level, i.e. max |Δ| <= 1/255/min(std) ~ 0.0175 of the normalised tensor. nvJPEG's IDCT
and chroma upsampling differ from libjpeg's: torchvision accepts a mean |Δ| < 2 levels for it
(tests/test_cuda.py checks the CUDA bounds).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from PIL import ExifTags, Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from vision.errors import InvalidImage
from vision.image.decode import ImageLimits, decode_image, sniff_format
from vision.image.preprocess import Preprocessing

log = logging.getLogger(__name__)

# Decoded pixels held on the device at once by one `decode` call (uint8 RGB: 3 bytes each): a batch of 64
# photos at the 40 MP limit would otherwise take 7.7 GB of GPU memory before the resize shrinks them.
DEFAULT_MAX_BATCH_PIXELS = 200_000_000

# EXIF orientation -> the tensor operation (C, H, W) that `PIL.ImageOps.exif_transpose` applies.
_ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda x: x.flip(-1),  # FLIP_LEFT_RIGHT
    3: lambda x: x.flip(-2, -1),  # ROTATE_180
    4: lambda x: x.flip(-2),  # FLIP_TOP_BOTTOM
    5: lambda x: x.transpose(-2, -1),  # TRANSPOSE (main diagonal)
    6: lambda x: x.rot90(-1, (-2, -1)),  # ROTATE_270 (PIL's angles are counter-clockwise)
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),  # TRANSVERSE (anti-diagonal)
    8: lambda x: x.rot90(1, (-2, -1)),  # ROTATE_90
}


@dataclass(frozen=True)
class CheckedJpeg:
    """A JPEG whose header passed `decode_image`'s checks, 3-channel, to be decoded on the device.
    ``width`` x ``height`` as stored (before the EXIF ``orientation``, 1..8, is applied)."""

    data: bytes
    width: int
    height: int
    orientation: int = 1


# What a request thread hands the batch thread: a JPEG for the device, or the CPU path's finished tensor.
Prepared = CheckedJpeg | torch.Tensor


def check_jpeg(data: bytes, limits: ImageLimits) -> CheckedJpeg | None:
    """``data`` as a `CheckedJpeg` when the device decoder can take it, else None (the CPU path then decodes
    it or says what is wrong). Reads the header only: no pixel is decoded here."""
    if not data or len(data) > limits.max_bytes or sniff_format(data) != "JPEG":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
                width, height = image.size
                # "L" and "CMYK" JPEGs: the CPU path converts them as PIL does.
                if image.mode != "RGB" or width <= 0 or height <= 0 or width * height > limits.max_pixels:
                    return None
                orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # any doubt about the header: the CPU path's answer is the reference
        return None
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        return None  # exif_transpose ignores odd values; so does the CPU path, which then decides
    return CheckedJpeg(data, width, height, orientation)


def apply_exif_orientation(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) ``pixels`` as the viewer shows them, like `PIL.ImageOps.exif_transpose` (1: unchanged)."""
    turn = _ORIENT.get(orientation)
    return pixels if turn is None else turn(pixels)


class BatchDecoder:
    """Decodes requests' images for one `Preprocessing` on ``device``; see the module docstring.

    `prepare` may run in many threads at once; `decode` in one thread (the batcher's) at a time.
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        device: torch.device,
        limits: ImageLimits | None = None,
        max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
    ) -> None:
        self.preprocessing = preprocessing
        self.device = device
        self.limits = limits or ImageLimits()
        self.max_batch_pixels = max_batch_pixels

    @cached_property
    def _scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.preprocessing.mean, dtype=torch.float32, device=self.device)
        std = torch.tensor(self.preprocessing.std, dtype=torch.float32, device=self.device)
        return mean[:, None, None], std[:, None, None]

    def prepare(self, data: bytes) -> Prepared:
        """Validate ``data`` (request thread). Raises `InvalidImage` (or a subclass) exactly as
        `decode_image` does; returns a `CheckedJpeg`, or the CPU path's (3, S, S) float32 CPU tensor."""
        checked = check_jpeg(data, self.limits)
        if checked is not None:
            return checked
        return self.preprocessing(decode_image(data, self.limits))

    def decode(self, items: Sequence[Prepared]) -> list[torch.Tensor | InvalidImage]:
        """Per item, in order: its (3, S, S) float32 tensor on ``device``, or the `InvalidImage` the CPU
        path raised for it (a JPEG whose header passed but whose pixels do not decode)."""
        results: list[torch.Tensor | InvalidImage | None] = [None] * len(items)
        jobs: list[tuple[int, CheckedJpeg]] = []
        for index, item in enumerate(items):
            if isinstance(item, CheckedJpeg):
                jobs.append((index, item))
            else:
                results[index] = item.to(self.device, non_blocking=True)
        for chunk in self._chunks(jobs):
            self._decode_chunk(chunk, results)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def __call__(self, images: Sequence[bytes]) -> torch.Tensor:
        """(N, 3, S, S) float32 on ``device`` for ``images``; raises the first image's `InvalidImage`."""
        decoded = self.decode([self.prepare(data) for data in images])
        for item in decoded:
            if isinstance(item, InvalidImage):
                raise item
        return torch.stack(decoded)  # type: ignore[arg-type]

    def _chunks(self, jobs: list[tuple[int, CheckedJpeg]]) -> list[list[tuple[int, CheckedJpeg]]]:
        """``jobs`` in order, in runs of at most ``max_batch_pixels`` declared pixels (at least one each)."""
        chunks: list[list[tuple[int, CheckedJpeg]]] = []
        pixels = 0
        for job in jobs:
            size = job[1].width * job[1].height
            if not chunks or pixels + size > self.max_batch_pixels:
                chunks.append([])
                pixels = 0
            chunks[-1].append(job)
            pixels += size
        return chunks

    def _decode_chunk(
        self, chunk: list[tuple[int, CheckedJpeg]], results: list[torch.Tensor | InvalidImage | None]
    ) -> None:
        pixels = self._decode_jpegs([job.data for _, job in chunk])
        crops: list[tuple[int, torch.Tensor]] = []
        for (index, job), decoded in zip(chunk, pixels, strict=True):
            if decoded is None or tuple(decoded.shape) != (3, job.height, job.width):
                results[index] = self._cpu_path(job.data)
            else:
                crops.append((index, self._geometry(decoded, job.orientation)))
        if crops:
            mean, std = self._scale
            # ToTensor + Normalize in the order and precision of `Preprocessing` (x / 255 - mean) / std.
            batch = torch.stack([crop for _, crop in crops]).float().div_(255).sub_(mean).div_(std)
            for (index, _), tensor in zip(crops, batch, strict=True):
                results[index] = tensor

    def _decode_jpegs(self, blobs: list[bytes]) -> list[torch.Tensor | None]:
        """uint8 (3, H, W) RGB on ``device`` per blob; None where the decoder refused it."""
        tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
        if self.device.type == "cuda":
            try:  # one batched nvJPEG call; it returns nothing when any image fails
                return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError as exc:
                log.debug("batched nvJPEG decode failed (%s); decoding one by one", exc)
        out: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                out.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError as exc:  # libjpeg's warnings are errors here; PIL may be more lenient
                log.debug("decode_jpeg refused an image (%s); the CPU path decodes it", exc)
                out.append(None)
        return out

    def _geometry(self, pixels: torch.Tensor, orientation: int) -> torch.Tensor:
        """Orientation, then Resize(int) and CenterCrop on the uint8 tensor (torchvision's output sizes)."""
        prep = self.preprocessing
        pixels = apply_exif_orientation(pixels, orientation)
        pixels = F.resize(
            pixels, [prep.resize_size], interpolation=InterpolationMode.BILINEAR, antialias=True
        )
        return F.center_crop(pixels, [prep.input_size, prep.input_size])

    def _cpu_path(self, data: bytes) -> torch.Tensor | InvalidImage:
        try:
            return self.preprocessing(decode_image(data, self.limits)).to(self.device)
        except InvalidImage as exc:
            return exc
