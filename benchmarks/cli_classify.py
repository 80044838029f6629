"""`vision classify` over a folder of N photos against the same photos sent one by one (sequential Classify
calls through `VisionClient`), in one run, to one classifier_svc subprocess (a seeded random model).
Printed: images/s of both and the ratio (the command keeps ``--concurrency`` requests in flight, so the
service batches them). Both phases classify the same files; the sequential one runs first and warms up.

    python -m benchmarks.cli_classify                       # 240 photos, resnet18, concurrency 8
    python -m benchmarks.cli_classify --images 60 --arch smallcnn --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.harness.inputs import publish_random_model, test_images
from benchmarks.harness.procs import grpc_service, thread_env
from benchmarks.harness.report import command_line, markdown_table, ratio, write_json
from vision.batch.commands import CONCURRENCY
from vision.cli import main as vision_main
from vision.client import VisionClient
from vision.models.store import ModelStore


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=240, help="photos in the folder (default 240)")
    parser.add_argument("--arch", default="resnet18", help="architecture of the served model (resnet18)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="`vision classify` in flight")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the service (default: all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 24 photos")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = 24
    return args


def write_photos(folder: Path, n: int) -> list[Path]:
    """``n`` files cycling through the real test photos (each a distinct file, so none is skipped)."""
    photos = test_images()
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        name, data = photos[i % len(photos)]
        path = folder / f"{i:05d}-{name}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def sequential(address: str, paths: list[Path], model: str) -> float:
    """Seconds to classify ``paths`` one call at a time."""
    with VisionClient(classifier=address) as client:
        client.classify(paths[0], model=model)  # the first call opens the channel
        start = time.perf_counter()
        for path in paths:
            client.classify(path, model=model)
        return time.perf_counter() - start


def command(address: str, folder: Path, out: Path, model: str, concurrency: int) -> float:
    """Seconds `vision classify FOLDER` takes in this process (parsing and file writing included)."""
    argv = ["classify", str(folder), "--server", address, "--model", model, "--output", str(out)]
    start = time.perf_counter()
    status = vision_main([*argv, "--concurrency", str(concurrency), "--no-progress"])
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"vision classify exited with {status}")
    lines = out.read_text().splitlines()
    if len(lines) != len(list(folder.iterdir())) or any('"error"' in line for line in lines):
        raise SystemExit(f"vision classify left errors or missing lines in {out}")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    print(f"$ {command_line()}\n")
    print(
        f"- {os.cpu_count()} CPU cores, device {args.device}, torch threads in the service {threads}; "
        f"{args.images} photos (bus, zidane, astronaut); {args.arch}, 1000 classes"
    )
    with tempfile.TemporaryDirectory(prefix="cli-classify-bench-") as tmp:
        root = Path(tmp)
        store = ModelStore(root / "models")
        publish_random_model(store, args.arch)
        paths = write_photos(root / "photos", args.images)
        env = {
            **os.environ,
            **thread_env(threads),
            "VISION_MODEL_DIR": str(store.root),
            "VISION_CLASSIFIER_FETCH_PRETRAINED": "false",
            "VISION_CLASSIFIER_DEVICE": args.device,
        }
        with grpc_service("classifier_svc", "VISION_CLASSIFIER_PORT", env, root) as svc:
            one_by_one = sequential(svc.address, paths, args.arch)
            batch = command(svc.address, root / "photos", root / "results.jsonl", args.arch, args.concurrency)
    rows = [
        ("one by one (sequential `VisionClient.classify`)", 1, args.images / one_by_one),
        (f"`vision classify DIR` (--concurrency {args.concurrency})", args.concurrency, args.images / batch),
    ]
    speedup = ratio(rows[1][2], rows[0][2])
    body = [(label, str(n), f"{rate:.1f}", f"{ratio(rate, rows[0][2]):.2f}x") for label, n, rate in rows]
    print("\n" + markdown_table(("how", "in flight", "images/s", "ratio"), "lrrr", body))
    write_json(
        args.json,
        {
            "command": command_line(),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "sequential_images_per_s": round(rows[0][2], 3),
            "cli_images_per_s": round(rows[1][2], 3),
            "ratio": round(speedup, 3),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
