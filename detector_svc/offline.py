"""Keep Ultralytics off the network and away from pickled code inside the service process.

Ultralytics phones home (settings sync / analytics), checks PyPI for updates, pip-installs missing packages
(even from inside ``PIL.Image.open``, which it patches) and downloads fonts on its own. None of that may
happen in a service: `make_ultralytics_offline()` switches every one of them off, for this process only (the
user's Ultralytics settings file is not rewritten). It also
turns on Ultralytics' restricted mode, in which a model config is built without ``eval()`` and a checkpoint
is only ever read with ``torch.load(weights_only=True)``.

Call it before the first ``import ultralytics`` (it sets the environment variables Ultralytics reads at
import time); called later, it patches the module-level flags those variables were read into.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

ENVIRONMENT = {
    "YOLO_OFFLINE": "1",  # is_online() -> False: no analytics, no update checks, no downloads on a miss
    "YOLO_AUTOINSTALL": "false",  # never pip-install a missing requirement
    "ULTRALYTICS_SAFE_LOAD": "1",  # weights_only loading and eval()-free model construction
    "YOLO_VERBOSE": "false",  # no per-call console output from predict
}
_lock = threading.Lock()
_done = False


def make_ultralytics_offline() -> None:
    """Idempotent; safe to call from any thread. Afterwards ``import ultralytics`` is network-free."""
    global _done
    with _lock:
        if _done:
            return
        os.environ.update(ENVIRONMENT)
        _patch_imported_flags()
        _done = True


def _patch_imported_flags() -> None:
    import ultralytics.utils as ul_utils
    from ultralytics.nn import tasks
    from ultralytics.utils import checks, events, plotting

    # The environment above covers a fresh import; these cover an ultralytics imported before us.
    for module in (ul_utils, checks, events):
        if hasattr(module, "ONLINE"):
            module.ONLINE = False  # type: ignore[attr-defined]
    for module in (ul_utils, checks):
        module.AUTOINSTALL = False  # type: ignore[attr-defined]
    for module in (ul_utils, tasks):
        module.SAFE_LOAD = True  # type: ignore[attr-defined]
    dict.__setitem__(ul_utils.SETTINGS, "sync", False)  # in memory: the settings file stays as it was
    events.events.enabled = False
    # Annotating non-ASCII class names asks for Arial.Unicode.ttf and downloads it when missing.
    plotting.check_font = local_font  # type: ignore[attr-defined]
    _restore_pil_open()


def _restore_pil_open() -> None:
    """Importing ultralytics replaces ``PIL.Image.open`` process-wide with a version that, on a file Pillow
    cannot identify, pip-installs and imports ``pi-heif``, turning our "not an image" answer into an internal
    error. The service refuses HEIC anyway (`vision.image.decode`), so Pillow's own ``open`` goes back."""
    from PIL import Image
    from ultralytics.utils import patches

    original = getattr(patches, "_image_open", None)
    if callable(original) and getattr(original, "__module__", "") == "PIL.Image":
        Image.open = original


def local_font(font: str = "Arial.ttf") -> Any:
    """A font file already on this machine (Ultralytics' config dir, then matplotlib's cache), else None
    (the annotator then uses Pillow's built-in font). Never downloads."""
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    name = Path(font).name
    for candidate in (USER_CONFIG_DIR / name, Path(font)):
        if candidate.is_file():
            return candidate
    matches = [f.fname for f in font_manager.fontManager.ttflist if name in f.fname]
    return matches[0] if matches else None
