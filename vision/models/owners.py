"""Who owns each model name in the store: ``<root>/.owners/<name>.json``, written once, when a training
job first claims the name (``O_EXCL``: of two jobs claiming a new name at once, one gets it).

A name stored without an owner file (imported with ``vision models import``, fetched, or published before
ownership existed) belongs to the admins. The file lives in the store, so ownership survives restarts and
every process that reads the store sees the same owners (the registry, for the default model).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from vision.models.store import validate_model_name

OWNERS_DIR = ".owners"
ADMINS = ""  # the owner of names with no owner file


@dataclass(frozen=True)
class Owner:
    """``principal`` claimed the name with a job; ``admin``: that principal was an admin then."""

    principal: str
    admin: bool
    claimed_at: str = ""
    job_id: str = ""


class ModelOwners:
    def __init__(self, store_root: Path | str) -> None:
        self.dir = Path(store_root) / OWNERS_DIR

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def get(self, name: str) -> Owner | None:
        """The recorded owner of ``name`` (None: no owner file)."""
        try:
            data = json.loads(self._path(name).read_text(encoding="utf-8"))
            return Owner(str(data["principal"]), bool(data.get("admin", False)), data.get("claimed_at", ""),
                         data.get("job_id", ""))  # fmt: skip
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # Unreadable or damaged: nobody but the admins may use the name (fail closed).
            return Owner(ADMINS, True)

    def claim(self, name: str, principal: str, *, admin: bool, job_id: str = "") -> Owner:
        """Record ``principal`` as the owner of ``name`` unless someone is already; the owner either way."""
        validate_model_name(name)
        owner = Owner(principal, admin, datetime.now(timezone.utc).isoformat(timespec="seconds"), job_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(name)
        tmp = self.dir / f".{name}.{os.getpid()}.{id(owner)}.tmp"
        tmp.write_text(json.dumps(asdict(owner)), encoding="utf-8")
        try:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.link(tmp, path)  # fails if the name is claimed already: first writer wins, whole file
        except FileExistsError:
            found = self.get(name)
            return found if found is not None else owner
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return owner

    def owned_by(self, principal: str) -> list[str]:
        """The names ``principal`` owns."""
        if not self.dir.is_dir():
            return []
        names = []
        for path in self.dir.glob("*.json"):
            owner = self.get(path.stem)
            if owner is not None and owner.principal == principal:
                names.append(path.stem)
        return sorted(names)

    def admin_owned(self, name: str) -> bool:
        """Whether ``name`` belongs to the admins (claimed by an admin, or never claimed)."""
        owner = self.get(name)
        return owner is None or owner.admin
