"""The first models in the cluster (issue 14): the Job that seeds the model store with ImageNet ResNet18 and
yolo11n (components/seed-models, Helm seedModels: the detector's image, the store read-write, public egress
only, restricted, skipping what the store holds), its script run for real against file:// mirrors, and the pod
for importing your own files."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy_manifests import (
    K8S,
    K8S_SCHEMA_VERSIONS,
    NAMESPACE,
    RENDER,
    RENDERS,
    Manifest,
    Obj,
    Render,
    rendered,
    selects,
)
from tests.test_deploy_policy import assert_restricted, parametrize_renders, under
from vision.models.store import ModelStore

SEED = "seed-models"
SEED_RENDERS = [r for r in RENDERS if r.seed_models]


def seed_container(manifest: Manifest) -> Obj:
    (container,) = manifest.job_pod_spec(SEED)["containers"]
    return container


def store_claim(manifest: Manifest) -> str:
    """The model store's claim, as the services mount it."""
    component = next(c for c in ("trainer", "classifier") if c in manifest.render.services)
    volumes = manifest.pod_spec(component)["volumes"]
    return str(next(v for v in volumes if v["name"] == "models")["persistentVolumeClaim"]["claimName"])


def egress_rules(manifest: Manifest, labels: dict[str, str]) -> list[Obj]:
    return [
        rule
        for p in manifest.of_kind("NetworkPolicy")
        if "Egress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)
        for rule in p["spec"].get("egress", [])
    ]


# -- seeding the model store ---------------------------------------------------------------------------------
@parametrize_renders
def test_the_seeding_job_is_rendered_where_asked_for(render: Render) -> None:
    assert set(rendered(render).jobs()) == ({SEED} if render.seed_models else set())


@pytest.mark.parametrize("render", SEED_RENDERS, ids=str)
def test_the_seeding_job_runs_the_detectors_image_with_the_store_read_write(render: Render) -> None:
    manifest = rendered(render)
    container = seed_container(manifest)
    # The detector's image reads YOLO files (the trainer's cannot); without a detector, the classifier's.
    source = "detector" if "detector" in render.services else "classifier"
    assert container["image"] == manifest.container(source)["image"]
    env = manifest.env(container)
    writable = [path for path, rw in mounts_of(container).items() if rw]
    assert env["VISION_MODEL_DIR"] in writable, "it publishes into the store"
    volume = volume_at(manifest.job_pod_spec(SEED), container, env["VISION_MODEL_DIR"])
    assert volume["persistentVolumeClaim"] == {"claimName": store_claim(manifest)}, (
        "read-write, the services'"
    )
    for variable in ("HOME", "XDG_CACHE_HOME", "TORCH_HOME", "MPLCONFIGDIR", "YOLO_CONFIG_DIR"):
        assert any(under(env[variable], path) for path in writable), variable
    assert "/tmp" in writable
    for path in writable:
        assert "hostPath" not in volume_at(manifest.job_pod_spec(SEED), container, path)
    spec = manifest.jobs()[SEED]["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert 0 < spec["backoffLimit"] <= 5 and spec["activeDeadlineSeconds"] <= 3600
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def mounts_of(container: Obj) -> dict[str, bool]:
    return {m["mountPath"]: not m.get("readOnly", False) for m in container["volumeMounts"]}


def volume_at(spec: Obj, container: Obj, path: str) -> Obj:
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == path)
    volume: Obj = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    return volume


@pytest.mark.parametrize("render", [r for r in SEED_RENDERS if r.network_policies], ids=str)
def test_the_seeding_job_may_reach_public_download_hosts_and_nothing_may_reach_it(render: Render) -> None:
    manifest = rendered(render)
    labels = manifest.jobs()[SEED]["spec"]["template"]["metadata"]["labels"]
    rules = egress_rules(manifest, labels)
    dns = [r for r in rules if {p["port"] for p in r["ports"]} == {53} and not r.get("to")]
    web = [r for r in rules if r not in dns]
    assert dns and web, rules
    for rule in web:  # tests/test_deploy_security.py checks the blocks leave out metadata and private ranges
        assert rule["to"] and all(set(peer) == {"ipBlock"} for peer in rule["to"]), rule
        assert {p["port"] for p in rule["ports"]} <= {443, 80}, rule
    # A rule for a named port (Prometheus's "metrics") admits nothing to a pod that declares no such port.
    declared = {port.get("name") for port in seed_container(manifest).get("ports", [])}
    admitted = [
        rule
        for p in manifest.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)
        for rule in p["spec"].get("ingress", [])
        if not rule.get("ports")
        or any(not isinstance(q["port"], str) or q["port"] in declared for q in rule["ports"])
    ]
    isolated = [
        p
        for p in manifest.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)
    ]
    assert isolated and not admitted, "the default deny covers it, and no rule lets anyone in"


