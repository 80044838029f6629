"""Transport security between the gateway and the services (``VISION_TLS_*``), with certificates made here:
with mutual TLS a service refuses plaintext clients, clients without a certificate and clients whose
certificate another CA signed, and serves the gateway's; the names of a verified client decide whether it
may speak for a caller; server-only TLS needs no client certificate; a plaintext health port answers
probes while the main port demands mutual TLS; the real gateway reaches a TLS classifier; bad settings stop
a process at start."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from tests.conftest import live_gateway, publish_random_model, start_classifier
from tests.support.trainer import trainer_settings
from trainer_svc.server import create_trainer_server
from vision.launcher import check_transport_security
from vision.models.store import ModelStore
from vision.rpc.server import GrpcServer, create_server
from vision.security.tls import (
    TlsSettings,
    channel_credentials,
    open_channel,
    peer_identities,
    server_credentials,
)
from vision.v1 import classifier_pb2, classifier_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CLASSES = ["cat", "dog", "bird"]
TLS_VARIABLES = ("CERT_FILE", "KEY_FILE", "CA_FILE", "SERVER_NAME", "TRUSTED_CLIENTS")


# -- certificates -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the mesh's CA
    server: Identity  # CN vision-classifier, SAN DNS localhost + IP 127.0.0.1
    gateway: Identity  # CN vision-gateway, SAN DNS vision-gateway.vision.svc
    other: Identity  # CN other-service, SAN e-mail ops@example.com
    stranger: Identity  # CN vision-gateway, signed by another CA


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Identity:
    identity = Identity(directory / f"{stem}.crt", directory / f"{stem}.key")
    identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    identity.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return identity


class Authority:
    """A CA that signs leaf certificates (ECDSA P-256, valid for a day)."""

    def __init__(self, common_name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._builder(_name(common_name), self.key).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        self.certificate = self.cert.issuer_name(_name(common_name)).sign(self.key, hashes.SHA256())

    def _builder(self, subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(
        self, directory: Path, common_name: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier
    ) -> Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(_name(common_name), key)
            .issuer_name(self.certificate.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _write(directory, common_name, builder.sign(self.key, hashes.SHA256()), key)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    mesh, elsewhere = Authority("vision test CA"), Authority("some other CA")
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    localhost = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    stranger_dir = directory / "elsewhere"
    stranger_dir.mkdir()
    return Pki(
        ca=mesh.write(directory / "ca.crt"),
        server=mesh.issue(directory, "vision-classifier", localhost, server),
        gateway=mesh.issue(directory, "vision-gateway", [x509.DNSName("vision-gateway.vision.svc")], client),
        other=mesh.issue(directory, "other-service", [x509.RFC822Name("ops@example.com")], client),
        stranger=elsewhere.issue(stranger_dir, "vision-gateway", [], client),
    )


def server_tls(pki: Pki, *, mutual: bool = True) -> TlsSettings:
    return TlsSettings(cert_file=pki.server.cert, key_file=pki.server.key, ca_file=pki.ca if mutual else None)


def client_tls(pki: Pki, identity: Identity | None = None, **fields: object) -> TlsSettings:
    files = {"cert_file": identity.cert, "key_file": identity.key} if identity else {}
    return TlsSettings(ca_file=pki.ca, **files, **fields)  # type: ignore[arg-type]


def set_tls_env(monkeypatch: pytest.MonkeyPatch, **values: Path | str) -> None:
    """This process's VISION_TLS_* exactly as given (``cert_file=...``); the rest unset."""
    for variable in TLS_VARIABLES:
        monkeypatch.delenv(f"VISION_TLS_{variable}", raising=False)
    for field, value in values.items():
        monkeypatch.setenv(f"VISION_TLS_{field.upper()}", str(value))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_status(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


def classify(channel: grpc.Channel, image: bytes) -> classifier_pb2.ClassifyResponse:
    stub = classifier_pb2_grpc.ClassifierStub(channel)
    reply: classifier_pb2.ClassifyResponse = stub.Classify(
        classifier_pb2.ClassifyRequest(image=image), timeout=30
    )
    return reply


# -- settings (no server) -----------------------------------------------------------------------------------


@pytest.mark.fast
def test_tls_is_off_by_default_and_empty_variables_mean_off(monkeypatch: pytest.MonkeyPatch) -> None:
    set_tls_env(monkeypatch, cert_file="", key_file="", ca_file="")
    tls = TlsSettings()
    assert (tls.enabled, tls.mutual, tls.mode) == (False, False, "plaintext")
    assert server_credentials(tls) is None and channel_credentials(tls) is None
    assert tls.trusted_clients == ["vision-gateway"]


@pytest.mark.fast
def test_the_variables_turn_on_tls_and_mutual_tls(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    set_tls_env(monkeypatch, cert_file=pki.server.cert, key_file=pki.server.key)
    assert (TlsSettings().mode, TlsSettings().mutual) == ("TLS", False)
    set_tls_env(
        monkeypatch,
        cert_file=pki.server.cert,
        key_file=pki.server.key,
        ca_file=pki.ca,
        trusted_clients=" vision-gateway, batch-runner ,",
    )
    tls = TlsSettings()
    assert (tls.mode, tls.mutual) == ("mutual TLS", True)
    assert tls.trusted_clients == ["vision-gateway", "batch-runner"]
    assert isinstance(server_credentials(tls), grpc.ServerCredentials)


@pytest.mark.fast
@pytest.mark.parametrize(("given", "missing"), [("CERT_FILE", "KEY_FILE"), ("KEY_FILE", "CERT_FILE")])
def test_a_certificate_without_its_key_or_a_key_without_its_certificate_is_refused(
    monkeypatch: pytest.MonkeyPatch, pki: Pki, given: str, missing: str
) -> None:
    set_tls_env(monkeypatch, **{given.lower(): pki.server.cert if given == "CERT_FILE" else pki.server.key})
    with pytest.raises(ValidationError, match=f"VISION_TLS_{given} is set but VISION_TLS_{missing} is not"):
        TlsSettings()


@pytest.mark.fast
@pytest.mark.parametrize("field", ["cert_file", "key_file", "ca_file"])
@pytest.mark.parametrize("problem", ["missing", "a directory", "not PEM"])
def test_a_file_that_cannot_be_used_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pki: Pki, field: str, problem: str
) -> None:
    bad = tmp_path / "bad.pem"
    if problem == "a directory":
        bad.mkdir()
    elif problem == "not PEM":
        bad.write_text("hello")
    values = {"cert_file": pki.server.cert, "key_file": pki.server.key, "ca_file": pki.ca, field: bad}
    set_tls_env(monkeypatch, **values)
    with pytest.raises(ValidationError, match=re.escape(f"VISION_TLS_{field.upper()}={bad}: ")):
        TlsSettings()


@pytest.mark.fast
def test_a_ca_without_a_certificate_cannot_start_a_service(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    set_tls_env(monkeypatch, ca_file=pki.ca)
    tls = TlsSettings()
    assert channel_credentials(tls) is not None  # fine for the gateway: it checks servers with the CA
    with pytest.raises(ValueError, match="VISION_TLS_CA_FILE is set but VISION_TLS_CERT_FILE"):
        server_credentials(tls)


@pytest.mark.fast
def test_vision_run_reports_bad_tls_settings_once_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: Pki
) -> None:
    set_tls_env(monkeypatch, cert_file=tmp_path / "absent.crt", key_file=pki.server.key)
    assert check_transport_security() is None
    assert f"[vision] TLS settings: VISION_TLS_CERT_FILE={tmp_path / 'absent.crt'}: cannot be read" in (
        capsys.readouterr().out
    )
    set_tls_env(monkeypatch, cert_file=pki.server.cert, key_file=pki.server.key, ca_file=pki.ca)
    assert check_transport_security() == "mutual TLS"


# -- a real classifier with mutual TLS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("tls") / "models")
    publish_random_model(store, name="smallcnn", arch="smallcnn", classes=CLASSES, seed=3)
    return store


@dataclass(frozen=True)
class Running:
    server: GrpcServer
    target: str


@pytest.fixture(scope="module")
def mtls_classifier(tls_store: ModelStore, pki: Pki) -> Iterator[Running]:
    """classifier_svc configured as in a deployment: VISION_TLS_* with a CA (mutual TLS), a health port."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        set_tls_env(monkeypatch, cert_file=pki.server.cert, key_file=pki.server.key, ca_file=pki.ca)
        server, engine = start_classifier(tls_store, health_port=free_port())
    yield Running(server, f"127.0.0.1:{server.port}")
    server.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]


def refused_client(kind: str, pki: Pki, target: str) -> grpc.Channel:
    if kind == "plaintext":
        return grpc.insecure_channel(target)
    if kind == "TLS without a certificate":
        return open_channel(target, client_tls(pki))
    return open_channel(target, client_tls(pki, pki.stranger))  # "vision-gateway", but from another CA


@pytest.mark.parametrize("kind", ["plaintext", "TLS without a certificate", "a certificate from another CA"])
def test_with_mutual_tls_a_client_without_a_certificate_from_the_ca_is_refused(
    mtls_classifier: Running, pki: Pki, bus_jpeg: bytes, kind: str
) -> None:
    with refused_client(kind, pki, mtls_classifier.target) as channel, pytest.raises(grpc.RpcError) as caught:
        classify(channel, bus_jpeg)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake failed: no call was made


@pytest.mark.parametrize("client", ["gateway", "other"])
def test_with_mutual_tls_a_client_with_a_certificate_from_the_ca_classifies(
    mtls_classifier: Running, pki: Pki, bus_jpeg: bytes, client: str
) -> None:
    identity = pki.gateway if client == "gateway" else pki.other
    with open_channel(mtls_classifier.target, client_tls(pki, identity)) as channel:
        reply = classify(channel, bus_jpeg)
        assert health_status(channel) == SERVING
    assert reply.model.name == "smallcnn"
    assert {c.label for c in reply.classes} == set(CLASSES)
    assert mtls_classifier.server.transport == "mutual TLS"


def test_the_plaintext_health_port_answers_probes_while_the_main_port_demands_mutual_tls(
    mtls_classifier: Running,
) -> None:
    health_target = f"127.0.0.1:{mtls_classifier.server.health_port}"
    with grpc.insecure_channel(health_target) as channel:
        assert health_status(channel) == SERVING
        stub = health_pb2_grpc.HealthStub(channel)
        service = stub.Check(health_pb2.HealthCheckRequest(service="vision.v1.Classifier"), timeout=5)
        assert service.status == SERVING
        with pytest.raises(grpc.RpcError) as caught:  # nothing but health on the plaintext port
            classify(channel, b"\xff\xd8")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(mtls_classifier.target) as channel, pytest.raises(grpc.RpcError) as refused:
        health_status(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_real_gateway_with_its_client_certificate_answers_predict_from_a_mutual_tls_classifier(
    monkeypatch: pytest.MonkeyPatch, mtls_classifier: Running, pki: Pki, bus_jpeg: bytes
) -> None:
    upload = {"file": ("bus.jpg", bus_jpeg, "image/jpeg")}
    set_tls_env(monkeypatch, cert_file=pki.gateway.cert, key_file=pki.gateway.key, ca_file=pki.ca)
    with (
        live_gateway(classifier_addr=mtls_classifier.target, timeout_s=30) as live,
        httpx.Client(base_url=live.url, timeout=60) as client,
    ):
        response = client.post("/predict", files=upload)
        health = client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    assert response.json()["prediction"]["class"] in CLASSES
    assert health.json()["services"]["classifier"] == "SERVING"

    set_tls_env(monkeypatch)  # the same gateway without TLS settings: the classifier refuses it
    with (
        live_gateway(classifier_addr=mtls_classifier.target, timeout_s=5) as live,
        httpx.Client(base_url=live.url, timeout=60) as client,
    ):
        assert client.post("/predict", files=upload).status_code == 503


def test_server_only_tls_serves_clients_without_a_certificate_and_refuses_plaintext(
    monkeypatch: pytest.MonkeyPatch, tls_store: ModelStore, pki: Pki, bus_jpeg: bytes
) -> None:
    set_tls_env(monkeypatch, cert_file=pki.server.cert, key_file=pki.server.key)
    server, engine = start_classifier(tls_store)
    target = f"127.0.0.1:{server.port}"
    try:
        assert server.transport == "TLS"
        with open_channel(target, client_tls(pki)) as channel:
            assert classify(channel, bus_jpeg).model.name == "smallcnn"
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
            classify(channel, bus_jpeg)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]


def test_a_missing_certificate_file_stops_the_service_at_start(
    monkeypatch: pytest.MonkeyPatch, tls_store: ModelStore, tmp_path: Path, pki: Pki
) -> None:
    set_tls_env(monkeypatch, cert_file=tmp_path / "absent.crt", key_file=pki.server.key)
    with pytest.raises(
        ValidationError, match=re.escape(f"VISION_TLS_CERT_FILE={tmp_path / 'absent.crt'}: cannot be read")
    ):
        start_classifier(tls_store)


def test_the_trainer_listens_with_mutual_tls_and_a_plaintext_health_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pki: Pki
) -> None:
    set_tls_env(monkeypatch, cert_file=pki.server.cert, key_file=pki.server.key, ca_file=pki.ca)
    server, manager = create_trainer_server(trainer_settings(tmp_path, health_port=free_port()))
    target = f"127.0.0.1:{server.port}"
    try:
        with open_channel(target, client_tls(pki, pki.gateway)) as channel:
            assert health_status(channel) == SERVING
        with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
            assert health_status(channel) == SERVING
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
            health_status(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0).wait()
        manager.close()


# -- who the peer is: a tiny servicer on the shared server bootstrap ----------------------------------------

WHO = "/test.v1.Peer/Who"


def who_servicer(tls: TlsSettings) -> grpc.GenericRpcHandler:
    """Answers, as JSON, the caller's certificate names and whether it may assert a caller's identity."""

    def who(_request: bytes, context: grpc.ServicerContext) -> bytes:
        names = peer_identities(context)
        return json.dumps({"names": list(names), "trusted": tls.trust_asserted_identity(context)}).encode()

    return grpc.method_handlers_generic_handler(
        "test.v1.Peer", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )


@pytest.fixture
def who_server(request: pytest.FixtureRequest, pki: Pki) -> Iterator[tuple[GrpcServer, TlsSettings]]:
    """The shared bootstrap with the Who servicer; ``request.param``: "mutual TLS", "TLS" or "plaintext"."""
    mode = getattr(request, "param", "mutual TLS")
    tls = TlsSettings() if mode == "plaintext" else server_tls(pki, mutual=mode == "mutual TLS")

    def register(server: grpc.Server) -> tuple[str, ...]:
        server.add_generic_rpc_handlers((who_servicer(tls),))
        return ("test.v1.Peer",)

    grpc_server = create_server(
        "127.0.0.1:0", register, max_message_bytes=1 << 20, tls=tls, health_port=free_port()
    )
    yield grpc_server, tls
    grpc_server.stop(0).wait()


def ask_who(target: str, tls: TlsSettings) -> dict[str, object]:
    with open_channel(target, tls) as channel:
        answer: dict[str, object] = json.loads(channel.unary_unary(WHO, None, None)(b"", timeout=5))
    return answer


@pytest.mark.parametrize(
    ("client", "names", "trusted"),
    [
        ("gateway", ["vision-gateway", "vision-gateway.vision.svc"], True),
        ("other", ["other-service"], False),  # its e-mail SAN is no name to be trusted by
    ],
)
def test_peer_identities_name_the_verified_client_and_only_trusted_clients_may_assert_a_caller(
    who_server: tuple[GrpcServer, TlsSettings], pki: Pki, client: str, names: list[str], trusted: bool
) -> None:
    identity = pki.gateway if client == "gateway" else pki.other
    answer = ask_who(f"127.0.0.1:{who_server[0].port}", client_tls(pki, identity))
    assert answer == {"names": names, "trusted": trusted}


@pytest.mark.parametrize("who_server", ["TLS", "plaintext"], indirect=True)
def test_without_mutual_tls_no_peer_is_named_and_the_network_is_the_boundary(
    who_server: tuple[GrpcServer, TlsSettings], pki: Pki
) -> None:
    server, tls = who_server
    client = client_tls(pki, pki.gateway) if tls.enabled else TlsSettings()
    assert ask_who(f"127.0.0.1:{server.port}", client) == {"names": [], "trusted": True}


def test_server_name_is_the_name_checked_in_the_servers_certificate(
    who_server: tuple[GrpcServer, TlsSettings], pki: Pki
) -> None:
    target = f"127.0.0.1:{who_server[0].port}"
    assert ask_who(target, client_tls(pki, pki.gateway, server_name="localhost"))["trusted"] is True
    with pytest.raises(grpc.RpcError) as refused:
        ask_who(target, client_tls(pki, pki.gateway, server_name="classifier.elsewhere.example"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_health_port_shows_every_status_change_and_stops_with_the_server(
    who_server: tuple[GrpcServer, TlsSettings], pki: Pki
) -> None:
    server, _ = who_server
    secure = open_channel(f"127.0.0.1:{server.port}", client_tls(pki, pki.gateway))
    plain = grpc.insecure_channel(f"127.0.0.1:{server.health_port}")
    with secure, plain:
        assert health_status(secure) == health_status(plain) == NOT_SERVING  # not yet set_serving()
        server.set_serving()
        assert health_status(secure) == health_status(plain) == SERVING
        server.health.enter_graceful_shutdown()
        assert health_status(secure) == health_status(plain) == NOT_SERVING
        server.stop(0).wait()
        with pytest.raises(grpc.RpcError) as stopped:
            health_status(plain)
        assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE
