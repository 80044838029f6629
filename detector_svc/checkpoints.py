"""Import Ultralytics YOLO detection weights into the model store, without ever running pickled code.

* An Ultralytics ``.pt`` is a pickled ``DetectionModel``. It is read with ``torch.load(weights_only=True)``,
  allowing exactly the globals the file names and an allow-list accepts: ``nn.Module`` classes defined in
  ``torch.nn.modules`` or ``ultralytics.nn.modules``, ``ultralytics.nn.tasks.DetectionModel``, and a few
  plain-data types. Anything else (``os.system``, another model type, a legacy module path) is refused with
  the offending names listed. The store then gets safetensors weights, the network config (``network.yaml``)
  and the class names; the network rebuilt from those must answer exactly as the loaded one does.
* An exported ``.onnx`` (protobuf: no code) is stored as it is; its class names and input size come from the
  metadata Ultralytics writes into it. Serving it needs ``onnxruntime``.
"""

from __future__ import annotations

import ast
import importlib
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from detector_svc.network import (
    CONFIG_FILE,
    DETECTION_TASK,
    ONNX_FILE,
    build_yolo,
    check_network_config,
    config_for_storage,
    write_config,
)
from vision.errors import InvalidCheckpoint
from vision.models.store import WEIGHTS_FILE, ModelMetadata, ModelStore, ModelVersion, validate_model_name
from vision.models.weights import sha256_file

_MODULE_PACKAGES = ("torch.nn.modules.", "ultralytics.nn.modules.")
_DETECTION_MODEL = "ultralytics.nn.tasks.DetectionModel"
_PROBE_SIZE = 128  # a multiple of every YOLO stride; small enough to run in milliseconds


def _data_globals() -> dict[str, Any]:
    """Plain-data types found in Ultralytics checkpoints (training args, metrics, paths)."""
    import pathlib

    from ultralytics.utils import IterableSimpleNamespace

    scalar = np.float64(0).__reduce__()[0]  # type: ignore[index]
    found: dict[str, Any] = {
        "ultralytics.utils.IterableSimpleNamespace": IterableSimpleNamespace,
        "numpy.core.multiarray.scalar": scalar,
        "numpy._core.multiarray.scalar": scalar,
        "numpy.dtype": np.dtype,
        "pathlib.PosixPath": pathlib.PurePosixPath,
        "pathlib.WindowsPath": pathlib.PureWindowsPath,
    }
    for dtype in (np.float64, np.float32, np.int64, np.int32, np.bool_):
        cls = type(np.dtype(dtype))
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


def _allowed(name: str, data: dict[str, Any]) -> Any | None:
    """The object a checkpoint may reference as ``name``, or None when it is not allowed."""
    if name in data:
        return data[name]
    module, _, attr = name.rpartition(".")
    if not (module.startswith(_MODULE_PACKAGES) or name == _DETECTION_MODEL):
        return None
    obj = getattr(importlib.import_module(module), attr, None)
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__ == module:
        return obj
    return None


def pickle_globals(path: Path) -> set[str]:
    """Every ``module.name`` a torch checkpoint's pickle references, read without unpickling.

    torch's own scan leaves out names anything in this process has allow-listed before (Ultralytics does so
    process-wide when it loads a ``.pt``); this list is the file's own, so the allow-list here decides.
    """
    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    with zipfile.ZipFile(path) as archive:
        member = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if member is None:
            return names
        for opcode, arg, _ in pickletools.genops(archive.read(member)):
            if opcode.name == "GLOBAL" and isinstance(arg, str):  # protocol 2, torch.save's default
                names.add(arg.replace(" ", ".").replace("__builtin__.", "builtins."))
    return names - _torch_safe_globals()


