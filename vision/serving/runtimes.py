"""Which runtime runs a classifier's forward pass: eager torch, or its ONNX export on OpenVINO or onnxruntime.

``auto`` is OpenVINO on the CPU when it is installed (else onnxruntime, else torch) and torch on CUDA. A
converted model serves only after it agrees with torch on a fixed seeded batch (`check_parity`); when the
conversion fails or it disagrees, that version is served by torch and the reason is reported
(`ServedAs.fallback`). Precision (fp32, bf16, fp16) is the converted runtime's inference precision; torch
keeps its own (float32 on the CPU, the ``half`` setting on CUDA).

Precision ``auto`` is bf16 for a classifier on OpenVINO where the CPU computes bf16 natively (AVX512-BF16 or
AMX: OpenVINO's own default there), provided the version's probabilities on the parity batch (seeded noise
and real photos) stay within ``prob_tolerance`` of torch's; a version that misses it is served in fp32 by the
same runtime, with the reason. Everywhere else ``auto`` is fp32.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from vision.image.preprocess import Preprocessing
from vision.models.export import INPUT_NAME, OUTPUT_NAMES, onnx_for, openvino_ir_for
from vision.models.store import ModelVersion
from vision.settings import ClassificationServiceSettings

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
CONVERTED = ("openvino", "onnxruntime")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Below fp32 a logit may move by this fraction of the batch's largest |logit| (fp16: 10-bit mantissa, bf16:
# 7-bit), and the top-1 class must agree wherever torch's top-1 leads the runner-up by more than twice that.
LOW_PRECISION_BOUNDS = {"bf16": 0.05, "fp16": 0.01}
PARITY_BATCH = 3  # not the export's batch (2): the dynamic batch dimension is checked too
PARITY_SEED = 0
PARITY_PHOTOS = Path(__file__).with_name("parity_photos")  # real photos (see the README there)
# The default bound on |Δprobability| for a precision chosen by auto (the setting's default).
AUTO_PROB_TOLERANCE: float = ClassificationServiceSettings.model_fields["auto_prob_tolerance"].default


@dataclass(frozen=True)
class ServedAs:
    """How a loaded version runs: runtime, precision, and why not as configured ('' when it is)."""

    runtime: str = "torch"
    precision: str = "fp32"
    fallback: str = ""


@dataclass(frozen=True)
class RuntimeOptions:
    """A service's runtime settings, with ``auto`` resolved for its device."""

    runtime: str
    precision: str = "fp32"
    cache_dir: Path = Path("var/runtime-cache")
    tolerance: float = 1e-3
    threads: int = 0  # 0: torch's intra-op threads (set from VISION_TORCH_THREADS)
    # Set when ``precision`` was chosen by auto: it must also keep probabilities within ``prob_tolerance``
    # of torch's, and a version that fails is served in fp32 by the same runtime (`fp32_instead`).
    auto_precision: bool = False
    prob_tolerance: float = AUTO_PROB_TOLERANCE

    @classmethod
    def resolve(
        cls,
        runtime: str,
        device: torch.device,
        precision: str,
        cache_dir: Path,
        tolerance: float,
        *,
        auto_bf16: bool = False,
        prob_tolerance: float = AUTO_PROB_TOLERANCE,
    ) -> RuntimeOptions:
        """``runtime`` as a concrete one for ``device``, and ``precision`` auto as a concrete one: bf16 when
        ``auto_bf16`` (the service allows it), the runtime is OpenVINO and the CPU computes bf16 natively
        (`native_bf16`), else fp32. ValueError for a converted runtime on CUDA."""
        if runtime not in RUNTIMES or precision not in PRECISIONS:
            raise ValueError(f"runtime must be one of {RUNTIMES} and precision one of {PRECISIONS}")
        if runtime == "auto":
            runtime = "torch" if device.type != "cpu" else available_fast_runtime()
        elif runtime in CONVERTED and device.type != "cpu":
            raise ValueError(
                f"runtime {runtime} runs on the CPU; set the device to cpu, or runtime auto/torch"
            )
        chosen = precision == "auto"
        if chosen:
            precision = "bf16" if auto_bf16 and runtime == "openvino" and native_bf16() else "fp32"
        return cls(
            runtime,
            precision,
            Path(cache_dir),
            tolerance,
            auto_precision=chosen and precision != "fp32",
            prob_tolerance=prob_tolerance,
        )

    def fp32_instead(self) -> RuntimeOptions:
        """These options in fp32: what serves a version that fails the check of an auto-chosen precision."""
        return replace(self, precision="fp32", auto_precision=False)

    @classmethod
    def from_settings(cls, settings: ClassificationServiceSettings, device: torch.device) -> RuntimeOptions:
        """The options a classification service's settings ask for on ``device``."""
        return cls.resolve(
            settings.runtime,
            device,
            settings.precision,
            settings.runtime_cache_dir,
            settings.parity_tolerance,
            auto_bf16=True,
            prob_tolerance=settings.auto_prob_tolerance,
        )


