"""The `vision` command: `vision run`, `vision models import|list|fetch-pretrained`, the model lifecycle
(`vision models pin|unpin|rollback|delete|set-default|unset-default`), `vision keys create|list|revoke`, batch
inference and evaluation (`vision classify|detect|explain|evaluate`, vision/batch/commands.py), plus
what the installed services contribute through entry points (`vision.plugins`): `vision train`, `vision
food101`, ..."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from vision.batch.commands import add_commands as add_batch_commands
from vision.choices import ARCHITECTURES, PRETRAINED_ARCHITECTURES
from vision.errors import VisionError
from vision.models.admin import ModelAdmin, ModelState
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
    store = _store(args)
    versions = store.list()
    if not versions:
        print(f"no models in {args.model_dir}: `vision models import CHECKPOINT --name NAME` adds one")
        return 0
    pins, defaults = store.lifecycle.pins(), set(store.lifecycle.defaults().values())
    print(f"{'NAME':<24} {'VERSION':>7}  {'ARCH':<10} {'CLASSES':>7}  {'CREATED':<25} {'STATE':<16} SOURCE")
    for v in versions:
        m = v.metadata
        source = m.provenance.get("source", "")
        state = ",".join(
            word
            for word, true in (("pinned", pins.get(v.name) == v.version), ("default", v.name in defaults))
            if true
        )
        print(
            f"{v.name:<24} {v.version:>7}  {m.architecture:<10} {m.num_classes:>7}  "
            f"{m.created_at[:25]:<25} {state or '-':<16} {source}"
        )
    return 0


def _who() -> str:
    """Recorded with each lifecycle change, as the gateway's principal is over HTTP."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        return "cli"


def _print_state(what: str, state: ModelState) -> int:
    pinned = f"version {state.pinned} (pinned)" if state.pinned else f"version {state.served} (the newest)"
    default = f"; the default {state.task} model" if state.is_default else ""
    print(
        f"{what}: model {state.name} ({state.task}) has versions {', '.join(state.versions)}; requests "
        f"naming no version get {pinned}{default}. Services follow within their poll interval."
    )
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    return _print_state("pinned", ModelAdmin(_store(args)).pin(args.name, args.version, _who()))


def cmd_unpin(args: argparse.Namespace) -> int:
    return _print_state("unpinned", ModelAdmin(_store(args)).unpin(args.name, _who()))


def cmd_rollback(args: argparse.Namespace) -> int:
    return _print_state("rolled back", ModelAdmin(_store(args)).rollback(args.name, _who()))


def cmd_delete(args: argparse.Namespace) -> int:
    state = ModelAdmin(_store(args)).delete(args.name, args.version, _who())
    return _print_state(f"deleted version {args.version}", state)


def cmd_set_default(args: argparse.Namespace) -> int:
    return _print_state("default set", ModelAdmin(_store(args)).set_default(args.name, _who()))


def cmd_unset_default(args: argparse.Namespace) -> int:
    return _print_state("default unset", ModelAdmin(_store(args)).unset_default(args.name, _who()))


def cmd_fetch(args: argparse.Namespace) -> int:
    from vision.models.pretrained import fetch_imagenet

    version = fetch_imagenet(_store(args), args.arch, name=args.name, url=args.url, timeout=args.timeout)
    print(f"fetched ImageNet {args.arch} as {version.name} version {version.version}")
    return 0


def cmd_run(_: argparse.Namespace) -> int:
    from vision.launcher import run

    return run()


def _keys_path(args: argparse.Namespace) -> Path:
    from vision.security.settings import AuthSettings

    return Path(args.keys_file) if args.keys_file else AuthSettings().keys_path


