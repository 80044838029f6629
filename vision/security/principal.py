"""The caller of a request (its principal), as the gateway established it and passes it on in gRPC
metadata, so that trainer_svc can record who owns a job or a model and apply that caller's quotas.

A service trusts that metadata only from a peer allowed to assert it: with mutual TLS, a client whose
certificate names one of ``VISION_TLS_TRUSTED_CLIENTS`` (the gateway); other mTLS clients are principals in
their own right, named by their certificate. Without mutual TLS the network is the boundary (in Kubernetes
the NetworkPolicies let only the gateway reach the services), and a call without the metadata (``grpcurl``,
an internal script on the service's host) is the ``local`` admin.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vision.security.roles import Limits, QuotaSettings, Role

PRINCIPAL_KEY = "x-vision-principal"
ROLE_KEY = "x-vision-role"
LIMITS_KEY = "x-vision-limits"
ANONYMOUS = "anonymous"  # every caller of a gateway with authentication off
LOCAL = "local"  # a direct gRPC caller that asserted no principal
PEER_PREFIX = "peer:"  # an mTLS client not trusted to assert others: named by its certificate
MAX_NAME_CHARS = 256


KEY_PRINCIPAL_PREFIX = "key:"  # an API key's principal: key:<name>


def is_reserved_name(name: str) -> bool:
    """Names only this module gives out: a JWT subject of such a form is refused (it would pass for an API
    key's, an mTLS peer's, the anonymous or the local principal)."""
    return name in (ANONYMOUS, LOCAL) or name.startswith((KEY_PRINCIPAL_PREFIX, PEER_PREFIX))


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``name`` (an API key's ``key:<name>``, a JWT's ``sub``, ``anonymous`` ...), its role
    and its limits (the role's defaults, or a key's own)."""

    name: str
    role: Role
    limits: Limits = field(default_factory=Limits)

    def may(self, role: Role) -> bool:
        return self.role >= role

    @property
    def is_admin(self) -> bool:
        return self.role >= Role.ADMIN

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata carrying this principal (ASCII: names are percent-escaped)."""
        return (
            (PRINCIPAL_KEY, _escape(self.name)),
            (ROLE_KEY, self.role.label),
            (LIMITS_KEY, self.limits.to_header()),
        )


def _escape(name: str) -> str:
    return "".join(c if 0x21 <= ord(c) < 0x7F and c != "%" else _pct(c) for c in name)


def _pct(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode("utf-8"))


def _unescape(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text, errors="strict")


class UntrustedPrincipal(ValueError):
    """The metadata names a principal the service may not take from this peer, or is malformed."""


def from_metadata(
    metadata: Iterable[tuple[str, str | bytes]], quotas: QuotaSettings | None = None
) -> Principal | None:
    """The principal asserted in ``metadata``, or None when it asserts none. A role without valid limits
    gets that role's defaults. `UntrustedPrincipal` when the entries are malformed."""
    values: dict[str, str] = {}
    for key, value in metadata:
        if key in (PRINCIPAL_KEY, ROLE_KEY, LIMITS_KEY):
            values[key] = value if isinstance(value, str) else value.decode("ascii", "replace")
    if PRINCIPAL_KEY not in values:
        return None
    try:
        name = _unescape(values[PRINCIPAL_KEY])
        role = Role.parse(values.get(ROLE_KEY, ""))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UntrustedPrincipal(f"malformed caller identity in the request metadata: {exc}") from exc
    if not name or len(name) > MAX_NAME_CHARS:
        raise UntrustedPrincipal("malformed caller identity in the request metadata: bad principal name")
    try:
        limits = Limits.from_header(values[LIMITS_KEY]) if LIMITS_KEY in values else None
    except ValueError:
        limits = None
    if limits is None:
        limits = (quotas or QuotaSettings()).for_role(role)
    return Principal(name, role, limits)


def local_admin(quotas: QuotaSettings | None = None) -> Principal:
    """A direct gRPC caller that asserted nobody (trusted network, no mTLS): an admin."""
    return Principal(LOCAL, Role.ADMIN, (quotas or QuotaSettings()).for_role(Role.ADMIN))


def peer_principal(names: tuple[str, ...], quotas: QuotaSettings | None = None) -> Principal:
    """An mTLS client not trusted to speak for others: itself, named by its certificate, as a trainer."""
    return Principal(PEER_PREFIX + names[0], Role.TRAINER, (quotas or QuotaSettings()).for_role(Role.TRAINER))


def resolve_caller(
    metadata: Iterable[tuple[str, str | bytes]],
    peer_names: tuple[str, ...],
    *,
    mutual_tls: bool,
    trusted_clients: Iterable[str],
    quotas: QuotaSettings | None = None,
) -> Principal:
    """Who a gRPC call is from. With mutual TLS, a peer (``peer_names``: its certificate's names) not among
    ``trusted_clients`` is itself (`peer_principal`), whatever its metadata says; a trusted peer, or any
    peer without mutual TLS, is the principal its metadata asserts, else the `local_admin`."""
    if mutual_tls and not set(peer_names) & set(trusted_clients):
        if not peer_names:
            raise UntrustedPrincipal("the caller presented no certificate")
        return peer_principal(peer_names, quotas)
    return from_metadata(metadata, quotas) or local_admin(quotas)
