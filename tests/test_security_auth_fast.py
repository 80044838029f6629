"""Authentication building blocks without services: API-key files, JWT verification with real keys made
here (PyJWT + cryptography), the route policy, token buckets, the caller identity passed to services and
model-name ownership in a real store directory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.credentials import Authenticator, Forbidden, Unauthenticated
from gateway.auth.policy import is_public, required_role
from gateway.auth.ratelimit import RateLimiter, retry_after_header
from vision.models.owners import ModelOwners
from vision.security.keys import KeyRing, create_key, read_keys, revoke_key
from vision.security.principal import (
    LOCAL,
    Principal,
    UntrustedPrincipal,
    from_metadata,
    resolve_caller,
)
from vision.security.roles import Limits, QuotaSettings, Role
from vision.security.settings import AuthSettings

pytestmark = pytest.mark.fast

ISSUER, AUDIENCE = "https://id.example.test/realms/vision", "vision-gateway"


# -- API keys ------------------------------------------------------------------------------------------------
def test_vision_keys_create_prints_the_key_alone_on_the_last_line_and_stores_only_its_hash(
    tmp_path: Path,
) -> None:
    keys_file = tmp_path / "auth" / "keys.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vision.cli",
            "keys",
            "create",
            "--keys-file",
            str(keys_file),
            "--name",
            "ci-bot",
            "--role",
            "trainer",
            "--rate",
            "5",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("vk_") and " " not in secret
    stored = keys_file.read_text()
    assert secret not in stored and secret[7:] not in stored
    (record,) = read_keys(keys_file)
    assert (record.name, record.role, record.limits) == ("ci-bot", Role.TRAINER, {"rate": 5.0})
    listing = subprocess.run(
        [sys.executable, "-m", "vision.cli", "keys", "list", "--keys-file", str(keys_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "ci-bot" in listing and "trainer" in listing and secret not in listing


def test_a_revoked_key_stops_matching_after_the_reload_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _, secret = create_key(path, "alice", Role.VIEWER)
    ring = KeyRing(path, reload_s=0.2)
    assert ring.lookup(secret) is not None
    revoke_key(path, "alice")
    deadline = time.monotonic() + 5
    while ring.lookup(secret) is not None:
        assert time.monotonic() < deadline, "the revoked key still matched after 5 s"
        time.sleep(0.05)
    _, second = create_key(path, "bob", Role.ADMIN)
    time.sleep(0.25)
    found = ring.lookup(second)
    assert found is not None and found.role == Role.ADMIN


def test_a_damaged_key_file_keeps_the_keys_already_loaded(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _, secret = create_key(path, "alice", Role.VIEWER)
    ring = KeyRing(path, reload_s=0.05)
    path.write_text("{not json")
    time.sleep(0.1)
    assert ring.lookup(secret) is not None


@pytest.mark.parametrize("name", ["", "../x", "a b", "x" * 65, "-lead"])
def test_bad_key_names_are_refused(tmp_path: Path, name: str) -> None:
    from vision.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        create_key(tmp_path / "keys.json", name, Role.VIEWER)


# -- JWTs ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signing_keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


def jwks(signing_keys: dict[str, Any]) -> dict[str, Any]:
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_keys["rsa"].public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(signing_keys["ec"].public_key()))
    return {
        "keys": [
            {**rsa_jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256"},
            {**ec_jwk, "kid": "ec-1", "use": "sig", "alg": "ES256"},
        ]
    }


def token(signing_keys: dict[str, Any], alg: str = "RS256", kid: str = "rsa-1", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-7",
        "iat": now,
        "exp": now + 300,
        "roles": ["trainer"],
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    key = signing_keys["ec"] if alg == "ES256" else signing_keys["rsa"]
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture
def authenticator(tmp_path: Path, signing_keys: dict[str, Any]) -> Authenticator:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks(signing_keys)))
    settings = AuthSettings(
        required=True,
        keys_file=tmp_path / "keys.json",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks_file=jwks_file,
        jwt_leeway_s=0,
    )
    return Authenticator(settings, QuotaSettings())


def bearer(value: str) -> str:
    return f"Bearer {value}"


@pytest.mark.parametrize("alg,kid", [("RS256", "rsa-1"), ("ES256", "ec-1")])
def test_a_valid_jwt_names_its_subject_and_role(
    authenticator: Authenticator, signing_keys: dict[str, Any], alg: str, kid: str
) -> None:
    principal = authenticator.authenticate(None, bearer(token(signing_keys, alg, kid)))
    assert principal is not None
    assert (principal.name, principal.role) == ("user-7", Role.TRAINER)
    assert principal.limits == QuotaSettings().for_role(Role.TRAINER)


def test_the_highest_role_wins_and_nested_claims_work(tmp_path: Path, signing_keys: dict[str, Any]) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks(signing_keys)))
    settings = AuthSettings(
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks_file=jwks_file,
        jwt_role_claim="realm_access.roles",
        keys_file=tmp_path / "k.json",
    )
    auth = Authenticator(settings)
    tok = token(signing_keys, roles=None, realm_access={"roles": ["offline_access", "viewer", "admin"]})
    principal = auth.authenticate(None, bearer(tok))
    assert principal is not None and principal.role == Role.ADMIN


def expired(keys: dict[str, Any]) -> str:
    return token(keys, exp=int(time.time()) - 60)


def not_yet(keys: dict[str, Any]) -> str:
    return token(keys, nbf=int(time.time()) + 600)


def alg_none(keys: dict[str, Any]) -> str:
    return jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60, "roles": ["admin"]},
        None,
        algorithm="none",
    )


def hs256_with_public_key(keys: dict[str, Any]) -> str:
    """The classic algorithm-confusion forgery: HMAC "signed" with the issuer's public key as the secret."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    body = b64(
        json.dumps(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60, "roles": ["admin"]}
        ).encode()
    )
    from cryptography.hazmat.primitives import serialization

    public = (
        keys["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signature = b64(hmac.new(public, header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + signature).decode()


def wrong_key(keys: dict[str, Any]) -> str:
    return jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60, "roles": ["admin"]},
        keys["other"],
        algorithm="RS256",
        headers={"kid": "rsa-1"},
    )


