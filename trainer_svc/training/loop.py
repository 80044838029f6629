"""The training loop, pure torch, shaped like torchvision's references/classification/train.py:
`load_data`, `train_one_epoch`, `evaluate` and `main`, with a rolling checkpoint to resume from
(`trainer_svc.training.resume`).

Every epoch ends with validation, the best-by-validation-accuracy weights (safetensors) when they improved,
and a rolling checkpoint (model, optimizer, lr_scheduler, scaler, epoch, args, RNG states); a run started
again on the same ``workdir`` continues after the last completed epoch with the same states, so it ends
exactly where an uninterrupted run would have. Early stopping ends the run after ``patience`` epochs
without improvement.

Progress leaves through ``report`` (a callable taking a `TrainEvent`); ``check`` is called before every
step and raises to stop (cancellation). Nothing here knows about gRPC, processes or the job database.

With ``Runtime.world`` of several ranks (`trainer_svc.training.distributed`) every rank runs `main` on its
shard of the data; epoch figures are global; rank 0 alone writes files and returns the evaluation. Within
an epoch, progress events carry rank 0's running figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from trainer_svc.training import resume
from trainer_svc.training.config import TrainConfig
from trainer_svc.training.data import DatasetSplit, ImageFiles, eval_transform, make_loader, train_transform
from trainer_svc.training.distributed import World, unwrap
from trainer_svc.training.evaluation import Evaluation, evaluate_predictions
from trainer_svc.training.events import Clock, Report, TrainEvent
from trainer_svc.training.model import build_model_for_training, build_optimizer, set_train_mode
from vision.image.decode import ImageLimits

Loader = DataLoader[tuple[torch.Tensor, int]]


@dataclass
class Runtime:
    """How to run (not what to learn): device, loader processes, progress cadence, image limits, and the
    ranks this process trains with (a run of one by default)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    loader_workers: int = 0
    progress_interval_s: float = 2.0
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    world: World = field(default_factory=World)


def _never_stop() -> None:
    return None


def load_data(config: TrainConfig, split: DatasetSplit, runtime: Runtime) -> tuple[Loader, Loader]:
    """Augmented, shuffled training batches and serving-identical validation batches: this rank's shard
    of each when there are several ranks (the training shard reshuffled every epoch by ``set_epoch``)."""
    pin = runtime.device.type == "cuda"
    world = runtime.world
    train_set = ImageFiles(
        split.train, train_transform(config.img_size, config.horizontal_flip), runtime.image_limits
    )
    workers = runtime.loader_workers
    train = make_loader(
        train_set,
        config.batch_size,
        shuffle=True,
        seed=config.seed + world.rank,  # loader-worker seeds differ per rank; rank 0 draws as a run of one
        workers=workers,
        pin_memory=pin,
        sampler=world.sampler(train_set, config.seed),
    )
    return train, validation_loader(config, split, runtime, world)


