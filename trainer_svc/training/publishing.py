"""Between training and the model store: ImageNet weights in, finished models out.

A finished run is first written to ``<workdir>/final/`` (weights, metadata, evaluation, PNGs; complete or
absent: it is renamed into place), then published from there as the next version of the model. A version
records the job that made it (``provenance.job_id``), so publishing is idempotent: a job whose version is
already in the store is never published twice, whatever crashed in between.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer_svc.errors import logged
from trainer_svc.training.config import TrainConfig
from trainer_svc.training.data import DatasetSplit
from trainer_svc.training.evaluation import Evaluation, confusion_matrix_png, training_curves_png
from vision.errors import Conflict, ModelNotFound
from vision.models.pretrained import IMAGENET_WEIGHTS, PretrainedUnavailable, fetch_imagenet
from vision.models.store import METADATA_FILE, WEIGHTS_FILE, ModelMetadata, ModelStore, ModelVersion
from vision.models.weights import load_classifier, sha256_file

FINAL_DIR = "final"
EVALUATION_FILE = "evaluation.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"
ARTIFACTS = (WEIGHTS_FILE, EVALUATION_FILE, CONFUSION_PNG, CURVES_PNG)

log = logging.getLogger(__name__)


class PretrainedWeightsMissing(Conflict):
    """ImageNet weights were asked for but are neither in the store nor downloadable."""


def find_imagenet(store: ModelStore, architecture: str) -> ModelVersion | None:
    """A stored version holding torchvision's ImageNet weights for ``architecture``, if any."""
    for version in store.list():
        meta = version.metadata
        if meta.architecture == architecture and str(meta.provenance.get("source", "")).startswith(
            "torchvision:"
        ):
            return version
    return None


def ensure_imagenet(
    store: ModelStore, architecture: str, *, url: str = "", timeout: float = 10.0
) -> ModelVersion:
    """The ImageNet weights from the store, fetched into it first when online; offline and absent:
    `PretrainedWeightsMissing` at once (the download fails fast) with what to do instead."""
    found = find_imagenet(store, architecture)
    if found is not None:
        return found
    name = architecture if architecture not in store.names() else f"imagenet-{architecture}"
    try:
        return fetch_imagenet(store, architecture, name=name, url=url or None, timeout=timeout)
    except (PretrainedUnavailable, OSError) as exc:  # its text names the URL and the network error: logged
        what = logged(
            log,
            f"ImageNet weights for {architecture} are not in the model store and could not be downloaded",
            exc,
        )
        raise PretrainedWeightsMissing(
            f"{what}. Run `vision models fetch-pretrained --arch {architecture}` where the internet is "
            "reachable, or set pretrained=false to train from scratch"
        ) from exc


def imagenet_state(version: ModelVersion) -> dict[str, torch.Tensor]:
    """The stored ImageNet model's state dict (its 1000-class head included)."""
    if version.metadata.architecture not in IMAGENET_WEIGHTS:
        raise ModelNotFound(f"{version.name} is not an ImageNet model")
    return load_classifier(version).state_dict()


def fsync_files(directory: Path, names: tuple[str, ...] | list[str]) -> None:
    """Flush ``directory/<name>`` for each name, then the directory itself: on disk before any rename."""
    for name in names:
        fd = os.open(directory / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_final(
    workdir: Path,
    *,
    config: TrainConfig,
    split: DatasetSplit,
    evaluation: Evaluation,
    weights: dict[str, torch.Tensor],
    job_id: str,
) -> Path:
    """Everything the version will hold, in ``workdir/final`` (renamed into place complete)."""
    from safetensors.torch import save_file

    final = workdir / FINAL_DIR
    tmp = workdir / f".final-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
    (tmp / EVALUATION_FILE).write_text(json.dumps(evaluation.to_dict(), indent=1))
    (tmp / CONFUSION_PNG).write_bytes(confusion_matrix_png(evaluation.confusion, split.class_names))
    (tmp / CURVES_PNG).write_bytes(training_curves_png(evaluation.history))
    metadata = ModelMetadata(
        architecture=config.architecture,
        class_names=list(split.class_names),
        input_size=config.img_size,
        resize_size=config.resize_size,
        metrics=evaluation.summary_metrics(),
        provenance={
            "source": f"trainer:{job_id}",
            "job_id": job_id,
            "dataset": config.dataset,
            "pretrained": config.pretrained,
            "class_counts": split.class_counts(),
            "config": {k: v for k, v in config.to_dict().items() if k != "class_names"},
        },
    )
    (tmp / METADATA_FILE).write_text(metadata.to_json())
    fsync_files(tmp, [*ARTIFACTS, METADATA_FILE])
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_files(workdir, [])
    return final


def find_published(store: ModelStore, name: str, job_id: str) -> ModelVersion | None:
    """The version of ``name`` that job ``job_id`` published, if it did."""
    for number in reversed(store.versions(name)):
        version = store.get(name, number)
        if version.metadata.provenance.get("job_id") == job_id:
            return version
    return None


def publish_final(
    store: ModelStore, final: Path, name: str, job_id: str, *, principal: str = ""
) -> ModelVersion:
    """Publish ``final`` as the next version of ``name``, unless this job already did (then: that one).
    ``principal``, who asked for the job, is recorded in the version's provenance."""
    existing = find_published(store, name, job_id)
    if existing is not None:
        return existing
    metadata = ModelMetadata.from_json((final / METADATA_FILE).read_text())
    if principal:
        metadata.provenance["principal"] = principal

    def write(tmp: Path) -> dict[str, str]:
        for artifact in ARTIFACTS:
            shutil.copyfile(final / artifact, tmp / artifact)
        fsync_files(tmp, ARTIFACTS)  # on disk before the store renames the version into place
        return {"weights_file": WEIGHTS_FILE, "weights_sha256": sha256_file(tmp / WEIGHTS_FILE)}

    return store.publish(name, metadata, write)


@dataclass
class Report:
    evaluation: Evaluation
    confusion_png: bytes
    curves_png: bytes
    job_id: str


def read_report(version: ModelVersion) -> Report:
    """The evaluation and PNGs stored with a version this trainer published; `ModelNotFound` otherwise."""
    path = version.path / EVALUATION_FILE
    if not path.is_file():
        raise ModelNotFound(
            f"model {version.name!r} version {version.version} has no training report: it was not trained "
            "by trainer_svc"
        )
    return Report(
        evaluation=Evaluation.from_dict(json.loads(path.read_text())),
        confusion_png=(version.path / CONFUSION_PNG).read_bytes(),
        curves_png=(version.path / CURVES_PNG).read_bytes(),
        job_id=str(version.metadata.provenance.get("job_id", "")),
    )