BAD_TOKENS = {
    "expired": expired,
    "not yet valid": not_yet,
    "wrong audience": lambda k: token(k, aud="another-api"),
    "wrong issuer": lambda k: token(k, iss="https://evil.example.test"),
    "alg none": alg_none,
    "HS256 with the public key": hs256_with_public_key,
    "signed by another key": wrong_key,
    "unknown kid": lambda k: token(k, kid="nope"),
    "no exp": lambda k: token(k, exp=None),
    "no sub": lambda k: token(k, sub=None),
    "sub posing as an API key": lambda k: token(k, sub="key:alice"),
    "sub posing as anonymous": lambda k: token(k, sub="anonymous"),
    "garbage": lambda k: "not.a.jwt",
}


@pytest.mark.parametrize("kind", BAD_TOKENS)
def test_bad_jwts_are_unauthenticated(
    authenticator: Authenticator, signing_keys: dict[str, Any], kind: str
) -> None:
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(None, bearer(BAD_TOKENS[kind](signing_keys)))


def test_a_jwt_without_a_known_role_is_forbidden(
    authenticator: Authenticator, signing_keys: dict[str, Any]
) -> None:
    with pytest.raises(Forbidden):
        authenticator.authenticate(None, bearer(token(signing_keys, roles=["superuser"])))


def test_keys_work_as_bearer_tokens_too(authenticator: Authenticator, tmp_path: Path) -> None:
    _, secret = create_key(tmp_path / "keys.json", "metrics", Role.VIEWER)
    authenticator.keys.reload_s = 0.0
    by_header = authenticator.authenticate(secret, None)
    by_bearer = authenticator.authenticate(None, bearer(secret))
    assert by_header == by_bearer and by_header is not None and by_header.name == "key:metrics"
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(None, "Basic dXNlcjpwYXNz")


# -- route policy and rate limits ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,path,public,role",
    [
        ("GET", "/healthz", True, None),
        ("GET", "/health", True, None),
        ("GET", "/", True, None),
        ("GET", "/static/app.js", True, None),
        ("POST", "/healthz", False, Role.VIEWER),
        ("POST", "/predict", False, Role.VIEWER),
        ("POST", "/explain", False, Role.VIEWER),
        ("POST", "/detect", False, Role.VIEWER),
        ("GET", "/models", False, Role.VIEWER),
        ("GET", "/models/a/versions/1/report", False, Role.VIEWER),
        ("POST", "/train", False, Role.TRAINER),
        ("GET", "/jobs", False, Role.TRAINER),
        ("POST", "/jobs/abc/cancel", False, Role.TRAINER),
        ("GET", "/jobs/abc/events", False, Role.TRAINER),
        ("GET", "/metrics/", False, Role.VIEWER),
        ("GET", "/openapi.json", False, Role.VIEWER),
        ("GET", "/no-such-route", False, Role.VIEWER),
    ],
)
def test_the_route_policy(method: str, path: str, public: bool, role: Role | None) -> None:
    assert is_public(method, path) is public
    if not public:
        assert required_role(method, path) == role


