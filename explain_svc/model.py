"""The explain engine, pure torch: hot-reloaded models, decoding in the caller's thread, batched CAMs."""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from explain_svc.cam import METHODS, CamResult, check_request, explain_batch
from explain_svc.config import MIN_OVERLAY_SIDE, ExplainSettings
from explain_svc.overlay import (
    DEFAULT_ALPHA,
    check_style,
    encode_overlay,
    heatmap_png,
    render_overlay,
    shrink_to_fit,
)
from vision.choices import CAM_METHODS, COLORMAPS, OVERLAY_FORMATS
from vision.errors import InvalidArgument
from vision.image.decode import decode_image
from vision.models.store import ModelStore, ModelVersion
from vision.serving.classifier import LoadedClassifier, load_for_serving, top_classes
from vision.serving.engine import Answered, ServingEngine
from vision.serving.runtimes import RuntimeOptions


@dataclass(frozen=True)
class ExplainOptions:
    """What to explain and how to draw it. ``target`` is a class id, a label, or None (the prediction)."""

    method: str = CAM_METHODS.default
    layer: str = ""
    target: int | str | None = None
    colormap: str = COLORMAPS.default
    alpha: float = DEFAULT_ALPHA
    top_k: int = 5
    overlay_side: int = 0  # longest side of the overlay; 0: the service's overlay_side setting
    overlay_format: str = ""  # "jpeg" or "png"; empty: the service's overlay_format setting


@dataclass(frozen=True)
class Explanation:
    top: list[tuple[int, str, float]]
    target: tuple[int, str, float]
    method: str
    layer: str
    heatmap_png: bytes
    overlay: bytes
    overlay_format: str  # "jpeg" or "png"
    answered: Answered


def resolve_target(target: int | str | None, class_names: list[str]) -> int | None:
    """A class id from an id or a label; InvalidArgument naming what is accepted."""
    if target is None:
        return None
    if isinstance(target, int):
        if not 0 <= target < len(class_names):
            raise InvalidArgument(
                f"target class {target} is out of range: the model has classes 0..{len(class_names) - 1}"
            )
        return target
    if target in class_names:
        return class_names.index(target)
    examples = ", ".join(repr(n) for n in class_names[:5])
    more = f", ... ({len(class_names)} labels)" if len(class_names) > 5 else ""
    raise InvalidArgument(f"unknown target label {target!r}; accepted: a class id or one of {examples}{more}")


class ExplainEngine(ServingEngine[LoadedClassifier, tuple[torch.Tensor, int | None], CamResult]):
    """Decodes and checks requests in the caller's thread, batches the CAM computations, renders here."""

    name = "explain"
    settings: ExplainSettings

    def __init__(self, store: ModelStore, settings: ExplainSettings) -> None:
        super().__init__(store, settings)
        self.overlay_side = settings.overlay_side
        self.max_overlay_side = settings.max_overlay_side
        self.runtime = RuntimeOptions.from_settings(settings, self.device)

    def overlay_side_for(self, requested: int) -> int:
        """The overlay's longest side for a request asking for ``requested`` (0: the service's default);
        InvalidArgument naming the accepted range otherwise."""
        if requested == 0:
            return self.overlay_side
        if not MIN_OVERLAY_SIDE <= requested <= self.max_overlay_side:
            raise InvalidArgument(
                f"overlay_max_side must be between {MIN_OVERLAY_SIDE} and {self.max_overlay_side} "
                f"(VISION_EXPLAIN_MAX_OVERLAY_SIDE), or 0 for the default {self.overlay_side}; "
                f"got {requested}"
            )
        return requested

    def load(self, version: ModelVersion) -> LoadedClassifier:
        # float32 even on CUDA: gradients of half-precision activations lose the small weights.
        return load_for_serving(version, self.device, half=False, runtime=self.runtime)

    def run_batch(self, key: Hashable, items: Sequence[tuple[torch.Tensor, int | None]]) -> list[CamResult]:
        assert isinstance(key, tuple)
        model, method, layer = key
        batch = torch.stack([tensor for tensor, _ in items]).to(model.device)
        return explain_batch(
            model.module,
            model.version.metadata.architecture,
            layer,
            METHODS[method],
            batch,
            [target for _, target in items],
            runner=model.runner,
        )

    def explain(
        self,
        image: bytes,
        options: ExplainOptions,
        *,
        model_name: str = "",
        version: str = "",
        timeout: float | None = None,
    ) -> Explanation:
        """Validate, decode here (at most ``max_concurrent_decodes`` at once), batch the CAM computation with
        other callers', render the images here. ``timeout`` (seconds) bounds the whole call."""
        start = time.perf_counter()
        check_style(options.colormap, options.alpha)
        overlay_side = self.overlay_side_for(options.overlay_side)
        overlay_format = OVERLAY_FORMATS.check(options.overlay_format or self.settings.overlay_format)
        name, resolved_version, model = self.registry.get(model_name, version)
        _, layer = check_request(
            model.module, model.version.metadata.architecture, options.method, options.layer
        )
        target = resolve_target(options.target, model.class_names)
        deadline = self.deadline_after(timeout)
        with self.decode_slot(deadline):
            picture = decode_image(image, self.image_limits)
            tensor = model.preprocessing(picture)
            # Keep only what the overlay is drawn on (shrunk to fit overlay_side), not the full photo.
            box = model.preprocessing.crop_box(picture.width, picture.height)
            picture, factor = shrink_to_fit(picture, overlay_side)
            box = (box[0] / factor, box[1] / factor, box[2] / factor, box[3] / factor)
        decode_ms = (time.perf_counter() - start) * 1000
        batched = self.batcher.run(
            (model, options.method, layer), (tensor, target), timeout=self.time_left(deadline)
        )
        answered = self.answered(name, resolved_version, decode_ms, batched)
        result = batched.value
        names = model.class_names
        with self.telemetry.encoding():
            # in place: ``picture`` is this request's own (decoded here, its tensor already made)
            overlay = render_overlay(
                picture, result.heatmap, box, colormap=options.colormap, alpha=options.alpha, in_place=True
            )
            encoded = encode_overlay(overlay, overlay_format, self.settings.overlay_jpeg_quality)
            heatmap = heatmap_png(result.heatmap)
        return Explanation(
            top=top_classes(result.probs, options.top_k, names),
            target=(result.target, names[result.target], float(result.probs[result.target])),
            method=options.method,
            layer=layer,
            heatmap_png=heatmap,
            overlay=encoded,
            overlay_format=overlay_format,
            answered=answered,
        )
