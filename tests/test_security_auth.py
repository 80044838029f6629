"""Access control through the real gateway, trainer_svc and classifier_svc on loopback, with real API keys
(made in the key file the gateway reads) and real JWTs (RS256, signed here; the gateway fetches the JWKS
over HTTP from a server on loopback, as from an OIDC issuer).

Shown: 401 without or with bad credentials on every protected route; a viewer cannot train (403); one
trainer cannot publish to another's model name (403) nor see or cancel its jobs (404); an admin can; a
burst over a key's rate is 429 with Retry-After and the next second succeeds; the third concurrent job is
429; expired, wrong-audience, wrong-issuer and ``alg: none`` tokens are 401; a revoked key stops working
within seconds; a published version records who trained it; anonymous mode still has a shared rate limit
and job quota.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import GatewaySettings
from gateway.main import create_app
from tests.conftest import LiveServer, publish_random_model, start_classifier
from tests.support.digits import digit_images
from tests.support.trainer import digits_spec, running_trainer, trainer_settings, upload
from tests.test_gateway_train import form, images, multipart
from tests.test_security_tls import Pki, client_tls, pki, set_tls_env  # noqa: F401 -- pki: the fixture
from trainer_svc.server import create_trainer_server
from vision.models.store import ModelStore
from vision.security.keys import create_key, revoke_key
from vision.security.principal import Principal
from vision.security.roles import QuotaSettings, Role
from vision.security.settings import AuthSettings
from vision.security.tls import open_channel
from vision.v1 import trainer_pb2, trainer_pb2_grpc

ISSUER, AUDIENCE = "https://id.example.test", "vision"
LONG_JOB = {"arch": "smallcnn", "pretrained": "false", "epochs": "1000", "img_size": "32", "batch_size": "4"}
QUICK_JOB = {**LONG_JOB, "epochs": "1"}


class JwksServer:
    """An OIDC issuer's JWKS endpoint on loopback."""

    def __init__(self, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/realms/vision/certs"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@dataclass
class Stack:
    url: str
    keys_file: Path
    store: ModelStore
    keys: dict[str, str]  # name -> secret
    signing_key: rsa.RSAPrivateKey

    def client(self, who: str | None = None, **headers: str) -> httpx.Client:
        if who is not None:
            headers["X-API-Key"] = self.keys[who]
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def jwt(self, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "oidc-user", "exp": now + 300, "roles": ["trainer"]}
        body.update(claims)
        return jwt.encode(body, self.signing_key, algorithm="RS256", headers={"kid": "k1"})


def train(client: httpx.Client, model_name: str, options: dict[str, str] = LONG_JOB) -> httpx.Response:
    parts = form(["zero", "one"], {1: images(5, 0), 2: images(5, 1)}, model_name=model_name, **options)
    body, headers = multipart(parts)
    return client.post("/train", content=body, headers=headers)


def wait_for(client: httpx.Client, job_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("secure")
    store = ModelStore(root / "models")
    publish_random_model(store, name="catalog", arch="smallcnn", classes=["cat", "dog"])  # an admin's import
    keys_file = root / "auth" / "keys.json"
    keys = {
        name: create_key(keys_file, name, role)[1]
        for name, role in (
            ("viewer", Role.VIEWER),
            ("alice", Role.TRAINER),
            ("bob", Role.TRAINER),
            ("root", Role.ADMIN),
        )
    }
    keys["slow"] = create_key(keys_file, "slow", Role.VIEWER, {"rate": 2, "burst": 2})[1]
    one_upload = sum(len(png) for _, png in (*images(5, 0), *images(5, 1)))  # what `train` sends
    tiny = {"max_upload_bytes_per_day": one_upload * 3 // 2, "max_models": 1}
    keys["tiny"] = create_key(keys_file, "tiny", Role.TRAINER, tiny)[1]
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    issuer = JwksServer({"keys": [{**public_jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]})
    classifier, engine = start_classifier(store)
    auth = AuthSettings(
        required=True,
        keys_file=keys_file,
        keys_reload_s=0.3,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks_url=issuer.url,
        jwt_leeway_s=0,
    )
    with running_trainer(trainer_settings(root)) as (trainer, _, _):
        settings = GatewaySettings(
            classifier_addr=f"127.0.0.1:{classifier.port}", trainer_addr=f"127.0.0.1:{trainer.port}"
        )
        with LiveServer(create_app(settings, auth)) as live:
            yield Stack(live.url, keys_file, store, keys, signing_key)
    classifier.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]
    issuer.close()


def protected_operations(stack: Stack) -> list[tuple[str, str]]:
    """Every (method, path) in the gateway's OpenAPI document but the public ones, parameters filled in."""
    with stack.client("root") as admin:
        paths = admin.get("/openapi.json").json()["paths"]
    public = {("get", "/healthz"), ("get", "/health")}
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "x1", path))
        for path, operations in paths.items()
        for method in operations
        if (method, path) not in public
    ] + [("GET", "/metrics/"), ("GET", "/openapi.json"), ("GET", "/docs")]


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert response.json() == {
        "success": False,
        "error": {"code": code, "message": error["message"], "request_id": response.headers["X-Request-ID"]},
    }
    assert response.json()["error"]["message"]


