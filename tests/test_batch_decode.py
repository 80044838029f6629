"""Batch decoding on tensors (`vision.image.batch_decode`) against the CPU path it replaces
(`decode_image` + `Preprocessing`), on the CPU: ``torchvision.io.decode_jpeg`` there is libjpeg-turbo, the
decoder PIL uses, so this is the CUDA code path minus nvJPEG (tests/test_cuda.py runs it on a GPU).

The stated tolerance, per image, of the normalised (3, S, S) tensor: max |Δ| <= 1 uint8 level
(1 / 255 / std) everywhere; on the real photos at the default 256/224 pipeline mean |Δ| <= 0.02 levels
and a seeded ResNet18 gives the same top-1 with max |Δprob| <= 1e-4. Bad input: the same error type and
message as `decode_image`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pytest
import torch
from PIL import Image
from skimage import data

from tests.conftest import encode, ultralytics_asset
from vision.errors import ImageTooLarge, InvalidImage, UnsupportedImageFormat
from vision.image.batch_decode import BatchDecoder, CheckedJpeg, apply_exif_orientation, check_jpeg
from vision.image.decode import ImageLimits, decode_image
from vision.image.preprocess import IMAGENET_STD, Preprocessing
from vision.models.architectures import build_model

pytestmark = pytest.mark.fast

CPU = torch.device("cpu")
LEVEL = 1 / 255  # one uint8 level, before normalisation
SLACK = 1e-3  # float32 rounding of (x / 255 - mean) / std, in levels


def jpeg(image: Image.Image, **kwargs: object) -> bytes:
    return encode(image, "JPEG", quality=90, **kwargs)


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF Orientation
    return jpeg(image, exif=exif.tobytes())


def real_photos() -> dict[str, bytes]:
    """The photos of the stated tolerance: two camera JPEGs, three scikit-image photos, a rotated one."""
    photos = {name: ultralytics_asset(name).read_bytes() for name in ("bus.jpg", "zidane.jpg")}
    for name in ("astronaut", "coffee", "chelsea"):
        photos[name] = jpeg(Image.fromarray(getattr(data, name)()))
    photos["coffee, EXIF orientation 6 (a phone held upright)"] = with_orientation(
        Image.fromarray(data.coffee()), 6
    )
    return photos


PHOTOS = real_photos()


def cpu_path(images: list[bytes], prep: Preprocessing, limits: ImageLimits | None = None) -> torch.Tensor:
    return torch.stack([prep(decode_image(d, limits)) for d in images])


def levels(diff: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """|Δ| of normalised tensors (N, 3, S, S) back in uint8 levels, per channel's std."""
    std = torch.tensor(prep.std, dtype=torch.float32)[None, :, None, None]
    return diff.abs() * std / LEVEL


def test_real_photos_are_within_the_stated_tolerance_of_the_cpu_path() -> None:
    prep = Preprocessing()
    images = list(PHOTOS.values())
    batch = BatchDecoder(prep, CPU)(images)
    reference = cpu_path(images, prep)
    assert batch.shape == reference.shape == (len(images), 3, 224, 224) and batch.dtype == torch.float32
    for name, got, want in zip(PHOTOS, batch, reference, strict=True):
        diff = levels((got - want)[None], prep)
        assert diff.max() <= 1 + SLACK, name
        assert diff.mean() <= 0.02, name
    # In normalised units that is at most 1 / 255 / min(std) ~ 0.0175.
    assert (batch - reference).abs().max() <= (1 + SLACK) * LEVEL / min(IMAGENET_STD)


def test_a_seeded_resnet18_answers_the_same_on_either_decode_path() -> None:
    prep = Preprocessing()
    images = list(PHOTOS.values())
    torch.manual_seed(0)
    model = build_model("resnet18", 10).eval()
    with torch.inference_mode():
        got = model(BatchDecoder(prep, CPU)(images)).softmax(1)
        want = model(cpu_path(images, prep)).softmax(1)
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert (got - want).abs().max() <= 1e-4


# Not square, so that a transposition and a rotation give different shapes from the stored one.
CHELSEA = Image.fromarray(data.chelsea())  # 451x300


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_the_cpu_path_applies_it(orientation: int) -> None:
    prep = Preprocessing(146, 128)  # a crop smaller than the image, so the orientation shows in it
    image = with_orientation(CHELSEA, orientation)
    checked = check_jpeg(image, ImageLimits())
    assert checked == CheckedJpeg(image, 451, 300, orientation)
    got = BatchDecoder(prep, CPU)([image])
    want = cpu_path([image], prep)
    assert levels(got - want, prep).max() <= 1 + SLACK
    if orientation != 1:  # and it mattered: the upright photo is a different input
        upright = cpu_path([with_orientation(CHELSEA, 1)], prep)
        assert levels(got - upright, prep).mean() > 5


def test_the_orientation_table_is_pils() -> None:
    pixels = torch.arange(2 * 3).reshape(1, 2, 3).to(torch.uint8)
    as_image = Image.fromarray(pixels[0].numpy())
    for orientation in range(1, 9):
        exif = as_image.getexif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        as_image.save(buffer, format="PNG", exif=exif.tobytes())
        expected = decode_image(buffer.getvalue()).convert("L")  # decode_image applies exif_transpose
        got = apply_exif_orientation(pixels, orientation)[0]
        assert got.tolist() == torch.tensor(list(expected.getdata())).reshape(got.shape).tolist()