@cache
def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively on this CPU (AVX512-BF16 or AMX); False without
    OpenVINO."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # not installed, or no CPU plugin: nothing runs in bf16 here
        return False


def available_fast_runtime() -> str:
    """OpenVINO if importable, else onnxruntime, else torch."""
    for runtime in CONVERTED:
        if importlib.util.find_spec(runtime) is not None:
            return runtime
    return "torch"


class Runner(Protocol):
    """A converted model: (logits (N, K), features (N, C, h, w)), float32 CPU tensors, for a float32 batch."""

    runtime: str
    precision: str
    weights_bytes: int  # the size of its own copy of the weights (the files it was compiled from)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class OpenVinoRunner:
    """An ONNX export compiled by OpenVINO for the CPU; calls are serialised (one infer request)."""

    runtime = "openvino"

    def __init__(self, model_path: Path, precision: str, threads: int) -> None:
        import openvino as ov

        hint = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[precision]
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self.precision = precision
        self.weights_bytes = model_path.with_suffix(".bin").stat().st_size
        self._compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        with self._lock:  # infer() releases the GIL while it runs; decoding threads carry on meanwhile
            results = self._request.infer({INPUT_NAME: array})
            logits, features = (np.array(results[self._compiled.output(n)]) for n in OUTPUT_NAMES)
        return torch.from_numpy(logits), torch.from_numpy(features)


class OnnxRuntimeRunner:
    """An ONNX export on onnxruntime's CPU provider (fp32 only)."""

    runtime = "onnxruntime"
    precision = "fp32"

    def __init__(self, onnx_path: Path, threads: int) -> None:
        import onnxruntime as ort

        self.weights_bytes = onnx_path.stat().st_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        logits, features = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        return torch.from_numpy(np.asarray(logits)), torch.from_numpy(np.asarray(features))


def make_runner(version: ModelVersion, module: nn.Module, options: RuntimeOptions) -> Runner:
    """``version`` (``module`` holds its weights) converted for ``options.runtime`` (cached), compiled."""
    threads = options.threads or torch.get_num_threads()
    if options.runtime == "openvino":
        return OpenVinoRunner(openvino_ir_for(version, module, options.cache_dir), options.precision, threads)
    if options.runtime == "onnxruntime":
        if options.precision != "fp32":
            raise ValueError(f"onnxruntime serves fp32 only here, not {options.precision}")
        return OnnxRuntimeRunner(onnx_for(version, module, options.cache_dir), threads)
    raise ValueError(f"{options.runtime} is not a converted runtime")


@dataclass(frozen=True)
class Parity:
    """How a runner's outputs compare with torch's on the parity batch."""

    max_abs_diff: float  # largest |Δlogit|
    max_feature_diff: float  # largest |Δ| of the last conv block's output
    top1_agreement: float  # fraction of the batch with the same top-1 class
    bound: float  # the |Δ| allowed (logits; features relative to their own scale below fp32)
    failure: str  # '' when it passes
    max_prob_diff: float = 0.0  # largest |Δ| of the softmax probabilities


