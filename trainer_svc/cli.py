"""`vision train DIR` and `vision food101`: the trainer's pipeline in this process, with a progress bar.

Same code path as a trainer_svc job (TrainConfig -> run.main -> write_final -> publish_final): the model
lands in the model store as the next version of ``--model-name``, where the running services pick it up.
``--work-dir`` keeps the checkpoint: run the same command again after an interruption and it resumes.
Argument parsing imports nothing heavy; torch loads only when a command runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any


def _flag(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    parser.add_argument(
        f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction, help=help_text
    )


def _common(parser: argparse.ArgumentParser, default_name: str, default_arch: str) -> None:
    parser.add_argument(
        "--model-name", default=default_name, help=f"model to publish a version of ({default_name})"
    )
    parser.add_argument("--arch", default=default_arch, choices=("resnet18", "resnet50", "smallcnn"))
    _flag(parser, "pretrained", "start from ImageNet weights (default: yes, except smallcnn)")
    _flag(parser, "freeze-backbone", "train only the new head (default: when pretrained)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    parser.add_argument("--img-size", type=int, default=224, help="square input side in pixels (default 224)")
    parser.add_argument("--val-split", type=float, default=0.2, help="validation share when splitting (0.2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (5)")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    _flag(parser, "hflip", "random horizontal flips in augmentation (default: on)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (2)")
    parser.add_argument(
        "--work-dir", type=Path, help="checkpoint directory; reuse it to resume (default: temp)"
    )
    parser.add_argument("--min-per-class", type=int, default=5, help="fewest images a class may have (5)")


def add_train_parsers(sub: Any, store_dir: argparse.ArgumentParser) -> None:
    """Add `train` and `food101` to the `vision` command's subparsers."""
    train = sub.add_parser(
        "train", parents=[store_dir], help="train a classifier on an ImageFolder directory"
    )
    train.add_argument(
        "data_dir", type=Path, help="DIR/<class>/*.jpg, or DIR/train/<class> + DIR/val/<class>"
    )
    _common(train, "custom", "resnet18")
    train.set_defaults(func=cmd_train)
    food = sub.add_parser(
        "food101", parents=[store_dir], help="train on Food-101 (downloaded with kagglehub)"
    )
    _common(food, "food101", "resnet50")
    food.add_argument(
        "--max-images-per-class", type=int, default=0, help="cap per class for quick runs (0: all)"
    )
    food.add_argument("--handle", default="dansbecker/food-101", help="kagglehub dataset handle")
    food.add_argument(
        "--cache-dir", type=Path, help="kagglehub cache (default: $KAGGLEHUB_CACHE or ~/.cache)"
    )
    food.set_defaults(func=cmd_food101)


def _config(args: argparse.Namespace, dataset: str, **extra: Any) -> Any:
    from trainer_svc.train_config import TrainConfig

    pretrained = args.pretrained if args.pretrained is not None else args.arch != "smallcnn"
    return TrainConfig(
        model_name=args.model_name,
        architecture=args.arch,
        pretrained=pretrained,
        freeze_backbone=args.freeze_backbone if args.freeze_backbone is not None else pretrained,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        val_fraction=args.val_split,
        seed=args.seed,
        patience=args.patience,
        label_smoothing=args.label_smoothing,
        img_size=args.img_size,
        horizontal_flip=args.hflip is not False,
        dataset=dataset,
        **extra,
    ).validate()


def _require_trainer_extra() -> None:
    import importlib.util

    from vision.errors import VisionError

    missing = [
        m for m in ("sklearn", "matplotlib", "tqdm", "kagglehub") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise VisionError(f"training needs {', '.join(missing)}: pip install 'vision-mesh[trainer]'")


def cmd_train(args: argparse.Namespace) -> int:
    _require_trainer_extra()
    from trainer_svc.data import load_image_folder

    config = _config(args, "image_folder", dataset_path=str(args.data_dir.resolve()))
    split = load_image_folder(args.data_dir, config.val_fraction, config.seed, args.min_per_class)
    return _train(config, split, args)


def cmd_food101(args: argparse.Namespace) -> int:
    _require_trainer_extra()
    from trainer_svc.food101 import load_food101

    config = _config(args, "food101", max_images_per_class=args.max_images_per_class)
    split = load_food101(
        args.handle, args.cache_dir, max_images_per_class=config.max_images_per_class, min_per_class=1
    )
    return _train(config, split, args)


def _train(config: Any, split: Any, args: argparse.Namespace) -> int:
    from trainer_svc import run
    from trainer_svc.evaluation import metrics_table
    from trainer_svc.progress_bar import ProgressBar
    from trainer_svc.publishing import (
        CONFUSION_PNG,
        CURVES_PNG,
        ensure_imagenet,
        imagenet_state,
        publish_final,
        write_final,
    )
    from trainer_svc.training import Runtime
    from vision.models.devices import resolve_device
    from vision.models.store import ModelStore

    store = ModelStore(args.model_dir)
    imagenet = imagenet_state(ensure_imagenet(store, config.architecture)) if config.pretrained else None
    workdir = args.work_dir or Path(tempfile.mkdtemp(prefix="vision-train-"))
    runtime = Runtime(
        device=resolve_device(args.device), loader_workers=args.workers, progress_interval_s=0.2
    )
    print(
        f"{len(split.class_names)} classes, {len(split.train)} training / {len(split.val)} validation "
        f"images; {config.architecture} on {runtime.device}; checkpoints in {workdir}",
        file=sys.stderr,
    )
    with ProgressBar() as bar:
        evaluation, weights = run.main(
            config, split, workdir / "train", runtime=runtime, imagenet_state=imagenet, report=bar
        )
    job_id = f"cli-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    final = write_final(
        workdir, config=config, split=split, evaluation=evaluation, weights=weights, job_id=job_id
    )
    version = publish_final(store, final, config.model_name, job_id)
    if args.work_dir is None:
        shutil.rmtree(workdir, ignore_errors=True)  # a temporary one: nothing to resume any more
    print(metrics_table(evaluation))
    print(f"\npublished {version.name} version {version.version} to {version.path}")
    print(f"confusion matrix: {version.path / CONFUSION_PNG}\ntraining curves:  {version.path / CURVES_PNG}")
    return 0
