"""Progress of a batch run on stderr: a tqdm bar when tqdm is installed (it is with the trainer's extra),
else one line rewritten at most every ``VISION_BATCH_PROGRESS_INTERVAL_S``. Both show images/s."""

from __future__ import annotations

import sys
import time
from typing import Any

from vision.batch.settings import BatchSettings


class Progress:
    """``update()`` once per image finished; ``errors`` counts the failed ones."""

    def __init__(self, total: int, skipped: int, enabled: bool = True) -> None:
        self.total, self.skipped, self.enabled = total, skipped, enabled
        self.count = self.errors = 0
        self.start = self._shown = time.monotonic()
        self.interval_s = BatchSettings().progress_interval_s
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                self._bar = None
            else:
                self._bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)

    @property
    def rate(self) -> float:
        """Images per second since the start."""
        return self.count / max(time.monotonic() - self.start, 1e-9)

    def update(self, failed: bool) -> None:
        self.count += 1
        self.errors += int(failed)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            if failed:
                self._bar.set_postfix(errors=self.errors, refresh=False)
            return
        now = time.monotonic()
        if now - self._shown >= self.interval_s or self.count == self.total:
            self._shown = now
            print(
                f"\r{self.count}/{self.total} images, {self.errors} errors, {self.rate:.1f} images/s",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.count:
            print(file=sys.stderr)
