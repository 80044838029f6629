"""The training loop, pure torch, shaped like torchvision's references/classification/train.py:
`build_model_for_training`, `train_one_epoch`, `evaluate`, `load_data` and `main`, with a rolling
checkpoint (model, optimizer, lr_scheduler, scaler, epoch, args, RNG states) to resume from.

Progress leaves through ``report`` (a callable taking a `TrainEvent`); ``check`` is called before every
step and raises to stop (cancellation). Nothing here knows about gRPC, processes or the job database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainer_svc.data import DatasetSplit, ImageFiles, eval_transform, make_loader, train_transform
from trainer_svc.train_config import TrainConfig
from vision.image.decode import ImageLimits
from vision.models.architectures import build_model

log = logging.getLogger(__name__)
Loader = DataLoader[tuple[torch.Tensor, int]]


@dataclass
class TrainEvent:
    """``kind``: "progress" (within an epoch), "epoch" (after validation) or "info" (a message).
    Losses are mean cross-entropy; accuracies in [0, 1]; ``epoch`` counts from 1."""

    kind: str
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    train_loss: float = 0.0
    train_accuracy: float = 0.0
    val_loss: float = 0.0
    val_accuracy: float = 0.0
    learning_rate: float = 0.0
    images_per_second: float = 0.0
    eta_seconds: float = 0.0
    message: str = ""


Report = Callable[[TrainEvent], None]


@dataclass
class Runtime:
    """How to run (not what to learn): device, loader processes, progress cadence, image limits."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    loader_workers: int = 0
    progress_interval_s: float = 2.0
    image_limits: ImageLimits = field(default_factory=ImageLimits)


def load_data(config: TrainConfig, split: DatasetSplit, runtime: Runtime) -> tuple[Loader, Loader]:
    """Augmented, shuffled training batches and serving-identical validation batches."""
    pin = runtime.device.type == "cuda"
    train_set = ImageFiles(
        split.train, train_transform(config.img_size, config.horizontal_flip), runtime.image_limits
    )
    val_set = ImageFiles(split.val, eval_transform(config.img_size, config.resize_size), runtime.image_limits)
    train = make_loader(
        train_set,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        workers=runtime.loader_workers,
        pin_memory=pin,
    )
    val = make_loader(
        val_set,
        config.batch_size,
        shuffle=False,
        seed=config.seed,
        workers=runtime.loader_workers,
        pin_memory=pin,
    )
    return train, val


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


@dataclass
class Clock:
    """Throughput and ETA bookkeeping across the run."""

    epochs: int
    steps_per_epoch: int
    epoch_seconds: list[float] = field(default_factory=list)

    def eta(self, epoch: int, step: int, step_seconds: float) -> float:
        per_epoch = (
            (sum(self.epoch_seconds) / len(self.epoch_seconds))
            if self.epoch_seconds
            else (step_seconds * self.steps_per_epoch)
        )
        return max(0.0, (self.steps_per_epoch - step) * step_seconds + (self.epochs - epoch) * per_epoch)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: Loader,
    *,
    epoch: int,
    config: TrainConfig,
    runtime: Runtime,
    scaler: torch.amp.GradScaler | None,
    clock: Clock,
    report: Report,
    check: Callable[[], None],
) -> dict[str, float]:
    """One pass over ``loader``; returns mean train loss, accuracy and images/s (training time only)."""
    device = runtime.device
    set_train_mode(model, config.freeze_backbone)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = last_report = time.perf_counter()
    autocast = torch.autocast("cuda", dtype=torch.float16) if scaler is not None else nullcontext()
    for step, (images, targets) in enumerate(loader, start=1):
        check()
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(images)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(targets)
        correct += (logits.detach().argmax(1) == targets).sum()
        seen += len(targets)
        now = time.perf_counter()
        if now - last_report >= runtime.progress_interval_s and step < clock.steps_per_epoch:
            last_report = now
            step_seconds = (now - start) / step
            report(
                TrainEvent(
                    "progress",
                    epoch,
                    clock.epochs,
                    step,
                    clock.steps_per_epoch,
                    train_loss=float(loss_sum) / seen,
                    train_accuracy=float(correct) / seen,
                    learning_rate=float(scheduler.get_last_lr()[0]),
                    images_per_second=seen / (now - start),
                    eta_seconds=clock.eta(epoch, step, step_seconds),
                )
            )
    seconds = time.perf_counter() - start
    return {
        "train_loss": float(loss_sum) / max(seen, 1),
        "train_accuracy": float(correct) / max(seen, 1),
        "images_per_second": seen / max(seconds, 1e-9),
        "train_seconds": seconds,
    }


@torch.inference_mode()
def evaluate(
    model: nn.Module, criterion: nn.Module, loader: Loader, device: torch.device
) -> tuple[float, list[int], list[int]]:
    """Mean validation loss, true labels and predicted labels (in loader order)."""
    model.eval()
    loss_sum, y_true, y_pred = 0.0, [], []
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        logits = model(images).float()
        loss_sum += float(criterion(logits, targets)) * len(targets)
        y_true += targets.tolist()
        y_pred += logits.argmax(1).tolist()
    return loss_sum / max(len(y_true), 1), y_true, y_pred
