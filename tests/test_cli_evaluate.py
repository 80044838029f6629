"""`vision evaluate DIR --model NAME`: a model trained here by the trainer (`vision train`) measured on the
trainer's own validation split, written as an ImageFolder, reports the accuracy and per-class scores the
trainer reported, through the running classifier and with --local; folders the model has no class for, and
classes without a folder, are reported; the metrics are scikit-learn's."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import start_classifier
from tests.support.digits import write_image_folder
from vision.cli import main
from vision.evaluation.metrics import evaluate_predictions
from vision.models.store import ModelStore

FAST = [
    "--arch", "smallcnn", "--epochs", "8", "--lr", "0.003", "--img-size", "32", "--batch-size", "16",
    "--workers", "0", "--no-hflip", "--patience", "20",
]  # fmt: skip


@pytest.mark.fast
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_are_scikit_learns(seed: int) -> None:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    y_true, y_pred = (
        rng.integers(0, 6, 200).tolist(),
        rng.integers(0, 5, 200).tolist(),
    )  # class 5: never predicted
    names = [f"c{i}" for i in range(7)]  # class 6: absent
    ours = evaluate_predictions(y_true, y_pred, names, loss=0.0)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(7), zero_division=0)
    assert [c.precision for c in ours.per_class] == pytest.approx(p.tolist())
    assert [c.recall for c in ours.per_class] == pytest.approx(r.tolist())
    assert [c.f1 for c in ours.per_class] == pytest.approx(f.tolist())
    assert [c.support for c in ours.per_class] == s.tolist()
    assert ours.confusion == confusion_matrix(y_true, y_pred, labels=range(7)).tolist()
    assert ours.accuracy == pytest.approx(np.mean(np.array(y_true) == np.array(y_pred)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A smallcnn trained on the digits by `vision train`, its validation split as an ImageFolder, and a
    classifier_svc serving the model."""
    from trainer_svc.training.data import load_image_folder

    root = tmp_path_factory.mktemp("evaluate")
    data = write_image_folder(root / "digits", size=32, per_class=100)
    models = root / "models"
    assert main(["train", str(data), "--model-dir", str(models), "--model-name", "digits", *FAST]) == 0
    version = ModelStore(models).get("digits")
    config = version.metadata.provenance["config"]
    # The trainer's split is reproducible: stratified by class, shuffled with the recorded seed.
    split = load_image_folder(Path(config["dataset_path"]), config["val_fraction"], config["seed"], 1)
    held_out = root / "validation"
    for sample in split.val:
        target = held_out / split.class_names[sample.label] / Path(sample.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample.path, target)
    server, engine = start_classifier(ModelStore(models))
    yield {
        "models": models, "version": version, "held_out": held_out, "val": len(split.val),
        "server": f"127.0.0.1:{server.port}", "root": root,
    }  # fmt: skip
    server.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("where", ["server", "local"])
def test_evaluate_on_the_validation_split_reports_the_trainers_accuracy(
    trained: dict[str, Any], where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = ["--server", trained["server"]] if where == "server" else ["--local"]
    argv = ["evaluate", str(trained["held_out"]), "--model", "digits", "--model-dir", str(trained["models"])]
    assert main([*argv, *source, "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    version = trained["version"]
    trainer = json.loads((version.path / "evaluation.json").read_text())
    assert report["images"] == trained["val"] and (report["model"], report["version"]) == ("digits", "1")
    assert report["top1"] == pytest.approx(version.metadata.metrics["val_accuracy"])
    assert report["evaluation"]["confusion"] == trainer["confusion"]
    for ours, theirs in zip(report["evaluation"]["per_class"], trainer["per_class"], strict=True):
        assert ours["class_name"] == theirs["class_name"] and ours["support"] == theirs["support"]
        assert [ours[k] for k in ("precision", "recall", "f1")] == pytest.approx(
            [theirs[k] for k in ("precision", "recall", "f1")]
        )
    assert len({m["predicted"] for m in report["misclassified"]}) > 2  # a model that learnt something
    assert 0 < report["top1"] <= report["top5"] <= 1
    assert len(report["misclassified"]) == round(trained["val"] * (1 - report["top1"]))
    assert f"top-1 accuracy {report['top1']:.4f}" in out and "macro avg" in out
    assert Image.open(tmp_path / "eval" / "confusion_matrix.png").size[0] > 100
    wrong = (tmp_path / "eval" / "misclassified.csv").read_text().splitlines()
    assert wrong[0] == "path,true,predicted,score" and len(wrong) == 1 + len(report["misclassified"])


def test_unknown_folders_missing_classes_and_broken_files_are_reported(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(trained["held_out"], folder)
    shutil.rmtree(folder / "9")
    (folder / "letters").mkdir()
    shutil.copyfile(next((folder / "0").iterdir()), folder / "letters" / "a.png")
    (folder / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    argv = [
        "evaluate",
        str(folder),
        "--model",
        "digits",
        "--server",
        trained["server"],
        "--out",
        str(tmp_path / "e"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["unknown_folders"] == {"letters": 1} and report["classes_without_folder"] == ["9"]
    assert [u["path"] for u in report["unreadable"]] == [str(folder / "3" / "broken.png")]
    assert report["images"] == trained["val"] - len(list((trained["held_out"] / "9").iterdir()))
    assert (
        "folders the model has no class for: letters (1 images)" in out and "classes with no folder: 9" in out
    )


def test_a_folder_with_no_class_of_the_model_is_refused(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cats").mkdir()
    shutil.copyfile(next((trained["held_out"] / "0").iterdir()), tmp_path / "cats" / "x.png")
    argv = ["evaluate", str(tmp_path), "--model", "digits", "--local", "--model-dir", str(trained["models"])]
    assert main(argv) == 2
    assert "no images in folders named after the model's classes" in capsys.readouterr().err
