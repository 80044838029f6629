"""The classifier architectures the services serve and the trainer fine-tunes.

All are plain torchvision-style modules whose last layer is ``fc`` (a Linear), reached through global
average pooling of the last conv block: the shape CAM explanations rely on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision import models

from vision.choices import ARCHITECTURES


class SmallCNN(nn.Module):
    """The image-classification template's from-scratch CNN: (conv-relu-pool) x3, GAP, dropout, linear."""

    def __init__(self, num_classes: int, dropout: float = 0.5, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for width in widths:
            layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


def build_model(architecture: str, num_classes: int, *, head: str = "linear") -> nn.Module:
    """An untrained model of ``architecture`` with a ``num_classes``-way head.

    ``head`` is "linear" (``fc`` is a Linear) or "dropout_linear" (``fc`` is Sequential(Dropout, Linear), as
    some transfer-learning scripts save it).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model: nn.Module
    if architecture == "resnet18":
        model = models.resnet18(weights=None, num_classes=num_classes)
    elif architecture == "resnet50":
        model = models.resnet50(weights=None, num_classes=num_classes)
    elif architecture == "smallcnn":
        model = SmallCNN(num_classes)
    else:
        raise ValueError(f"unknown architecture {architecture!r}; accepted: {ARCHITECTURES.accepted()}")
    if head == "dropout_linear":
        linear = model.fc
        assert isinstance(linear, nn.Linear)
        model.fc = nn.Sequential(nn.Dropout(0.5), linear)
    elif head != "linear":
        raise ValueError(f"unknown head {head!r}; accepted: linear, dropout_linear")
    return model


def infer_architecture(state_dict: dict[str, Any]) -> tuple[str, str, int]:
    """Guess (architecture, head, num_classes) from a state dict's keys and the fc weight's shape."""
    if "fc.weight" in state_dict:
        head, fc_key = "linear", "fc.weight"
    elif "fc.1.weight" in state_dict:
        head, fc_key = "dropout_linear", "fc.1.weight"
    else:
        raise ValueError("no classifier head found (expected 'fc.weight' or 'fc.1.weight')")
    num_classes = int(state_dict[fc_key].shape[0])
    if "features.0.weight" in state_dict:
        return "smallcnn", head, num_classes
    if "layer1.0.conv3.weight" in state_dict:
        return "resnet50", head, num_classes
    if "layer1.0.conv1.weight" in state_dict:
        return "resnet18", head, num_classes
    raise ValueError("unrecognised architecture: expected the keys of resnet18, resnet50 or smallcnn")
