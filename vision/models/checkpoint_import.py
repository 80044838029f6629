"""Import the checkpoints users of the original projects already have into the model store.

Accepted, all read with ``torch.load(weights_only=True)`` (tensors and plain containers, never pickled code):

* ``{'model_state_dict', 'class_names'}`` -- the trainer API's ``trained_model.pth``;
* ``{'epoch', 'model_state_dict', 'optimizer_state_dict', 'best_acc'}`` plus a classes.txt -- Food-101's
  ``best_model.pth``;
* a bare state dict plus a classes.txt.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from vision.choices import ARCHITECTURES
from vision.errors import InvalidCheckpoint
from vision.models.architectures import build_model, infer_architecture
from vision.models.store import ModelMetadata, ModelStore, ModelVersion, validate_model_name
from vision.models.weights import publish_state_dict, sha256_file


def read_class_names(path: Path) -> list[str]:
    """One class name per line; blank lines ignored."""
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise InvalidCheckpoint(f"{path} lists a class name more than once")
    return names


def load_checkpoint(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: a checkpoint that needs arbitrary unpickling is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InvalidCheckpoint(
            f"{path} needs arbitrary code to unpickle and was refused (only tensors and plain containers "
            f"are loaded): {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InvalidCheckpoint(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc


def _split_checkpoint(obj: Any) -> tuple[dict[str, torch.Tensor], list[str] | None, dict[str, Any]]:
    """(state_dict, class names if embedded, provenance details)."""
    if not isinstance(obj, dict):
        raise InvalidCheckpoint(
            "the checkpoint is not a dict (expected a state dict or a training checkpoint)"
        )
    details: dict[str, Any] = {}
    if "model_state_dict" in obj:
        state = obj["model_state_dict"]
        names = obj.get("class_names")
        for key in ("epoch", "best_acc"):
            if isinstance(obj.get(key), int | float):
                details[key] = float(obj[key])
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, names = obj, None
    else:
        raise InvalidCheckpoint(
            "unrecognised checkpoint: expected a state dict, or a dict with 'model_state_dict' "
            f"(found keys: {', '.join(sorted(map(str, obj))[:10])})"
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidCheckpoint("'model_state_dict' is not a dict of tensors")
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if names is not None and not (isinstance(names, list | tuple) and all(isinstance(n, str) for n in names)):
        raise InvalidCheckpoint("'class_names' in the checkpoint is not a list of strings")
    return state, list(names) if names is not None else None, details


def import_checkpoint(
    store: ModelStore,
    checkpoint: Path,
    name: str,
    *,
    classes_file: Path | None = None,
    architecture: str | None = None,
) -> ModelVersion:
    """Validate ``checkpoint`` against its architecture and publish it as the next version of ``name``."""
    validate_model_name(name)
    state, names, details = _split_checkpoint(load_checkpoint(checkpoint))
    if classes_file is not None:
        names = read_class_names(classes_file)
    if not names:
        raise InvalidCheckpoint(
            "the checkpoint carries no class names: pass --classes classes.txt (one name per line)"
        )
    try:
        guessed_arch, head, num_classes = infer_architecture(state)
    except ValueError as exc:
        raise InvalidCheckpoint(str(exc)) from exc
    arch = architecture or guessed_arch
    if arch not in ARCHITECTURES.names:
        raise InvalidCheckpoint(f"unknown architecture {arch!r}; accepted: {ARCHITECTURES.accepted()}")
    if num_classes != len(names):
        raise InvalidCheckpoint(
            f"the checkpoint's head has {num_classes} outputs but {len(names)} class names were given"
        )
    model = build_model(arch, num_classes, head=head)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InvalidCheckpoint(
            f"the weights do not fit {arch}: {str(exc).splitlines()[0]} (try --arch)"
        ) from exc
    metadata = ModelMetadata(
        architecture=arch,
        head=head,
        class_names=names,
        metrics={"best_acc": details["best_acc"]} if "best_acc" in details else {},
        provenance={
            "source": "import",
            "file": checkpoint.name,
            "sha256": sha256_file(checkpoint),
            **({"epoch": details["epoch"]} if "epoch" in details else {}),
        },
    )
    return publish_state_dict(store, name, model.state_dict(), metadata)
