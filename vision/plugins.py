"""What the services contribute to the shared tools, found through package entry points (never imports).

* ``vision.commands``: ``add_commands(subparsers, store_dir_parent)`` adds `vision` subcommands (training).
* ``vision.importers``: a `ModelImporter` for `vision models import` files the classifier format is not
  (Ultralytics YOLO ``.pt`` / ``.onnx``).
* ``vision.services``: a service's settings class (a `ServiceSettings` or the gateway's): `vision run` starts
  ``python -m <its package>`` on the port those settings give.

An installation (a container image) without a service simply lacks what that service contributes.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Protocol

from vision.models.store import ModelStore, ModelVersion

log = logging.getLogger(__name__)

COMMANDS_GROUP = "vision.commands"
IMPORTERS_GROUP = "vision.importers"
SERVICES_GROUP = "vision.services"

AddCommands = Callable[[Any, argparse.ArgumentParser], None]


class ModelImporter(Protocol):
    """Imports files of one family (e.g. YOLO) into the model store."""

    def accepts(self, path: Path) -> bool:
        """True when ``path`` is a file of this importer's family (read, never executed)."""
        ...

    def import_file(self, store: ModelStore, path: Path, name: str) -> ModelVersion:
        """Publish ``path`` as the next version of ``name``."""
        ...


@dataclass(frozen=True)
class Plugin:
    """One loaded entry point: its name, the distribution-qualified target, and the object."""

    name: str
    target: str
    value: Any


def load_group(group: str) -> Iterator[Plugin]:
    """The loadable entry points of ``group``, by name; one whose package is absent is skipped quietly."""
    found: list[EntryPoint] = sorted(entry_points(group=group), key=lambda e: e.name)
    for entry in found:
        try:
            value = entry.load()
        except ImportError as exc:  # that service's package (or its extras) is not installed here
            log.debug("skipping %s entry point %s: %s", group, entry.name, exc)
            continue
        yield Plugin(entry.name, entry.value, value)
