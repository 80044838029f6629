"""Transport security for gRPC (``VISION_TLS_*``): TLS or mutual TLS on every service's port, and the same
on the gateway's channels to them.

One set of variables serves both ends: a service listens with its ``cert_file``/``key_file`` and, when
``ca_file`` is set too, demands of every client a certificate signed by that CA (mutual TLS); the gateway
checks the services' certificates against ``ca_file`` and presents its own ``cert_file``/``key_file`` as its
client certificate. Files are checked when the settings are made, so a wrong path stops a process at start,
never at its first call. Certificates are read when a server or channel is made: a renewed one is used after
a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vision.settings import CommaSeparated

ENV_PREFIX = "VISION_TLS_"
GATEWAY_CLIENT_NAME = "vision-gateway"

# The auth-context properties naming a verified peer: its subject's common name and its DNS SANs. IP, e-mail
# and URI SANs (in x509_subject_alternative_name too) are not names a client is trusted by.
_COMMON_NAME = "x509_common_name"
_DNS_NAMES = "peer_dns"

ChannelOptions = Sequence[tuple[str, Any]]


def _env(field: str) -> str:
    return ENV_PREFIX + field.upper()


class TlsSettings(BaseSettings):
    """TLS for gRPC. ``enabled``: this process has a certificate and key (a service speaks TLS only);
    ``mutual``: a CA as well (a service refuses clients without a certificate the CA signed)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    cert_file: Path | None = Field(
        None,
        description="PEM certificate (chain) of this process: a service's server certificate, the gateway's "
        "client certificate. Empty: no TLS.",
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file (needed with it).")
    ca_file: Path | None = Field(
        None,
        description="PEM CA bundle. A service: clients must present a certificate it signed (mutual TLS). "
        "The gateway: the CA the services' certificates are checked against.",
    )
    server_name: str = Field(
        "",
        description="The gateway: the name expected in every service's certificate instead of the host of "
        "its address (e.g. when dialling an IP). Empty: the address's host.",
    )
    trusted_clients: CommaSeparated = Field(
        default_factory=lambda: [GATEWAY_CLIENT_NAME],
        description="Certificate names (CN or DNS SAN, comma-separated) of clients a service lets assert "
        "whom a call is for (the gateway passes its caller in the metadata). Used with mutual TLS only.",
    )

    @field_validator("cert_file", "key_file", "ca_file", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _files_usable(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            raise ValueError(f"{_env(given)} is set but {_env(missing)} is not: TLS needs both")
        for field, marker in (
            ("cert_file", b"CERTIFICATE"),
            ("key_file", b"PRIVATE KEY"),
            ("ca_file", b"CERTIFICATE"),
        ):
            path = getattr(self, field)
            if path is not None:
                _check_pem(_env(field), path, marker)
        return self

    @property
    def enabled(self) -> bool:
        """This process has a certificate: a service listens with TLS only."""
        return self.cert_file is not None

    @property
    def mutual(self) -> bool:
        """A service listens with mutual TLS: clients need a certificate signed by ``ca_file``."""
        return self.enabled and self.ca_file is not None

    @property
    def client_enabled(self) -> bool:
        """The gateway's channels use TLS: it has a CA to check servers by, or a client certificate."""
        return self.enabled or self.ca_file is not None

    @property
    def mode(self) -> str:
        """How a service's port is secured: "plaintext", "TLS" or "mutual TLS" (for logs)."""
        return "mutual TLS" if self.mutual else "TLS" if self.enabled else "plaintext"

    def trust_asserted_identity(self, context: grpc.ServicerContext | grpc.aio.ServicerContext) -> bool:
        """May this call's peer say whom the call is for (the principal in its metadata)?

        With mutual TLS, only a peer whose certificate names one of ``trusted_clients`` (the gateway): any
        other client holding a certificate from the CA could otherwise claim to be an admin. Without mutual
        TLS there is no verified peer to ask, so the network is the boundary (in Kubernetes, NetworkPolicies
        let only the gateway reach the services) and every caller is trusted.
        """
        if not self.mutual:
            return True
        return any(name in self.trusted_clients for name in peer_identities(context))


def _check_pem(variable: str, path: Path, marker: bytes) -> None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{variable}={path}: cannot be read ({exc.strerror or exc})") from exc
    if b"-----BEGIN " not in data or marker not in data:
        raise ValueError(f"{variable}={path}: not a PEM file with a {marker.decode().lower()}")


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """Credentials for a service's port: None without a certificate (plaintext); TLS with one; with
    ``ca_file`` too, mutual TLS: a client without a certificate signed by that CA is refused during the
    handshake (a plaintext client too, as the port speaks TLS only). A CA without a certificate is an error:
    the operator asked for mutual TLS, and a silently plaintext port would be worse than not starting."""
    if not tls.enabled:
        if tls.ca_file is not None:
            raise ValueError(
                f"{_env('ca_file')} is set but {_env('cert_file')}/{_env('key_file')} are not: a service "
                "needs its own certificate and key to speak (mutual) TLS"
            )
        return None
    assert tls.cert_file is not None and tls.key_file is not None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=_read(tls.ca_file),
        require_client_auth=tls.mutual,
    )


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials | None:
    """Credentials for a client's channel (the gateway): None when neither a CA nor a certificate is set
    (plaintext). Servers are checked against ``ca_file`` (the system's roots when unset); ``cert_file`` and
    ``key_file``, when set, are presented as the client certificate."""
    if not tls.client_enabled:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )


def channel_options(tls: TlsSettings, options: ChannelOptions = ()) -> list[tuple[str, Any]]:
    """``options`` plus, when ``server_name`` is set and TLS is on, the name to check servers' certificates
    for (``grpc.ssl_target_name_override``)."""
    extra = (
        [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name and tls.client_enabled else []
    )
    return [*options, *extra]


def open_channel(target: str, tls: TlsSettings, options: ChannelOptions = ()) -> grpc.Channel:
    """A synchronous channel to ``target``: TLS as ``tls`` says (`channel_credentials`), else plaintext."""
    credentials = channel_credentials(tls)
    if credentials is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, credentials, options=channel_options(tls, options))


def open_aio_channel(
    target: str, tls: TlsSettings, options: ChannelOptions = (), interceptors: Sequence[Any] = ()
) -> grpc.aio.Channel:
    """An asyncio channel to ``target``: TLS as ``tls`` says (`channel_credentials`), else plaintext."""
    credentials = channel_credentials(tls)
    if credentials is None:
        return grpc.aio.insecure_channel(
            target, options=list(options), interceptors=list(interceptors) or None
        )
    return grpc.aio.secure_channel(
        target, credentials, options=channel_options(tls, options), interceptors=list(interceptors) or None
    )


def peer_identities(context: grpc.ServicerContext | grpc.aio.ServicerContext) -> tuple[str, ...]:
    """The names in the verified client certificate of this call: its common name, then its DNS SANs
    (duplicates dropped). Empty when the call did not come over mutual TLS (no client certificate was
    asked for or checked). Cheap enough to run on every call (one lookup in the call's auth context)."""
    auth = context.auth_context()
    names = (*auth.get(_COMMON_NAME, ()), *auth.get(_DNS_NAMES, ()))
    return tuple(dict.fromkeys(name.decode("utf-8", "replace") for name in names))
