"""explain_svc as a real gRPC server: heatmaps aligned with the photo, under concurrency, without leaks."""

from __future__ import annotations

import gc
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from explain_svc.config import ExplainSettings
from explain_svc.model import ExplainEngine, ExplainOptions
from explain_svc.server import create_explain_server
from tests.conftest import encode, publish_random_model
from vision.image.preprocess import Preprocessing
from vision.models.architectures import build_model
from vision.models.store import ModelMetadata, ModelStore
from vision.models.weights import publish_state_dict
from vision.v1 import common_pb2, explainer_pb2, explainer_pb2_grpc

OBJECT = (400, 300, 460, 360)  # left, top, right, bottom of the bright square, in photo pixels


def brightness_model() -> torch.nn.Module:
    """A SmallCNN wired by hand: channel 0 of each stage fires on bright pixels; class 1 reads it."""
    model = build_model("smallcnn", 2)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.features[0].weight[0, :, 1, 1] = 1.0 / 3
        model.features[0].bias[0] = -1.0  # grey background (~0 after normalisation) stays off
        model.features[3].weight[0, 0, 1, 1] = 1.0
        model.features[6].weight[0, 0, 1, 1] = 1.0
        model.fc.weight[1, 0] = 1.0
    return model.eval()


def photo_with_object(size: tuple[int, int] = (640, 480)) -> Image.Image:
    image = Image.new("RGB", size, (128, 128, 128))
    image.paste((255, 255, 255), OBJECT)
    return image


@pytest.fixture
def explain(store: ModelStore) -> Iterator[tuple[explainer_pb2_grpc.ExplainerStub, ModelStore]]:
    publish_state_dict(
        store, "bright", brightness_model().state_dict(), ModelMetadata("smallcnn", ["dark", "bright"])
    )
    publish_random_model(store, "resnet18", seed=0)
    server, engine = create_explain_server(ExplainSettings(port=0, model_dir=store.root, poll_interval_s=0.2))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield explainer_pb2_grpc.ExplainerStub(channel), store
    server.stop(0).wait()
    engine.close()


def hot_pixels(png: bytes, threshold: int = 250) -> np.ndarray:
    """(y, x) of the pixels at least ``threshold`` bright."""
    return np.argwhere(np.asarray(Image.open(io.BytesIO(png)).convert("L")) >= threshold)


@pytest.mark.parametrize(
    "method",
    [
        explainer_pb2.CAM_METHOD_CAM,
        explainer_pb2.CAM_METHOD_GRAD_CAM,
        explainer_pb2.CAM_METHOD_GRAD_CAM_PLUS_PLUS,
    ],
)
@pytest.mark.parametrize("size", [(640, 480), (480, 640)])
def test_the_overlays_hottest_region_sits_on_the_object_in_the_uploaded_photo(
    explain: tuple[explainer_pb2_grpc.ExplainerStub, ModelStore], method: int, size: tuple[int, int]
) -> None:
    stub, _ = explain
    request = explainer_pb2.ExplainRequest(
        image=encode(photo_with_object(size), "PNG"),
        model=common_pb2.ModelRef(name="bright"),
        method=method,
        colormap=explainer_pb2.COLORMAP_GRAY,
        alpha=1.0,
        overlay_format=explainer_pb2.OVERLAY_FORMAT_PNG,  # exact pixels
    )
    reply = stub.Explain(request, timeout=30)
    assert reply.prediction.label == "bright" and reply.target.label == "bright"
    overlay = Image.open(io.BytesIO(reply.overlay_png))
    assert overlay.size == size  # the user's photo, in its own coordinates
    hot = hot_pixels(reply.overlay_png)
    cy, cx = hot.mean(axis=0)
    left, top, right, bottom = OBJECT
    assert left <= cx <= right and top <= cy <= bottom, f"hot centre ({cx:.0f}, {cy:.0f}) is off the object"
    margin = 12  # the map is 8x coarser than the input, then upsampled
    inside = (
        (hot[:, 1] >= left - margin)
        & (hot[:, 1] <= right + margin)
        & (hot[:, 0] >= top - margin)
        & (hot[:, 0] <= bottom + margin)
    )
    assert inside.mean() > 0.95
    heatmap = Image.open(io.BytesIO(reply.heatmap_png))
    assert heatmap.mode == "L" and heatmap.size == (224, 224)
    assert np.asarray(heatmap).max() == 255


