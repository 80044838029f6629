"""Class activation maps, pure torch: CAM (Zhou et al., 2016), Grad-CAM (Selvaraju et al., 2017) and
Grad-CAM++ (Chattopadhay et al., 2018).

Every method is ``ReLU(sum_c w_c * A_c)`` over the target layer's activations ``A``, upsampled bilinearly to
the input size and min-max normalised to [0, 1]; the methods differ only in the channel weights ``w``
(`CamMethod.weights`), computed from the activations and the gradients of the target class's logit.

At the last conv block of a global-average-pooling + linear head, those gradients are known without a
backward pass: d logit_t / d A_c[i, j] = W_fc[t, c] / (h * w). There Grad-CAM is CAM and all three methods
cost one forward pass, which a converted runtime (OpenVINO, onnxruntime) can run: its export returns the
logits and that block's output. Other layers run a real backward pass, with gradients enabled from that layer
on only.

Each call registers its own forward hook and removes it before returning: nothing is shared between calls.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vision.choices import CAM_METHODS, FINAL_CONV_LAYER
from vision.errors import InvalidArgument
from vision.serving.runtimes import Runner

EPS = 1e-7


class CamMethod:
    """Base: subclasses override `weights` (and `final_layer_only` when the method is defined there only)."""

    name = ""
    final_layer_only = False

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Channel weights (N, C) from activations and gradients, both (N, C, h, w)."""
        raise NotImplementedError


class Cam(CamMethod):
    """The fc weights of the target class (the gradients summed over positions)."""

    name = "cam"
    final_layer_only = True

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.sum(dim=(2, 3))


class GradCam(CamMethod):
    """Global-average-pooled gradients."""

    name = "gradcam"

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.mean(dim=(2, 3))


class GradCamPlusPlus(CamMethod):
    """Positive gradients weighted by alpha = g^2 / (2 g^2 + sum(A) g^3) (the closed form of the paper)."""

    name = "gradcampp"

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        sum_a = activations.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + EPS)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (alpha * F.relu(gradients)).sum(dim=(2, 3))


METHODS: dict[str, CamMethod] = {m.name: m for m in (Cam(), GradCam(), GradCamPlusPlus())}
assert tuple(METHODS) == CAM_METHODS.names, "every choice in vision.choices.CAM_METHODS has one CamMethod"


@dataclass(frozen=True)
class CamResult:
    """For one image: class probabilities (K,), the heatmap (H, W) in [0, 1] at input size, the target."""

    probs: torch.Tensor
    heatmap: torch.Tensor
    target: int


_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]] = weakref.WeakKeyDictionary()


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module of everything with a spatial output (not the head). Walked once per model: a served
    model's structure does not change, and every request looks its layer up (twice)."""
    layers = _LAYERS.get(model)
    if layers is None:
        head = {"avgpool", "fc", "dropout", "flatten"}
        layers = {n: m for n, m in model.named_modules() if n and n.split(".")[0] not in head}
        _LAYERS[model] = layers
    return layers


def layer_names(model: nn.Module) -> list[str]:
    """Module names a heatmap can be computed at: everything with a spatial output (not the head)."""
    return list(_layers(model))


def resolve_layer(model: nn.Module, architecture: str, layer: str) -> tuple[str, nn.Module]:
    """(name, module) of the target layer; the last conv block when ``layer`` is empty."""
    name = layer or FINAL_CONV_LAYER[architecture]
    layers = _layers(model)
    if name not in layers:
        names = list(layers)
        top = [n for n in names if "." not in n]
        raise InvalidArgument(
            f"unknown layer {layer!r} for {architecture}; accepted: {', '.join(top)}, or a submodule such as "
            f"{names[-1]!r}"
        )
    return name, layers[name]


def check_request(model: nn.Module, architecture: str, method: str, layer: str) -> tuple[CamMethod, str]:
    """The method and layer name a request asks for, or InvalidArgument naming the accepted values."""
    CAM_METHODS.check(method)
    name, _ = resolve_layer(model, architecture, layer)
    final = FINAL_CONV_LAYER[architecture]
    if METHODS[method].final_layer_only and name != final:
        raise InvalidArgument(
            f"{method} is defined at the last conv block only ({final!r}); "
            "use gradcam or gradcampp for other layers"
        )
    return METHODS[method], name


