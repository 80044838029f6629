"""The trainer's core without any service: options and labels refused with clear messages, the stratified
split, reproducible training on CPU, resuming from a checkpoint to exactly where an uninterrupted run
ends, checkpoints read without unpickling code, metrics and the PNGs. Real models on real images (the
scikit-learn digits)."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.support.digits import write_image_folder
from trainer_svc.training import loop, resume
from trainer_svc.training.config import TrainConfig, validate_class_names, validate_file_name
from trainer_svc.training.data import (
    DatasetSplit,
    Sample,
    eval_transform,
    load_image_folder,
    stratified_split,
)
from trainer_svc.training.evaluation import (
    confusion_matrix_png,
    evaluate_predictions,
    metrics_table,
    training_curves_png,
)
from trainer_svc.training.loop import Runtime
from vision.errors import InvalidArgument, InvalidCheckpoint
from vision.image.preprocess import Preprocessing

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def config(**overrides: object) -> TrainConfig:
    base = TrainConfig(
        model_name="digits", architecture="smallcnn", pretrained=False, freeze_backbone=False, epochs=2,
        batch_size=16, lr=2e-3, img_size=32, horizontal_flip=False, dataset="image_folder",
    )  # fmt: skip
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits_split(tmp_path_factory: pytest.TempPathFactory) -> DatasetSplit:
    """20 digits per class (200 images, 32x32 PNG), split 80/20."""
    root = write_image_folder(tmp_path_factory.mktemp("digits"), size=32, per_class=20)
    return load_image_folder(root, 0.2, seed=0, min_per_class=5)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs must be between 1 and 1000, got 0"),
        ({"epochs": 100_000}, "epochs must be between 1 and 1000"),
        ({"batch_size": 0}, "batch_size must be between 1 and 1024"),
        ({"batch_size": 4096}, "batch_size must be between 1 and 1024"),
        ({"lr": 0.0}, "lr must be in (0, 10]"),
        ({"lr": math.nan}, "lr must be in (0, 10]"),
        ({"lr": 50.0}, "lr must be in (0, 10]"),
        ({"img_size": 8}, "img_size must be between 32 and 1024"),
        ({"val_fraction": 0.9}, "val_split must be in (0, 0.5]"),
        ({"label_smoothing": 0.7}, "label_smoothing must be in [0, 0.5]"),
        ({"architecture": "vgg16"}, "unknown arch 'vgg16'; accepted: resnet18, resnet50, smallcnn"),
        ({"optimizer": "lion"}, "unknown optimizer 'lion'; accepted: adam, sgd"),
        ({"pretrained": True}, "smallcnn has no ImageNet weights: set pretrained=false"),
        ({"freeze_backbone": True}, "a frozen backbone needs pretrained weights"),
        ({"model_name": "../etc"}, "invalid model name '../etc'"),
    ],
)
def test_out_of_range_options_are_refused_naming_the_accepted_values(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        config(**overrides).validate()
    assert message in caught.value.message


@pytest.mark.fast
@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["cat"], "at least 2 classes, got 1"),
        ([], "at least 2 classes, got 0"),
        (["cat", ""], "label 2 ('') is empty"),
        (["cat", "   "], "is empty"),
        (["cat", "Cat"], "labels 1 and 2 are the same"),
        (["cat", "dog/../../etc"], "contains a path separator"),
        (["cat", "dog\\cat"], "contains a path separator"),
        (["cat", ".."], "is '.' or '..'"),
        (["cat", "."], "is '.' or '..'"),
        (["café", "cafe\u0301"], "labels 1 and 2 are the same"),  # NFC and NFD spellings: one class
        (["cat", "d\x00g"], "contains NUL or another control character"),
        (["cat", "d\x1b[31mg"], "contains NUL or another control character"),
        (["cat", "dog\u202e"], "contains NUL or another control character"),
        (["cat", " dog"], "without surrounding spaces"),
        (["cat", "d" * 101], "1-100 characters"),
    ],
)
def test_bad_labels_are_refused(labels: list[str], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_class_names(labels)
    assert message in caught.value.message


@pytest.mark.fast
def test_reasonable_labels_in_any_script_are_accepted_unchanged_and_still_compared() -> None:
    labels = ["golden retriever", "chat noir", "猫", "كلب", "café-crème (2)", "👩\u200d🍳"]
    upload = TrainConfig.create("pets", architecture="smallcnn", dataset="upload", class_names=labels)
    assert upload.validate().class_names == labels  # accepted, in order, not normalised
    with pytest.raises(InvalidArgument, match=r"labels 2 and 7 are the same \('CHAT NOIR'\)"):
        validate_class_names([*labels, "CHAT NOIR"])  # the duplicate check still runs over them


@pytest.mark.fast
@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "C:\\Windows\\x.jpg", "a\x00.jpg", "a\nb.jpg", "..", "."]
)
def test_hostile_file_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="unacceptable name"):
        validate_file_name(name, 0)


@pytest.mark.fast
@pytest.mark.parametrize("name", ["..jpg", "holiday..0.png", "...", "photo..jpg"])
def test_file_names_with_inner_dots_are_accepted(name: str) -> None:
    validate_file_name(name, 0)  # file names are only shown in messages: dots in them are harmless


@pytest.mark.fast
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_split_is_stratified_seeded_and_keeps_every_class_on_both_sides(fraction: float) -> None:
    samples = [
        Sample(f"{label}/{i}.png", label) for label, count in enumerate([5, 12, 40]) for i in range(count)
    ]
    train, val = stratified_split(samples, fraction, seed=7)
    assert stratified_split(list(reversed(samples)), fraction, seed=7) == (train, val)
    assert stratified_split(samples, fraction, seed=8) != (train, val)
    assert sorted(train + val, key=lambda s: s.path) == sorted(samples, key=lambda s: s.path)
    for label, count in enumerate([5, 12, 40]):
        in_val = sum(s.label == label for s in val)
        assert in_val == min(max(1, round(count * fraction)), count - 1)
        assert sum(s.label == label for s in train) == count - in_val


def test_a_class_with_too_few_images_is_named(tmp_path: Path) -> None:
    write_image_folder(tmp_path, size=16, per_class=6)
    for extra in sorted((tmp_path / "3").iterdir())[3:]:
        extra.unlink()
    with pytest.raises(InvalidArgument, match=r"at least 5 images: '3' has 3"):
        load_image_folder(tmp_path, 0.2, seed=0, min_per_class=5)


def test_validation_preprocessing_is_exactly_servings() -> None:
    image = Image.new("RGB", (97, 61), (200, 30, 90))
    cfg = config(img_size=48)
    served = Preprocessing(resize_size=cfg.resize_size, input_size=48)
    assert cfg.resize_size == round(48 * 256 / 224)
    assert torch.equal(eval_transform(48, cfg.resize_size)(image), served(image))


def _weights(tmp_path: Path, split: DatasetSplit, cfg: TrainConfig, name: str) -> dict[str, torch.Tensor]:
    _, weights = loop.main(cfg, split, tmp_path / name, runtime=Runtime(loader_workers=0))
    return weights


def test_training_is_reproducible_on_cpu_with_a_seed(tmp_path: Path, digits_split: DatasetSplit) -> None:
    first = _weights(tmp_path, digits_split, config(epochs=1), "a")
    second = _weights(tmp_path, digits_split, config(epochs=1), "b")
    other_seed = _weights(tmp_path, digits_split, config(epochs=1, seed=1), "c")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)


class Interrupt(Exception):
    pass


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_run_ends(
    tmp_path: Path, digits_split: DatasetSplit
) -> None:
    # With a DataLoader worker process: its random seeds must come back from the checkpoint too.
    cfg = config(epochs=2, patience=10)
    runtime = Runtime(loader_workers=1)
    straight, straight_weights = loop.main(cfg, digits_split, tmp_path / "straight", runtime=runtime)
    steps = 0

    def crash_in_epoch_two() -> None:
        nonlocal steps
        steps += 1
        if steps == len(digits_split.train) // cfg.batch_size + 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        loop.main(cfg, digits_split, tmp_path / "resumed", runtime=runtime, check=crash_in_epoch_two)
    assert resume.load_checkpoint(tmp_path / "resumed")["epoch"] == 1  # type: ignore[index]
    events: list[str] = []
    resumed, resumed_weights = loop.main(
        cfg, digits_split, tmp_path / "resumed", runtime=runtime, report=lambda e: events.append(e.message)
    )
    assert "resumed after epoch 1" in events
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert [h["val_accuracy"] for h in resumed.history] == [h["val_accuracy"] for h in straight.history]
    assert all(torch.equal(straight_weights[k], resumed_weights[k]) for k in straight_weights)


def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement(
    tmp_path: Path, digits_split: DatasetSplit
) -> None:
    # A learning rate this small cannot improve on the first epoch's accuracy within one more epoch.
    evaluation, _ = loop.main(
        config(epochs=6, patience=1, lr=1e-9), digits_split, tmp_path, runtime=Runtime()
    )
    assert evaluation.epochs_run < 6
    assert evaluation.best_epoch == 1


def test_a_checkpoint_that_needs_unpickling_code_is_refused(tmp_path: Path) -> None:
    torch.save({"epoch": 1, "model": {}, "payload": Path("/etc/passwd")}, tmp_path / resume.CHECKPOINT_FILE)
    with pytest.raises(InvalidCheckpoint, match="unreadable"):
        resume.load_checkpoint(tmp_path)


@pytest.mark.fast
def test_metrics_per_class_confusion_matrix_and_pngs() -> None:
    evaluation = evaluate_predictions(
        [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], ["cat", "dog", "bird"], loss=0.5
    )
    assert evaluation.accuracy == pytest.approx(4 / 6)
    assert evaluation.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    dog = evaluation.per_class[1]
    assert (dog.precision, dog.recall, dog.support) == (pytest.approx(2 / 3), 1.0, 2)
    assert "macro avg" in metrics_table(evaluation)
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_accuracy": 0.5, "val_accuracy": 0.4}
        for e in (1, 2)
    ]
    for png in (
        confusion_matrix_png(evaluation.confusion, ["cat", "dog", "bird"]),
        training_curves_png(history),
    ):
        assert png.startswith(PNG_SIGNATURE)
        assert Image.open(io.BytesIO(png)).size[0] > 200
