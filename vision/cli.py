"""The `vision` command: `vision run`, `vision models import|list|fetch-pretrained`, plus what the installed
services contribute through entry points (`vision.plugins`): `vision train`, `vision food101`, ..."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vision.choices import ARCHITECTURES, PRETRAINED_ARCHITECTURES
from vision.errors import VisionError
from vision.models.store import ModelStore
from vision.plugins import COMMANDS_GROUP, IMPORTERS_GROUP, load_group
from vision.settings import StoreSettings


def _store(args: argparse.Namespace) -> ModelStore:
    return ModelStore(args.model_dir)


def cmd_import(args: argparse.Namespace) -> int:
    path = Path(args.checkpoint)
    importer = next((p.value for p in load_group(IMPORTERS_GROUP) if p.value.accepts(path)), None)
    if importer is not None:
        version = importer.import_file(_store(args), path, args.name)
    else:
        from vision.models.checkpoint_import import import_checkpoint

        version = import_checkpoint(
            _store(args), path, args.name, classes_file=args.classes, architecture=args.arch
        )
    meta = version.metadata
    print(
        f"imported {args.checkpoint} as {version.name} version {version.version} "
        f"({meta.task}, {meta.architecture}, {meta.num_classes} classes) into {version.path}"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    versions = _store(args).list()
    if not versions:
        print(f"no models in {args.model_dir}: `vision models import CHECKPOINT --name NAME` adds one")
        return 0
    print(f"{'NAME':<24} {'VERSION':>7}  {'ARCH':<10} {'CLASSES':>7}  {'CREATED':<25} SOURCE")
    for v in versions:
        m = v.metadata
        source = m.provenance.get("source", "")
        print(
            f"{v.name:<24} {v.version:>7}  {m.architecture:<10} {m.num_classes:>7}  "
            f"{m.created_at[:25]:<25} {source}"
        )
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from vision.models.pretrained import fetch_imagenet

    version = fetch_imagenet(_store(args), args.arch, name=args.name, url=args.url, timeout=args.timeout)
    print(f"fetched ImageNet {args.arch} as {version.name} version {version.version}")
    return 0


def cmd_run(_: argparse.Namespace) -> int:
    from vision.launcher import run

    return run()


def _add_models_commands(sub: argparse._SubParsersAction, store_dir: argparse.ArgumentParser) -> None:
    models = sub.add_parser("models", help="manage the model store").add_subparsers(
        dest="models", required=True
    )
    imp = models.add_parser("import", parents=[store_dir], help="import a PyTorch checkpoint (weights only)")
    imp.add_argument(
        "checkpoint",
        help="a .pth/.pt checkpoint (state dict or {'model_state_dict', ...}), an Ultralytics YOLO .pt, "
        "or a YOLO ONNX export",
    )
    imp.add_argument("--name", required=True, help="model name in the store")
    imp.add_argument("--classes", type=Path, help="classes.txt, one class name per line, in label order")
    imp.add_argument(
        "--arch", choices=ARCHITECTURES.names, help="architecture (default: inferred from the weights)"
    )
    imp.set_defaults(func=cmd_import)
    models.add_parser("list", parents=[store_dir], help="list models and versions").set_defaults(
        func=cmd_list
    )
    fetch = models.add_parser(
        "fetch-pretrained", parents=[store_dir], help="download ImageNet weights (online)"
    )
    fetch.add_argument("--arch", default=ARCHITECTURES.default, choices=PRETRAINED_ARCHITECTURES)
    fetch.add_argument("--name", help="model name (default: the architecture)")
    fetch.add_argument("--url", help="mirror URL of the weights file")
    fetch.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    fetch.set_defaults(func=cmd_fetch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vision", description="Vision service mesh tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start every service and the gateway locally").set_defaults(func=cmd_run)
    store_dir = argparse.ArgumentParser(add_help=False)
    store_dir.add_argument(
        "--model-dir",
        default=str(StoreSettings().model_dir),
        help="model store directory (default: $VISION_MODEL_DIR or var/models)",
    )
    _add_models_commands(sub, store_dir)
    for plugin in load_group(COMMANDS_GROUP):  # argument definitions only: torch loads when one runs
        plugin.value(sub, store_dir)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except VisionError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
