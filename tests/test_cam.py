"""CAM, Grad-CAM and Grad-CAM++ against expectations checkable by hand and against an independent
autograd reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explain_svc.cam import METHODS, explain_batch, layer_names
from vision.errors import InvalidArgument
from vision.models.architectures import build_model


def minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min())


def upsample(cam: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(cam[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", 10).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_head_that_singles_out_one_channel_gives_that_channels_map(method: str) -> None:
    torch.manual_seed(1)
    model = build_model("smallcnn", 2).eval().requires_grad_(False)
    model.fc.weight.zero_()
    model.fc.bias.zero_()
    model.fc.weight[1, 5] = 1.0  # class 1 looks at channel 5 only
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    (result,) = explain_batch(model, "smallcnn", "", METHODS[method], x, [1])
    channel = model.features(x)[0, 5]
    assert channel.max() > 0
    expected = minmax(F.relu(upsample(channel, 64)))
    assert result.target == 1
    torch.testing.assert_close(result.heatmap, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_closed_form_at_the_last_block_equals_a_real_backward_pass(
    resnet: nn.Module, batch: torch.Tensor, method: str
) -> None:
    fast = explain_batch(resnet, "resnet18", "layer4", METHODS[method], batch, [None, 3, 7])
    slow = explain_batch(
        resnet, "resnet18", "layer4", METHODS[method], batch, [None, 3, 7], force_backward=True
    )
    for a, b in zip(fast, slow, strict=True):
        assert a.target == b.target
        torch.testing.assert_close(a.heatmap, b.heatmap, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(a.probs, b.probs)


def test_gradcam_equals_cam_at_the_last_block(resnet: nn.Module, batch: torch.Tensor) -> None:
    cam = explain_batch(resnet, "resnet18", "", METHODS["cam"], batch, [None] * 3)
    grad = explain_batch(resnet, "resnet18", "", METHODS["gradcam"], batch, [None] * 3)
    for a, b in zip(cam, grad, strict=True):
        torch.testing.assert_close(a.heatmap, b.heatmap, atol=1e-5, rtol=1e-4)


def _reference_layer3(model: nn.Module, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations and gradients at layer3 by running the rest of the network by hand."""
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        a = model.layer3(model.layer2(model.layer1(stem)))
    a = a.clone().requires_grad_(True)
    logits = model.fc(torch.flatten(model.avgpool(model.layer4(a)), 1))
    (g,) = torch.autograd.grad(logits[0, target], a)
    return a.detach()[0], g[0]


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_a_middle_layer_matches_the_published_definitions(
    resnet: nn.Module, batch: torch.Tensor, method: str
) -> None:
    checked = 0
    for target in range(6):
        (result,) = explain_batch(resnet, "resnet18", "layer3", METHODS[method], batch[:1], [target])
        a, g = _reference_layer3(resnet, batch[:1], target)
        if method == "gradcam":
            w = g.mean(dim=(1, 2))  # Selvaraju et al., eq. 1
        else:  # Chattopadhay et al., eq. 19 with the exponential score
            alpha = g**2 / (2 * g**2 + a.sum(dim=(1, 2), keepdim=True) * g**3 + 1e-7)
            alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
            w = (alpha * F.relu(g)).sum(dim=(1, 2))
        raw = upsample(F.relu((w[:, None, None] * a).sum(0)), 96)
        if raw.max() - raw.min() < 1e-6:
            # Nothing positive for this class: an all-zero map, never NaN.
            assert torch.count_nonzero(result.heatmap) == 0
            continue
        torch.testing.assert_close(result.heatmap, minmax(raw), atol=1e-4, rtol=1e-3)
        checked += 1
    assert checked >= 2


def test_hooks_are_always_removed(resnet: nn.Module, batch: torch.Tensor) -> None:
    explain_batch(resnet, "resnet18", "layer2", METHODS["gradcam"], batch[:1], [None])
    with pytest.raises((IndexError, RuntimeError)):
        explain_batch(resnet, "resnet18", "layer2", METHODS["gradcam"], batch[:1], [99])
    assert all(not m._forward_hooks for m in resnet.modules())


@pytest.mark.parametrize(
    ("method", "layer", "message"),
    [
        ("gradcam", "nope", "accepted: conv1, bn1"),
        ("cam", "layer3", "last conv block"),
        ("x", "", "accepted: cam"),
    ],
)
def test_bad_method_or_layer_names_the_accepted_values(
    resnet: nn.Module, batch: torch.Tensor, method: str, layer: str, message: str
) -> None:
    from explain_svc.cam import check_request

    with pytest.raises(InvalidArgument, match=message):
        check_request(resnet, "resnet18", method, layer)


def test_every_layer_with_a_spatial_output_is_selectable(resnet: nn.Module) -> None:
    names = layer_names(resnet)
    assert {"layer1", "layer4", "layer3.1.conv2"} <= set(names)
    assert "fc" not in names and "avgpool" not in names
