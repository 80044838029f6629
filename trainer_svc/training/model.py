"""The model and optimizer a run trains: a fresh head over ImageNet weights (or from scratch), an optionally
frozen backbone, Adam or SGD with a per-step cosine schedule."""

from __future__ import annotations

import torch
from torch import nn

from trainer_svc.training.config import TrainConfig
from vision.models.architectures import build_model


def build_model_for_training(
    config: TrainConfig, num_classes: int, imagenet_state: dict[str, torch.Tensor] | None
) -> nn.Module:
    """The architecture with a fresh ``num_classes``-way ``fc``; ImageNet weights under it when given;
    with ``freeze_backbone`` only ``fc`` requires gradients."""
    torch.manual_seed(config.seed)
    if imagenet_state is not None:
        model = build_model(config.architecture, int(imagenet_state["fc.weight"].shape[0]))
        model.load_state_dict(imagenet_state, strict=True)
        fc = model.fc
        assert isinstance(fc, nn.Linear)
        model.fc = nn.Linear(fc.in_features, num_classes)
    else:
        model = build_model(config.architecture, num_classes)
    if config.freeze_backbone:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("fc.")
    return model


def set_train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """Training mode; a frozen backbone stays in eval mode so its batch-norm statistics stay ImageNet's."""
    model.train()
    if frozen_backbone:
        for name, child in model.named_children():
            if name != "fc":
                child.eval()


def build_optimizer(
    config: TrainConfig, model: nn.Module, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam or SGD over the trainable parameters; cosine decay per step over the whole run."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    return optimizer, scheduler
