"""The trainer's `vision` subcommands (entry point group ``vision.commands``): `vision train DIR`,
`vision food101` and `vision datasets digits DIR`.

Training runs the trainer's pipeline in this process, with a progress bar: the same code path as a
trainer_svc job (TrainConfig -> training.loop.main -> write_final -> publish_final), so the model lands in
the model store as the next version of ``--model-name``, where the running services pick it up.
``--work-dir`` keeps the checkpoint: run the same command again after an interruption and it resumes.
``--nproc-per-node N`` trains N processes (one per GPU; gloo on CPU): the command runs itself again under
``python -m torch.distributed.run``, and under torchrun (``torchrun ... -m vision.cli train ...``, one node or
several) each process finds its rank in the environment; rank 0 shows the progress and publishes.
Options left out take `TrainConfig`'s defaults. Argument parsing imports nothing heavy; torch loads only
when a command runs.
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

from trainer_svc.config import TrainerSettings
from trainer_svc.training.config import FOOD101_HANDLE, TrainConfig
from vision.choices import ARCHITECTURES, OPTIMIZERS

SETTINGS = TrainerSettings.model_fields


def _flag(parser: argparse.ArgumentParser, name: str, help_text: str) -> None:
    parser.add_argument(
        f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction, help=help_text
    )


def _training_options(parser: argparse.ArgumentParser, default_name: str, default_arch: str | None) -> None:
    """The TrainConfig options; each left out (None) takes TrainConfig's default."""
    parser.add_argument(
        "--model-name", default=default_name, help=f"model to publish a version of ({default_name})"
    )
    arch_help = f"architecture ({default_arch or ARCHITECTURES.default})"
    parser.add_argument("--arch", default=default_arch, choices=ARCHITECTURES.names, help=arch_help)
    _flag(parser, "pretrained", "start from ImageNet weights (default: yes, except smallcnn)")
    _flag(parser, "freeze-backbone", "train only the new head (default: when pretrained)")
    parser.add_argument("--epochs", type=int, help=f"epochs ({TrainConfig.epochs})")
    parser.add_argument("--batch-size", type=int, help=f"images per step ({TrainConfig.batch_size})")
    parser.add_argument("--lr", type=float, help=f"learning rate ({TrainConfig.lr:g})")
    parser.add_argument("--optimizer", choices=OPTIMIZERS.names, help=f"optimizer ({OPTIMIZERS.default})")
    parser.add_argument("--img-size", type=int, help=f"square input side in pixels ({TrainConfig.img_size})")
    parser.add_argument(
        "--val-split", type=float, help=f"validation share when splitting ({TrainConfig.val_fraction})"
    )
    parser.add_argument("--seed", type=int, help=f"random seed ({TrainConfig.seed})")
    parser.add_argument(
        "--patience", type=int, help=f"early-stopping patience in epochs ({TrainConfig.patience})"
    )
    parser.add_argument(
        "--label-smoothing", type=float, help=f"label smoothing of the loss ({TrainConfig.label_smoothing})"
    )
    _flag(parser, "hflip", "random horizontal flips in augmentation (default: on)")
    parser.add_argument(
        "--device", default=SETTINGS["device"].default, help="auto (CUDA when present), cpu, cuda:N"
    )
    workers = SETTINGS["loader_workers"].default
    parser.add_argument(
        "--workers", type=int, default=workers, help=f"DataLoader worker processes ({workers})"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="checkpoint directory; reuse it to resume (default: temp)"
    )
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        help="training processes (data parallel, batch size per process); 0: one per GPU (1 on CPU)",
    )
    fewest = SETTINGS["min_images_per_class"].default
    parser.add_argument(
        "--min-per-class", type=int, default=fewest, help=f"fewest images a class may have ({fewest})"
    )


def add_commands(sub: Any, store_dir: argparse.ArgumentParser) -> None:
    """Add `train`, `food101` and `datasets` to the `vision` command's subparsers (``store_dir``: the parent
    parser with --model-dir)."""
    train = sub.add_parser(
        "train", parents=[store_dir], help="train a classifier on an ImageFolder directory"
    )
    train.add_argument(
        "data_dir", type=Path, help="DIR/<class>/*.jpg, or DIR/train/<class> + DIR/val/<class>"
    )
    _training_options(train, "custom", None)
    train.set_defaults(func=cmd_train)
    food = sub.add_parser(
        "food101", parents=[store_dir], help="train on Food-101 (downloaded with kagglehub)"
    )
    _training_options(food, "food101", "resnet50")
    food.add_argument(
        "--max-images-per-class", type=int, default=0, help="cap per class for quick runs (0: all)"
    )
    food.add_argument("--handle", default=FOOD101_HANDLE, help="kagglehub dataset handle")
    food.add_argument(
        "--cache-dir", type=Path, help="kagglehub cache (default: $KAGGLEHUB_CACHE or ~/.cache)"
    )
    food.set_defaults(func=cmd_food101)
    datasets = sub.add_parser("datasets", help="write small example datasets").add_subparsers(
        dest="datasets", required=True
    )
    digits = datasets.add_parser(
        "digits", help="scikit-learn's 8x8 digits, upscaled, as an ImageFolder (to try training offline)"
    )
    digits.add_argument("out_dir", type=Path, help="written as OUT_DIR/<digit>/<n>.png")
    digits.add_argument("--size", type=int, default=32, help="image side in pixels (32)")
    digits.add_argument("--per-class", type=int, default=0, help="images per class (default: all, ~180)")
    digits.set_defaults(func=cmd_digits)


