"""PATH... -> the image files to process: files as named, folders searched recursively, globs expanded
(``**`` included); sorted and de-duplicated. A file named explicitly is kept whatever its suffix (if it is
not an image, its result line says so); in folders and globs only image suffixes count."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from vision.errors import InvalidArgument

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _folder(root: Path) -> Iterable[Path]:
    """Image files under ``root``, hidden folders skipped."""
    return (
        p
        for p in root.rglob("*")
        if _is_image_name(p)
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def expand(arguments: Iterable[str]) -> list[Path]:
    """The files ``arguments`` name, sorted by path, each once; `InvalidArgument` for an argument that is
    neither a file, a folder nor a glob matching something (a typo should not pass as an empty run)."""
    found: dict[str, Path] = {}
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            matches = list(_folder(path))
        elif path.exists():
            matches = [path]
        elif glob.has_magic(argument):
            matches = []
            for hit in map(Path, glob.glob(argument, recursive=True)):
                matches += list(_folder(hit)) if hit.is_dir() else [hit] if _is_image_name(hit) else []
        else:
            raise InvalidArgument(f"{argument}: no such file or folder, and no glob pattern")
        if not matches and (path.is_dir() or glob.has_magic(argument)):
            raise InvalidArgument(f"{argument}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        for match in matches:
            found.setdefault(str(match), match)
    return [found[key] for key in sorted(found)]