def linear_head(model: nn.Module) -> nn.Linear:
    fc = model.fc
    if isinstance(fc, nn.Sequential):
        fc = fc[-1]
    assert isinstance(fc, nn.Linear)
    return fc


def explain_batch(
    model: nn.Module,
    architecture: str,
    layer: str,
    method: CamMethod,
    batch: torch.Tensor,
    targets: Sequence[int | None],
    *,
    force_backward: bool = False,
    runner: Runner | None = None,
) -> list[CamResult]:
    """Heatmaps for a batch (N, 3, H, W) on the model's device; ``targets[i]`` None means the predicted class.

    Results are on the CPU. ``force_backward`` computes the final-layer case with a real backward pass too
    (for tests: it must give the same maps as the closed form). ``runner`` (a converted model returning the
    logits and the last block's output) runs the final-layer case instead of ``model``'s forward pass;
    other layers always run ``model`` forward and backward.
    """
    name, module = resolve_layer(model, architecture, layer)  # the request was checked before it queued
    analytic = name == FINAL_CONV_LAYER[architecture] and not force_backward
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        if analytic:
            captured.append(output)
            return output
        # A leaf that requires grad: the backward pass stops here instead of running through the earlier
        # layers, whose parameters never need gradients. The network continues on a copy, so in-place
        # operations after the layer (ReLU(inplace=True)) leave the captured activations intact.
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()

    if analytic and runner is not None:
        with torch.inference_mode():
            logits, activations = runner(batch)
            return _closed_form(model, method, logits, activations, targets, batch.shape[-2:])
    handle = module.register_forward_hook(hook)
    try:
        if analytic:
            with torch.inference_mode():
                logits = model(batch).float()
                activations = captured[-1].float()
                return _closed_form(model, method, logits, activations, targets, batch.shape[-2:])
        with torch.enable_grad():
            logits = model(batch).float()
            chosen = _choose_targets(logits, targets)
            activations = captured[-1]
            score = logits.gather(1, chosen[:, None]).sum()  # samples are independent (eval mode)
            (gradients,) = torch.autograd.grad(score, activations)
        with torch.no_grad():
            return _finish(
                method,
                activations.detach().float(),
                gradients.float(),
                logits.detach(),
                chosen,
                batch.shape[-2:],
            )
    finally:
        handle.remove()


def _closed_form(
    model: nn.Module,
    method: CamMethod,
    logits: torch.Tensor,
    activations: torch.Tensor,
    targets: Sequence[int | None],
    size: torch.Size,
) -> list[CamResult]:
    """Final-layer maps from the logits and the last block's activations: d logit_t / d A = W_fc[t] / hw."""
    logits, activations = logits.float(), activations.float()
    chosen = _choose_targets(logits, targets)
    h, w = activations.shape[-2:]
    fc_weight = linear_head(model).weight.float().to(activations.device)
    gradients = (fc_weight[chosen] / (h * w))[:, :, None, None].expand_as(activations)
    return _finish(method, activations, gradients, logits, chosen, size)


def _choose_targets(logits: torch.Tensor, targets: Sequence[int | None]) -> torch.Tensor:
    predicted = logits.argmax(dim=1)
    chosen = [int(predicted[i]) if t is None else t for i, t in enumerate(targets)]
    return torch.tensor(chosen, device=logits.device)


def _finish(
    method: CamMethod,
    activations: torch.Tensor,
    gradients: torch.Tensor,
    logits: torch.Tensor,
    chosen: torch.Tensor,
    size: torch.Size,
) -> list[CamResult]:
    weights = method.weights(activations, gradients)
    cams = F.relu((weights[:, :, None, None] * activations).sum(dim=1, keepdim=True))
    cams = F.interpolate(cams, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    low = cams.amin(dim=(1, 2), keepdim=True)
    span = cams.amax(dim=(1, 2), keepdim=True) - low
    cams = torch.where(span > EPS, (cams - low) / span.clamp_min(EPS), torch.zeros_like(cams))
    probs = torch.softmax(logits, dim=1).cpu()
    cams = cams.cpu()
    return [CamResult(probs[i], cams[i], int(chosen[i])) for i in range(len(chosen))]