def parity_batch(
    input_size: int, batch: int = PARITY_BATCH, preprocessing: Preprocessing | None = None
) -> torch.Tensor:
    """The fixed batch runners are checked on: ``batch`` seeded standard-normal inputs (like normalised
    photos), then, with ``preprocessing``, the real photos of `PARITY_PHOTOS` as the model sees them."""
    generator = torch.Generator().manual_seed(PARITY_SEED)
    noise = torch.randn(batch, 3, input_size, input_size, generator=generator)
    if preprocessing is None:
        return noise
    return torch.cat([noise, torch.stack([preprocessing(photo) for photo in parity_photos()])])


@cache
def parity_photos() -> tuple[Image.Image, ...]:
    """The decoded photos of `PARITY_PHOTOS`, sorted by name."""
    photos = []
    for path in sorted(PARITY_PHOTOS.glob("*.jpg")):
        with Image.open(path) as image:
            photos.append(image.convert("RGB"))
    return tuple(photos)


def compare(
    reference: tuple[torch.Tensor, torch.Tensor],
    got: tuple[torch.Tensor, torch.Tensor],
    precision: str,
    tolerance: float,
    prob_tolerance: float | None = None,
) -> Parity:
    """Torch's (logits, features) vs a runner's: fp32 within ``tolerance`` absolute; below fp32, within the
    precision's `LOW_PRECISION_BOUNDS` fraction of the largest |value|, and top-1 where torch's is clear;
    with ``prob_tolerance``, softmax probabilities within it too."""
    logits, features = (t.float() for t in reference)
    logit_diff = float((got[0] - logits).abs().max())
    feature_diff = float((got[1] - features).abs().max())
    prob_diff = float((torch.softmax(got[0].float(), 1) - torch.softmax(logits, 1)).abs().max())
    top1 = got[0].argmax(1) == logits.argmax(1)
    agreement = float(top1.float().mean())
    if precision == "fp32":
        bound, feature_bound = tolerance, tolerance
    else:
        fraction = LOW_PRECISION_BOUNDS[precision]
        bound = fraction * max(1.0, float(logits.abs().max()))
        feature_bound = fraction * max(1.0, float(features.abs().max()))
    best2 = logits.topk(min(2, logits.shape[1]), dim=1).values
    lead = best2[:, 0] - best2[:, -1]
    failure = ""
    if not logit_diff <= bound:
        failure = f"max |Δlogit| {logit_diff:.3g} exceeds {bound:.3g} ({precision})"
    elif not feature_diff <= feature_bound:
        failure = f"max |Δfeature| {feature_diff:.3g} exceeds {feature_bound:.3g} ({precision})"
    elif precision != "fp32" and bool((~top1 & (lead > 2 * bound)).any()):
        failure = f"top-1 differs from torch where torch's lead exceeds {2 * bound:.3g} ({precision})"
    elif prob_tolerance is not None and not prob_diff <= prob_tolerance:
        failure = f"max |Δprobability| {prob_diff:.3g} exceeds {prob_tolerance:.3g} ({precision})"
    return Parity(logit_diff, feature_diff, agreement, bound, failure, prob_diff)


def check_parity(
    module: nn.Module,
    architecture: str,
    input_size: int,
    runner: Runner,
    options: RuntimeOptions,
    preprocessing: Preprocessing | None = None,
) -> Parity:
    """Run torch and ``runner`` on the parity batch (with the photos when ``preprocessing`` is given) and
    compare them (`compare`; the probability bound applies to a precision chosen by auto)."""
    from vision.models.export import WithFeatures

    batch = parity_batch(input_size, preprocessing=preprocessing)
    with torch.inference_mode():
        reference = WithFeatures(module, architecture)(batch.to(next(module.parameters()).device))
    reference = (reference[0].cpu(), reference[1].cpu())
    prob_tolerance = options.prob_tolerance if options.auto_precision else None
    return compare(reference, runner(batch), options.precision, options.tolerance, prob_tolerance)
