"""The generated code in vision/v1 and vision/oip_pb is exactly what `make proto` produces from protos/
today."""

from __future__ import annotations

from pathlib import Path

import pytest

from vision import protogen
from vision.v1 import classifier_pb2, detector_pb2, explainer_pb2, models_pb2, trainer_pb2


@pytest.mark.parametrize("contracts", protogen.PACKAGES, ids=lambda c: str(c.package_dir))
def test_checked_in_generated_code_matches_the_protos(tmp_path: Path, contracts: protogen.Contracts) -> None:
    fresh = {p.name: p.read_text() for p in protogen.generate(tmp_path, contracts=contracts)}
    checked_in_dir = protogen.REPO_ROOT / contracts.package_dir
    checked_in = {p.name: p.read_text() for p in checked_in_dir.iterdir() if p.is_file()}
    assert set(fresh) == set(checked_in), "generated file set differs: run `make proto`"
    stale = sorted(name for name in fresh if fresh[name] != checked_in[name])
    assert not stale, f"stale generated code, run `make proto`: {stale}"


def test_installed_package_imports_the_generated_code_from_the_repo() -> None:
    # One place: the package the services import is the checked-in one, not a copy elsewhere.
    assert Path(classifier_pb2.__file__).parent == protogen.REPO_ROOT / protogen.PACKAGE_DIR


def test_every_service_contract_is_in_package_vision_v1() -> None:
    services = {
        classifier_pb2: ["Classifier"],
        explainer_pb2: ["Explainer"],
        detector_pb2: ["Detector"],
        trainer_pb2: ["Trainer"],
        models_pb2: ["ModelAdmin", "ModelCatalog"],
    }
    for module, names in services.items():
        assert module.DESCRIPTOR.package == "vision.v1"
        assert sorted(module.DESCRIPTOR.services_by_name) == names
    trainer = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"]
    rpcs = {m.name: (m.client_streaming, m.server_streaming) for m in trainer.methods}
    assert rpcs == {
        "CreateJob": (True, False),
        "GetJob": (False, False),
        "ListJobs": (False, False),
        "CancelJob": (False, False),
        "WatchJob": (False, True),
        "GetModelReport": (False, False),
    }