def test_every_protected_route_is_401_without_or_with_bad_credentials(stack: Stack) -> None:
    operations = protected_operations(stack)
    assert len(operations) >= 12
    bad = [
        {},
        {"X-API-Key": "vk_" + "A" * 43},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Basic YTpi"},
        {"Authorization": "Bearer " + stack.jwt(aud="other")},
    ]
    with stack.client() as anonymous:
        for method, path in operations:
            for headers in bad:
                response = anonymous.request(method, path, headers=headers)
                assert_refused(response, 401, "unauthenticated")
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        for path in ("/healthz", "/", "/static/app.js"):
            assert anonymous.get(path).status_code == 200


def test_a_browser_form_posted_from_another_site_is_refused_even_with_a_key(
    stack: Stack, bus_jpeg: bytes
) -> None:
    with stack.client("viewer", Origin="https://evil.example") as forged:
        assert_refused(forged.post("/predict", files={"file": ("bus.jpg", bus_jpeg)}), 403, "cross_site")
    with stack.client("viewer", Origin=stack.url) as same_site:
        assert same_site.post("/predict", files={"file": ("bus.jpg", bus_jpeg)}).status_code == 200


def test_a_viewer_can_classify_but_not_train_or_see_jobs(stack: Stack, bus_jpeg: bytes) -> None:
    with stack.client("viewer") as viewer:
        predicted = viewer.post("/predict", files={"file": ("bus.jpg", bus_jpeg, "image/jpeg")})
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["model"]["name"] == "catalog"
        assert viewer.get("/models").status_code == 200
        assert_refused(train(viewer, "viewer-model"), 403, "forbidden")
        assert_refused(viewer.get("/jobs"), 403, "forbidden")