def cmd_keys_create(args: argparse.Namespace) -> int:
    from vision.security.keys import create_key
    from vision.security.roles import Role

    limits = {
        name: value
        for name, value in (
            ("rate", args.rate),
            ("burst", args.burst),
            ("max_active_jobs", args.max_active_jobs),
            ("max_upload_bytes_per_day", args.max_upload_bytes_per_day),
            ("max_models", args.max_models),
        )
        if value is not None
    }
    path = _keys_path(args)
    record, secret = create_key(path, args.name, Role.parse(args.role), limits)
    own = ", ".join(f"{k}={v}" for k, v in record.limits.items()) or "the role's defaults"
    print(f"created key {record.name!r} (role {record.role.label}, limits: {own}) in {path}")
    print("the key is shown once, here; only its hash is stored. Send it as `X-API-Key: <key>`:")
    print(secret)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from vision.security.keys import read_keys

    path = _keys_path(args)
    try:
        keys = read_keys(path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not keys:
        print(f"no keys in {path}: `vision keys create --name NAME --role viewer|trainer|admin` adds one")
        return 0
    print(f"{'NAME':<24} {'ROLE':<8} {'KEY':<10} {'CREATED':<26} LIMITS")
    for k in keys:
        own = ",".join(f"{n}={v}" for n, v in k.limits.items()) or "-"
        print(f"{k.name:<24} {k.role.label:<8} {k.hint + '...':<10} {k.created_at:<26} {own}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from vision.security.keys import revoke_key

    path = _keys_path(args)
    record = revoke_key(path, args.name)
    print(f"revoked key {record.name!r} ({record.role.label}); running gateways refuse it within seconds")
    return 0


def _add_keys_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="manage the gateway's API keys").add_subparsers(
        dest="keys", required=True
    )
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--keys-file",
        help="the key file (default: $VISION_AUTH_KEYS_FILE, else $VISION_DATA_DIR/auth/keys.json)",
    )
    create = keys.add_parser(
        "create", parents=[where], help="make a key; it is printed once, on the last line"
    )
    create.add_argument("--name", required=True, help="the key's name (the principal is key:NAME)")
    create.add_argument("--role", required=True, choices=("viewer", "trainer", "admin"))
    create.add_argument("--rate", type=float, help="requests per second (default: the role's)")
    create.add_argument("--burst", type=int, help="requests at once above the rate (default: the role's)")
    create.add_argument("--max-active-jobs", type=int, help="queued + running training jobs")
    create.add_argument("--max-upload-bytes-per-day", type=int, help="training upload bytes per UTC day")
    create.add_argument("--max-models", type=int, help="model names this key may own")
    create.set_defaults(func=cmd_keys_create)
    keys.add_parser("list", parents=[where], help="list keys (names, roles; no secrets)").set_defaults(
        func=cmd_keys_list
    )
    revoke = keys.add_parser("revoke", parents=[where], help="revoke a key by name")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_keys_revoke)


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
    _add_lifecycle_commands(models, store_dir)


def _add_lifecycle_commands(models: argparse._SubParsersAction, store_dir: argparse.ArgumentParser) -> None:
    """Pin, unpin, roll back, delete, set the default: on the store directly (run where it is writable)."""
    commands = (
        ("pin", cmd_pin, True, "serve VERSION to requests naming no version, in every service"),
        ("unpin", cmd_unpin, False, "serve the newest version again"),
        ("rollback", cmd_rollback, False, "pin the version before the one served now"),
        ("delete", cmd_delete, True, "delete VERSION (refused for the pinned and the only version)"),
        ("set-default", cmd_set_default, False, "make NAME its task's default model, in every service"),
        ("unset-default", cmd_unset_default, False, "stop NAME being its task's default model"),
    )
    for command, func, takes_version, text in commands:
        parser = models.add_parser(command, parents=[store_dir], help=text)
        parser.add_argument("name", help="model name in the store")
        if takes_version:
            parser.add_argument("version", help="version number, e.g. 3")
        parser.set_defaults(func=func)


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
    _add_keys_commands(sub)
    add_batch_commands(sub, store_dir)
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