def test_a_token_bucket_allows_its_burst_then_one_request_per_interval() -> None:
    limiter = RateLimiter()
    assert [limiter.take("a", 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a", 2.0, 3)
    assert 0 < wait <= 0.5 and retry_after_header(wait) == "1"
    assert limiter.take("b", 2.0, 3) == 0.0  # buckets are per principal
    time.sleep(wait + 0.01)
    assert limiter.take("a", 2.0, 3) == 0.0
    assert all(limiter.take("c", 0.0, 0) == 0.0 for _ in range(100))  # rate 0: no limit


# -- the caller identity passed to services ------------------------------------------------------------------
def test_principal_metadata_round_trips_with_escaped_names() -> None:
    principal = Principal("müller@corp %x", Role.TRAINER, Limits(rate=2.5, burst=3, max_active_jobs=1))
    metadata = principal.metadata()
    assert all(value.isascii() for _, value in metadata)
    assert from_metadata(metadata) == principal


def test_only_trusted_mtls_peers_may_assert_a_principal() -> None:
    asserted = Principal("key:alice", Role.ADMIN).metadata()
    trusted = ("vision-gateway",)
    via_gateway = resolve_caller(asserted, ("vision-gateway",), mutual_tls=True, trusted_clients=trusted)
    assert via_gateway.name == "key:alice"
    other = resolve_caller(asserted, ("batch-job",), mutual_tls=True, trusted_clients=trusted)
    assert (other.name, other.role) == ("peer:batch-job", Role.TRAINER)
    with pytest.raises(UntrustedPrincipal):
        resolve_caller(asserted, (), mutual_tls=True, trusted_clients=trusted)
    plain = resolve_caller((), (), mutual_tls=False, trusted_clients=trusted)
    assert (plain.name, plain.role) == (LOCAL, Role.ADMIN)


def test_malformed_principal_metadata_is_refused() -> None:
    with pytest.raises(UntrustedPrincipal):
        from_metadata([("x-vision-principal", "a"), ("x-vision-role", "root")])


# -- ownership -----------------------------------------------------------------------------------------------
def test_the_first_claim_of_a_name_wins_and_survives_a_new_reader(tmp_path: Path) -> None:
    owners = ModelOwners(tmp_path)
    assert owners.claim("pets", "key:a", admin=False).principal == "key:a"
    assert owners.claim("pets", "key:b", admin=False).principal == "key:a"
    again = ModelOwners(tmp_path)  # a restarted trainer, or a model service reading the store
    owner = again.get("pets")
    assert owner is not None and owner.principal == "key:a" and not again.admin_owned("pets")
    assert again.admin_owned("never-claimed")
    assert again.owned_by("key:a") == ["pets"] and again.owned_by("key:b") == []


# -- cross-site forms ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,headers,refused",
    [
        ("POST", {"host": "127.0.0.1:8000"}, False),  # curl, apps, services: no Origin
        ("POST", {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, False),  # the web page
        ("POST", {"host": "vision.example.com", "origin": "https://vision.example.com"}, False),  # behind TLS
        ("POST", {"host": "127.0.0.1:8000", "origin": "https://evil.example"}, True),
        ("POST", {"host": "127.0.0.1:8000", "origin": "null"}, True),  # sandboxed iframes, file:// pages
        ("POST", {"host": "127.0.0.1:8000", "origin": "https://app.example.com"}, False),  # allowed by CORS
        ("GET", {"host": "127.0.0.1:8000", "origin": "https://evil.example"}, False),  # reads: CORS decides
    ],
)
def test_browser_posts_from_other_sites_are_refused(
    method: str, headers: dict[str, str], refused: bool
) -> None:
    from starlette.datastructures import Headers

    from gateway.auth.origin import OriginCheck

    check = OriginCheck(["https://app.example.com"])
    assert (check.refusal(method, Headers(headers)) is not None) is refused
