"""Generate the Python code for the vision.v1 contracts: `python -m vision.protogen [OUT_DIR]`.

`make proto` is the one command that writes `vision/v1/`; the test suite runs `generate()` into a temporary
directory and fails when the checked-in code differs (stale contracts).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PACKAGE_DIR = Path("vision") / "v1"


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The contract files, relative to ``proto_root`` (sorted, so output is deterministic)."""
    return sorted(p.relative_to(proto_root) for p in (proto_root / PACKAGE_DIR).glob("*.proto"))


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run grpcio-tools' protoc into ``out_dir``; returns the generated files (pb2, pyi, pb2_grpc)."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files(proto_root)],
    ]
    (out_dir / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    init = out_dir / PACKAGE_DIR / "__init__.py"
    init.write_text('"""Generated from protos/vision/v1 by `make proto`. Do not edit."""\n')
    return sorted(p for p in (out_dir / PACKAGE_DIR).iterdir() if p.is_file())


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT
    for path in generate(out):
        print(path)


if __name__ == "__main__":
    main()
