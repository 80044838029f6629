"""The classifier's ``fast`` preprocessing (VISION_CLASSIFIER_PREPROCESS=fast): JPEGs decoded at a DCT scale
and only the centre crop resampled. It may change pixels, within `FAST_TOLERANCE` on real photos: the
normalised input, and the probabilities and top-1 class of a seeded ResNet18 (1000 classes, as served)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from tests.conftest import encode, publish_random_model, start_classifier, ultralytics_asset
from vision.errors import InvalidImage
from vision.image.decode import decode_image
from vision.image.preprocess import FAST_TOLERANCE, Preprocessing
from vision.models.architectures import build_model
from vision.models.store import ModelStore
from vision.v1 import classifier_pb2, classifier_pb2_grpc


def photo_jpegs() -> dict[str, bytes]:
    """Real photos as JPEGs of the sizes people upload (scikit-image's are doubled to 0.5-1.5 MP)."""
    photos = {name: ultralytics_asset(name).read_bytes() for name in ("bus.jpg", "zidane.jpg")}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(data, name)())
        large = image.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS)
        photos[name] = encode(large, "JPEG", quality=92)
    photos["coffee-portrait"] = encode(
        Image.fromarray(data.coffee()).transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90
    )
    return photos


PHOTOS = photo_jpegs()


def both_ways(jpeg: bytes, prep: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    exact = prep(decode_image(jpeg))
    fast = prep.fast(decode_image(jpeg, min_side=prep.resize_size))
    return exact, fast


@pytest.mark.fast
@pytest.mark.parametrize("name", PHOTOS)
def test_a_jpeg_is_decoded_at_the_smallest_scale_that_keeps_the_resize_side(name: str) -> None:
    full = decode_image(PHOTOS[name])
    scaled = decode_image(PHOTOS[name], min_side=256)
    assert min(scaled.size) >= 256 and scaled.mode == "RGB"
    # libjpeg scales by 1/2, 1/4 or 1/8: the next scale down would drop a side under 256.
    factor = full.width / scaled.width
    assert factor in (1.0, 2.0, 4.0, 8.0) or abs(factor - round(factor)) < 0.01
    assert min(full.size) / (round(factor) * 2) < 256
    assert abs(full.width / full.height - scaled.width / scaled.height) < 0.01  # orientation kept


@pytest.mark.fast
def test_other_formats_decode_in_full_and_an_exif_rotation_is_still_applied(astronaut: Image.Image) -> None:
    png = encode(astronaut.resize((1024, 768)), "PNG")
    assert decode_image(png, min_side=256).size == (1024, 768)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    rotated = encode(astronaut.resize((1200, 600)), "JPEG", exif=exif.tobytes())
    viewed = decode_image(rotated, min_side=256)
    assert viewed.height > viewed.width and min(viewed.size) >= 256
    assert viewed.size == (300, 600)  # decoded at 1/2, then turned upright


@pytest.mark.fast
def test_fast_preprocessing_stays_within_its_tolerance_on_real_photos() -> None:
    prep = Preprocessing()
    torch.manual_seed(0)
    model = build_model("resnet18", 1000).eval()
    exact, fast = (torch.stack(t) for t in zip(*(both_ways(j, prep) for j in PHOTOS.values()), strict=True))
    assert exact.shape == fast.shape == (len(PHOTOS), 3, 224, 224)
    pixel_diff = (exact - fast).abs().mean(dim=(1, 2, 3))
    assert float(pixel_diff.max()) < FAST_TOLERANCE.mean_pixel_diff
    assert float(pixel_diff.min()) > 0  # it really is a different computation
    with torch.inference_mode():
        p_exact, p_fast = (torch.softmax(model(x), dim=1) for x in (exact, fast))
    assert float((p_exact - p_fast).abs().max()) <= FAST_TOLERANCE.max_prob_diff
    agreement = float((p_exact.argmax(1) == p_fast.argmax(1)).float().mean())
    assert agreement >= FAST_TOLERANCE.top1_agreement


@pytest.mark.fast
def test_fast_crop_resampling_of_a_png_is_the_exact_geometry_up_to_rounding() -> None:
    prep = Preprocessing()
    image = decode_image(encode(Image.fromarray(data.chelsea()).resize((902, 600)), "PNG"))
    exact, fast = prep(image), prep.fast(image)
    levels = (exact - fast).abs() * torch.tensor(prep.std).view(3, 1, 1) * 255
    assert float(levels.max()) <= 1.01  # at most one 8-bit level, in a few pixels
    assert float((levels > 0.5).float().mean()) < 0.01


def test_the_classifier_with_fast_preprocessing_answers_within_the_tolerance(store: ModelStore) -> None:
    publish_random_model(store, classes=[f"class_{i}" for i in range(1000)])
    answers: dict[str, list[list[float]]] = {}
    for mode in ("exact", "fast"):
        server, engine = start_classifier(store, preprocess=mode, max_top_k=1000)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = classifier_pb2_grpc.ClassifierStub(channel)
                answers[mode] = []
                for jpeg in PHOTOS.values():
                    reply = stub.Classify(classifier_pb2.ClassifyRequest(image=jpeg, top_k=1000), timeout=30)
                    ranked = sorted(reply.classes, key=lambda c: c.class_id)
                    answers[mode].append([c.score for c in ranked])
        finally:
            server.stop(0).wait()
            engine.close()  # type: ignore[attr-defined]
    exact, fast = (np.asarray(answers[m]) for m in ("exact", "fast"))
    assert exact.shape == (len(PHOTOS), 1000)
    assert np.abs(exact - fast).max() <= FAST_TOLERANCE.max_prob_diff
    assert (exact.argmax(1) == fast.argmax(1)).all()
    assert not np.array_equal(exact, fast)


@pytest.mark.fast
def test_a_truncated_jpeg_is_refused_the_same_way_in_fast_mode(bus_jpeg: bytes) -> None:
    truncated = bus_jpeg[: len(bus_jpeg) // 3]
    with pytest.raises(InvalidImage) as exact:
        decode_image(truncated)
    with pytest.raises(InvalidImage) as fast:
        decode_image(truncated, min_side=256)
    assert type(exact.value) is type(fast.value) and "truncated" in str(fast.value)
