"""trainer_svc training throughput against a bare PyTorch training loop, in one run on one machine.

Both train the same model (``vision.models.architectures.build_model``, from scratch, every layer) on the same
images (scikit-learn's digits written as an ImageFolder of PNGs, upscaled) with the same augmentation,
batch size, optimizer (Adam + per-step cosine schedule), DataLoader worker count and device:

* bare: a hand-written loop in a fresh process (torchvision ImageFolder, DataLoader, forward/backward/step);
  validation after each epoch, nothing else.
* trainer: a real ``python -m trainer_svc`` subprocess running the job in its worker process (decoding with
  the service's image checks, progress events, per-epoch validation, atomic checkpoints and best weights,
  the final evaluation and publishing), driven over gRPC; numbers from its events.

Rows: training images/s (training phase only, the first epoch dropped as warm-up), and epoch images/s
(training images over the whole epoch: training, validation, checkpointing). Runs alternate bare/trainer
``--rounds`` times and report the median (a shared machine disturbs single rounds). On CUDA, GPU
utilisation is sampled with nvidia-smi during each run.

    python -m benchmarks.trainer                                  # resnet18 at 112 px, 512 images
    python -m benchmarks.trainer --arch smallcnn --img-size 64 --device cuda --json out.json
    python -m benchmarks.trainer --quick                          # a smoke run: smallcnn, 32 px, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import grpc
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from benchmarks.harness.procs import REPO_ROOT, grpc_service
from benchmarks.harness.report import markdown_table, write_json
from tests.support.digits import write_image_folder
from vision.choices import ARCHITECTURES
from vision.image.preprocess import IMAGENET_MEAN, IMAGENET_STD
from vision.models.architectures import build_model
from vision.models.devices import resolve_device
from vision.v1 import trainer_pb2, trainer_pb2_grpc

TARGET_RATIO = 0.9


def make_dataset(root: Path, per_class: int, size: int) -> tuple[Path, int, int]:
    """``root/train/<digit>`` and ``root/val/<digit>`` (80/20); returns (root, train images, val images)."""
    write_image_folder(root / "all", size=size, per_class=per_class)
    n_train = n_val = 0
    for class_dir in sorted((root / "all").iterdir()):
        files = sorted(class_dir.iterdir())
        cut = int(len(files) * 0.8)
        for split, chosen in (("train", files[:cut]), ("val", files[cut:])):
            (root / split / class_dir.name).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                f.rename(root / split / class_dir.name / f.name)
        n_train, n_val = n_train + cut, n_val + len(files) - cut
    shutil.rmtree(root / "all")
    return root, n_train, n_val


@contextmanager
def gpu_sampler(device: torch.device) -> Iterator[list[float]]:
    """GPU utilisation percentages sampled every 0.5 s (empty on CPU or without nvidia-smi)."""
    samples: list[float] = []
    stop = threading.Event()
    index = device.index or 0
    query = ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]

    def sample() -> None:
        while not stop.wait(0.5):
            try:
                samples.append(
                    float(subprocess.run(query, capture_output=True, text=True, check=True).stdout)
                )
            except (OSError, ValueError, subprocess.CalledProcessError):
                return

    thread = threading.Thread(target=sample, daemon=True)
    if device.type == "cuda" and shutil.which("nvidia-smi"):
        thread.start()
    try:
        yield samples
    finally:
        stop.set()


def loaders(args: argparse.Namespace, data: Path, pin_memory: bool = False) -> tuple[DataLoader, DataLoader]:
    """Training (augmented, shuffled) and validation (resize + centre crop) loaders over ``data``."""
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    augment = transforms.Compose(
        [
            transforms.RandomResizedCrop(args.img_size, scale=(0.5, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(10),
            transforms.ColorJitter(0.2, 0.2, 0.2),
            transforms.ToTensor(),
            norm,
        ]
    )
    resize = round(args.img_size * 256 / 224)
    plain = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(args.img_size), transforms.ToTensor(), norm]
    )
    train_set = datasets.ImageFolder(str(data / "train"), augment)
    train = DataLoader(
        train_set, args.batch_size, shuffle=True, num_workers=args.workers, pin_memory=pin_memory
    )
    val = DataLoader(
        datasets.ImageFolder(str(data / "val"), plain),
        args.batch_size,
        num_workers=args.workers,
        pin_memory=pin_memory,
    )
    return train, val


def bare_run(args: argparse.Namespace, data: Path, device: torch.device) -> dict[str, Any]:
    """The reference: a plain PyTorch loop. Returns per-epoch train and whole-epoch images/s.

    On CUDA it is the loop a practitioner writes for speed, as the trainer does: AMP (float16 autocast with a
    GradScaler), channels_last model and inputs, pinned host memory. On the CPU: float32, no scaler."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    train, val = loaders(args, data, pin_memory=cuda)
    model = build_model(args.arch, 10).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * len(train))
    criterion = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else nullcontext()
    train_rates, epoch_rates = [], []
    with gpu_sampler(device) as gpu:
        for _ in range(args.epochs):
            start = time.perf_counter()
            model.train()
            for images, targets in train:
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                if cuda:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast:
                    loss = criterion(model(images), targets)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
            float(loss.detach())  # wait for the device
            trained = time.perf_counter()
            model.eval()
            with torch.inference_mode():
                correct = sum(int((model(x.to(device)).argmax(1) == y.to(device)).sum()) for x, y in val)
            end = time.perf_counter()
            train_rates.append(len(train.dataset) / (trained - start))  # type: ignore[arg-type]
            epoch_rates.append(len(train.dataset) / (end - start))  # type: ignore[arg-type]
    accuracy = correct / len(val.dataset)  # type: ignore[arg-type]
    return {"train": train_rates, "epoch": epoch_rates, "gpu": gpu, "val_accuracy": accuracy}