def test_trainers_own_their_jobs_and_model_names_and_admins_see_everything(stack: Stack) -> None:
    with stack.client("alice") as alice, stack.client("bob") as bob, stack.client("root") as admin:
        first = train(alice, "alice-pets")
        assert first.status_code == 202, first.text
        job = first.json()["job_id"]
        # Bob: another principal's job does not exist for him, and he cannot take her model name.
        for response in (
            bob.get(f"/jobs/{job}"),
            bob.post(f"/jobs/{job}/cancel"),
            bob.get(f"/jobs/{job}/events"),
        ):
            assert_refused(response, 404, "not_found")
        assert job not in [j["job_id"] for j in bob.get("/jobs").json()["jobs"]]
        assert_refused(train(bob, "alice-pets"), 403, "permission_denied")
        for reserved in ("resnet18", "catalog"):  # the default model's name; an admin's imported model
            assert_refused(train(bob, reserved), 403, "permission_denied")
        # Alice sees her own; the admin sees every job, with its owner, and may cancel it.
        mine = alice.get(f"/jobs/{job}").json()
        assert mine["owner"] == "key:alice"
        assert job in [j["job_id"] for j in admin.get("/jobs").json()["jobs"]]
        # The third concurrent job of one trainer is over its quota (2 by default).
        second = train(alice, "alice-pets")
        assert second.status_code == 202, second.text
        third = train(alice, "alice-pets")
        assert_refused(third, 429, "quota_exceeded")
        assert "Retry-After" in third.headers
        cancelled = admin.post(f"/jobs/{job}/cancel")
        assert cancelled.status_code == 200, cancelled.text  # a running job stops at its next step
        assert wait_for(admin, job, {"cancelled"}, timeout=30)["status"] == "cancelled"
        assert alice.post(f"/jobs/{second.json()['job_id']}/cancel").status_code == 200
        assert train(alice, "alice-pets").status_code == 202  # a slot is free again
        for j in alice.get("/jobs").json()["jobs"]:
            alice.post(f"/jobs/{j['job_id']}/cancel")


def test_a_published_version_records_its_trainer_and_never_becomes_the_default(stack: Stack) -> None:
    with stack.client("bob") as bob:
        created = train(bob, "bob-quick", QUICK_JOB)
        assert created.status_code == 202, created.text
        job = wait_for(bob, created.json()["job_id"], {"succeeded", "failed", "cancelled"})
        assert job["status"] == "succeeded", job
        version = stack.store.get("bob-quick", job["model"]["version"])
        assert version.metadata.provenance["principal"] == "key:bob"
        assert version.metadata.provenance["job_id"] == job["job_id"]
    with stack.client("viewer") as viewer:
        assert viewer.get("/models").json()["default_model"] == "catalog"


def test_daily_upload_bytes_and_model_names_are_quotas_of_their_own(stack: Stack) -> None:
    with stack.client("tiny") as tiny:
        first = train(tiny, "tiny-one")
        assert first.status_code == 202, first.text
        tiny.post(f"/jobs/{first.json()['job_id']}/cancel")
        assert_refused(train(tiny, "tiny-two"), 429, "quota_exceeded")  # a second model name
        over = train(tiny, "tiny-one")  # the same images again: past 1.5 uploads' worth today
        assert_refused(over, 429, "quota_exceeded")
        assert "today" in over.json()["error"]["message"]


def test_a_burst_over_a_keys_rate_is_429_with_retry_after_and_the_next_second_succeeds(stack: Stack) -> None:
    with stack.client("slow") as slow:
        answers = [slow.get("/models") for _ in range(4)]
        assert [a.status_code for a in answers[:2]] == [200, 200]
        refused = next(a for a in answers if a.status_code == 429)
        assert_refused(refused, 429, "rate_limited")
        assert refused.headers["Retry-After"] == "1"
        time.sleep(1.0)
        assert slow.get("/models").status_code == 200


def test_a_revoked_key_stops_working_within_seconds(stack: Stack) -> None:
    _, secret = create_key(stack.keys_file, "temporary", Role.VIEWER)
    with httpx.Client(base_url=stack.url, headers={"X-API-Key": secret}, timeout=30) as client:
        deadline = time.monotonic() + 5  # a created key is picked up without a restart too
        while client.get("/models").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        revoke_key(stack.keys_file, "temporary")
        revoked_at = time.monotonic()
        while client.get("/models").status_code != 401:
            assert time.monotonic() - revoked_at < 5, "the revoked key still worked after 5 s"
            time.sleep(0.1)


