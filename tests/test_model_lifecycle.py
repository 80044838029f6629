"""The model lifecycle end to end: real classifier_svc and explain_svc on loopback polling one store every
0.2 s, real trainer_svc serving ModelAdmin, the real gateway with API keys, seeded models published through
the real store, a real photo. While threads keep classifying and explaining (naming no model and no
version), an admin pins, rolls back, unpins and deletes versions by the CLI and over HTTP: not one request
fails, and every service answers with the chosen version within the poll interval (plus the model's load).

Shown too: a pinned version (and a model's only one) cannot be deleted; a deleted version is NOT_FOUND and
its number is never reused; bad names and versions are 400 with a message; only admins may change anything
(403 for a viewer, over HTTP and over gRPC); the default model set in the store reaches every service and
wins over VISION_CLASSIFIER_DEFAULT_MODEL; /models shows pins and where the default comes from.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from PIL import Image

from explain_svc.config import ExplainSettings
from explain_svc.server import create_explain_server
from gateway.config import GatewaySettings
from gateway.main import create_app
from tests.conftest import LiveServer, encode, publish_random_model, start_classifier
from tests.support.trainer import running_trainer, trainer_settings
from vision.cli import main as vision_cli
from vision.errors import InvalidArgument
from vision.models.admin import ModelAdmin
from vision.models.lifecycle import DEFAULTS_FILE, LIFECYCLE_DIR, LifecycleDamaged
from vision.models.store import ModelStore
from vision.security.keys import create_key
from vision.security.principal import PRINCIPAL_KEY, ROLE_KEY
from vision.security.roles import Role
from vision.security.settings import AuthSettings
from vision.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    explainer_pb2,
    explainer_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

POLL_S = 0.2
# The switch takes one poll plus loading the new version (a small CNN: milliseconds) on a loaded 2-core box.
SWITCH_BOUND_S = POLL_S + 2.0
MODEL = "flowers"
CLASSES = ["daisy", "rose", "tulip"]


@dataclass
class Answer:
    service: str
    started: float
    ended: float
    model: str
    version: str


@dataclass
class Load:
    """Threads calling each service without pause (a short sleep between calls keeps the CPUs shared)."""

    calls: dict[str, Callable[[], common_pb2.ModelRef]]
    threads_per_service: dict[str, int]
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, service: str) -> None:
        call = self.calls[service]
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ref = call()
            except grpc.RpcError as exc:
                self.failures.append(f"{service}: {exc.code().name} {exc.details()}")
            else:
                self.answers.append(Answer(service, started, time.monotonic(), ref.name, ref.version))
            time.sleep(0.01)

    def __enter__(self) -> Load:
        for service, count in self.threads_per_service.items():
            for _ in range(count):
                thread = threading.Thread(target=self._run, args=(service,), daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def switched(self, model: str, version: str, since: float, timeout: float = 20) -> dict[str, float]:
        """Seconds from ``since`` until each service's first answer from ``model`` ``version`` that started
        after ``since``; then every answer of that service started after that one ended has it too."""
        deadline = time.monotonic() + timeout
        firsts: dict[str, Answer] = {}
        while len(firsts) < len(self.calls) and time.monotonic() < deadline:
            for a in list(self.answers):
                if a.started > since and (a.model, a.version) == (model, version):
                    firsts.setdefault(a.service, a)
            time.sleep(0.02)
        assert set(firsts) == set(self.calls), f"not every service switched to {model} {version}: {firsts}"
        time.sleep(3 * POLL_S)  # answers after the switch: none may go back
        for service, first in firsts.items():
            later = [
                (a.model, a.version)
                for a in list(self.answers)
                if a.service == service and a.started > first.ended
            ]
            assert later and set(later) == {(model, version)}, (service, set(later))
        return {service: first.ended - since for service, first in firsts.items()}


@dataclass
class Mesh:
    store: ModelStore
    url: str
    keys: dict[str, str]
    classifier: grpc.Channel
    explain: grpc.Channel
    trainer: grpc.Channel
    photo: bytes

    def http(self, who: str | None = "root") -> httpx.Client:
        headers = {"X-API-Key": self.keys[who]} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def cli(self, *args: str) -> int:
        return vision_cli(["models", *args, "--model-dir", str(self.store.root)])

    def classify(self, name: str = "", version: str = "") -> common_pb2.ModelRef:
        stub = classifier_pb2_grpc.ClassifierStub(self.classifier)
        ref = common_pb2.ModelRef(name=name, version=version)
        reply = stub.Classify(
            classifier_pb2.ClassifyRequest(image=self.photo, model=ref, top_k=1), timeout=20
        )
        return reply.model

    def explain_call(self) -> common_pb2.ModelRef:
        stub = explainer_pb2_grpc.ExplainerStub(self.explain)
        return stub.Explain(explainer_pb2.ExplainRequest(image=self.photo), timeout=20).model

    def load(self) -> Load:
        return Load(
            {"classifier": self.classify, "explain": self.explain_call}, {"classifier": 3, "explain": 1}
        )

    def catalog(self) -> models_pb2.ListModelsResponse:
        stub = models_pb2_grpc.ModelCatalogStub(self.classifier)
        return stub.ListModels(models_pb2.ListModelsRequest(), timeout=10)


@pytest.fixture(scope="module")
def running_mesh(tmp_path_factory: pytest.TempPathFactory, astronaut: Image.Image) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("lifecycle")
    store = ModelStore(root / "models", keep_versions=0)
    for seed in range(3):  # flowers 1, 2, 3: different weights, so a version is told by its answers too
        publish_random_model(store, MODEL, "smallcnn", CLASSES, seed=seed)
    keys_file = root / "auth" / "keys.json"
    keys = {
        name: create_key(keys_file, name, role)[1]
        for name, role in (("viewer", Role.VIEWER), ("root", Role.ADMIN))
    }
    classifier, classifier_engine = start_classifier(store, poll_interval_s=POLL_S, default_model=MODEL)
    explain, explain_engine = create_explain_server(
        ExplainSettings(port=0, model_dir=store.root, poll_interval_s=POLL_S, default_model=MODEL)
    )
    auth = AuthSettings(required=True, keys_file=keys_file, keys_reload_s=0.3)
    photo = encode(astronaut.resize((96, 96)), "PNG")
    try:
        with running_trainer(trainer_settings(root)) as (trainer, _, _):
            settings = GatewaySettings(
                classifier_addr=f"127.0.0.1:{classifier.port}", trainer_addr=f"127.0.0.1:{trainer.port}"
            )
            with (
                LiveServer(create_app(settings, auth)) as live,
                grpc.insecure_channel(f"127.0.0.1:{classifier.port}") as to_classifier,
                grpc.insecure_channel(f"127.0.0.1:{explain.port}") as to_explain,
                grpc.insecure_channel(f"127.0.0.1:{trainer.port}") as to_trainer,
            ):
                yield Mesh(store, live.url, keys, to_classifier, to_explain, to_trainer, photo)
    finally:
        for server, engine in ((classifier, classifier_engine), (explain, explain_engine)):
            server.stop(0).wait()
            engine.close()  # type: ignore[attr-defined]


@pytest.fixture
def mesh(running_mesh: Mesh) -> Iterator[Mesh]:
    """The running mesh; every model unpinned and no default set in the store after each test."""
    yield running_mesh
    for name in running_mesh.store.names():
        if running_mesh.store.versions(name):
            assert running_mesh.cli("unpin", name) == 0
            assert running_mesh.cli("unset-default", name) == 0


def newest(mesh: Mesh) -> str:
    return mesh.store.versions(MODEL)[-1]


def test_rollback_pin_and_unpin_under_load_switch_every_service_within_the_poll_interval(mesh: Mesh) -> None:
    top = newest(mesh)
    with mesh.load() as load, mesh.http() as admin:
        load.switched(MODEL, top, time.monotonic() - 60)
        since = time.monotonic()
        assert mesh.cli("rollback", MODEL) == 0  # one command: the version before the served one
        previous = mesh.store.versions(MODEL)[-2]
        rollback_s = load.switched(MODEL, previous, since)

        since = time.monotonic()
        reply = admin.post(f"/models/{MODEL}/pin", json={"version": 1})
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == {
            "name": MODEL,
            "task": "classification",
            "versions": mesh.store.versions(MODEL),
            "pinned_version": "1",
            "served_version": "1",
            "default": False,
        }
        pin_s = load.switched(MODEL, "1", since)
        listed = {
            m["version"]: m["pinned"] for m in admin.get("/models").json()["models"] if m["name"] == MODEL
        }
        assert listed == {v: v == "1" for v in mesh.store.versions(MODEL)}

        since = time.monotonic()
        reply = admin.post(f"/models/{MODEL}/unpin")
        assert reply.status_code == 200 and reply.json()["model"]["served_version"] == top, reply.text
        unpin_s = load.switched(MODEL, top, since)
    assert load.failures == []
    assert len(load.answers) > 50
    for seconds in (rollback_s, pin_s, unpin_s):
        assert max(seconds.values()) < SWITCH_BOUND_S, (rollback_s, pin_s, unpin_s)
    print(f"switch seconds: rollback {rollback_s}, pin {pin_s}, unpin {unpin_s}; {len(load.answers)} answers")


def test_deleting_the_newest_under_load_serves_the_one_before_and_its_number_is_never_reused(
    mesh: Mesh,
) -> None:
    before = newest(mesh)
    added = publish_random_model(mesh.store, MODEL, "smallcnn", CLASSES, seed=10).version
    with mesh.load() as load, mesh.http() as admin:
        load.switched(MODEL, added, time.monotonic() - 60)  # a new publish is served, as always
        assert mesh.classify(MODEL, added).version == added
        since = time.monotonic()
        reply = admin.delete(f"/models/{MODEL}/versions/{added}")
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"]["served_version"] == before
        delete_s = load.switched(MODEL, before, since)
    assert load.failures == []
    assert max(delete_s.values()) < SWITCH_BOUND_S, delete_s
    print(f"switch seconds: delete {delete_s}; {len(load.answers)} answers")
    assert added not in mesh.store.versions(MODEL)
    with pytest.raises(grpc.RpcError) as gone:
        mesh.classify(MODEL, added)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"no version '{added}'" in str(gone.value.details())
    assert added not in {m.version for m in mesh.catalog().models if m.name == MODEL}
    again = publish_random_model(mesh.store, MODEL, "smallcnn", CLASSES, seed=11)
    assert int(again.version) == int(added) + 1  # a service that had the deleted one never mistakes it
    assert mesh.cli("delete", MODEL, again.version) == 0


def test_a_pinned_version_and_a_models_only_version_cannot_be_deleted(
    mesh: Mesh, capsys: pytest.CaptureFixture[str]
) -> None:
    assert mesh.cli("pin", MODEL, "2") == 0
    with mesh.http() as admin:
        reply = admin.delete(f"/models/{MODEL}/versions/2")
        assert reply.status_code == 409, reply.text
        assert reply.json()["error"]["code"] == "failed_precondition"
        assert "is pinned" in reply.json()["error"]["message"]
    capsys.readouterr()
    assert mesh.cli("delete", MODEL, "2") == 2
    assert "unpin it" in capsys.readouterr().err
    assert "2" in mesh.store.versions(MODEL)

    publish_random_model(mesh.store, "lonely", "smallcnn", CLASSES, seed=5)
    with mesh.http() as admin:
        reply = admin.delete("/models/lonely/versions/1")
        assert reply.status_code == 409 and "only version" in reply.json()["error"]["message"], reply.text
        reply = admin.post("/models/lonely/rollback")
        assert reply.status_code == 409 and "no version to roll back" in reply.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("POST", "/models/Bad..Name/pin", {"version": "1"}, 400, "name"),
        ("POST", f"/models/{MODEL}/pin", {"version": "one"}, 400, "version"),
        ("POST", f"/models/{MODEL}/pin", {"version": "0"}, 400, "version"),
        ("POST", f"/models/{MODEL}/pin", {}, 400, "version"),
        ("POST", f"/models/{MODEL}/pin", {"version": "99"}, 404, "no version '99'"),
        ("POST", "/models/nosuchmodel/unpin", None, 404, "not found"),
        ("DELETE", f"/models/{MODEL}/versions/-1", None, 400, "version"),
        ("DELETE", f"/models/{MODEL}/versions/99", None, 404, "no version '99'"),
        ("POST", "/models/nosuchmodel/default", None, 404, "not found"),
    ],
)
def test_bad_names_and_versions_are_4xx_with_a_message(
    mesh: Mesh, method: str, path: str, body: Any, status: int, words: str
) -> None:
    with mesh.http() as admin:
        reply = admin.request(method, path, json=body)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]["message"]
    assert mesh.store.lifecycle.pins() == {}


def test_only_admins_may_change_the_lifecycle_over_http_and_grpc(mesh: Mesh) -> None:
    changes = [
        ("POST", f"/models/{MODEL}/pin", {"version": "1"}),
        ("POST", f"/models/{MODEL}/unpin", None),
        ("POST", f"/models/{MODEL}/rollback", None),
        ("DELETE", f"/models/{MODEL}/versions/1", None),
        ("POST", f"/models/{MODEL}/default", None),
        ("DELETE", f"/models/{MODEL}/default", None),
    ]
    with mesh.http("viewer") as viewer, mesh.http(None) as nobody:
        for method, path, body in changes:
            refused = viewer.request(method, path, json=body)
            assert refused.status_code == 403, (path, refused.text)
            assert "needs admin" in refused.json()["error"]["message"]
            assert nobody.request(method, path, json=body).status_code == 401
        assert viewer.get("/models").status_code == 200
    stub = models_pb2_grpc.ModelAdminStub(mesh.trainer)
    with pytest.raises(grpc.RpcError) as denied:
        stub.PinModel(
            models_pb2.PinModelRequest(name=MODEL, version="1"),
            metadata=((PRINCIPAL_KEY, "key:viewer"), (ROLE_KEY, "viewer")),
            timeout=10,
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert mesh.store.lifecycle.pins() == {} and mesh.store.versions(MODEL)[0] == "1"


def test_the_default_set_in_the_store_reaches_every_service_over_its_setting(mesh: Mesh) -> None:
    publish_random_model(mesh.store, "birds", "smallcnn", ["owl", "robin"], seed=7)
    top = newest(mesh)
    with mesh.load() as load, mesh.http() as admin:
        catalog = mesh.catalog()
        assert (catalog.default_model, catalog.default_source) == (MODEL, "setting")
        since = time.monotonic()
        reply = admin.post("/models/birds/default")
        assert reply.status_code == 200 and reply.json()["model"]["default"] is True, reply.text
        default_s = load.switched("birds", "1", since)  # the services' setting names flowers: the store wins
        models = admin.get("/models").json()
        assert models["default_model"] == "birds"
        assert mesh.catalog().default_source == "store"

        since = time.monotonic()
        assert admin.delete("/models/birds/default").json()["model"]["default"] is False
        load.switched(MODEL, top, since)  # back to the setting's
    assert load.failures == []
    assert max(default_s.values()) < SWITCH_BOUND_S, default_s
    print(f"switch seconds: set-default {default_s}; {len(load.answers)} answers")
    assert (mesh.catalog().default_model, mesh.catalog().default_source) == (MODEL, "setting")


def test_lifecycle_files_live_in_the_store_survive_a_restart_and_are_listed(
    mesh: Mesh, capsys: pytest.CaptureFixture[str]
) -> None:
    assert mesh.cli("pin", MODEL, "1") == 0
    assert mesh.cli("set-default", MODEL) == 0
    capsys.readouterr()
    assert mesh.cli("list") == 0
    rows = {tuple(line.split()[:2]): line.split()[-2] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[(MODEL, "1")] == "pinned,default" and rows[(MODEL, "2")] == "default"
    reopened = ModelStore(mesh.store.root)
    assert reopened.served_version(MODEL) == "1"
    assert reopened.served_snapshot()[MODEL] == "1"
    assert (mesh.store.root / ".lifecycle" / f"{MODEL}.json").is_file()
    assert not list((mesh.store.root / ".lifecycle").glob("*.tmp"))


# -- the store alone -----------------------------------------------------------------------------------------


@pytest.mark.fast
def test_a_pinned_version_is_never_pruned(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=2)
    for seed in range(2):
        publish_random_model(store, MODEL, "smallcnn", CLASSES, seed=seed)
    ModelAdmin(store).pin(MODEL, "1")
    for seed in range(2, 5):
        publish_random_model(store, MODEL, "smallcnn", CLASSES, seed=seed)
    assert store.versions(MODEL) == ["1", "4", "5"]
    assert store.served_version(MODEL) == "1" and store.served_snapshot() == {MODEL: "1"}
    state = ModelAdmin(store).unpin(MODEL)
    assert (state.pinned, state.served) == ("", "5")


@pytest.mark.fast
def test_a_damaged_lifecycle_file_reads_as_nothing_pinned_but_no_change_or_publish_overwrites_it(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path / "models")
    for seed in range(3):
        publish_random_model(store, MODEL, "smallcnn", CLASSES, seed=seed)
    ModelAdmin(store).delete(MODEL, "3")  # its number must stay taken
    record = store.root / LIFECYCLE_DIR / f"{MODEL}.json"
    (store.root / LIFECYCLE_DIR / DEFAULTS_FILE).write_text("[1, 2]")
    for damage in ("{not json", '{"deleted": null}', '{"deleted": 5}', "[1, 2]"):
        record.write_text(damage)
        # The services read on: nothing pinned, the newest served.
        assert store.served_version(MODEL) == "2" and store.lifecycle.defaults() == {}
        assert store.lifecycle.deleted(MODEL) == []
        # Writers refuse rather than forget which numbers were deleted (and then give 3 out again).
        with pytest.raises(LifecycleDamaged, match="is damaged"):
            ModelAdmin(store).rollback(MODEL)
        with pytest.raises(LifecycleDamaged):
            publish_random_model(store, MODEL, "smallcnn", CLASSES, seed=9)
        assert record.read_text() == damage and store.versions(MODEL) == ["1", "2"]


@pytest.mark.fast
@pytest.mark.parametrize("name", ["x\n", "../x", "a..b", ".hidden", "A"])
def test_names_that_could_leave_or_hide_in_the_store_are_refused(tmp_path: Path, name: str) -> None:
    store = ModelStore(tmp_path / "models")
    publish_random_model(store, MODEL, "smallcnn", CLASSES)
    for operation in (lambda: ModelAdmin(store).pin(name, "1"), lambda: ModelAdmin(store).delete(name, "1")):
        with pytest.raises(InvalidArgument):
            operation()
    with pytest.raises(InvalidArgument):
        ModelAdmin(store).pin(MODEL, "1\n")


@pytest.mark.fast
def test_concurrent_admins_apply_one_change_at_a_time(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=0)
    for seed in range(6):
        publish_random_model(store, MODEL, "smallcnn", CLASSES, seed=seed)
    admin = ModelAdmin(store)
    threads = [threading.Thread(target=admin.delete, args=(MODEL, v)) for v in ("2", "3", "4", "5")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.versions(MODEL) == ["1", "6"]
    assert sorted(store.lifecycle.deleted(MODEL), key=int) == ["2", "3", "4", "5"]
