"""Who may do what with jobs and model names, and the quotas of each caller: the trainer is where jobs and
the store's owners live, so it decides (the gateway authenticates and passes the caller on, see
`vision.security.principal`).

- A job is visible (get, watch, cancel, list) to its owner and to admins; to anyone else it does not exist
  (NOT_FOUND, never "forbidden": another principal's job ids are not revealed).
- A model name belongs to the principal whose job first claims it; another principal's job naming it is
  PERMISSION_DENIED. Names already in the store without an owner, and the reserved names (the default
  model's), belong to the admins.
- Quotas per principal (the gateway's limits for it, else its role's defaults): unfinished jobs, model
  names owned, upload bytes per UTC day.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import grpc

from trainer_svc.config import TrainerSettings
from trainer_svc.jobs.database import JobDB, JobRow
from trainer_svc.jobs.manager import ActiveJobsLimit, JobNotFound
from vision.errors import PermissionDenied, QuotaExceeded
from vision.models.owners import ModelOwners
from vision.models.store import ModelStore
from vision.security.principal import Principal, UntrustedPrincipal, resolve_caller
from vision.security.roles import QuotaSettings, Role
from vision.security.tls import TlsSettings, peer_identities


class CallerNotAllowed(PermissionDenied):
    """The caller's role does not allow this call."""


def utc_day(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d")


def seconds_to_utc_midnight(now: datetime | None = None) -> int:
    now = now or datetime.now(timezone.utc)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))


class Access:
    def __init__(
        self,
        settings: TrainerSettings,
        db: JobDB,
        store: ModelStore,
        tls: TlsSettings | None = None,
        quotas: QuotaSettings | None = None,
    ) -> None:
        self.db, self.store = db, store
        self.tls = tls or TlsSettings()
        self.quotas = quotas or QuotaSettings()
        self.owners = ModelOwners(store.root)
        self.reserved = frozenset(settings.reserved_model_names)

    # -- who ----------------------------------------------------------------------------------------------
    def caller(self, context: grpc.ServicerContext) -> Principal:
        """The principal of this call (see `vision.security.principal.resolve_caller`)."""
        try:
            return resolve_caller(
                context.invocation_metadata() or (),
                peer_identities(context),
                mutual_tls=self.tls.mutual,
                trusted_clients=self.tls.trusted_clients,
                quotas=self.quotas,
            )
        except UntrustedPrincipal as exc:
            raise CallerNotAllowed(exc.args[0]) from exc

    @staticmethod
    def require(principal: Principal, role: Role, what: str) -> None:
        if not principal.may(role):
            raise CallerNotAllowed(
                f"{principal.name} has the role {principal.role.label}; {what} needs {role.label}"
            )

    # -- jobs ---------------------------------------------------------------------------------------------
    @staticmethod
    def sees(principal: Principal, row: JobRow) -> bool:
        return principal.is_admin or row.owner == principal.name

    def visible_job(self, principal: Principal, row: JobRow | None, job_id: str) -> JobRow:
        """``row`` if ``principal`` may see it; otherwise the same NOT_FOUND as for a job that never was."""
        if row is None or not self.sees(principal, row):
            raise JobNotFound(f"no job {job_id!r}")
        return row

    def check_active_jobs(self, principal: Principal) -> None:
        """Before anything is uploaded: QuotaExceeded at the principal's unfinished-jobs limit (the job's
        insert checks again, in its transaction)."""
        limit = principal.limits.max_active_jobs
        if limit and self.db.count_active(principal.name) >= limit:
            raise ActiveJobsLimit.of(principal.name, limit)

    # -- model names -------------------------------------------------------------------------------------
    def claim_model_name(self, principal: Principal, name: str, *, claim: bool = True) -> None:
        """Let ``principal``'s job publish to ``name`` (claiming it if nobody owns it; with ``claim=False``
        only check that it could), or raise PermissionDenied / QuotaExceeded."""
        owner = self.owners.get(name)
        if owner is not None:
            if owner.principal == principal.name or (principal.is_admin and owner.admin):
                return
            if principal.is_admin:
                return  # admins may publish to any name; the name stays its owner's
            raise PermissionDenied(
                f"the model name {name!r} belongs to another principal: choose another name"
            )
        if name in self.reserved or name in self.store.names():
            if principal.is_admin:
                return
            raise PermissionDenied(
                f"the model name {name!r} is reserved to admins (the default model, or a model imported by "
                "an admin): choose another name"
            )
        limit = principal.limits.max_models
        if limit and not principal.is_admin and len(self.owners.owned_by(principal.name)) >= limit:
            raise QuotaExceeded(
                f"{principal.name} owns {limit} model names already, its limit: publish new versions to one "
                "of them instead"
            )
        if not claim:
            return
        claimed = self.owners.claim(name, principal.name, admin=principal.is_admin)
        if claimed.principal != principal.name and not principal.is_admin:
            raise PermissionDenied(
                f"the model name {name!r} belongs to another principal: choose another name"
            )

    # -- uploads ------------------------------------------------------------------------------------------
    def upload_allowance(self, principal: Principal) -> int | None:
        """Bytes ``principal`` may still upload today (None: no daily limit); QuotaExceeded at 0."""
        limit = principal.limits.max_upload_bytes_per_day
        if not limit:
            return None
        left = limit - self.db.uploaded_bytes(principal.name, utc_day())
        if left <= 0:
            raise upload_quota_exceeded(principal, limit)
        return left

    def record_upload(self, principal: Principal, count: int) -> None:
        if count:
            self.db.add_uploaded_bytes(principal.name, utc_day(), count)


def upload_quota_exceeded(principal: Principal, limit: int) -> QuotaExceeded:
    hours = seconds_to_utc_midnight() / 3600
    return QuotaExceeded(
        f"{principal.name} has uploaded its {limit} bytes of training images for today (UTC); the quota "
        f"renews in {hours:.1f} h"
    )
