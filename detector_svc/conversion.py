"""YOLO detection versions converted for the fast CPU runtimes, served through Ultralytics' own predictor.

* Conversion: ``openvino.convert_model`` straight from the torch network rebuilt from the store (OpenVINO),
  ``torch.onnx.export`` (for onnxruntime). Ultralytics' ``YOLO.export(format="openvino")`` is not used: it
  checks and may pip-install requirements, touches its settings file, writes a ``metadata.yaml`` that
  Ultralytics' OpenVINO backend then reads back, and that backend compiles with no precision hint (which means
  bf16 on CPUs with AMX); converting here needs nothing but the installed packages and leaves the precision
  to `VISION_DETECTOR_PRECISION`. The network is prepared as Ultralytics' exporter prepares it: Conv+BN fused,
  the Detect head in export mode with anchors computed from the input's shape (``dynamic``), so one graph
  answers every letterbox shape and batch size. Both files are derived artifacts of the version
  (`vision.models.derived`), stamped with the weights' sha256 and the converters' versions.
* Serving: `converted_predictor` is Ultralytics' ``DetectionPredictor`` with only the network's forward pass
  replaced by the converted model (`ConvertedNetwork`). Letterboxing (the minimal-padding one torch gets),
  NMS and the scaling of boxes to the original image stay Ultralytics' own code, so a converted model's answer
  differs from torch ``predict``'s only by what the forward pass computes differently.
"""

from __future__ import annotations

import copy
import importlib.metadata
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vision.models.derived import derived_artifact, weights_digest
from vision.models.export import ONNX_FILE, OPENVINO_FILES, OPSET, converter_versions
from vision.models.store import ModelVersion
from vision.serving.runtimes import RuntimeOptions

INPUT_NAME = "images"
OUTPUT_NAME = "output0"
# Bumped when what `export_network` prepares changes, so older conversions count as stale.
EXPORT_FORMAT = "yolo-1"
_TRACE_BATCH = 2  # not 1: the batch dimension must not be folded into the graph


def export_network(yolo: Any) -> nn.Module:
    """A copy of ``yolo``'s network ready to trace: float32, eval, Conv+BN fused (as Ultralytics' predictor
    runs it), its Detect head in export mode with dynamic anchors. Input (N, 3, H, W) float32 in [0, 1], H and
    W multiples of the stride; output (N, 4 + classes, anchors): boxes xywh in input pixels, then class
    scores after the sigmoid, the tensor torch's predictor hands to NMS."""
    from ultralytics.nn.modules.head import Detect

    network = copy.deepcopy(yolo.model).float().eval()
    network = network.fuse(verbose=False)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    for module in network.modules():
        if isinstance(module, Detect):
            module.dynamic, module.export, module.shape = True, True, None
            module.format = "openvino"  # type: ignore[assignment]
    return network


def export_openvino(network: nn.Module, imgsz: int, directory: Path) -> None:
    """Write ``network`` (`export_network`) into ``directory`` as OpenVINO IR (`OPENVINO_FILES`), float32
    weights, input (-1, 3, -1, -1)."""
    import openvino as ov

    dummy = torch.zeros(_TRACE_BATCH, 3, imgsz, imgsz)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python values (the anchors)
        converted = ov.convert_model(network, example_input=dummy, input=[ov.PartialShape([-1, 3, -1, -1])])
    converted.inputs[0].get_tensor().set_names({INPUT_NAME})
    converted.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    ov.save_model(converted, str(directory / OPENVINO_FILES[0]), compress_to_fp16=False)


def export_onnx(network: nn.Module, imgsz: int, path: Path) -> None:
    """Write ``network`` (`export_network`) to ``path`` as ONNX (opset `OPSET`), batch, height, width and
    anchors dynamic."""
    dummy = torch.zeros(_TRACE_BATCH, 3, imgsz, imgsz)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                OUTPUT_NAME: {0: "batch", 2: "anchors"},
            },
            opset_version=OPSET,
            dynamo=False,
        )


def _stamp(version: ModelVersion, converter: str) -> dict[str, str]:
    return {
        "weights_sha256": weights_digest(version),
        **converter_versions(converter),
        "ultralytics": importlib.metadata.version("ultralytics"),
        "export_format": EXPORT_FORMAT,
    }


def openvino_ir_for(version: ModelVersion, yolo: Any, cache_dir: Path) -> Path:
    """The OpenVINO IR (its .xml; the .bin beside it) of the detection ``version`` (``yolo`` holds its
    weights), from the cache or converted now."""
    imgsz = version.metadata.input_size
    return derived_artifact(
        version,
        OPENVINO_FILES,
        _stamp(version, "openvino"),
        lambda tmp: export_openvino(export_network(yolo), imgsz, tmp),
        cache_dir,
    )


