"""`vision models import`: the original projects' checkpoints in, never unpickling code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from vision.cli import main as vision_cli
from vision.models.architectures import build_model
from vision.models.store import ModelStore
from vision.models.weights import load_classifier


def _model(arch: str, n: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, n).eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return torch.allclose(a(x), b(x))


def test_trainer_api_checkpoint_imports_with_its_class_names(tmp_path: Path, store: ModelStore) -> None:
    model = _model("resnet18", 2)
    ckpt = tmp_path / "trained_model.pth"
    torch.save({"model_state_dict": model.state_dict(), "class_names": ["cats", "dogs"]}, ckpt)
    assert vision_cli(["models", "import", str(ckpt), "--name", "pets", "--model-dir", str(store.root)]) == 0
    version = store.get("pets")
    assert version.metadata.class_names == ["cats", "dogs"]
    assert version.metadata.architecture == "resnet18"
    assert version.metadata.provenance["source"] == "import"
    assert _same_outputs(load_classifier(version), model)


def test_food101_checkpoint_imports_with_classes_txt(tmp_path: Path, store: ModelStore) -> None:
    names = [f"food_{i}" for i in range(101)]
    model = _model("resnet50", 101)
    ckpt = tmp_path / "best_model.pth"
    torch.save(
        {"epoch": 12, "model_state_dict": model.state_dict(), "optimizer_state_dict": {}, "best_acc": 81.5},
        ckpt,
    )
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(names) + "\n")
    code = vision_cli(
        [
            "models",
            "import",
            str(ckpt),
            "--name",
            "food101",
            "--classes",
            str(classes),
            "--arch",
            "resnet50",
            "--model-dir",
            str(store.root),
        ]
    )
    assert code == 0
    version = store.get("food101")
    assert version.metadata.class_names == names
    assert version.metadata.metrics == {"best_acc": 81.5}
    assert version.metadata.provenance["epoch"] == 12
    assert _same_outputs(load_classifier(version), model)


def test_dataparallel_prefixes_and_dropout_heads_are_understood(tmp_path: Path, store: ModelStore) -> None:
    model = build_model("smallcnn", 3, head="dropout_linear").eval()
    ckpt = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, ckpt)
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\n")
    assert (
        vision_cli(
            [
                "models",
                "import",
                str(ckpt),
                "--name",
                "dp",
                "--classes",
                str(classes),
                "--model-dir",
                str(store.root),
            ]
        )
        == 0
    )
    assert store.get("dp").metadata.head == "dropout_linear"
    assert _same_outputs(load_classifier(store.get("dp")), model)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))

    marker = ""


def test_checkpoint_with_pickled_code_is_refused_and_never_runs(
    tmp_path: Path, store: ModelStore, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    ckpt = tmp_path / "evil.pth"
    with open(ckpt, "wb") as f:
        pickle.dump({"model_state_dict": _Exploit(), "class_names": ["a"]}, f)
    assert vision_cli(["models", "import", str(ckpt), "--name", "evil", "--model-dir", str(store.root)]) == 2
    assert not marker.exists(), "the checkpoint's code ran"
    assert "refused" in capsys.readouterr().err
    assert store.names() == []


@pytest.mark.parametrize(
    ("payload", "classes", "message"),
    [
        ({"model_state_dict": "w", "class_names": ["a"]}, None, "not a dict of tensors"),
        ("just a string", None, "not a dict"),
        ({"foo": 1}, None, "unrecognised checkpoint"),
        (None, None, "no class names"),
        (None, "a\nb\nc\n", "2 outputs but 3 class names"),
    ],
)
def test_malformed_checkpoints_get_a_clear_error(
    tmp_path: Path,
    store: ModelStore,
    capsys: pytest.CaptureFixture[str],
    payload: object,
    classes: str | None,
    message: str,
) -> None:
    ckpt = tmp_path / "bad.pth"
    torch.save(payload if payload is not None else _model("resnet18", 2).state_dict(), ckpt)
    args = ["models", "import", str(ckpt), "--name", "bad", "--model-dir", str(store.root)]
    if classes is not None:
        (tmp_path / "classes.txt").write_text(classes)
        args += ["--classes", str(tmp_path / "classes.txt")]
    assert vision_cli(args) == 2
    assert message in capsys.readouterr().err
    assert store.names() == []


def test_weights_that_do_not_fit_the_architecture_are_refused(
    tmp_path: Path, store: ModelStore, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "r18.pth"
    torch.save({"model_state_dict": _model("resnet18", 2).state_dict(), "class_names": ["a", "b"]}, ckpt)
    args = [
        "models",
        "import",
        str(ckpt),
        "--name",
        "x",
        "--arch",
        "resnet50",
        "--model-dir",
        str(store.root),
    ]
    assert vision_cli(args) == 2
    assert "do not fit resnet50" in capsys.readouterr().err


def test_models_list_shows_what_is_stored(
    tmp_path: Path, store: ModelStore, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "trained_model.pth"
    torch.save({"model_state_dict": _model("smallcnn", 2).state_dict(), "class_names": ["a", "b"]}, ckpt)
    vision_cli(["models", "import", str(ckpt), "--name", "pets", "--model-dir", str(store.root)])
    capsys.readouterr()
    assert vision_cli(["models", "list", "--model-dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "pets" in out and "smallcnn" in out and "import" in out
