"""A stored classifier converted for the fast runtimes: OpenVINO IR (``openvino.convert_model`` from the torch
module, no ONNX needed) and ONNX (``torch.onnx.export``, for onnxruntime).

Both have one input, ``images`` (N, 3, H, W) float32 with a dynamic batch dimension, and two outputs:
``logits`` (N, K) and ``features`` (N, C, h, w), the output of the last conv block
(`vision.choices.FINAL_CONV_LAYER`): what CAM and Grad-CAM at that block need besides the fc weights. Both
are derived artifacts of the version (`vision.models.derived`), cached and rebuilt when stale.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path

import torch
from torch import nn

from vision.choices import FINAL_CONV_LAYER
from vision.models.derived import derived_artifact, weights_digest
from vision.models.store import ModelVersion

ONNX_FILE = "model.onnx"
OPENVINO_FILES = ("openvino.xml", "openvino.bin")
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "features")
OPSET = 17
# Bumped when what `export_onnx` writes changes, so older exports count as stale.
EXPORT_FORMAT = "1"


class WithFeatures(nn.Module):
    """``module`` returning (logits, the last conv block's output) instead of logits alone."""

    def __init__(self, module: nn.Module, architecture: str) -> None:
        super().__init__()
        self.module = module
        self.layer = dict(module.named_modules())[FINAL_CONV_LAYER[architecture]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            logits = self.module(x)
        finally:
            handle.remove()
        return logits, captured[-1]


def converter_versions(converter: str) -> dict[str, str]:
    """The versions of what writes an export with ``converter`` (onnx, openvino): a change makes it stale."""
    return {"torch": torch.__version__, converter: _version(converter), "export_format": EXPORT_FORMAT}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def export_onnx(module: nn.Module, architecture: str, input_size: int, path: Path) -> None:
    """Write ``module`` (on the CPU, eval mode, float32) to ``path`` as ONNX (see the module docstring)."""
    wrapped = WithFeatures(module, architecture).eval()
    dummy = torch.zeros(2, 3, input_size, input_size)  # batch 2: the batch dimension must not be folded in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            wrapped,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=OPSET,
            dynamo=False,
        )


def export_openvino(module: nn.Module, architecture: str, input_size: int, directory: Path) -> None:
    """Write ``module`` (CPU, eval, float32) into ``directory`` as OpenVINO IR (`OPENVINO_FILES`)."""
    import openvino as ov

    wrapped = WithFeatures(module, architecture).eval()
    dummy = torch.zeros(2, 3, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(
            wrapped, example_input=dummy, input=[ov.PartialShape([-1, 3, input_size, input_size])]
        )
    converted.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(converted.outputs, OUTPUT_NAMES, strict=True):
        output.get_tensor().set_names({name})
    ov.save_model(converted, str(directory / OPENVINO_FILES[0]), compress_to_fp16=False)


def onnx_for(version: ModelVersion, module: nn.Module, cache_dir: Path) -> Path:
    """The ONNX export of ``version`` (``module`` holds its weights), from the cache or exported now."""
    meta = version.metadata
    stamp = {"weights_sha256": weights_digest(version), **converter_versions("onnx")}
    return derived_artifact(
        version,
        (ONNX_FILE,),
        stamp,
        lambda tmp: export_onnx(module, meta.architecture, meta.input_size, tmp / ONNX_FILE),
        cache_dir,
    )


def openvino_ir_for(version: ModelVersion, module: nn.Module, cache_dir: Path) -> Path:
    """The OpenVINO IR (its .xml; the .bin beside it) of ``version``, from the cache or converted now."""
    meta = version.metadata
    stamp = {"weights_sha256": weights_digest(version), **converter_versions("openvino")}
    return derived_artifact(
        version,
        OPENVINO_FILES,
        stamp,
        lambda tmp: export_openvino(module, meta.architecture, meta.input_size, tmp),
        cache_dir,
    )