def onnx_for(version: ModelVersion, yolo: Any, cache_dir: Path) -> Path:
    """The ONNX export of detection ``version`` (``yolo`` holds its weights), from the cache or made now."""
    imgsz = version.metadata.input_size
    return derived_artifact(
        version,
        (ONNX_FILE,),
        _stamp(version, "onnx"),
        lambda tmp: export_onnx(export_network(yolo), imgsz, tmp / ONNX_FILE),
        cache_dir,
    )


class ConvertedNetwork(nn.Module):
    """A converted model standing in for the torch network inside Ultralytics' predictor: (N, 3, H, W)
    float32 in [0, 1] -> (N, 4 + classes, anchors) float32 on the CPU. Calls are serialised."""

    runtime = ""
    precision = "fp32"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def infer(self, array: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, im: torch.Tensor, **_: Any) -> torch.Tensor:
        array = np.ascontiguousarray(im.detach().cpu().numpy(), dtype=np.float32)
        with self._lock:  # both runtimes release the GIL while they run: decoding threads carry on meanwhile
            return torch.from_numpy(self.infer(array))


class OpenVinoNetwork(ConvertedNetwork):
    """The IR compiled by OpenVINO for the CPU at ``precision`` (an explicit hint: OpenVINO's own default is
    bf16 on CPUs with AMX) with ``threads`` inference threads in ``streams`` streams (0: one per thread).

    With several streams a batch is split into that many parts that run side by side, one per stream (each
    from its own thread: ``infer`` releases the GIL), every stream single-threaded when there are as many as
    threads: no stream waits on another's threads at each layer, which is what makes one multi-threaded
    stream slow on a busy machine or under a container's CPU quota. One stream is the lowest latency for
    lone requests on an idle machine.
    """

    runtime = "openvino"

    def __init__(self, ir_path: Path, precision: str, threads: int, streams: int = 0) -> None:
        super().__init__()
        import openvino as ov

        streams = max(1, min(streams or threads, threads))
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[precision],
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
            "NUM_STREAMS": streams,
            "INFERENCE_NUM_THREADS": threads,
        }
        core = ov.Core()
        self.precision = precision
        self._compiled = core.compile_model(core.read_model(str(ir_path)), "CPU", config)
        self._requests = [self._compiled.create_infer_request() for _ in range(streams)]
        self._output = self._compiled.output(0)
        self._pool = ThreadPoolExecutor(streams - 1, "openvino-stream") if streams > 1 else None

    def _run(self, index: int, array: np.ndarray) -> np.ndarray:
        # A copy: the request reuses its output buffer.
        return np.array(self._requests[index].infer({0: np.ascontiguousarray(array)})[self._output])

    def infer(self, array: np.ndarray) -> np.ndarray:
        parts = np.array_split(array, min(len(self._requests), len(array)))
        if self._pool is None or len(parts) == 1:
            return self._run(0, array)
        others = [self._pool.submit(self._run, i, part) for i, part in enumerate(parts[1:], 1)]
        return np.concatenate([self._run(0, parts[0]), *(future.result() for future in others)])

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


class OnnxRuntimeNetwork(ConvertedNetwork):
    """The ONNX export on onnxruntime's CPU provider (fp32), ``threads`` intra-op threads."""

    runtime = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def infer(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])


def make_network(
    version: ModelVersion, yolo: Any, options: RuntimeOptions, streams: int = 0
) -> ConvertedNetwork:
    """``version`` (``yolo`` holds its weights) converted for ``options.runtime`` (cached), compiled;
    ``streams``: OpenVINO's (`OpenVinoNetwork`)."""
    threads = options.threads or torch.get_num_threads()
    if options.runtime == "openvino":
        ir = openvino_ir_for(version, yolo, options.cache_dir)
        return OpenVinoNetwork(ir, options.precision, threads, streams)
    if options.runtime == "onnxruntime":
        if options.precision != "fp32":
            raise ValueError(f"onnxruntime serves fp32 only here, not {options.precision}")
        return OnnxRuntimeNetwork(onnx_for(version, yolo, options.cache_dir), threads)
    raise ValueError(f"{options.runtime} is not a converted runtime")


def converted_predictor(network: ConvertedNetwork) -> type[Any]:
    """An Ultralytics ``DetectionPredictor`` class (for ``YOLO.predict(predictor=...)``) that runs
    ``network`` instead of the torch network, all else unchanged (see the module docstring)."""
    from ultralytics.models.yolo.detect import DetectionPredictor

    class ConvertedPredictor(DetectionPredictor):  # type: ignore[misc]
        def setup_model(self, model: Any, verbose: bool = True) -> None:
            super().setup_model(model, verbose)
            backend = self.model.backend  # type: ignore[attr-defined]  # PyTorchBackend: format "pt", so the minimal-padding letterbox
            backend.model = network
            backend.base_model = False  # a foreign module: called as network(im), no augment/embed

    ConvertedPredictor.__name__ = f"{network.runtime.capitalize()}DetectionPredictor"
    return ConvertedPredictor