def test_jwts_from_the_issuer_work_and_bad_ones_are_401(stack: Stack) -> None:
    def with_token(value: str) -> httpx.Client:
        return stack.client(Authorization=f"Bearer {value}")

    with with_token(stack.jwt()) as trainer:
        assert trainer.get("/jobs").status_code == 200
    with with_token(stack.jwt(roles=["viewer"])) as viewer:
        assert viewer.get("/models").status_code == 200
        assert_refused(train(viewer, "oidc-model"), 403, "forbidden")
    none_token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60, "roles": ["admin"]},
        None,
        algorithm="none",
    )
    for bad in (
        stack.jwt(exp=int(time.time()) - 30),
        stack.jwt(aud="another-api"),
        stack.jwt(iss="https://attacker.example.test"),
        none_token,
    ):
        with with_token(bad) as client:
            assert_refused(client.get("/models"), 401, "unauthenticated")


def test_anonymous_mode_still_has_a_shared_rate_limit_and_job_quota(tmp_path: Path) -> None:
    quotas = QuotaSettings(anonymous_rate=3, anonymous_burst=3, anonymous_max_active_jobs=1)
    auth = AuthSettings(required=False, keys_file=tmp_path / "none.json")
    with running_trainer(trainer_settings(tmp_path)) as (trainer, _, _):
        settings = GatewaySettings(classifier_addr="127.0.0.1:9", trainer_addr=f"127.0.0.1:{trainer.port}")
        with (
            LiveServer(create_app(settings, auth, quotas)) as live,
            httpx.Client(base_url=live.url, timeout=60) as client,
        ):
            created = train(client, "local-model")
            assert created.status_code == 202, created.text
            time.sleep(1.1)
            assert_refused(train(client, "local-model"), 429, "quota_exceeded")
            statuses = [client.get("/jobs").status_code for _ in range(6)]
            assert 429 in statuses and statuses[0] == 200
            time.sleep(1.1)
            client.post(f"/jobs/{created.json()['job_id']}/cancel")


def test_with_mutual_tls_only_the_gateways_certificate_may_assert_a_caller(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pki: Pki,  # noqa: F811 -- the fixture
) -> None:
    """Another service with a certificate from the same CA is a principal of its own (``peer:<name>``, a
    trainer): asserting ``key:alice`` in its metadata neither shows it her jobs nor makes its jobs hers."""
    set_tls_env(monkeypatch, cert_file=pki.server.cert, key_file=pki.server.key, ca_file=pki.ca)
    server, manager = create_trainer_server(trainer_settings(tmp_path))
    alice = Principal("key:alice", Role.TRAINER).metadata()
    spec = digits_spec(epochs=1000)
    pictures = list(digit_images(32, per_class=5))
    target = f"127.0.0.1:{server.port}"
    try:
        with open_channel(target, client_tls(pki, pki.gateway)) as gateway_channel:
            via_gateway = trainer_pb2_grpc.TrainerStub(gateway_channel)
            job = via_gateway.CreateJob(upload(spec, pictures), metadata=alice, timeout=60)
            assert job.owner == "key:alice"
        with open_channel(target, client_tls(pki, pki.other)) as other_channel:
            other = trainer_pb2_grpc.TrainerStub(other_channel)
            with pytest.raises(grpc.RpcError) as hidden:
                other.GetJob(trainer_pb2.GetJobRequest(job_id=job.id), metadata=alice, timeout=10)
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
            listed = other.ListJobs(trainer_pb2.ListJobsRequest(), metadata=alice, timeout=10)
            assert [j.id for j in listed.jobs] == []
            own = other.CreateJob(upload(digits_spec(model_name="other-digits", epochs=1000), pictures),
                                  metadata=alice, timeout=60)  # fmt: skip
            assert own.owner == "peer:other-service"
            other.CancelJob(trainer_pb2.CancelJobRequest(job_id=own.id), timeout=10)
        with open_channel(target, client_tls(pki, pki.gateway)) as gateway_channel:
            trainer_pb2_grpc.TrainerStub(gateway_channel).CancelJob(
                trainer_pb2.CancelJobRequest(job_id=job.id), metadata=alice, timeout=10
            )
    finally:
        server.stop(0).wait()
        manager.close()