def bare_in_subprocess(argv: Sequence[str], data: Path) -> dict[str, Any]:
    """`bare_run` in a fresh process, as the trainer runs in its own (and no fork beside gRPC threads)."""
    command = [sys.executable, "-m", "benchmarks.trainer", "--bare-run", str(data), *argv]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def trainer_service(args: argparse.Namespace, work: Path) -> Iterator[trainer_pb2_grpc.TrainerStub]:
    """``python -m trainer_svc`` on a free port, its data under ``work``; a stub once it is SERVING."""
    env = {
        **os.environ,
        "VISION_DATA_DIR": str(work / "data"),
        "VISION_MODEL_DIR": str(work / "models"),
        "VISION_TRAINER_DATASETS_DIR": str(work),
        "VISION_TRAINER_LOADER_WORKERS": str(args.workers),
        "VISION_TRAINER_DEVICE": args.device,
        "VISION_LOG_LEVEL": "WARNING",
    }
    with (
        grpc_service("trainer_svc", "VISION_TRAINER_PORT", env, work) as svc,
        grpc.insecure_channel(svc.address) as channel,
    ):
        yield trainer_pb2_grpc.TrainerStub(channel)


def trainer_run(
    args: argparse.Namespace, stub: trainer_pb2_grpc.TrainerStub, device: torch.device
) -> dict[str, Any]:
    """One job like the bare run; per-epoch rates from its events (training phase, and event to event)."""
    spec = trainer_pb2.JobSpec(
        model_name="bench",
        architecture=ARCHITECTURES.to_enum(args.arch),  # type: ignore[arg-type]
        pretrained=False,  # type: ignore[arg-type]
        mode=trainer_pb2.TRAIN_MODE_FULL,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=1e-3,
        img_size=args.img_size,
        patience=args.epochs,
        image_folder=trainer_pb2.ImageFolderDataset(path="dataset"),
    )
    job = stub.CreateJob(iter([trainer_pb2.CreateJobRequest(spec=spec)]), timeout=60)
    train_rates, epoch_rates, last = [], [], None
    with gpu_sampler(device) as gpu:
        for event in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id)):
            now = time.perf_counter()
            if event.kind == trainer_pb2.JobEvent.KIND_STATE and event.state == trainer_pb2.JOB_STATE_RUNNING:
                last = now  # epoch 1 then includes the worker's start-up: it is dropped as warm-up
            if event.kind == trainer_pb2.JobEvent.KIND_EPOCH:
                train_rates.append(event.images_per_second)
                if last is not None:
                    epoch_rates.append(args.n_train / (now - last))
                last = now
    done = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id), timeout=10)
    if done.state != trainer_pb2.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"trainer job failed: {done.error}")
    return {"train": train_rates, "epoch": epoch_rates, "gpu": gpu, "val_accuracy": done.result.accuracy}


def steady(rates: list[float]) -> float:
    """Mean over the epochs after the first (warm-up)."""
    return statistics.fmean(rates[1:] if len(rates) > 1 else rates)


