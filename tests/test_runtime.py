"""The converted runtimes (OpenVINO, onnxruntime) against eager torch: parity, the cached export, fallback.

Real models (seeded, random init), real exports, real runtimes; no service here
(tests/test_runtime_services.py has the servers).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from explain_svc.cam import METHODS, explain_batch
from tests.conftest import publish_random_model
from vision.image.decode import decode_image
from vision.image.preprocess import Preprocessing
from vision.models.derived import (
    DERIVED_DIR,
    STALE_BUILD_S,
    STAMP_SUFFIX,
    TMP_PREFIX,
    remove_dead_builds,
)
from vision.models.export import ONNX_FILE, OPENVINO_FILES
from vision.models.store import ModelStore, ModelVersion
from vision.serving.classifier import LoadedClassifier, load_for_serving
from vision.serving.registry import estimated_size, resident_size
from vision.serving.runtimes import (
    LOW_PRECISION_BOUNDS,
    RuntimeOptions,
    available_fast_runtime,
    compare,
    native_bf16,
    parity_batch,
    parity_photos,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModelVersion, Path]]:
    """One seeded resnet18 in a store, and a cache directory, shared by this module's tests."""
    root = tmp_path_factory.mktemp("runtime")
    yield publish_random_model(ModelStore(root / "models")), root / "cache"


def load(
    version: ModelVersion, cache: Path, runtime: str, precision: str = "fp32", **kw: float
) -> LoadedClassifier:
    return load_for_serving(version, CPU, runtime=RuntimeOptions(runtime, precision, cache, **kw))


def photo_batch(loaded: LoadedClassifier, *photos: bytes) -> torch.Tensor:
    return torch.stack([loaded.preprocessing(decode_image(p)) for p in photos])


@pytest.mark.parametrize(
    ("runtime", "precision", "prob_bound"),
    [
        ("openvino", "fp32", 1e-5),
        ("onnxruntime", "fp32", 1e-5),
        ("openvino", "bf16", 0.03),
        ("openvino", "fp16", 0.01),
    ],
)
def test_each_runtime_serves_real_photos_as_torch_does_within_its_precisions_bound(
    stored: tuple[ModelVersion, Path],
    bus_jpeg: bytes,
    zidane_jpeg: bytes,
    runtime: str,
    precision: str,
    prob_bound: float,
) -> None:
    version, cache = stored
    fast = load(version, cache, runtime, precision)
    assert fast.runner is not None
    assert (fast.served_as.runtime, fast.served_as.precision, fast.served_as.fallback) == (
        runtime,
        precision,
        "",
    )
    assert fast.parity is not None and not fast.parity.failure
    if precision == "fp32":
        assert fast.parity.max_abs_diff <= 1e-3
    else:  # the stated bound: a fraction of the largest |logit|, and top-1 agreement on the parity batch
        assert fast.parity.max_abs_diff <= LOW_PRECISION_BOUNDS[precision] * 3
    batch = photo_batch(fast, bus_jpeg, zidane_jpeg, bus_jpeg)  # batch 3: the export's batch is dynamic
    with torch.inference_mode():
        expected = torch.softmax(fast.module(batch), dim=1)
    got = fast.predict(batch)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= prob_bound
    if precision == "fp32":
        assert torch.equal(got.argmax(1), expected.argmax(1))


