"""The CUDA paths against the CPU paths CI tests, on real photos and real models made here. Skipped without
CUDA (CI never has a GPU); `benchmarks/gpu_suite.sh` runs them on a GPU machine.

Stated tolerances (probabilities of a seeded 10-class ResNet18; heatmaps in [0, 1]):

* classifier fp16 + channels_last vs fp32 on the same GPU: top-1 equal, max |Δprob| <= 1e-2; fp32 on the
  GPU vs the CPU: top-1 equal, max |Δprob| <= 2e-3 (cuDNN may run fp32 convolutions in TF32).
* explain (fp32 on CUDA, as explain_svc loads it) vs the CPU: same target class, max |Δprob| <= 2e-3,
  heatmap max |Δ| <= 0.05, mean |Δ| <= 5e-3, for CAM, Grad-CAM and Grad-CAM++ at layer4 and layer3.
* batch decode with nvJPEG vs `decode_image` + `Preprocessing`: per image mean |Δ| <= 2 uint8 levels (the
  bound torchvision's own tests accept for nvJPEG against libjpeg), and the model's top-1 equal with max
  |Δprob| <= 2e-2 (the model in fp32 on the CPU, so only the decode differs).
* detector fp16 vs the CPU in fp32: of the 10 most confident CPU boxes, at least 8 have a GPU box of the
  same class with IoU >= 0.9 and |Δconfidence| <= 0.05.

Each test prints what it measured (``pytest -s`` shows it; the GPU suite passes -s).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch import nn

from classifier_svc.config import ClassifierSettings
from classifier_svc.model import ClassifierEngine
from detector_svc.checkpoints import import_yolo_checkpoint
from detector_svc.config import DetectorSettings
from detector_svc.model import DetectorEngine
from detector_svc.options import DetectOptions
from explain_svc.cam import METHODS, explain_batch
from explain_svc.config import ExplainSettings
from explain_svc.model import ExplainEngine
from tests.conftest import encode, publish_random_model
from tests.support.detector import make_yolo_checkpoint
from tests.support.digits import write_image_folder
from tests.test_batch_decode import PHOTOS, cpu_path, levels
from trainer_svc.training import loop, resume
from trainer_svc.training.config import TrainConfig
from trainer_svc.training.data import load_image_folder
from trainer_svc.training.loop import Runtime
from vision.errors import InvalidImage
from vision.image.batch_decode import BatchDecoder, CheckedJpeg
from vision.image.decode import decode_image
from vision.image.preprocess import Preprocessing
from vision.models.architectures import build_model
from vision.models.store import ModelStore, ModelVersion
from vision.serving.classifier import LoadedClassifier, load_for_serving

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (run benchmarks/gpu_suite.sh on a GPU machine)"
)

CUDA = torch.device("cuda:0")  # a device object needs no GPU; using it does
CPU = torch.device("cpu")
IMAGES = list(PHOTOS.values())


@pytest.fixture
def resnet(store: ModelStore) -> ModelVersion:
    return publish_random_model(store)  # seeded 10-class ResNet18


def batch_of_photos(model: LoadedClassifier) -> torch.Tensor:
    return cpu_path(IMAGES, model.preprocessing)


def test_fp16_channels_last_serving_matches_fp32_and_the_cpu(resnet: ModelVersion) -> None:
    half = load_for_serving(resnet, CUDA, half=True)
    full = load_for_serving(resnet, CUDA, half=False)
    cpu = load_for_serving(resnet, CPU, half=False)
    conv1 = half.module.conv1
    assert isinstance(conv1, nn.Conv2d)
    assert half.served_as.precision == "fp16" and conv1.weight.dtype == torch.float16
    assert conv1.weight.is_contiguous(memory_format=torch.channels_last)
    seen: list[tuple[torch.dtype, bool]] = []
    hook = conv1.register_forward_pre_hook(
        lambda _m, args: seen.append(
            (args[0].dtype, args[0].is_contiguous(memory_format=torch.channels_last))
        )
    )
    batch = batch_of_photos(cpu)
    try:
        p16 = half.predict(batch)
    finally:
        hook.remove()
    assert seen == [(torch.float16, True)]  # the input really went in as fp16 channels_last
    p32, pcpu = full.predict(batch), cpu.predict(batch)
    d16, d32 = float((p16 - p32).abs().max()), float((p32 - pcpu).abs().max())
    print(f"\nmeasured: fp16 vs fp32 max |Δprob| {d16:.2e}; CUDA fp32 vs CPU {d32:.2e}")
    assert torch.equal(p16.argmax(1), p32.argmax(1)) and torch.equal(p32.argmax(1), pcpu.argmax(1))
    assert d16 <= 1e-2
    assert d32 <= 2e-3


def test_the_classifier_engine_on_cuda_answers_as_on_the_cpu(store: ModelStore, resnet: ModelVersion) -> None:
    answers = {}
    for device in ("cuda", "cpu"):
        engine = ClassifierEngine(
            store, ClassifierSettings(model_dir=store.root, device=device, runtime="torch")
        )
        engine.start()
        try:
            answers[device] = [engine.classify(image, top_k=3).classes for image in IMAGES]
        finally:
            engine.close()
    for on_gpu, on_cpu in zip(answers["cuda"], answers["cpu"], strict=True):
        assert on_gpu[0][0] == on_cpu[0][0]
        assert abs(on_gpu[0][2] - on_cpu[0][2]) <= 1e-2


def test_amp_training_steps_of_the_trainer_lower_a_finite_loss(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "digits", size=64, per_class=16)
    split = load_image_folder(root, 0.2, seed=0, min_per_class=5)
    config = TrainConfig(
        model_name="digits", architecture="resnet18", pretrained=False, freeze_backbone=False, epochs=4,
        batch_size=16, lr=2e-3, img_size=64, horizontal_flip=False, dataset="image_folder", patience=10,
    )  # fmt: skip
    events: list[float] = []
    evaluation, _ = loop.main(  # type: ignore[misc]
        config,
        split,
        tmp_path / "run",
        runtime=Runtime(device=CUDA),
        report=lambda e: events.append(e.train_loss) if e.kind == "epoch" else None,
    )
    losses = [h["train_loss"] for h in evaluation.history]
    print(f"\nmeasured: AMP train loss per epoch {[round(x, 3) for x in losses]}")
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    assert events == pytest.approx(losses)  # the epoch events report the same figures
    # The run used AMP: its checkpoint holds the GradScaler's state, with a finite scale.
    scaler = resume.load_checkpoint(tmp_path / "run")["scaler"]  # type: ignore[index]
    assert scaler and math.isfinite(float(scaler["scale"])) and float(scaler["scale"]) > 0


def explain_engine(store: ModelStore, device: str) -> ExplainEngine:
    return ExplainEngine(store, ExplainSettings(model_dir=store.root, device=device, runtime="torch"))


@pytest.fixture
def explain_models(store: ModelStore, resnet: ModelVersion) -> Iterator[dict[str, LoadedClassifier]]:
    engines = {device: explain_engine(store, device) for device in ("cuda", "cpu")}
    yield {device: engine.load(resnet) for device, engine in engines.items()}
    for engine in engines.values():
        engine.close()


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_explanations_in_fp32_on_cuda_equal_the_cpus(
    explain_models: dict[str, LoadedClassifier], method: str, layer: str
) -> None:
    gpu, cpu = explain_models["cuda"], explain_models["cpu"]
    assert gpu.dtype == torch.float32  # explain_svc never serves fp16 (gradients of small weights)
    batch = batch_of_photos(cpu)
    targets: list[int | None] = [None] * len(batch)
    on_gpu = explain_batch(gpu.module, "resnet18", layer, METHODS[method], batch.to(CUDA), targets)
    on_cpu = explain_batch(cpu.module, "resnet18", layer, METHODS[method], batch, targets)
    worst = 0.0
    for a, b in zip(on_gpu, on_cpu, strict=True):
        assert a.target == b.target
        assert (a.probs - b.probs).abs().max() <= 2e-3
        diff = (a.heatmap - b.heatmap).abs()
        worst = max(worst, float(diff.max()))
        assert diff.max() <= 0.05 and diff.mean() <= 5e-3
    print(f"\nmeasured: {method} at {layer}: heatmap max |Δ| {worst:.2e}")


def test_batch_decode_with_nvjpeg_is_within_the_stated_tolerance() -> None:
    prep = Preprocessing()
    got = BatchDecoder(prep, CUDA)(IMAGES)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    want = cpu_path(IMAGES, prep)
    diff = levels(got.cpu() - want, prep)
    means = diff.mean(dim=(1, 2, 3))
    print(f"\nmeasured: nvJPEG vs CPU, uint8 levels: mean {means.tolist()}, max {float(diff.max()):.0f}")
    assert (means <= 2).all()
    torch.manual_seed(0)
    model = build_model("resnet18", 10).eval()
    with torch.inference_mode():
        a, b = model(got.cpu()).softmax(1), model(want).softmax(1)
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert (a - b).abs().max() <= 2e-2


def test_on_cuda_a_corrupt_jpeg_fails_alone_and_other_formats_use_the_cpu_path() -> None:
    prep = Preprocessing()
    decoder = BatchDecoder(prep, CUDA)
    bus, zidane_jpeg = PHOTOS["bus.jpg"], PHOTOS["zidane.jpg"]
    png = encode(Image.fromarray(data.chelsea()), "PNG")
    items = [decoder.prepare(d) for d in (zidane_jpeg, bus[: len(bus) // 2], png)]
    assert isinstance(items[1], CheckedJpeg) and isinstance(items[2], torch.Tensor)
    zidane, error, chelsea = decoder.decode(items)  # the batched nvJPEG call fails: one by one then
    with pytest.raises(InvalidImage) as expected:
        decode_image(bus[: len(bus) // 2])
    assert isinstance(error, InvalidImage) and str(error) == str(expected.value)
    assert isinstance(zidane, torch.Tensor) and zidane.device.type == "cuda"
    assert levels(zidane.cpu()[None] - cpu_path([zidane_jpeg], prep), prep).mean() <= 2
    assert isinstance(chelsea, torch.Tensor) and torch.equal(chelsea.cpu(), cpu_path([png], prep)[0])


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box ``a`` (4,) with each of ``b`` (N, 4), corners in pixels."""
    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2, y2 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_the_detector_on_cuda_in_half_precision_finds_the_cpus_boxes(
    store: ModelStore, tmp_path: Path
) -> None:
    import_yolo_checkpoint(store, make_yolo_checkpoint(tmp_path / "yolo11n.pt"), "yolo11n")
    found = {}
    for device in ("cuda", "cpu"):
        settings = DetectorSettings(
            model_dir=store.root, fetch_default=False, device=device, half=True, runtime="torch"
        )
        engine = DetectorEngine(store, settings)
        engine.start()
        try:
            found[device] = engine.detect(PHOTOS["bus.jpg"], DetectOptions()).boxes
            if device == "cuda":
                _, _, served = engine.registry.get("", "")
                assert served.yolo.predictor.model.fp16  # Ultralytics ran it in half precision
        finally:
            engine.close()
    gpu = np.array([[b.x1, b.y1, b.x2, b.y2, b.confidence, b.class_id] for b in found["cuda"]]).reshape(-1, 6)
    matched = 0
    for box in found["cpu"][:10]:
        same = gpu[gpu[:, 5] == box.class_id]
        if len(same):
            overlap = iou(np.array([box.x1, box.y1, box.x2, box.y2]), same[:, :4])
            best = int(np.argmax(overlap))
            matched += int(overlap[best] >= 0.9 and abs(same[best, 4] - box.confidence) <= 0.05)
    print(
        f"\nmeasured: detector fp16 matched {matched} of the top 10 CPU boxes "
        f"({len(found['cpu'])} boxes on the CPU, {len(gpu)} on the GPU)"
    )
    assert len(found["cpu"]) >= 10  # the test model finds boxes on the bus
    assert matched >= 8
