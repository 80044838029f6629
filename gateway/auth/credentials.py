"""Credentials → a `Principal`: an API key (``X-API-Key: vk_...`` or ``Authorization: Bearer vk_...``) or
a JWT from the configured OIDC issuer (``Authorization: Bearer <jwt>``), verified with PyJWT.

JWTs: RS256 and ES256 only (``none`` and HMAC algorithms are refused before any key is looked up); the
signature, ``exp``, ``nbf``, ``iss`` and ``aud`` are checked; the principal is ``sub``; the role is the
highest of viewer/trainer/admin named in the role claim. Keys come from the issuer's JWKS URL (cached,
fetched again for a key id it does not know: key rotation) or a JWKS file (re-read when it changes).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import jwt

from vision.security.keys import KeyRing, looks_like_key
from vision.security.principal import ANONYMOUS, Principal, is_reserved_name
from vision.security.roles import QuotaSettings, Role
from vision.security.settings import AuthSettings

log = logging.getLogger(__name__)

JWT_ALGORITHMS = ["RS256", "ES256"]
MAX_TOKEN_CHARS = 8192


class Unauthenticated(Exception):
    """No credentials, or credentials that prove nothing: 401."""

    def __init__(self, message: str, *, invalid: bool = True) -> None:
        super().__init__(message)
        self.message, self.invalid = message, invalid


class Forbidden(Exception):
    """Valid credentials that do not allow this: 403."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CredentialsUnavailable(Exception):
    """The identity provider's keys cannot be fetched right now: 503."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JwksFile:
    """The keys of a JWKS file, re-read when its modification time or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: jwt.PyJWKSet | None = None
        self._lock = threading.Lock()

    def key(self, kid: str | None) -> jwt.PyJWK:
        with self._lock:
            try:
                st = self.path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
                if stamp != self._stamp:
                    self._keys, self._stamp = jwt.PyJWKSet.from_json(self.path.read_text()), stamp
            except (OSError, jwt.PyJWKSetError, ValueError) as exc:
                if self._keys is None:
                    raise CredentialsUnavailable(f"the JWKS file cannot be read: {exc}") from exc
                log.error("JWKS file not re-read, the previous keys stay in use: %s", exc)
            keys = self._keys
        assert keys is not None
        return _pick(list(keys.keys), kid)


def _pick(keys: list[jwt.PyJWK], kid: str | None) -> jwt.PyJWK:
    if kid is None:
        if len(keys) == 1:
            return keys[0]
        raise Unauthenticated("the token names no key id (kid) and the issuer has several keys")
    for key in keys:
        if key.key_id == kid:
            return key
    raise Unauthenticated("the token is signed with a key the issuer does not publish")


def claim(claims: dict[str, Any], path: str) -> object:
    """``claims[a][b]`` for the path ``a.b`` (None where it is missing)."""
    value: object = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class JwtVerifier:
    def __init__(self, settings: AuthSettings, quotas: QuotaSettings) -> None:
        self.settings, self.quotas = settings, quotas
        self._client = (
            jwt.PyJWKClient(
                settings.jwt_jwks_url,
                cache_keys=True,
                lifespan=int(settings.jwt_jwks_cache_s),
                timeout=int(max(1, settings.jwt_timeout_s)),
            )
            if settings.jwt_jwks_url
            else None
        )
        self._file = JwksFile(settings.jwt_jwks_file) if settings.jwt_jwks_file else None

    def _key(self, kid: str | None) -> jwt.PyJWK:
        if self._file is not None:
            return self._file.key(kid)
        assert self._client is not None
        try:
            if kid is None:
                return _pick(self._client.get_signing_keys(), None)
            return self._client.get_signing_key(kid)  # an unknown kid refetches the set once (rotation)
        except jwt.PyJWKClientConnectionError as exc:
            log.error("the issuer's JWKS cannot be fetched: %s", exc)
            raise CredentialsUnavailable("the identity provider's keys cannot be fetched; try again") from exc
        except jwt.PyJWKClientError as exc:
            raise Unauthenticated(f"the token's signing key is unknown: {exc}") from exc

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; `Unauthenticated` or `Forbidden` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("the bearer token is neither an API key nor a well-formed JWT") from exc
        alg = header.get("alg")
        if alg not in JWT_ALGORITHMS:
            raise Unauthenticated(
                f"tokens signed with {alg!r} are not accepted: {' or '.join(JWT_ALGORITHMS)}"
            )
        kid = header.get("kid")
        key = self._key(kid if isinstance(kid, str) else None)
        s = self.settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=JWT_ALGORITHMS,
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated("the token is not valid yet (nbf)") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("the token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("the token is from another issuer") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is not valid: {exc}") from exc
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise Unauthenticated("the token's subject (sub) is missing or malformed")
        if is_reserved_name(subject):  # a JWT must not pass for an API key's, a peer's or anonymous's owner
            raise Unauthenticated(f"the token's subject {subject!r} has a form reserved to other principals")
        role = Role.highest(claim(claims, s.jwt_role_claim))
        if role is None:
            raise Forbidden(
                f"the token's {s.jwt_role_claim!r} claim names no role (viewer, trainer or admin)"
            )
        return Principal(subject, role, self.quotas.for_role(role))


class Authenticator:
    """Turns a request's credential headers into a `Principal` (None: it sent none)."""

    def __init__(self, settings: AuthSettings, quotas: QuotaSettings | None = None) -> None:
        self.settings = settings
        self.quotas = quotas or QuotaSettings()
        self.keys = KeyRing(settings.keys_path, settings.keys_reload_s, warn_missing=settings.required)
        self.jwt = JwtVerifier(settings, self.quotas) if settings.jwt_enabled else None
        self.anonymous = Principal(ANONYMOUS, Role.ADMIN, self.quotas.anonymous())

    def _key(self, secret: str) -> Principal:
        record = self.keys.lookup(secret)
        if record is None:
            raise Unauthenticated("the API key is not valid (unknown or revoked)")
        return Principal(
            record.principal_name, record.role, record.effective_limits(self.quotas.for_role(record.role))
        )

    def authenticate(self, api_key: str | None, authorization: str | None) -> Principal | None:
        """The principal of an ``X-API-Key`` value or an ``Authorization`` header (None: neither given).
        Blocking (a JWKS fetch may go to the network): call it off the event loop when JWTs are on."""
        if api_key is not None:
            return self._key(api_key.strip())
        if authorization is None:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("use `Authorization: Bearer <token>` or `X-API-Key: <key>`")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated("the bearer token is too long")
        if looks_like_key(token):
            return self._key(token)
        if self.jwt is None:
            raise Unauthenticated("JWTs are not accepted here (no issuer configured); use an API key")
        return self.jwt.verify(token)
