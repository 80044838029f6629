"""`vision train DIR`: the trainer's pipeline from the command line, a progress bar on stderr, the per-class
table at the end, the model published to the store; bad options fail with the accepted range."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.digits import write_image_folder
from vision.cli import main
from vision.models.store import ModelStore

FAST = ["--arch", "smallcnn", "--epochs", "1", "--img-size", "32", "--batch-size", "16", "--workers", "0"]


def test_vision_train_publishes_the_model_and_prints_the_per_class_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_image_folder(tmp_path / "digits", size=32, per_class=10)
    models = tmp_path / "models"
    status = main(["train", str(data), "--model-dir", str(models), "--model-name", "digits", *FAST])
    out, err = capsys.readouterr()
    assert status == 0
    assert "epoch 1/1: train loss" in err and "10 classes, 80 training / 20 validation images" in err
    assert "class" in out and "precision" in out and "macro avg" in out
    assert all(f"\n{d} " in out for d in range(10))  # a row per class
    version = ModelStore(models).get("digits")
    assert version.metadata.provenance["source"].startswith("trainer:cli-")
    assert (version.path / "confusion_matrix.png").is_file() and "published digits version 1" in out


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--epochs", "0"], "epochs must be between 1 and 1000"),
        (["--val-split", "0.7"], "val_split must be in (0, 0.5]"),
        (["--pretrained"], "smallcnn has no ImageNet weights"),
    ],
)
def test_vision_train_refuses_bad_options_with_the_accepted_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    data = write_image_folder(tmp_path / "digits", size=16, per_class=5)
    status = main(["train", str(data), "--model-dir", str(tmp_path / "models"), *FAST, *option])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_vision_train_with_two_processes_runs_itself_as_two_gloo_ranks_and_publishes_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = write_image_folder(tmp_path / "digits", size=32, per_class=10)
    models = tmp_path / "models"
    work = tmp_path / "work"
    argv = ["train", str(data), "--model-dir", str(models), "--work-dir", str(work), "--nproc-per-node", "2"]
    status = main([*argv, *FAST])
    out, err = capfd.readouterr()  # the ranks are processes of their own: their output is on the fds
    assert status == 0, err[-2000:]
    assert "on cpu x 2 processes" in err and "published custom version 1" in out
    assert ModelStore(models).versions("custom") == ["1"]
    assert ModelStore(models).get("custom").metadata.provenance["config"]["nproc_per_node"] == 2
    assert main([*argv, *FAST, "--nproc-per-node", "64"]) == 2  # more processes than cores
    assert "nproc_per_node=64 is more than this machine's" in capfd.readouterr().err