def _mean_gpu(runs: list[dict[str, Any]]) -> float | None:
    samples = [s for r in runs for s in r["gpu"]]
    return statistics.fmean(samples) if samples else None


def summarise(
    args: argparse.Namespace, device: torch.device, runs: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Medians over the rounds of each side, the ratios trainer / bare, and each round's ratio."""
    out: dict[str, Any] = {
        "config": vars(args),
        "device": str(device),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "bare_amp": device.type == "cuda",  # the bare loop uses AMP + channels_last on CUDA
        "target": TARGET_RATIO,
    }
    for kind in ("bare", "trainer"):
        out[kind] = {
            "train_images_per_s": statistics.median(steady(r["train"]) for r in runs[kind]),
            "epoch_images_per_s": statistics.median(steady(r["epoch"]) for r in runs[kind] if r["epoch"]),
            "gpu_util_percent": _mean_gpu(runs[kind]),
            "val_accuracy": [round(r["val_accuracy"], 3) for r in runs[kind]],
        }
    for row in ("train_images_per_s", "epoch_images_per_s"):
        out[f"ratio_{row}"] = out["trainer"][row] / out["bare"][row]
    pairs = zip(runs["bare"], runs["trainer"], strict=True)
    out["round_ratios"] = [round(steady(t["train"]) / steady(b["train"]), 3) for b, t in pairs]
    return out


def print_markdown(out: dict[str, Any]) -> None:
    cfg = out["config"]
    print(
        f"\n{cfg['arch']} from scratch, {cfg['img_size']} px, batch {cfg['batch_size']}, {cfg['n_train']} "
        f"training images, {cfg['epochs']} epochs x {cfg['rounds']} rounds, {cfg['workers']} loader workers, "
        f"device {out['device']} ({out['cpus']} CPUs, torch {out['torch']})\n"
    )
    rows: list[tuple[object, ...]] = []
    for row, name in (
        ("train_images_per_s", "training images/s"),
        ("epoch_images_per_s", "epoch images/s (with validation)"),
    ):
        ratio = out[f"ratio_{row}"]
        mark = "✓" if ratio >= TARGET_RATIO else "✗"
        rows.append((name, f"{out['bare'][row]:.1f}", f"{out['trainer'][row]:.1f}", f"{ratio:.2f} {mark}"))
    gpu = [out[k]["gpu_util_percent"] for k in ("bare", "trainer")]
    if any(g is not None for g in gpu):
        rows.append(("GPU utilisation %", f"{gpu[0] or 0:.0f}", f"{gpu[1] or 0:.0f}", ""))
    header = ("", "bare PyTorch loop", "trainer_svc job", f"ratio (target >= {TARGET_RATIO})")
    print(markdown_table(header, "lrrr", rows))
    print(f"\ntraining images/s ratio of each round (same-round pairs): {out['round_ratios']}")
    accuracy = (out["bare"]["val_accuracy"], out["trainer"]["val_accuracy"])
    print(f"\nvalidation accuracy of each run (bare, trainer): {accuracy[0]}, {accuracy[1]}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="resnet18", choices=ARCHITECTURES.names)
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument(
        "--per-class", type=int, default=64, help="digits per class (x10 classes, 80%% train)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating bare/trainer runs; the median counts"
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (both sides)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: smallcnn, 32 px, 10 per class, 2 epochs, 1 round"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--bare-run", type=Path, help=argparse.SUPPRESS)  # internal: one bare run, JSON out
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.img_size, args.per_class, args.epochs, args.rounds = "smallcnn", 32, 10, 2, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.bare_run:
        print(json.dumps(bare_run(args, args.bare_run, device)))
        return 0
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        work = Path(tmp)
        data, args.n_train, _ = make_dataset(work / "dataset", args.per_class, args.img_size)
        runs: dict[str, list[dict[str, Any]]] = {"bare": [], "trainer": []}
        with trainer_service(args, work) as stub:
            for round_ in range(args.rounds):
                runs["bare"].append(bare_in_subprocess(argv, data))
                runs["trainer"].append(trainer_run(args, stub, device))
                bare, trainer = runs["bare"][-1]["train"], runs["trainer"][-1]["train"]
                print(
                    f"round {round_ + 1} training images/s: bare {bare}, trainer {trainer}", file=sys.stderr
                )
    out = summarise(args, device, runs)
    print_markdown(out)
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
