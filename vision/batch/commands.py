"""`vision classify`, `vision detect`, `vision explain` and `vision evaluate`: the argument definitions and
what each runs. Against the running services through `VisionClient` (``--server``, default: the local one
that `vision run` starts), or with ``--local`` on the model store: classify and evaluate in this process
(`vision.batch.local`), detect and explain through their service started for the run
(`vision.batch.local_service`: `vision` imports no service).
Torch and the client load only when a command runs."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vision.choices import CAM_METHODS, COLORMAPS, OVERLAY_FORMATS
from vision.client.settings import ClientSettings
from vision.errors import InvalidArgument

INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT
CONCURRENCY = ClientSettings.model_fields["concurrency"].default


def _server_options(parser: argparse.ArgumentParser, service: str, progress: bool = True) -> None:
    parser.add_argument(
        "--server",
        default="",
        help=f"{service}_svc's gRPC address (default: $VISION_CLIENT_{service.upper()}_ADDR, else the local "
        f"one `vision run` starts, 127.0.0.1:$VISION_{service.upper()}_PORT)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=CONCURRENCY, help=f"requests in flight ({CONCURRENCY})"
    )
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _local_options(parser: argparse.ArgumentParser, child: bool = False) -> None:
    where = (
        "start the service for this run (a child process on a free loopback port) over --model-dir"
        if child
        else "run the model in this process, from --model-dir (no service)"
    )
    parser.add_argument("--local", action="store_true", help=where)
    parser.add_argument("--device", default="cpu", help="--local: cpu, cuda, cuda:N, auto (cpu)")


def add_commands(sub: Any, store_dir: argparse.ArgumentParser) -> None:
    """Add classify, detect, explain and evaluate to the `vision` command's subparsers."""
    classify = sub.add_parser("classify", parents=[store_dir], help="classify files, folders or globs")
    classify.add_argument("paths", nargs="+", help="image files, folders (searched recursively), globs")
    classify.add_argument("--model", default="", help="model name (default: the service's default)")
    classify.add_argument("--version", default="", help="model version (default: the one served)")
    classify.add_argument("--top-k", type=int, default=0, help="classes per image (default: 5)")
    classify.add_argument("--output", type=Path, default=Path("results.jsonl"), help="results .jsonl or .csv")
    _server_options(classify, "classifier")
    _local_options(classify)
    classify.set_defaults(func=cmd_classify)

    detect = sub.add_parser("detect", parents=[store_dir], help="detect objects in files, folders or globs")
    detect.add_argument("paths", nargs="+", help="image files, folders (searched recursively), globs")
    detect.add_argument("--model", default="", help="model name (default: the detector's default)")
    detect.add_argument("--version", default="", help="model version (default: the one served)")
    detect.add_argument("--conf", type=float, help="lowest confidence kept (the detector's default: 0.25)")
    detect.add_argument("--iou", type=float, help="NMS IoU threshold (default 0.45)")
    detect.add_argument("--max-det", type=int, help="most boxes per image (default 300)")
    detect.add_argument("--imgsz", type=int, help="inference size (default 640)")
    detect.add_argument("--classes", default="", help="keep only these, comma-separated ids or names")
    detect.add_argument("--output", type=Path, default=Path("detections.jsonl"), help="results .jsonl/.csv")
    detect.add_argument("--annotated", type=Path, help="also save each image with its boxes drawn here")
    _server_options(detect, "detector")
    _local_options(detect, child=True)
    detect.set_defaults(func=cmd_detect)

    explain = sub.add_parser(
        "explain", parents=[store_dir], help="class activation maps of files, folders or globs"
    )
    explain.add_argument("paths", nargs="+", help="image files, folders (searched recursively), globs")
    explain.add_argument("--out", type=Path, required=True, help="overlays, heatmaps and index.jsonl go here")
    explain.add_argument("--model", default="", help="model name (default: the service's default)")
    explain.add_argument("--version", default="", help="model version (default: the one served)")
    explain.add_argument("--method", default=CAM_METHODS.default, choices=CAM_METHODS.names)
    explain.add_argument("--layer", default="", help="module to explain (default: the last conv block)")
    explain.add_argument("--target", default=None, help="class id or label to explain (default: predicted)")
    explain.add_argument("--colormap", default=COLORMAPS.default, choices=COLORMAPS.names)
    explain.add_argument("--alpha", type=float, help="overlay opacity of the heatmap (service default)")
    explain.add_argument("--top-k", type=int, default=0, help="classes listed per image (default: 5)")
    explain.add_argument(
        "--overlay-max-side", type=int, default=0, help="overlay's longer side in pixels (default: 640)"
    )
    explain.add_argument(
        "--overlay-format", default="", choices=("", *OVERLAY_FORMATS.names),
        help="overlay encoding (default: the service's, jpeg)",
    )  # fmt: skip
    _server_options(explain, "explain")
    _local_options(explain, child=True)
    explain.set_defaults(func=cmd_explain)

    evaluate = sub.add_parser(
        "evaluate", parents=[store_dir], help="accuracy and per-class metrics on an ImageFolder"
    )
    evaluate.add_argument("data_dir", type=Path, help="DIR/<class>/<image>, folders named after the classes")
    evaluate.add_argument("--model", required=True, help="model name")
    evaluate.add_argument("--version", default="", help="model version (default: the one served)")
    evaluate.add_argument(
        "--out",
        type=Path,
        help="report.json, confusion_matrix.png, misclassified.csv (default: ./eval-MODEL-vN)",
    )
    _server_options(evaluate, "classifier", progress=False)
    _local_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)


