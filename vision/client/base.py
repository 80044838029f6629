"""What the sync and the asyncio client share: their settings, the metadata of each call, and the
options of each method, so both read the same and differ only in how they wait."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vision.client.retry import Deadline, RetryPolicy
from vision.client.settings import SERVICES, ClientSettings
from vision.security.tls import TlsSettings
from vision.telemetry.context import REQUEST_ID_METADATA, current_request_id, new_request_id

Metadata = tuple[tuple[str, str], ...]
UPLOAD_MAY_HAVE_CREATED_JOB = (
    "; the trainer went away during the upload: a job may have been created, check list_jobs() before "
    "sending it again"
)


def resolve_settings(settings: ClientSettings | None, addresses: dict[str, str]) -> ClientSettings:
    """``settings`` (None: the defaults, not the environment) with the addresses given set over it."""
    base = settings if settings is not None else ClientSettings.model_construct()
    unknown = set(addresses) - set(SERVICES)
    if unknown:
        raise TypeError(f"unknown services {sorted(unknown)}; known: {', '.join(SERVICES)}")
    update = {f"{name}_addr": addr for name, addr in addresses.items() if addr}
    return base.model_copy(update=update) if update else base


@dataclass(frozen=True)
class CallContext:
    """One logical call: its method name (for messages), its deadline and the metadata of every attempt."""

    method: str
    deadline: Deadline
    metadata: Metadata
    request_id: str


class ClientCore:
    """Settings, TLS, retry policy and extra metadata of a client (sync or asyncio)."""

    def __init__(
        self,
        settings: ClientSettings,
        tls: TlsSettings | None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.settings = settings
        # Not read from the environment unless asked for (from_env): constructed clients are explicit.
        self.tls = tls if tls is not None else TlsSettings.model_construct()
        self.policy = RetryPolicy.from_settings(settings)
        self.extra_metadata: Metadata = tuple((str(k), str(v)) for k, v in metadata)

    @property
    def services(self) -> list[str]:
        return [name for name in SERVICES if self.settings.address(name)]

    def context(self, method: str, timeout: float | None, default_s: float | None = None) -> CallContext:
        """The context of a call of ``method``: ``timeout`` seconds for all its attempts (None: the
        default deadline, or ``default_s``), the current request id (or a new one) sent with each."""
        seconds = timeout if timeout is not None else default_s or self.settings.deadline_s
        if seconds <= 0:
            raise ValueError(f"timeout must be positive, got {seconds}")
        request_id = current_request_id() or new_request_id()
        metadata = (*self.extra_metadata, (REQUEST_ID_METADATA, request_id))
        return CallContext(method, Deadline(seconds), metadata, request_id)