def validation_loader(config: TrainConfig, split: DatasetSplit, runtime: Runtime, world: World) -> Loader:
    """The validation images in order, as serving preprocesses them: ``world``'s slice of them."""
    val_set = ImageFiles(split.val, eval_transform(config.img_size, config.resize_size), runtime.image_limits)
    return make_loader(
        world.shard(val_set),
        config.batch_size,
        shuffle=False,
        seed=config.seed,
        workers=runtime.loader_workers,
        pin_memory=runtime.device.type == "cuda",
    )


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
    """One pass over ``loader``; returns mean train loss, accuracy and images/s (training time only), over
    every rank."""
    device = runtime.device
    set_train_mode(unwrap(model), config.freeze_backbone)
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
    loss_total, correct_total, seen_total, rate = runtime.world.sum(
        [float(loss_sum), float(correct), float(seen), seen / max(seconds, 1e-9)], device
    )
    return {
        "train_loss": loss_total / max(seen_total, 1),
        "train_accuracy": correct_total / max(seen_total, 1),
        "images_per_second": rate,
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


def validate(model: nn.Module, criterion: nn.Module, loader: Loader, runtime: Runtime) -> tuple[float, float]:
    """Validation loss and accuracy of ``model`` (rank 0's state) over every rank's slice: the whole set."""
    world = runtime.world
    world.sync_buffers(model)
    loss, y_true, y_pred = evaluate(model, criterion, loader, runtime.device)
    correct = sum(int(t == p) for t, p in zip(y_true, y_pred, strict=True))
    loss_total, correct_total, count = world.sum(
        [loss * len(y_true), float(correct), float(len(y_true))], runtime.device
    )
    return loss_total / max(count, 1), correct_total / max(count, 1)


def main(
    config: TrainConfig,
    split: DatasetSplit,
    workdir: Path,
    *,
    runtime: Runtime | None = None,
    imagenet_state: dict[str, torch.Tensor] | None = None,
    report: Report | None = None,
    check: Callable[[], None] = _never_stop,
) -> tuple[Evaluation, dict[str, torch.Tensor]] | None:
    """Train (or finish training) and return the validation evaluation of the best epoch's weights and
    those weights (None on ranks other than 0). ``workdir`` holds the checkpoint and best weights; with
    several ranks it is the same directory for all (every rank resumes from rank 0's checkpoint)."""
    runtime = runtime or Runtime()
    world = runtime.world
    emit: Report = report or (lambda _event: None)
    workdir.mkdir(parents=True, exist_ok=True)
    device = runtime.device
    train_loader, val_loader = load_data(config, split, runtime)
    model = build_model_for_training(config, len(split.class_names), imagenet_state).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if world.rank:  # the same initial weights everywhere (seeded), different augmentation draws per rank
        torch.manual_seed(config.seed + world.rank)
    trained = world.wrap(model, device)
    steps = len(train_loader)
    optimizer, scheduler = build_optimizer(config, model, config.epochs * steps)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    parts: dict[str, Any] = {
        "model": model,
        "optimizer": optimizer,
        "lr_scheduler": scheduler,
        "scaler": scaler,
    }
    generator = train_loader.generator
    assert generator is not None
    loop = resume.restore(resume.load_checkpoint(workdir), config, parts, generator, rank=world.rank)
    if loop["epoch"]:
        emit(
            TrainEvent(
                "message", loop["epoch"], config.epochs, message=f"resumed after epoch {loop['epoch']}"
            )
        )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    plain = nn.CrossEntropyLoss()
    clock = Clock(config.epochs, steps)
    while not loop["finished"] and loop["epoch"] < config.epochs:
        epoch = loop["epoch"] + 1
        started = time.perf_counter()
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(
            trained,
            criterion,
            optimizer,
            scheduler,
            train_loader,
            epoch=epoch,
            config=config,
            runtime=runtime,
            scaler=scaler,
            clock=clock,
            report=emit,
            check=check,
        )
        check()
        val_loss, val_accuracy = validate(model, plain, val_loader, runtime)
        clock.epoch_seconds.append(time.perf_counter() - started)
        record = {
            "epoch": epoch,
            **stats,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "learning_rate": float(scheduler.get_last_lr()[0]),
        }
        _end_epoch(loop, record, model, config, workdir, world)
        rng = world.gather(resume.capture_rng(generator))
        if world.is_main:
            resume.save_checkpoint(
                {
                    **{k: (v.state_dict() if v is not None else {}) for k, v in parts.items()},
                    **loop,
                    "args": config.to_dict(),
                    "rng": rng[0],
                    **({"rng_by_rank": rng} if world.distributed else {}),
                },
                workdir,
            )
        emit(_epoch_event(record, config, clock, loop))
    if not world.is_main:
        return None
    whole = val_loader if not world.distributed else validation_loader(config, split, runtime, World())
    return _final_evaluation(model, plain, whole, device, split, workdir, loop)


def _end_epoch(
    loop: dict[str, Any],
    record: dict[str, float],
    model: nn.Module,
    config: TrainConfig,
    workdir: Path,
    world: World,
) -> None:
    """Book-keeping after validation: history, best weights (written by rank 0), early stopping. Every
    rank keeps the same book: the figures are global."""
    loop["epoch"] = int(record["epoch"])
    loop["history"].append(record)
    if record["val_accuracy"] > loop["best"]["accuracy"]:
        loop["best"] = {"accuracy": record["val_accuracy"], "epoch": loop["epoch"]}
        loop["bad_epochs"] = 0
        if world.is_main:
            resume.save_best_weights(model.state_dict(), workdir)
    else:
        loop["bad_epochs"] += 1
    if loop["bad_epochs"] >= config.patience or loop["epoch"] >= config.epochs:
        loop["finished"] = True


def _epoch_event(
    record: dict[str, float], config: TrainConfig, clock: Clock, loop: dict[str, Any]
) -> TrainEvent:
    epoch = int(record["epoch"])
    message = ""
    if loop["finished"] and epoch < config.epochs:
        message = f"early stop: no better validation accuracy for {config.patience} epochs"
    return TrainEvent(
        "epoch",
        epoch,
        config.epochs,
        clock.steps_per_epoch,
        clock.steps_per_epoch,
        train_loss=record["train_loss"],
        train_accuracy=record["train_accuracy"],
        val_loss=record["val_loss"],
        val_accuracy=record["val_accuracy"],
        learning_rate=record["learning_rate"],
        images_per_second=record["images_per_second"],
        eta_seconds=0.0 if loop["finished"] else clock.remaining_after(epoch),
        message=message,
    )


def _final_evaluation(
    model: nn.Module,
    criterion: nn.Module,
    val_loader: Loader,
    device: torch.device,
    split: DatasetSplit,
    workdir: Path,
    loop: dict[str, Any],
) -> tuple[Evaluation, dict[str, torch.Tensor]]:
    """The best epoch's weights, evaluated again on the validation set, with the run's history."""
    best = resume.load_best_weights(workdir)
    model.load_state_dict(best)
    loss, y_true, y_pred = evaluate(model, criterion, val_loader, device)
    evaluation = evaluate_predictions(y_true, y_pred, split.class_names, loss if math.isfinite(loss) else 0.0)
    evaluation.best_epoch = int(loop["best"]["epoch"])
    evaluation.epochs_run = int(loop["epoch"])
    evaluation.history = [dict(h) for h in loop["history"]]
    return evaluation, best