@pytest.mark.parametrize("render", [r for r in SEED_RENDERS if r.tool == "helm"], ids=str)
def test_helm_seeds_after_every_install_and_upgrade(render: Render) -> None:
    annotations = rendered(render).jobs()[SEED]["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation", "the last run's logs stay"


def _job_shape(render: Render) -> Obj:
    job = copy.deepcopy(rendered(render).jobs()[SEED])
    for obj in (job, job["spec"]["template"]):
        obj["metadata"] = {}
    spec = job["spec"]["template"]["spec"]
    for volume in spec["volumes"]:
        volume.get("persistentVolumeClaim", {}).pop("claimName", None)
    spec["securityContext"] = dict(sorted(spec["securityContext"].items()))
    return job


def test_kustomize_and_helm_seed_the_store_with_the_same_job() -> None:
    assert _job_shape(RENDER["kustomize-gpu-seed"]) == _job_shape(RENDER["helm-default"])


def test_without_a_detector_helm_seeds_resnet18_alone_from_the_classifiers_image() -> None:
    script = seed_container(rendered(RENDER["helm-minimal"]))["args"][0]
    assert "vision models fetch-pretrained" in script and "detector_svc" not in script


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """file:// stand-ins for download.pytorch.org's resnet18 weights and the yolo11n.pt release: real files
    (random weights) of the formats the Job fetches."""
    import torch
    from torchvision import models

    from tests.support.detector import make_yolo_checkpoint

    directory = tmp_path_factory.mktemp("mirror")
    torch.save(models.resnet18(weights=None).state_dict(), directory / "resnet18.pth")
    make_yolo_checkpoint(directory / "yolo11n.pt")
    return {
        "IMAGENET_WEIGHTS_URL": (directory / "resnet18.pth").as_uri(),
        "VISION_DETECTOR_DEFAULT_WEIGHTS_URL": (directory / "yolo11n.pt").as_uri(),
    }


def run_seed_script(script: str, models: Path, mirrors: dict[str, str], home: Path) -> str:
    """The Job's script, run by /bin/sh here with this checkout's `vision` and `python` (the image's)."""
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "VISION_MODEL_DIR": str(models),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "TORCH_HOME": str(home / ".cache" / "torch"),
        "MPLCONFIGDIR": str(home / ".cache" / "matplotlib"),
        "YOLO_CONFIG_DIR": str(home / ".config" / "Ultralytics"),
        **mirrors,
    }
    done = subprocess.run(
        ["/bin/sh", "-ec", script], env=env, cwd=home, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_seeding_script_fills_an_empty_store_once_and_then_skips_what_it_holds(
    mirrors: dict[str, str], tmp_path: Path
) -> None:
    script = seed_container(rendered(RENDER["kustomize-gpu-seed"]))["args"][0]
    models, home = tmp_path / "models", tmp_path / "home"
    home.mkdir()
    run_seed_script(script, models, mirrors, home)
    first = {(v.name, v.version, v.metadata.task) for v in ModelStore(models).list()}
    assert {(name, task) for name, _, task in first} == {
        ("resnet18", "classification"),
        ("yolo11n", "detection"),
    }
    again = run_seed_script(script, models, mirrors, home)
    assert (
        "resnet18 is in the store already" in again and "a detection model is in the store already" in again
    )
    assert {(v.name, v.version, v.metadata.task) for v in ModelStore(models).list()} == first


IMPORT_POD = K8S / "components" / "seed-models" / "import-pod.yaml"


@pytest.mark.parametrize("version", K8S_SCHEMA_VERSIONS)
def test_the_import_pod_for_your_own_files_is_a_restricted_detector_pod_on_the_store(version: str) -> None:
    pod = yaml.safe_load(IMPORT_POD.read_text())
    kubernetes_validate.validate(pod, version, strict=True)
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert_restricted("import", spec, container)
    assert container["image"].rpartition(":")[0].endswith("/vision-detector"), "it reads YOLO files too"
    assert pod["metadata"]["namespace"] == NAMESPACE and not spec["automountServiceAccountToken"]
    env = {v["name"]: v["value"] for v in container["env"]}
    assert mounts_of(container)[env["VISION_MODEL_DIR"]] is True and mounts_of(container)["/tmp"] is True
    volume = volume_at(spec, container, env["VISION_MODEL_DIR"])
    assert volume["persistentVolumeClaim"] == {"claimName": "vision-models"}
    # Applied by hand, for the import alone: never part of the component.
    component = yaml.safe_load((IMPORT_POD.parent / "kustomization.yaml").read_text())
    assert IMPORT_POD.name not in component["resources"]
