"""The explain engine, pure torch: hot-reloaded models, decoding in the caller's thread, batched CAMs."""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from explain_svc.cam import METHODS, CamResult, check_request, explain_batch
from explain_svc.config import ExplainSettings
from explain_svc.overlay import DEFAULT_ALPHA, check_style, heatmap_png, render_overlay, scale_to_fit
from vision.choices import CAM_METHODS, COLORMAPS
from vision.errors import InvalidArgument
from vision.image.decode import decode_image
from vision.image.png import encode_png
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


@dataclass(frozen=True)
class Explanation:
    top: list[tuple[int, str, float]]
    target: tuple[int, str, float]
    method: str
    layer: str
    heatmap_png: bytes
    overlay_png: bytes
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
        self.max_overlay_side = settings.max_overlay_side
        self.runtime = RuntimeOptions.from_settings(settings, self.device)

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
        name, resolved_version, model = self.registry.get(model_name, version)
        _, layer = check_request(
            model.module, model.version.metadata.architecture, options.method, options.layer
        )
        target = resolve_target(options.target, model.class_names)
        deadline = self.deadline_after(timeout)
        with self.decode_slot(deadline):
            picture = decode_image(image, self.image_limits)
            tensor = model.preprocessing(picture)
            # Keep only what the overlay is drawn on (at most max_overlay_side), not the full photo.
            box = model.preprocessing.crop_box(picture.width, picture.height)
            picture, scale = scale_to_fit(picture, self.max_overlay_side)
            box = (box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale)
        decode_ms = (time.perf_counter() - start) * 1000
        batched = self.batcher.run(
            (model, options.method, layer), (tensor, target), timeout=self.time_left(deadline)
        )
        answered = self.answered(name, resolved_version, decode_ms, batched)
        result = batched.value
        names = model.class_names
        with self.telemetry.encoding():
            overlay = self._overlay(picture, box, result, options)
            heatmap = heatmap_png(result.heatmap)
        return Explanation(
            top=top_classes(result.probs, options.top_k, names),
            target=(result.target, names[result.target], float(result.probs[result.target])),
            method=options.method,
            layer=layer,
            heatmap_png=heatmap,
            overlay_png=overlay,
            answered=answered,
        )

    def _overlay(
        self,
        picture: Image.Image,
        box: tuple[float, float, float, float],
        result: CamResult,
        options: ExplainOptions,
    ) -> bytes:
        overlay = render_overlay(
            picture,
            result.heatmap,
            box,
            colormap=options.colormap,
            alpha=options.alpha,
            max_side=self.max_overlay_side,
        )
        return encode_png(overlay)
