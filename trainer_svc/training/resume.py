"""Resuming a run: its rolling checkpoint and best weights, written atomically, read back with
``torch.load(weights_only=True)`` only, and restored into a new run's model, optimizer and random states.

A checkpoint is a plain dict (torchvision reference style): ``model``, ``optimizer``, ``lr_scheduler``,
``scaler``, ``epoch`` (epochs completed), ``args`` (the TrainConfig as a dict), ``rng`` (torch, CUDA, Python
and loader-generator states; with several ranks also ``rng_by_rank``, every rank's), ``history`` (one
dict per completed epoch), ``best`` and ``finished``.
Tensors, numbers, strings, lists, tuples and dicts only: nothing that needs unpickling code.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trainer_svc.training.config import TrainConfig
from vision.errors import InvalidCheckpoint

CHECKPOINT_FILE = "checkpoint.pt"
BEST_WEIGHTS_FILE = "best.safetensors"


def _replace_atomically(path: Path, write: Any) -> None:
    """``write(tmp_path)`` then fsync and rename over ``path``: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], directory: Path) -> Path:
    """Write ``state`` as ``directory/checkpoint.pt`` atomically."""
    path = directory / CHECKPOINT_FILE
    _replace_atomically(path, lambda tmp: torch.save(state, tmp))
    return path


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint, or None when there is none; `InvalidCheckpoint` when it is unreadable."""
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidCheckpoint(f"the checkpoint {path.name} is unreadable ({exc})") from exc
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise InvalidCheckpoint(f"the checkpoint {path.name} is not a training checkpoint")
    return state


def save_best_weights(state_dict: dict[str, torch.Tensor], directory: Path) -> None:
    """The best-by-validation-accuracy weights, as safetensors, atomically."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    _replace_atomically(directory / BEST_WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))


def load_best_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / BEST_WEIGHTS_FILE
    if not path.is_file():
        raise InvalidCheckpoint(f"{path.name} is missing: no epoch finished")
    return load_file(str(path), device="cpu")


def capture_rng(loader_generator: torch.Generator) -> dict[str, Any]:
    """Every random state a training epoch draws from."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "loader": loader_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], loader_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _written_for(args: Any) -> dict[str, Any] | None:
    """The settings a checkpoint's ``args`` name, a field it predates at that field's default."""
    try:
        return TrainConfig.from_dict(args).to_dict() if isinstance(args, dict) else None
    except TypeError:
        return None


LOOP_KEYS = ("epoch", "history", "best", "bad_epochs", "finished")


def restore(
    state: dict[str, Any] | None,
    config: TrainConfig,
    parts: dict[str, Any],
    generator: torch.Generator,
    *,
    rank: int = 0,
) -> dict[str, Any]:
    """Load a checkpoint's states into ``parts`` (model, optimizer, lr_scheduler, scaler) and the loader's
    ``generator``; return the loop's bookkeeping (epoch, history, best, bad_epochs, finished). Without a
    checkpoint: the bookkeeping of a run that has not started. ``rank`` picks the random states of that rank
    (every rank of a run loads the one checkpoint rank 0 wrote)."""
    if state is None:
        return {
            "epoch": 0,
            "history": [],
            "best": {"accuracy": -1.0, "epoch": 0},
            "bad_epochs": 0,
            "finished": False,
        }
    if _written_for(state.get("args")) != config.to_dict():
        raise InvalidCheckpoint("the checkpoint was written for different training settings")
    try:
        for key in ("model", "optimizer", "lr_scheduler"):
            parts[key].load_state_dict(state[key])
        if parts["scaler"] is not None and state.get("scaler"):
            parts["scaler"].load_state_dict(state["scaler"])
        restore_rng(state.get("rng_by_rank", [state["rng"]])[rank], generator)
    except (KeyError, IndexError, RuntimeError, ValueError) as exc:
        raise InvalidCheckpoint(f"the checkpoint does not fit this run ({exc})") from exc
    return {k: state[k] for k in LOOP_KEYS}
