"""Which runtime runs a classifier's forward pass: eager torch, or its ONNX export on OpenVINO or onnxruntime.

``auto`` is OpenVINO on the CPU when it is installed (else onnxruntime, else torch) and torch on CUDA. A
converted model serves only after it agrees with torch on a fixed seeded batch (`check_parity`); when the
conversion fails or it disagrees, that version is served by torch and the reason is reported
(`ServedAs.fallback`). Precision (fp32, bf16, fp16) is the converted runtime's inference precision; torch
keeps its own (float32 on the CPU, the ``half`` setting on CUDA).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from vision.models.export import INPUT_NAME, OUTPUT_NAMES, onnx_for, openvino_ir_for
from vision.models.store import ModelVersion
from vision.settings import ClassificationServiceSettings

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
CONVERTED = ("openvino", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16")
# Below fp32 a logit may move by this fraction of the batch's largest |logit| (fp16: 10-bit mantissa, bf16:
# 7-bit), and the top-1 class must agree wherever torch's top-1 leads the runner-up by more than twice that.
LOW_PRECISION_BOUNDS = {"bf16": 0.05, "fp16": 0.01}
PARITY_BATCH = 3  # not the export's batch (2): the dynamic batch dimension is checked too
PARITY_SEED = 0


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

    @classmethod
    def resolve(
        cls, runtime: str, device: torch.device, precision: str, cache_dir: Path, tolerance: float
    ) -> RuntimeOptions:
        """``runtime`` as a concrete one for ``device``; ValueError for a converted runtime on CUDA."""
        if runtime not in RUNTIMES or precision not in PRECISIONS:
            raise ValueError(f"runtime must be one of {RUNTIMES} and precision one of {PRECISIONS}")
        if runtime == "auto":
            runtime = "torch" if device.type != "cpu" else available_fast_runtime()
        elif runtime in CONVERTED and device.type != "cpu":
            raise ValueError(
                f"runtime {runtime} runs on the CPU; set the device to cpu, or runtime auto/torch"
            )
        return cls(runtime, precision, Path(cache_dir), tolerance)

    @classmethod
    def from_settings(cls, settings: ClassificationServiceSettings, device: torch.device) -> RuntimeOptions:
        """The options a classification service's settings ask for on ``device``."""
        return cls.resolve(
            settings.runtime,
            device,
            settings.precision,
            settings.runtime_cache_dir,
            settings.parity_tolerance,
        )


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


def parity_batch(input_size: int, batch: int = PARITY_BATCH) -> torch.Tensor:
    """The fixed seeded batch runners are checked on: standard normal, like normalised photos."""
    generator = torch.Generator().manual_seed(PARITY_SEED)
    return torch.randn(batch, 3, input_size, input_size, generator=generator)


def compare(
    reference: tuple[torch.Tensor, torch.Tensor],
    got: tuple[torch.Tensor, torch.Tensor],
    precision: str,
    tolerance: float,
) -> Parity:
    """Torch's (logits, features) vs a runner's: fp32 within ``tolerance`` absolute; below fp32, within the
    precision's `LOW_PRECISION_BOUNDS` fraction of the largest |value|, and top-1 where torch's is clear."""
    logits, features = (t.float() for t in reference)
    logit_diff = float((got[0] - logits).abs().max())
    feature_diff = float((got[1] - features).abs().max())
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
    return Parity(logit_diff, feature_diff, agreement, bound, failure)


def check_parity(
    module: nn.Module, architecture: str, input_size: int, runner: Runner, options: RuntimeOptions
) -> Parity:
    """Run torch and ``runner`` on the parity batch and compare them (`compare`)."""
    from vision.models.export import WithFeatures

    batch = parity_batch(input_size)
    with torch.inference_mode():
        reference = WithFeatures(module, architecture)(batch.to(next(module.parameters()).device))
    reference = (reference[0].cpu(), reference[1].cpu())
    return compare(reference, runner(batch), options.precision, options.tolerance)
