"""Ultralytics YOLO models built from what the model store holds: a network config (YAML) plus safetensors
weights, or an exported ONNX file. Nothing here unpickles anything.

A stored detection version is a directory with ``metadata.json`` (task "detection", class names, input size)
and either ``network.yaml`` + ``model.safetensors`` or ``model.onnx``. `load_yolo` turns it into an
``ultralytics.YOLO`` whose ``predict`` is Ultralytics' own: same letterboxing, NMS and box scaling.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from safetensors.torch import load_file

from detector_svc.offline import make_ultralytics_offline
from vision.errors import InvalidCheckpoint
from vision.models.store import ModelVersion
from vision.models.weights import sha256_file

if TYPE_CHECKING:
    from ultralytics import YOLO

CONFIG_FILE = "network.yaml"
ONNX_FILE = "model.onnx"
DETECTION_TASK = "detection"
_ACTIVATION_PREFIXES = ("nn.", "torch.nn.")


def check_network_config(cfg: Any) -> dict[str, Any]:
    """A deep copy of ``cfg`` if it is a plain YOLO network config whose layers are all known modules;
    `InvalidCheckpoint` otherwise. Configs come from imported files, so nothing in them may name code."""
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k), list) for k in ("backbone", "head")):
        raise InvalidCheckpoint("the model carries no network config (a dict with 'backbone' and 'head')")
    make_ultralytics_offline()
    from ultralytics.nn import tasks

    for layer in cfg["backbone"] + cfg["head"]:
        if not (isinstance(layer, list | tuple) and len(layer) == 4 and isinstance(layer[2], str)):
            raise InvalidCheckpoint(f"malformed layer {layer!r} in the network config")
        module = layer[2]
        if module.startswith("nn."):
            found = getattr(torch.nn, module[3:], None)
        elif module.startswith("torchvision.ops."):
            import torchvision

            found = getattr(torchvision.ops, module[16:], None)
        else:
            found = vars(tasks).get(module)
        if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
            raise InvalidCheckpoint(f"the network config names {module!r}, which is not a known layer")
    activation = cfg.get("activation")
    if activation is not None and not _is_literal_call(activation):
        raise InvalidCheckpoint(f"the network config's activation {activation!r} is not a torch.nn layer")
    return copy.deepcopy(cfg)


def _is_literal_call(spec: Any) -> bool:
    """``nn.SiLU()``-style: a torch.nn class called with literal arguments only."""
    if not isinstance(spec, str) or not spec.startswith(_ACTIVATION_PREFIXES):
        return False
    try:
        call = ast.parse(spec, mode="eval").body
    except SyntaxError:
        return False
    if not isinstance(call, ast.Call):
        return False
    arguments = [*call.args, *(k.value for k in call.keywords)]
    return all(isinstance(a, ast.Constant) or _is_negative_number(a) for a in arguments)


def _is_negative_number(node: ast.expr) -> bool:
    negation = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
    return negation and isinstance(node.operand, ast.Constant)  # type: ignore[attr-defined]


def config_for_storage(cfg: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """The config as written to ``network.yaml``: the chosen scale kept as the only one.

    Ultralytics takes a YAML file's scale from its file name (``yolo11s.yaml`` -> 's'); the store's file is
    ``network.yaml``, so the scale the network was built with is kept as the config's single (first) scale.
    """
    stored = {k: v for k, v in cfg.items() if k not in ("scale", "yaml_file")}
    scale, scales = cfg.get("scale"), cfg.get("scales")
    if isinstance(scales, dict) and scales:
        chosen = scale if scale in scales else next(iter(scales))
        stored["scales"] = {chosen: scales[chosen]}
    stored["nc"] = num_classes
    return stored


def write_config(cfg: dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def build_yolo(config_path: Path, state_dict: dict[str, torch.Tensor], class_names: list[str]) -> YOLO:
    """An Ultralytics YOLO built from ``config_path`` (restricted mode: no eval) with ``state_dict`` loaded
    strictly, in eval mode, float32, on the CPU."""
    make_ultralytics_offline()
    from ultralytics import YOLO

    check_network_config(yaml.safe_load(config_path.read_text()))
    model = YOLO(str(config_path), task="detect")
    network = model.model
    assert isinstance(network, torch.nn.Module)
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0]
        raise InvalidCheckpoint(f"the weights do not fit the network config: {first_line}") from exc
    network.names = dict(enumerate(class_names))
    network.float().eval()
    return model


def load_yolo(version: ModelVersion) -> YOLO:
    """The stored detection ``version`` as an Ultralytics YOLO (not yet warmed up)."""
    meta = version.metadata
    if meta.task != DETECTION_TASK:
        raise InvalidCheckpoint(f"{version.name} {version.version} is a {meta.task} model, not detection")
    path = version.weights_path
    if meta.weights_sha256 and sha256_file(path) != meta.weights_sha256:
        raise InvalidCheckpoint(f"{path} does not match the sha256 in its metadata: the store is damaged")
    if path.suffix == ".onnx":
        make_ultralytics_offline()
        from ultralytics import YOLO

        return YOLO(str(path), task="detect")
    return build_yolo(version.path / CONFIG_FILE, load_file(str(path), device="cpu"), meta.class_names)