def _torch_safe_globals() -> set[str]:
    """What ``torch.load(weights_only=True)`` always allows (tensors, storages, dtypes, OrderedDict ...)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except ImportError:  # private in torch; without it the scan above is torch's own
        return set()


def load_ultralytics_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, read with ``torch.load(weights_only=True)`` and the allow-list described above."""
    from detector_svc.offline import make_ultralytics_offline

    make_ultralytics_offline()
    try:
        needed = pickle_globals(path)
    except (ValueError, RuntimeError, OSError, zipfile.BadZipFile) as exc:
        raise InvalidCheckpoint(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    data = _data_globals()
    entries = {name: _allowed(name, data) for name in needed}
    refused = sorted(name for name, obj in entries.items() if obj is None)
    if refused:
        other_models = [n for n in refused if n.startswith("ultralytics.nn.tasks.")]
        hint = (
            f"only detection models can be imported (this one is a {other_models[0].rsplit('.', 1)[1]})"
            if other_models
            else "only Ultralytics detection checkpoints (model layers and plain data) are accepted"
        )
        raise InvalidCheckpoint(
            f"{path.name} would need these to be unpickled, which is refused: {', '.join(refused[:8])}"
            f"{' ...' if len(refused) > 8 else ''}; {hint}"
        )
    # safe_globals() edits a process-wide list: imports run one at a time (CLI, or the one fetch thread).
    allowed: list[Any] = [(obj, name) for name, obj in entries.items()]
    with torch.serialization.safe_globals(allowed):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise InvalidCheckpoint(f"{path.name} was refused: {str(exc).splitlines()[0]}") from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise InvalidCheckpoint(f"{path.name} is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(checkpoint, dict):
        raise InvalidCheckpoint(f"{path.name} is not an Ultralytics checkpoint (a dict with 'model')")
    return checkpoint


def _network(checkpoint: dict[str, Any]) -> torch.nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    network = checkpoint.get("ema") or checkpoint.get("model")
    if type(network) is not DetectionModel:
        raise InvalidCheckpoint(
            f"the checkpoint holds {type(network).__name__}, not an Ultralytics DetectionModel"
        )
    return network.float().eval()


def _class_names(network: torch.nn.Module) -> list[str]:
    names = getattr(network, "names", None)
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        names = [names[i] for i in range(len(names))]
    if not (isinstance(names, list | tuple) and names and all(isinstance(n, str) for n in names)):
        raise InvalidCheckpoint("the checkpoint carries no class names ({id: name} or a list of names)")
    return list(names)


def _probe_output(network: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(1, 3, _PROBE_SIZE, _PROBE_SIZE, generator=generator)
    with torch.inference_mode():
        out = network(probe)
    tensor = out[0] if isinstance(out, tuple | list) else out
    assert isinstance(tensor, torch.Tensor)
    return tensor


def import_yolo_checkpoint(
    store: ModelStore, checkpoint_path: Path, name: str, *, source: str = "import"
) -> ModelVersion:
    """Publish an Ultralytics detection ``.pt`` as the next version of ``name``: safetensors weights, the
    network config and the class names; the rebuilt network is checked to answer as the original does."""
    validate_model_name(name)
    checkpoint = load_ultralytics_checkpoint(checkpoint_path)
    network = _network(checkpoint)
    names = _class_names(network)
    cfg = config_for_storage(check_network_config(getattr(network, "yaml", None)), len(names))
    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    train_args = checkpoint.get("train_args") or {}
    imgsz = train_args.get("imgsz", 640) if isinstance(train_args, dict) else 640
    imgsz = max(imgsz) if isinstance(imgsz, list | tuple) else int(imgsz)
    expected = _probe_output(network)

    def write(tmp: Path) -> dict[str, str]:
        write_config(cfg, tmp / CONFIG_FILE)
        rebuilt = build_yolo(tmp / CONFIG_FILE, state, names).model
        assert isinstance(rebuilt, torch.nn.Module)
        if not torch.allclose(_probe_output(rebuilt), expected, rtol=1e-5, atol=1e-5):
            raise InvalidCheckpoint(
                "the network rebuilt from the checkpoint's config does not answer as the checkpoint does; "
                "re-save it with the current ultralytics"
            )
        save_file(state, str(tmp / WEIGHTS_FILE))
        return {"weights_file": WEIGHTS_FILE, "weights_sha256": sha256_file(tmp / WEIGHTS_FILE)}

    architecture = Path(str(getattr(network, "yaml", {}).get("yaml_file", "yolo"))).stem or "yolo"
    metadata = ModelMetadata(
        architecture=architecture,
        class_names=names,
        task=DETECTION_TASK,
        head="detect",
        input_size=imgsz,
        resize_size=imgsz,
        mean=[0.0, 0.0, 0.0],
        std=[1.0, 1.0, 1.0],
        provenance={
            "source": source,
            "file": checkpoint_path.name,
            "sha256": sha256_file(checkpoint_path),
            "format": "ultralytics-pt",
            "ultralytics_version": str(checkpoint.get("version", "")),
        },
    )
    return store.publish(name, metadata, write)


def onnx_metadata(path: Path) -> dict[str, Any]:
    """The metadata Ultralytics writes into an exported ONNX file (names, imgsz, task, batch, ...)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise InvalidCheckpoint(
            "importing or serving ONNX models needs onnxruntime: pip install 'vision-mesh[detector]'"
        ) from exc
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for every parse failure
        raise InvalidCheckpoint(f"{path.name} is not a loadable ONNX model: {exc}") from exc
    raw = session.get_modelmeta().custom_metadata_map
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            parsed[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed[key] = value
    return parsed


def _onnx_architecture(description: str) -> str:
    """'Ultralytics YOLO11n model trained on ...' -> 'yolo11n'."""
    words = description.split()
    return words[1].lower() if len(words) > 1 and words[0] == "Ultralytics" else "onnx"


def import_onnx(store: ModelStore, onnx_path: Path, name: str) -> ModelVersion:
    """Publish an ONNX file exported by Ultralytics (``format="onnx"``) as the next version of ``name``."""
    validate_model_name(name)
    meta = onnx_metadata(onnx_path)
    if meta.get("task") != "detect":
        raise InvalidCheckpoint(
            f"{onnx_path.name} is not an Ultralytics detection export (metadata task={meta.get('task')!r})"
        )
    names = meta.get("names")
    if not (isinstance(names, dict) and sorted(names) == list(range(len(names)))):
        raise InvalidCheckpoint(f"{onnx_path.name} carries no class names in its metadata")
    imgsz = meta.get("imgsz", [640, 640])
    imgsz = list(imgsz) if isinstance(imgsz, list | tuple) else [int(imgsz), int(imgsz)]

    def write(tmp: Path) -> dict[str, str]:
        (tmp / ONNX_FILE).write_bytes(onnx_path.read_bytes())
        return {"weights_file": ONNX_FILE, "weights_sha256": sha256_file(tmp / ONNX_FILE)}

    metadata = ModelMetadata(
        architecture=_onnx_architecture(str(meta.get("description", ""))),
        class_names=[str(names[i]) for i in range(len(names))],
        task=DETECTION_TASK,
        head="detect",
        input_size=max(imgsz),
        resize_size=max(imgsz),
        mean=[0.0, 0.0, 0.0],
        std=[1.0, 1.0, 1.0],
        provenance={
            "source": "import",
            "file": onnx_path.name,
            "format": "onnx",
            "imgsz": imgsz,
            "dynamic": bool((meta.get("args") or {}).get("dynamic", False)),
            "batch": int(meta.get("batch", 1)),
            "ultralytics_version": str(meta.get("version", "")),
        },
    )
    return store.publish(name, metadata, write)


def import_detection_file(store: ModelStore, path: Path, name: str) -> ModelVersion:
    """`vision models import` for YOLO files: ``.onnx`` or an Ultralytics ``.pt``."""
    if path.suffix.lower() == ".onnx":
        return import_onnx(store, path, name)
    return import_yolo_checkpoint(store, path, name)