def default_address(service: str) -> str:
    """$VISION_CLIENT_<SERVICE>_ADDR, else where `vision run` starts ``service`` (its settings' port)."""
    from vision.launcher import installed_services

    configured = ClientSettings().address(service)
    if configured:
        return configured
    found = next((s for s in installed_services() if s.name == service), None)
    if found is None:
        raise InvalidArgument(
            f"{service}_svc is not installed here: give its address with --server HOST:PORT"
        )
    return f"127.0.0.1:{found.port}"


@contextlib.contextmanager
def _connected(args: argparse.Namespace, service: str) -> Iterator[Any]:
    """A client of ``service``: the one at --server (or the default address), or with --local one started
    for the run (`local_service`)."""
    if not args.local:
        with _client(args.server or default_address(service), service) as client:
            yield client
        return
    from vision.batch.local_service import local_service

    with local_service(service, Path(args.model_dir), args.device) as address, _client(address, service) as c:
        yield c


def _client(address: str, service: str) -> Any:
    """A client of ``service``, after one ListModels call proves it answers (else a clear error, at once)."""
    from vision.client import UnavailableError, VisionClient

    client = VisionClient(settings=ClientSettings().model_copy(update={f"{service}_addr": address}))
    try:
        client.models(service, timeout=10)
    except UnavailableError as exc:
        client.close()
        raise UnavailableError(
            f"no {service} service answers at {address} ({exc.details}): start it (`vision run`), give "
            "--server HOST:PORT, or use --local",
            kind=exc.kind,
        ) from exc
    return client


def _finish(summary: Any, output: Path) -> int:
    errors = f', {summary.errors} errors (records with "error")' if summary.errors else ""
    skipped = f", {summary.skipped} already done" if summary.skipped else ""
    print(
        f"{summary.done} images in {summary.seconds:.1f} s ({summary.images_per_second:.1f} images/s)"
        f"{skipped}{errors}; results in {output}",
        file=sys.stderr,
    )
    if summary.interrupted:
        print(
            f"interrupted: {summary.total - summary.skipped - summary.done} images not done; run the same "
            f"command again (same --output) to resume",
            file=sys.stderr,
        )
        return INTERRUPTED
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from vision.batch.tasks import classify_paths

    if args.local:
        from vision.batch.local import LocalClassifier
        from vision.models.store import ModelStore

        local = LocalClassifier(ModelStore(args.model_dir), args.model, args.version, args.device)
        summary = classify_paths(
            local, args.paths, args.output, top_k=args.top_k, concurrency=1, progress=not args.no_progress
        )
        return _finish(summary, args.output)
    with _client(args.server or default_address("classifier"), "classifier") as client:
        summary = classify_paths(
            client, args.paths, args.output, top_k=args.top_k, concurrency=args.concurrency,
            progress=not args.no_progress, model=args.model, version=args.version,
        )  # fmt: skip
    return _finish(summary, args.output)


def _classes(text: str) -> list[int | str]:
    return [int(c) if c.strip().isdigit() else c.strip() for c in text.split(",") if c.strip()]


def cmd_detect(args: argparse.Namespace) -> int:
    from vision.batch.tasks import detect_paths

    with _connected(args, "detector") as client:
        summary = detect_paths(
            client, args.paths, args.output, annotated=args.annotated, concurrency=args.concurrency,
            progress=not args.no_progress, model=args.model, version=args.version, conf=args.conf,
            iou=args.iou, max_det=args.max_det, imgsz=args.imgsz, classes=_classes(args.classes),
        )  # fmt: skip
    return _finish(summary, args.output)


def cmd_explain(args: argparse.Namespace) -> int:
    from vision.batch.tasks import EXPLAIN_INDEX, explain_paths

    target = int(args.target) if args.target is not None and args.target.isdigit() else args.target
    with _connected(args, "explain") as client:
        summary = explain_paths(
            client, args.paths, args.out, concurrency=args.concurrency, progress=not args.no_progress,
            model=args.model, version=args.version, method=args.method, layer=args.layer, target=target,
            colormap=args.colormap, alpha=args.alpha, top_k=args.top_k,
            overlay_max_side=args.overlay_max_side, overlay_format=args.overlay_format,
        )  # fmt: skip
    return _finish(summary, args.out / EXPLAIN_INDEX)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.local:
        from vision.batch.local import LocalClassifier
        from vision.evaluation.folder import evaluate_folder
        from vision.models.store import ModelStore

        local = LocalClassifier(ModelStore(args.model_dir), args.model, args.version, args.device)
        report = evaluate_folder(
            args.data_dir, lambda path, k: local.classify(path, top_k=k), local.class_names,
            model=local.model.name, version=local.model.version, concurrency=1,
        )  # fmt: skip
    else:
        with _client(args.server or default_address("classifier"), "classifier") as client:
            report = client.evaluate(
                args.data_dir, model=args.model, version=args.version, concurrency=args.concurrency
            )
    out = args.out or Path(f"eval-{report.model}-v{report.version}")
    written = report.write(out)
    print(report.text())
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0
