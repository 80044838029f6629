"""Classification models in memory, ready to serve: shared by classifier_svc and explain_svc."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from vision.image.batch_decode import BatchDecoder
from vision.image.preprocess import Preprocessing
from vision.models.store import ModelVersion
from vision.models.weights import load_classifier
from vision.serving.runtimes import (
    Parity,
    Runner,
    RuntimeOptions,
    ServedAs,
    check_parity,
    make_runner,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedClassifier:
    """A stored version in memory, ready for batched inference on ``device``.

    ``module`` is always the torch model (explanations at inner layers need its backward pass); ``runner``,
    when set, is the converted model that serves forward passes instead (`vision.serving.runtimes`).
    ``decoder``, when set, decodes requests' JPEGs a batch at a time on ``device`` (`BatchDecoder`).
    """

    version: ModelVersion
    module: nn.Module
    preprocessing: Preprocessing
    device: torch.device
    dtype: torch.dtype
    runner: Runner | None = None
    served_as: ServedAs = field(default_factory=ServedAs)
    parity: Parity | None = None
    decoder: BatchDecoder | None = None

    @property
    def class_names(self) -> list[str]:
        return self.version.metadata.class_names

    @property
    def resident_bytes(self) -> int:
        """Memory the version holds: the torch module's tensors plus the converted runtime's weights."""
        tensors = [*self.module.parameters(), *self.module.buffers()]
        own = sum(t.numel() * t.element_size() for t in tensors)
        return own + (self.runner.weights_bytes if self.runner is not None else 0)

    @torch.inference_mode()
    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities, float32 on the CPU, shape (N, num_classes), for a (N, 3, H, W) batch."""
        if self.runner is not None:
            return torch.softmax(self.runner(batch)[0], dim=1)
        x = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.to(dtype=self.dtype, memory_format=torch.channels_last)
        return torch.softmax(self.module(x).float(), dim=1).cpu()


def load_for_serving(
    version: ModelVersion,
    device: torch.device,
    half: bool = True,
    warmup_batch: int = 1,
    runtime: RuntimeOptions | None = None,
) -> LoadedClassifier:
    """Load and warm up ``version``: first-call allocations and kernel choices happen here, not in calls.

    With a converted ``runtime`` the version is exported (or taken from the cache), checked against torch,
    and served by it; when either step fails torch serves it and ``served_as.fallback`` says why.
    """
    meta = version.metadata
    module = load_classifier(version, device).requires_grad_(False)  # no parameter ever needs a gradient
    dtype = torch.float32
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if half:
            module, dtype = module.half(), torch.float16
    prep = Preprocessing(meta.resize_size, meta.input_size, tuple(meta.mean), tuple(meta.std))
    loaded = LoadedClassifier(version, module, prep, device, dtype)
    loaded.served_as = ServedAs("torch", "fp16" if dtype == torch.float16 else "fp32")
    if runtime is not None and runtime.runtime != "torch":
        attach_runner(loaded, runtime)
    loaded.predict(torch.zeros(warmup_batch, 3, meta.input_size, meta.input_size))
    return loaded


def attach_runner(loaded: LoadedClassifier, options: RuntimeOptions) -> None:
    """Serve ``loaded`` by the converted runtime ``options`` asks for, if it converts and passes parity.

    A precision chosen by auto that fails its check is retried in fp32 on the same runtime (the reason is
    kept in ``served_as.fallback``); any other failure leaves torch serving, with the reason."""
    version = loaded.version
    meta = version.metadata
    wanted = f"{options.runtime} {options.precision}"
    try:
        runner = make_runner(version, loaded.module, options)
        parity = check_parity(
            loaded.module, meta.architecture, meta.input_size, runner, options, loaded.preprocessing
        )
    except Exception as exc:  # any conversion failure: torch serves, the reason is reported
        why = f"{wanted} unavailable ({type(exc).__name__}: {exc}); torch serves this version"
        log.warning("%s version %s: %s", version.name, version.version, why, exc_info=exc)
        loaded.served_as = ServedAs("torch", loaded.served_as.precision, why)
        return
    loaded.parity = parity
    if parity.failure and options.auto_precision:
        why = f"precision auto: {wanted} failed the parity check against torch: {parity.failure}"
        log.warning("%s version %s: %s; fp32 serves it", version.name, version.version, why)
        attach_runner(loaded, options.fp32_instead())
        if loaded.runner is not None:
            loaded.served_as = ServedAs(options.runtime, "fp32", f"{why}; fp32 serves this version")
        return
    if parity.failure:
        why = f"{wanted} failed the parity check against torch: {parity.failure}; torch serves this version"
        log.warning("%s version %s: %s", version.name, version.version, why)
        loaded.served_as = ServedAs("torch", loaded.served_as.precision, why)
        return
    loaded.runner = runner
    loaded.served_as = ServedAs(options.runtime, options.precision)
    log.info(
        "%s version %s served by %s (parity with torch: max |Δlogit| %.3g, max |Δprobability| %.3g, "
        "top-1 agreement %.0f%%)",
        version.name,
        version.version,
        wanted,
        parity.max_abs_diff,
        parity.max_prob_diff,
        parity.top1_agreement * 100,
    )


def top_classes(probs: torch.Tensor, k: int, names: list[str]) -> list[tuple[int, str, float]]:
    """The ``k`` best (class_id, label, probability) of a 1-D ``probs``, highest first; ``k`` is clamped."""
    scores, indices = torch.topk(probs, min(k, probs.numel()))
    return [(int(i), names[int(i)], float(s)) for s, i in zip(scores, indices, strict=True)]
