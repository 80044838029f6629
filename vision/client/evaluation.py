"""`VisionClient.evaluate`: an ImageFolder scored through the classifier (`vision.evaluation.folder`).

The version is fixed by the first answer, and every later call names it: a version published during the run
is not mixed in. The class names are that version's, as the classifier lists it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vision.client.errors import InvalidArgumentError, NotFoundError
from vision.client.results import Classification, ModelRef

if TYPE_CHECKING:
    from vision.evaluation.folder import FolderReport

PROBES = 10  # images tried, in order, to learn which version answers (a broken first file is skipped)


def _served(client: Any, root: Path, model: str, version: str, timeout: float | None) -> ModelRef:
    from vision.evaluation.folder import image_files

    for probe in image_files(root)[:PROBES]:
        try:
            answer: Classification = client.classify(
                probe, model=model, version=version, top_k=1, timeout=timeout
            )
        except (InvalidArgumentError, OSError):
            continue
        return answer.model
    raise InvalidArgumentError(f"none of the first {PROBES} images under {root} could be classified")


def evaluate_folder_with(
    client: Any, root: Path, *, model: str, version: str, concurrency: int, timeout: float | None
) -> FolderReport:
    """``client`` (a `VisionClient`) scores the served model on ``root``."""
    from vision.evaluation.folder import evaluate_folder

    ref = _served(client, root, model, version, timeout)
    listed = client.models("classifier", timeout=timeout).models
    info = next((m for m in listed if (m.name, m.version) == (ref.name, ref.version)), None)
    if info is None:
        raise NotFoundError(f"model {ref.name} version {ref.version} is not listed by the classifier")

    def classify(path: Path, k: int) -> Classification:
        result: Classification = client.classify(
            path, model=ref.name, version=ref.version, top_k=k, timeout=timeout
        )
        return result

    return evaluate_folder(
        root, classify, list(info.class_names), model=ref.name, version=ref.version, concurrency=concurrency
    )
