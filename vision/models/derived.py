"""Derived artifacts of a stored version: files converted from its weights (an ONNX export), cached.

A stored version's weights are the truth; a derived artifact is rebuilt from them whenever it is missing or
stale. It lives beside the version, ``<store>/<name>/<version>/derived/<file>``, where the store is writable;
where it is not (the model services mount it read-only in Kubernetes) it lives under a cache directory,
``<cache_dir>/<name>/<version>/<file>``. Each artifact has a stamp, ``<file>.stamp.json``, naming the weights'
sha256 and the versions of the converters that made it: an artifact whose stamp differs from what the
caller expects is stale. Artifacts and stamps are written to a temporary name and renamed into place, so
concurrent processes see a whole file or none; the stamp is written last, so a crash between the two leaves
an artifact without a stamp, which counts as missing. A build killed mid-way leaves its temporary directory;
the next build in that place removes those older than `STALE_BUILD_S` (a younger one may be another
process's build in progress).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from vision.models.store import ModelVersion, sha256_file

log = logging.getLogger(__name__)

DERIVED_DIR = "derived"
STAMP_SUFFIX = ".stamp.json"
TMP_PREFIX = ".tmp-"
STALE_BUILD_S = 3600.0  # no conversion takes this long; a temporary directory this old is a dead build's


def weights_digest(version: ModelVersion) -> str:
    """The sha256 of the version's weights: from its metadata, else computed."""
    return version.metadata.weights_sha256 or sha256_file(version.weights_path)


def candidate_dirs(version: ModelVersion, cache_dir: Path) -> list[Path]:
    """Where an artifact of ``version`` may be, in the order they are looked at: beside it, then the cache."""
    return [version.path / DERIVED_DIR, Path(cache_dir) / version.name / version.version]


def _stamp_matches(path: Path, stamp: Mapping[str, str]) -> bool:
    try:
        found = json.loads((path.parent / (path.name + STAMP_SUFFIX)).read_text())
    except (OSError, ValueError):
        return False
    return bool(found == dict(stamp)) and path.is_file()


def _writable_dir(directory: Path) -> bool:
    """Whether files can be created in ``directory`` (made if missing): the store may be mounted read-only."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True


def remove_dead_builds(directory: Path, older_than_s: float = STALE_BUILD_S) -> list[Path]:
    """Remove the temporary build directories in ``directory`` last modified over ``older_than_s`` ago."""
    removed = []
    cutoff = time.time() - older_than_s
    for leftover in directory.glob(f"{TMP_PREFIX}*"):
        try:
            if leftover.is_dir() and leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover)
                removed.append(leftover)
        except OSError:  # removed by another process meanwhile, or not ours to remove
            continue
    if removed:
        log.info("removed %d dead conversion directories in %s", len(removed), directory)
    return removed


def _write_stamp(path: Path, stamp: Mapping[str, str]) -> None:
    path.write_text(json.dumps(dict(stamp), sort_keys=True))


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def derived_artifact(
    version: ModelVersion,
    files: tuple[str, ...],
    stamp: Mapping[str, str],
    build: Callable[[Path], None],
    cache_dir: Path,
) -> Path:
    """The path of the artifact ``files[0]`` of ``version`` (with the other ``files`` beside it, e.g. an
    OpenVINO IR's ``.bin``) whose stamp is ``stamp``, built if needed.

    ``build(directory)`` writes ``files`` into ``directory`` (a temporary one). A current artifact beside the
    version or in ``cache_dir`` is reused; otherwise it is built into the first writable of the two: never
    into a read-only store. Raises what ``build`` raises, or OSError when neither place is writable.
    """
    places = candidate_dirs(version, cache_dir)
    for directory in places:
        if _stamp_matches(directory / files[0], stamp) and all((directory / f).is_file() for f in files):
            return directory / files[0]
    for directory in places:
        if not _writable_dir(directory):
            log.info("%s is not writable: derived artifacts of %s go elsewhere", directory, version.key)
            continue
        remove_dead_builds(directory)
        tmp = directory / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            build(tmp)
            _write_stamp(tmp / (files[0] + STAMP_SUFFIX), stamp)
            for name in (*files[1:], files[0], files[0] + STAMP_SUFFIX):  # the stamp last: it vouches
                _fsync(tmp / name)
                os.replace(tmp / name, directory / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("built %s for %s version %s", directory / files[0], version.name, version.version)
        return directory / files[0]
    raise OSError(f"no writable place for derived artifacts of {version.name} {version.version}: {places}")
