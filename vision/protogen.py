"""Generate the Python code of the contracts: `python -m vision.protogen [OUT_DIR]`.

`make proto` is the one command that writes the generated packages; the test suite runs `generate()` into a
temporary directory and fails when the checked-in code differs (stale contracts). Two packages:

* ``vision/v1`` from ``protos/vision/v1``: our own contracts.
* ``vision/oip_pb`` from ``protos/inference``: the Open Inference Protocol (package ``inference``, as the
  specification names it). protoc's Python imports follow a file's path under its include root, so that
  directory is mapped to the virtual path ``vision/oip_pb``: the generated modules then import each other as
  ``vision.oip_pb`` while the proto package stays the specification's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"


@dataclass(frozen=True)
class Contracts:
    """One generated package: the ``.proto`` files in ``proto_dir`` (under the proto root) become
    ``package_dir``."""

    package_dir: Path  # relative to the repository (and to an output directory)
    proto_dir: Path  # relative to the proto root
    title: str

    def proto_files(self, proto_root: Path = PROTO_ROOT) -> list[Path]:
        """The contract files, as paths on disk (sorted, so output is deterministic)."""
        return sorted((proto_root / self.proto_dir).glob("*.proto"))


VISION_V1 = Contracts(Path("vision") / "v1", Path("vision") / "v1", "protos/vision/v1")
OPEN_INFERENCE = Contracts(Path("vision") / "oip_pb", Path("inference"), "protos/inference")
PACKAGES = (VISION_V1, OPEN_INFERENCE)
PACKAGE_DIR = VISION_V1.package_dir  # the package of our own contracts


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Our own contract files, relative to ``proto_root``."""
    return [p.relative_to(proto_root) for p in VISION_V1.proto_files(proto_root)]


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT, contracts: Contracts = VISION_V1) -> list[Path]:
    """Run grpcio-tools' protoc for ``contracts`` into ``out_dir``; returns the generated files (pb2, pyi,
    pb2_grpc, __init__) of that package."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        # ``virtual=disk``: the files are known to protoc (and to the generated imports) by the package path.
        f"-I{contracts.package_dir.as_posix()}={proto_root / contracts.proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in contracts.proto_files(proto_root)],
    ]
    package = out_dir / contracts.package_dir
    package.mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    init = package / "__init__.py"
    init.write_text(f'"""Generated from {contracts.title} by `make proto`. Do not edit."""\n')
    return sorted(p for p in package.iterdir() if p.is_file())


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT
    for contracts in PACKAGES:
        for path in generate(out, contracts=contracts):
            print(path)


if __name__ == "__main__":
    main()