def test_runtime_torch_is_the_eager_path_with_no_export(tmp_path: Path, bus_jpeg: bytes) -> None:
    version = publish_random_model(ModelStore(tmp_path / "models"), arch="smallcnn")
    eager = load(version, tmp_path / "cache", "torch")
    assert eager.runner is None and eager.served_as.runtime == "torch" and eager.served_as.fallback == ""
    batch = photo_batch(eager, bus_jpeg)
    with torch.inference_mode():
        expected = torch.softmax(eager.module(batch).float(), dim=1)
    assert torch.equal(eager.predict(batch), expected)
    assert not (version.path / DERIVED_DIR).exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("runtime", "files", "converter"),
    [("openvino", OPENVINO_FILES, "openvino"), ("onnxruntime", (ONNX_FILE,), "onnx")],
)
def test_the_conversion_is_cached_beside_the_version_stamped_and_rebuilt_when_stale(
    stored: tuple[ModelVersion, Path], runtime: str, files: tuple[str, ...], converter: str
) -> None:
    version, cache = stored
    load(version, cache, runtime)
    derived = version.path / DERIVED_DIR
    artifact = derived / files[0]
    stamp_path = derived / (files[0] + STAMP_SUFFIX)
    stamp = json.loads(stamp_path.read_text())
    assert stamp["weights_sha256"] == version.metadata.weights_sha256
    assert stamp["torch"] == torch.__version__ and converter in stamp
    assert all((derived / f).is_file() for f in files)
    built = artifact.stat().st_mtime_ns
    load(version, cache, runtime)  # current: reused
    assert artifact.stat().st_mtime_ns == built
    stamp_path.write_text(json.dumps({**stamp, "torch": "0.0"}))  # as if converted under an older torch
    rebuilt = load(version, cache, runtime)
    assert rebuilt.served_as.runtime == runtime
    assert json.loads(stamp_path.read_text()) == stamp and artifact.stat().st_mtime_ns != built
    assert not [p for p in derived.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_a_failed_parity_check_falls_back_to_torch_and_says_why(
    stored: tuple[ModelVersion, Path], bus_jpeg: bytes
) -> None:
    version, cache = stored
    strict = load(version, cache, "openvino", tolerance=0.0)  # no converted model matches torch to the bit
    assert strict.runner is None
    assert strict.served_as.runtime == "torch"
    assert "parity" in strict.served_as.fallback and "openvino fp32" in strict.served_as.fallback
    eager = load(version, cache, "torch")
    batch = photo_batch(strict, bus_jpeg)
    assert torch.equal(strict.predict(batch), eager.predict(batch))


def test_a_model_that_cannot_be_exported_anywhere_is_served_by_torch(tmp_path: Path) -> None:
    version = publish_random_model(ModelStore(tmp_path / "models"), arch="smallcnn")
    (version.path / DERIVED_DIR).write_text("not a directory")  # no export beside the version ...
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("")  # ... nor in the cache
    loaded = load(version, blocked, "openvino")
    assert loaded.runner is None and loaded.served_as.runtime == "torch"
    assert "OSError" in loaded.served_as.fallback and "torch serves" in loaded.served_as.fallback


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp"])
def test_final_layer_maps_on_the_fast_runtime_equal_torchs_backward_pass(
    stored: tuple[ModelVersion, Path], bus_jpeg: bytes, zidane_jpeg: bytes, method: str
) -> None:
    """At layer4 the gradients of the target logit w.r.t. the feature map are W_fc[t] / (h w): the converted
    model's (logits, features) give the maps torch's autograd gives, within 1e-4 (maps are in [0, 1])."""
    version, cache = stored
    fast = load(version, cache, "openvino")
    batch = photo_batch(fast, bus_jpeg, zidane_jpeg)
    targets = [None, 3]
    converted = explain_batch(
        fast.module, "resnet18", "layer4", METHODS[method], batch, targets, runner=fast.runner
    )
    backward = explain_batch(
        fast.module, "resnet18", "layer4", METHODS[method], batch, targets, force_backward=True
    )
    for a, b in zip(converted, backward, strict=True):
        assert a.target == b.target
        assert float((a.heatmap - b.heatmap).abs().max()) <= 1e-4
        assert float((a.probs - b.probs).abs().max()) <= 1e-5


def test_auto_is_the_fast_runtime_on_the_cpu_and_torch_on_cuda(tmp_path: Path) -> None:
    assert available_fast_runtime() == "openvino"  # installed with the model services' extras
    resolved = RuntimeOptions.resolve("auto", CPU, "fp32", tmp_path, 1e-3)
    assert resolved.runtime == "openvino"
    assert RuntimeOptions.resolve("auto", torch.device("cuda:0"), "fp32", tmp_path, 1e-3).runtime == "torch"
    with pytest.raises(ValueError, match="runs on the CPU"):
        RuntimeOptions.resolve("openvino", torch.device("cuda:0"), "fp32", tmp_path, 1e-3)


def test_auto_precision_is_bf16_only_for_classifiers_on_openvino_where_the_cpu_computes_bf16(
    tmp_path: Path,
) -> None:
    native = "bf16" if native_bf16() else "fp32"
    classifier = RuntimeOptions.resolve("auto", CPU, "auto", tmp_path, 1e-3, auto_bf16=True)
    assert (classifier.runtime, classifier.precision) == ("openvino", native)
    assert classifier.auto_precision == (native == "bf16")  # its probabilities get checked too
    assert classifier.fp32_instead().precision == "fp32" and not classifier.fp32_instead().auto_precision
    detector = RuntimeOptions.resolve("auto", CPU, "auto", tmp_path, 1e-3)  # no auto_bf16: detectors
    onnx = RuntimeOptions.resolve("onnxruntime", CPU, "auto", tmp_path, 1e-3, auto_bf16=True)
    cuda = RuntimeOptions.resolve("auto", torch.device("cuda:0"), "auto", tmp_path, 1e-3, auto_bf16=True)
    explicit = RuntimeOptions.resolve("openvino", CPU, "bf16", tmp_path, 1e-3, auto_bf16=True)
    assert [o.precision for o in (detector, onnx, cuda, explicit)] == ["fp32", "fp32", "fp32", "bf16"]
    assert not any(o.auto_precision for o in (detector, onnx, cuda, explicit))  # asked for: not retried


def test_the_parity_batch_holds_seeded_noise_and_the_real_photos_as_the_model_sees_them() -> None:
    prep = Preprocessing()
    batch = parity_batch(224, preprocessing=prep)
    photos = parity_photos()
    assert len(photos) == 3 and batch.shape == (3 + len(photos), 3, 224, 224)
    assert torch.equal(batch[:3], parity_batch(224))
    for row, photo in zip(batch[3:], photos, strict=True):
        assert torch.equal(row, prep(photo))
        assert photo.mode == "RGB" and min(photo.size) >= 224


def test_a_probability_bound_fails_a_low_precision_result_that_the_logit_bounds_pass() -> None:
    logits = torch.tensor([[4.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    features = torch.ones(2, 4, 2, 2)
    moved = logits + torch.tensor([[0.05, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loose = compare((logits, features), (moved, features), "bf16", 1e-3)
    assert loose.failure == "" and loose.max_prob_diff > 2e-3
    strict = compare((logits, features), (moved, features), "bf16", 1e-3, prob_tolerance=2e-3)
    assert strict.failure.startswith("max |Δprobability|")


def test_a_converted_version_counts_its_runtimes_copy_in_the_memory_budget(
    stored: tuple[ModelVersion, Path],
) -> None:
    version, cache = stored
    eager = load(version, cache / "budget", "torch")
    fast = load(version, cache / "budget", "openvino")
    weights = version.weights_path.stat().st_size
    assert eager.resident_bytes == pytest.approx(weights, rel=0.02)
    assert fast.resident_bytes == pytest.approx(2 * weights, rel=0.05)
    assert resident_size(fast, estimated_size(version)) == fast.resident_bytes


def test_a_dead_builds_leftovers_are_removed_and_a_live_ones_kept(
    stored: tuple[ModelVersion, Path],
) -> None:
    version, cache = stored
    load(version, cache, "openvino")  # builds beside the version
    derived = version.path / DERIVED_DIR
    dead, live = derived / f"{TMP_PREFIX}dead", derived / f"{TMP_PREFIX}live"
    for leftover in (dead, live):
        leftover.mkdir()
        (leftover / OPENVINO_FILES[1]).write_bytes(b"half-written")
    old = time.time() - STALE_BUILD_S - 60
    os.utime(dead, (old, old))
    assert remove_dead_builds(derived) == [dead]
    assert not dead.exists() and live.is_dir()