@pytest.mark.parametrize(
    ("overlay_max_side", "factor"),
    [(0, 3), (700, 2), (1300, 1), (2048, 1)],  # 0: the default, 640
)
def test_a_large_photos_overlay_is_shrunk_by_a_whole_factor_with_the_map_still_on_the_object(
    explain: tuple[explainer_pb2_grpc.ExplainerStub, ModelStore], overlay_max_side: int, factor: int
) -> None:
    stub, _ = explain
    size = (1300, 975)  # the centre crop, 853 px square, holds OBJECT
    request = explainer_pb2.ExplainRequest(
        image=encode(photo_with_object(size), "PNG"),
        model=common_pb2.ModelRef(name="bright"),
        method=explainer_pb2.CAM_METHOD_CAM,
        colormap=explainer_pb2.COLORMAP_GRAY,
        alpha=1.0,
        overlay_max_side=overlay_max_side,
        overlay_format=explainer_pb2.OVERLAY_FORMAT_PNG,
    )
    reply = stub.Explain(request, timeout=30)
    overlay = Image.open(io.BytesIO(reply.overlay_png))
    assert overlay.size == (-(-size[0] // factor), -(-size[1] // factor))
    cy, cx = hot_pixels(reply.overlay_png).mean(axis=0)
    left, top, right, bottom = (v / factor for v in OBJECT)
    assert left <= cx <= right and top <= cy <= bottom, f"hot centre ({cx:.0f}, {cy:.0f}) is off the object"
    # Outside the crop the photo shows through, box-averaged: the grey background.
    assert tuple(overlay.getpixel((0, 0))) == (128, 128, 128)


@pytest.mark.parametrize("size", [(640, 480), (480, 640)])
def test_the_raw_heatmap_covers_the_centre_crop_the_model_saw(
    explain: tuple[explainer_pb2_grpc.ExplainerStub, ModelStore], size: tuple[int, int]
) -> None:
    # heatmap_png is in the model's input coordinates: through the crop box, its hot spot is on the object.
    stub, _ = explain
    reply = stub.Explain(
        explainer_pb2.ExplainRequest(
            image=encode(photo_with_object(size), "PNG"), model=common_pb2.ModelRef(name="bright")
        ),
        timeout=30,
    )
    cy, cx = hot_pixels(reply.heatmap_png).mean(axis=0)
    left, top, right, bottom = Preprocessing().crop_box(*size)
    x = left + (cx + 0.5) * (right - left) / 224
    y = top + (cy + 0.5) * (bottom - top) / 224
    assert OBJECT[0] <= x <= OBJECT[2] and OBJECT[1] <= y <= OBJECT[3], (
        f"({x:.0f}, {y:.0f}) is off the object"
    )


def test_the_default_colormap_is_jet_and_blends_with_the_photo(
    explain: tuple[explainer_pb2_grpc.ExplainerStub, ModelStore],
) -> None:
    stub, _ = explain
    photo = photo_with_object()
    request = explainer_pb2.ExplainRequest(
        image=encode(photo, "PNG"),
        model=common_pb2.ModelRef(name="bright"),
        overlay_format=explainer_pb2.OVERLAY_FORMAT_PNG,
    )
    reply = stub.Explain(request, timeout=30)
    overlay = np.asarray(Image.open(io.BytesIO(reply.overlay_png))).astype(int)
    redness = overlay[..., 0] - overlay[..., 2]  # JET's hot end is red, its cold end blue
    cy, cx = np.unravel_index(np.argmax(redness), redness.shape)
    assert OBJECT[0] - 8 <= cx <= OBJECT[2] + 8 and OBJECT[1] - 8 <= cy <= OBJECT[3] + 8
    assert (overlay[0, 0] == np.asarray(photo)[0, 0]).all(), "outside the crop the photo is untouched"


def test_the_default_overlay_is_a_jpeg_of_the_same_picture_at_a_fraction_of_the_bytes(
    explain: tuple[explainer_pb2_grpc.ExplainerStub, ModelStore], bus_jpeg: bytes
) -> None:
    stub, _ = explain
    model = common_pb2.ModelRef(name="resnet18")
    default = stub.Explain(explainer_pb2.ExplainRequest(image=bus_jpeg, model=model), timeout=30)
    lossless = stub.Explain(
        explainer_pb2.ExplainRequest(
            image=bus_jpeg, model=model, overlay_format=explainer_pb2.OVERLAY_FORMAT_PNG
        ),
        timeout=30,
    )
    assert default.WhichOneof("overlay") == "overlay_jpeg" and lossless.WhichOneof("overlay") == "overlay_png"
    jpeg, png = Image.open(io.BytesIO(default.overlay_jpeg)), Image.open(io.BytesIO(lossless.overlay_png))
    assert jpeg.format == "JPEG" and jpeg.size == png.size == (405, 540)
    difference = np.abs(np.asarray(jpeg, dtype=int) - np.asarray(png, dtype=int))
    assert difference.mean() < 3  # quality 90
    assert len(default.overlay_jpeg) < len(lossless.overlay_png) / 2
    assert default.heatmap_png == lossless.heatmap_png  # the data itself stays lossless


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_every_decodable_photo_mode_gets_a_jpeg_overlay(
    explain: tuple[explainer_pb2_grpc.ExplainerStub, ModelStore], mode: str
) -> None:
    # JPEG holds neither alpha nor palettes: the overlay is drawn on the decoded RGB photo whatever came in.
    stub, _ = explain
    photo = photo_with_object((700, 500)).convert("L" if mode == "I;16" else mode)
    if mode == "I;16":
        photo = Image.fromarray(np.asarray(photo, dtype=np.uint16) * 257)
    request = explainer_pb2.ExplainRequest(
        image=encode(photo, "PNG"), model=common_pb2.ModelRef(name="bright")
    )
    overlay = Image.open(io.BytesIO(stub.Explain(request, timeout=30).overlay_jpeg))
    assert (overlay.format, overlay.mode, overlay.size) == ("JPEG", "RGB", (350, 250))


def test_concurrent_requests_each_get_their_own_explanation(
    explain: tuple[explainer_pb2_grpc.ExplainerStub, ModelStore], bus_jpeg: bytes, zidane_jpeg: bytes
) -> None:
    stub, _ = explain
    cases = [
        (img, method, target)
        for img in (bus_jpeg, zidane_jpeg)
        for method in (explainer_pb2.CAM_METHOD_GRAD_CAM, explainer_pb2.CAM_METHOD_GRAD_CAM_PLUS_PLUS)
        for target in (1, 7)
    ]

    def run(case: tuple[bytes, int, int]) -> explainer_pb2.ExplainResponse:
        image, method, target = case
        return stub.Explain(
            explainer_pb2.ExplainRequest(image=image, method=method, target_class_id=target, layer="layer3"),
            timeout=60,
        )

    alone = [run(c) for c in cases]
    with ThreadPoolExecutor(len(cases) * 2) as pool:
        together = list(pool.map(run, cases * 2))
    assert max(r.timing.batch_size for r in together) > 1
    for single, batched in zip(alone * 2, together, strict=True):
        assert batched.target.class_id == single.target.class_id
        a = np.asarray(Image.open(io.BytesIO(single.heatmap_png)), dtype=int)
        b = np.asarray(Image.open(io.BytesIO(batched.heatmap_png)), dtype=int)
        assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layer": "layer9"}, "accepted: conv1"),
        ({"method": explainer_pb2.CAM_METHOD_CAM, "layer": "layer2"}, "last conv block"),
        ({"target_class_id": 10}, "0..9"),
        ({"target_label": "zebra"}, "unknown target label 'zebra'"),
        ({"alpha": 1.5}, "between 0 and 1"),
        ({"method": 42}, "accepted: cam, gradcam, gradcampp"),
        ({"colormap": 42}, "accepted: jet"),
        ({"image": b"GIF89a...."}, "GIF images are not accepted"),
        ({"overlay_max_side": 63}, "overlay_max_side must be between 64 and 2048"),
        ({"overlay_max_side": 2049}, "overlay_max_side must be between 64 and 2048"),
        ({"overlay_max_side": -1}, "or 0 for the default 640"),
        ({"overlay_format": 42}, "overlay_format 42 is not a known value; accepted: jpeg, png"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_accepted_values(
    explain: tuple[explainer_pb2_grpc.ExplainerStub, ModelStore],
    bus_jpeg: bytes,
    fields: dict[str, object],
    message: str,
) -> None:
    stub, _ = explain
    with pytest.raises(grpc.RpcError) as info:
        stub.Explain(explainer_pb2.ExplainRequest(**{"image": bus_jpeg, **fields}), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert stub.Explain(explainer_pb2.ExplainRequest(image=bus_jpeg), timeout=30).heatmap_png


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_thousand_requests_do_not_grow_memory_or_leave_hooks(store: ModelStore) -> None:
    torch.manual_seed(0)
    meta = ModelMetadata("smallcnn", ["a", "b", "c"], resize_size=72, input_size=64)
    publish_state_dict(store, "small", build_model("smallcnn", 3).state_dict(), meta)
    engine = ExplainEngine(store, ExplainSettings(device="cpu", max_batch_delay_ms=1))
    engine.start()
    images = [encode(photo_with_object((96, 80)), "PNG"), encode(photo_with_object((80, 96)), "JPEG")]
    options = [
        ExplainOptions(method=m, layer=layer)
        for m, layer in (("gradcam", ""), ("gradcampp", "features.3"), ("cam", ""), ("gradcam", "features.0"))
    ]

    def one(i: int) -> None:
        engine.explain(images[i % 2], options[i % 4], timeout=30)

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(200)))  # warm-up: allocator pools, caches
            gc.collect()
            before = rss_bytes()
            list(pool.map(one, range(1000)))
        gc.collect()
        growth = rss_bytes() - before
        assert growth < 20 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB over 1000 requests"
        _, _, loaded = engine.registry.get("small")
        assert all(not m._forward_hooks for m in loaded.module.modules())
    finally:
        engine.close()