SHAPES: dict[str, Callable[[], Image.Image]] = {
    "portrait, upscaled": lambda: Image.fromarray(data.astronaut()).resize((97, 203)),
    "panorama": lambda: Image.fromarray(data.chelsea()).resize((1000, 257)),
    "tall strip": lambda: Image.fromarray(data.rocket()).resize((255, 1001)),
    "exactly the resize size": lambda: Image.fromarray(data.astronaut()).resize((256, 256)),
    "far smaller than the crop": lambda: Image.fromarray(data.chelsea()).resize((31, 17)),
}
PIPELINES = {
    "imagenet 256/224": Preprocessing(),
    "146/128": Preprocessing(146, 128),
    "64/64, other mean and std": Preprocessing(64, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_output_sizes_follow_resize_and_center_crop_for_every_shape(pipeline: str) -> None:
    prep = PIPELINES[pipeline]
    images = [jpeg(make()) for make in SHAPES.values()]
    got = BatchDecoder(prep, CPU)(images)
    want = cpu_path(images, prep)
    assert got.shape == want.shape == (len(images), 3, prep.input_size, prep.input_size)
    diff = levels(got - want, prep)
    assert diff.max() <= 1 + SLACK
    assert diff.mean() <= 0.25


def other_images() -> dict[str, bytes]:
    photo = Image.fromarray(data.astronaut()).resize((300, 200))
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    return {
        "PNG with alpha": encode(rgba, "PNG"),
        "WebP": encode(photo, "WEBP"),
        "BMP": encode(photo, "BMP"),
        "grayscale JPEG": jpeg(photo.convert("L")),
        "CMYK JPEG": jpeg(photo.convert("CMYK")),
    }


def test_formats_the_device_does_not_take_are_decoded_by_the_cpu_path_in_the_same_batch() -> None:
    prep = Preprocessing()
    others = other_images()
    decoder = BatchDecoder(prep, CPU)
    images = [PHOTOS["bus.jpg"], *others.values()]
    prepared = [decoder.prepare(d) for d in images]
    assert isinstance(prepared[0], CheckedJpeg)
    assert all(isinstance(p, torch.Tensor) for p in prepared[1:])
    got = torch.stack(decoder.decode(prepared))  # type: ignore[arg-type]
    want = cpu_path(images, prep)
    assert torch.equal(got[1:], want[1:])  # the CPU path itself: bit-identical
    assert levels(got[:1] - want[:1], prep).max() <= 1 + SLACK


def tiny_limits() -> ImageLimits:
    return ImageLimits(max_bytes=50_000, max_pixels=10_000)


BAD: dict[str, tuple[bytes, ImageLimits, type[InvalidImage]]] = {
    "empty": (b"", ImageLimits(), InvalidImage),
    "over the byte limit": (PHOTOS["bus.jpg"], tiny_limits(), ImageTooLarge),
    "over the declared pixel limit": (
        PHOTOS["chelsea"],
        ImageLimits(max_pixels=100_000),
        ImageTooLarge,
    ),
    "not an image": (b"hello, this is text" * 10, ImageLimits(), InvalidImage),
    "GIF": (encode(CHELSEA, "GIF"), ImageLimits(), UnsupportedImageFormat),
    "JPEG magic, garbage header": (b"\xff\xd8\xff" + b"\x00" * 200, ImageLimits(), InvalidImage),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_the_same_error_and_message_as_decode_image(case: str) -> None:
    payload, limits, kind = BAD[case]
    with pytest.raises(kind) as expected:
        decode_image(payload, limits)
    decoder = BatchDecoder(Preprocessing(), CPU, limits)
    with pytest.raises(kind) as got:
        decoder.prepare(payload)
    assert str(got.value) == str(expected.value)
    with pytest.raises(kind, match=re.escape(str(expected.value))):
        decoder([jpeg(CHELSEA.resize((60, 40))), payload])  # a good image first, within every limit


def test_a_jpeg_whose_pixels_are_corrupt_gets_its_own_error_and_the_rest_of_the_batch_decodes() -> None:
    bus = PHOTOS["bus.jpg"]
    truncated = bus[: len(bus) // 2]  # the header is intact: it passes the request-thread checks
    decoder = BatchDecoder(Preprocessing(), CPU)
    prepared = [decoder.prepare(d) for d in (PHOTOS["zidane.jpg"], truncated, PHOTOS["chelsea"])]
    assert all(isinstance(p, CheckedJpeg) for p in prepared)
    zidane, error, chelsea = decoder.decode(prepared)
    with pytest.raises(InvalidImage) as expected:
        decode_image(truncated)
    assert isinstance(error, InvalidImage) and str(error) == str(expected.value)
    want = cpu_path([PHOTOS["zidane.jpg"], PHOTOS["chelsea"]], Preprocessing())
    assert isinstance(zidane, torch.Tensor) and isinstance(chelsea, torch.Tensor)
    assert levels(torch.stack([zidane, chelsea]) - want, Preprocessing()).max() <= 1 + SLACK


def test_a_pixel_budget_splits_the_decode_without_changing_any_result() -> None:
    images = list(PHOTOS.values())
    whole = BatchDecoder(Preprocessing(), CPU)(images)
    # bus.jpg 875k pixels, zidane.jpg 922k, the four others 877k together: three calls under 1M.
    split = BatchDecoder(Preprocessing(), CPU, max_batch_pixels=1_000_000)
    jobs = [(i, c) for i, d in enumerate(images) if (c := check_jpeg(d, split.limits)) is not None]
    assert len(jobs) == len(images) and len(split._chunks(jobs)) == 3
    assert torch.equal(split(images), whole)