def _config(args: argparse.Namespace, dataset: str, **extra: Any) -> TrainConfig:
    from trainer_svc.cli_ranks import world_shape

    nproc_per_node, nnodes = world_shape(args.nproc_per_node, args.device)
    return TrainConfig.create(
        args.model_name,
        architecture=args.arch,
        pretrained=args.pretrained,
        freeze_backbone=args.freeze_backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        val_fraction=args.val_split,
        seed=args.seed,
        patience=args.patience,
        label_smoothing=args.label_smoothing,
        img_size=args.img_size,
        horizontal_flip=args.hflip,
        dataset=dataset,
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        **extra,
    ).validate()


def _require_trainer_extra(*modules: str) -> None:
    import importlib.util

    from vision.errors import VisionError

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise VisionError(f"this command needs {', '.join(missing)}: pip install 'vision-mesh[trainer]'")


TRAINING_MODULES = ("sklearn", "matplotlib", "tqdm", "kagglehub")


def cmd_train(args: argparse.Namespace) -> int:
    _require_trainer_extra(*TRAINING_MODULES)
    from trainer_svc.cli_ranks import relaunched
    from trainer_svc.training.data import load_image_folder

    config = _config(args, "image_folder", dataset_path=str(args.data_dir.resolve()))
    status = relaunched(config, args)
    if status is not None:
        return status
    split = load_image_folder(args.data_dir, config.val_fraction, config.seed, args.min_per_class)
    return _train(config, split, args)


def cmd_food101(args: argparse.Namespace) -> int:
    _require_trainer_extra(*TRAINING_MODULES)
    from trainer_svc.cli_ranks import relaunched
    from trainer_svc.training.food101 import load_food101

    config = _config(args, "food101", max_images_per_class=args.max_images_per_class)
    status = relaunched(config, args)
    if status is not None:
        return status
    split = load_food101(
        args.handle, args.cache_dir, max_images_per_class=config.max_images_per_class, min_per_class=1
    )
    return _train(config, split, args)


def cmd_digits(args: argparse.Namespace) -> int:
    _require_trainer_extra("sklearn")
    from trainer_svc.demo_data import write_image_folder

    write_image_folder(args.out_dir, args.size, args.per_class)
    print(f"wrote the scikit-learn digits to {args.out_dir}")
    return 0


def _train(config: TrainConfig, split: Any, args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from trainer_svc.cli_ranks import joined
    from trainer_svc.progress_bar import ProgressBar
    from trainer_svc.training import loop
    from trainer_svc.training.evaluation import metrics_table
    from trainer_svc.training.publishing import (
        CONFUSION_PNG,
        CURVES_PNG,
        ensure_imagenet,
        imagenet_state,
        publish_final,
        write_final,
    )
    from vision.models.store import ModelStore

    store = ModelStore(args.model_dir)
    workdir = args.work_dir or Path(tempfile.mkdtemp(prefix="vision-train-"))
    with joined(args.device) as (world, device):
        if config.pretrained and world.is_main:
            ensure_imagenet(store, config.architecture)
        world.barrier()  # rank 0 fetched the ImageNet weights (if they were missing)
        imagenet = imagenet_state(ensure_imagenet(store, config.architecture)) if config.pretrained else None
        runtime = loop.Runtime(
            device=device, loader_workers=args.workers, progress_interval_s=0.2, world=world
        )
        if world.is_main:
            ranks = f" x {world.size} processes" if world.distributed else ""
            print(
                f"{len(split.class_names)} classes, {len(split.train)} training / {len(split.val)} "
                f"validation images; {config.architecture} on {runtime.device}{ranks}; "
                f"checkpoints in {workdir}",
                file=sys.stderr,
            )
        with ProgressBar() if world.is_main else nullcontext() as bar:
            trained = loop.main(
                config, split, workdir / "train", runtime=runtime, imagenet_state=imagenet, report=bar
            )
        if trained is not None:  # rank 0: the others wait at the barrier while it publishes
            evaluation, weights = trained
            job_id = f"cli-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            final = write_final(
                workdir, config=config, split=split, evaluation=evaluation, weights=weights, job_id=job_id
            )
            version = publish_final(store, final, config.model_name, job_id)
            if args.work_dir is None:
                shutil.rmtree(workdir, ignore_errors=True)  # a temporary one: nothing to resume any more
            print(metrics_table(evaluation))
            print(f"\npublished {version.name} version {version.version} to {version.path}")
            print(f"confusion matrix: {version.path / CONFUSION_PNG}")
            print(f"training curves:  {version.path / CURVES_PNG}")
        world.barrier()
    return 0
