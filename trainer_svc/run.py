"""`main(config, split, workdir, ...)`: one whole run, resumable, like the reference's main(args).

Every epoch ends with validation, the best-by-validation-accuracy weights (safetensors) when they improved,
and a rolling checkpoint; a run started again on the same ``workdir`` continues after the last completed
epoch with the same model, optimizer, scheduler and random states, so it ends exactly where an
uninterrupted run would have. Early stopping ends the run after ``patience`` epochs without improvement.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer_svc import checkpoints
from trainer_svc.data import DatasetSplit
from trainer_svc.evaluation import Evaluation, evaluate_predictions
from trainer_svc.train_config import TrainConfig
from trainer_svc.training import (
    Clock,
    Report,
    Runtime,
    TrainEvent,
    build_model_for_training,
    build_optimizer,
    evaluate,
    load_data,
    train_one_epoch,
)
from vision.errors import InvalidCheckpoint

log = logging.getLogger(__name__)


def _never_stop() -> None:
    return None


def _resume(
    state: dict[str, Any] | None,
    config: TrainConfig,
    parts: dict[str, Any],
    generator: torch.Generator,
) -> dict[str, Any]:
    """Load a checkpoint's states into ``parts`` (model, optimizer, lr_scheduler, scaler); return the
    loop's bookkeeping (epoch, history, best, bad_epochs, finished)."""
    if state is None:
        return {
            "epoch": 0,
            "history": [],
            "best": {"accuracy": -1.0, "epoch": 0},
            "bad_epochs": 0,
            "finished": False,
        }
    if state.get("args") != config.to_dict():
        raise InvalidCheckpoint("the checkpoint was written for different training settings")
    try:
        for key in ("model", "optimizer", "lr_scheduler"):
            parts[key].load_state_dict(state[key])
        if parts["scaler"] is not None and state.get("scaler"):
            parts["scaler"].load_state_dict(state["scaler"])
        checkpoints.restore_rng(state["rng"], generator)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise InvalidCheckpoint(f"the checkpoint does not fit this run ({exc})") from exc
    keys = ("epoch", "history", "best", "bad_epochs", "finished")
    return {k: state[k] for k in keys}


def main(
    config: TrainConfig,
    split: DatasetSplit,
    workdir: Path,
    *,
    runtime: Runtime | None = None,
    imagenet_state: dict[str, torch.Tensor] | None = None,
    report: Report | None = None,
    check: Callable[[], None] = _never_stop,
) -> tuple[Evaluation, dict[str, torch.Tensor]]:
    """Train (or finish training) and return the validation evaluation of the best epoch's weights and
    those weights. ``workdir`` holds the checkpoint and best weights."""
    runtime = runtime or Runtime()
    emit: Report = report or (lambda _event: None)
    workdir.mkdir(parents=True, exist_ok=True)
    device = runtime.device
    num_classes = len(split.class_names)
    train_loader, val_loader = load_data(config, split, runtime)
    model = build_model_for_training(config, num_classes, imagenet_state).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
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
    loop = _resume(checkpoints.load_checkpoint(workdir), config, parts, generator)
    if loop["epoch"]:
        emit(TrainEvent("info", loop["epoch"], config.epochs, message=f"resumed after epoch {loop['epoch']}"))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    plain = nn.CrossEntropyLoss()
    clock = Clock(config.epochs, steps)
    while not loop["finished"] and loop["epoch"] < config.epochs:
        epoch = loop["epoch"] + 1
        started = time.perf_counter()
        stats = train_one_epoch(
            model,
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
        val_loss, y_true, y_pred = evaluate(model, plain, val_loader, device)
        val_accuracy = sum(int(t == p) for t, p in zip(y_true, y_pred, strict=True)) / max(len(y_true), 1)
        clock.epoch_seconds.append(time.perf_counter() - started)
        record = {
            "epoch": epoch,
            **stats,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "learning_rate": float(scheduler.get_last_lr()[0]),
        }
        _end_epoch(loop, record, model, config, workdir)
        checkpoints.save_checkpoint(
            {
                **{k: (v.state_dict() if v is not None else {}) for k, v in parts.items()},
                **loop,
                "args": config.to_dict(),
                "rng": checkpoints.capture_rng(generator),
            },
            workdir,
        )
        emit(_epoch_event(record, config, clock, loop))
    return _final_evaluation(model, plain, val_loader, device, split, workdir, loop)


def _end_epoch(
    loop: dict[str, Any], record: dict[str, float], model: nn.Module, config: TrainConfig, workdir: Path
) -> None:
    """Book-keeping after validation: history, best weights, early stopping."""
    loop["epoch"] = int(record["epoch"])
    loop["history"].append(record)
    if record["val_accuracy"] > loop["best"]["accuracy"]:
        loop["best"] = {"accuracy": record["val_accuracy"], "epoch": loop["epoch"]}
        loop["bad_epochs"] = 0
        checkpoints.save_best_weights(model.state_dict(), workdir)
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
    remaining = (
        0.0
        if loop["finished"]
        else (config.epochs - epoch) * sum(clock.epoch_seconds) / len(clock.epoch_seconds)
    )
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
        eta_seconds=remaining,
        message=message,
    )


def _final_evaluation(
    model: nn.Module,
    criterion: nn.Module,
    val_loader: Any,
    device: torch.device,
    split: DatasetSplit,
    workdir: Path,
    loop: dict[str, Any],
) -> tuple[Evaluation, dict[str, torch.Tensor]]:
    best = checkpoints.load_best_weights(workdir)
    model.load_state_dict(best)
    loss, y_true, y_pred = evaluate(model, criterion, val_loader, device)
    evaluation = evaluate_predictions(y_true, y_pred, split.class_names, loss if math.isfinite(loss) else 0.0)
    evaluation.best_epoch = int(loop["best"]["epoch"])
    evaluation.epochs_run = int(loop["epoch"])
    evaluation.history = [dict(h) for h in loop["history"]]
    return evaluation, best
