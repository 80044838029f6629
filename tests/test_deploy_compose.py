"""deploy/compose: the system on one machine with Docker Compose. No Docker engine runs the tests: the files
are validated against the Compose Specification's JSON schema (tests/data/compose-spec; with the CPU override
merged the way Compose merges), and by `docker compose config` where a Compose v2 binary exists; then checked
against the services' own code (settings, ports, health, store paths) and deploy/k8s/base, which they
mirror."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path, PurePosixPath

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.conftest import live_gateway
from tests.deploy_compose import (
    CPU_FILE,
    GPU_FILE,
    VARIANTS,
    Obj,
    compose_config,
    environment,
    gpu_devices,
    health_check_args,
    imported_modules,
    importlib_distributions,
    k8s_container,
    load,
    memory_bytes,
    mounts,
    plain,
    project,
    schema_errors,
    seconds,
    service_spec,
    tmpfs,
)
from tests.deploy_manifests import BY_NAME, K8S, REPO, SERVICES, Service, env_names_read_by, settings_class
from tests.test_deploy_images import copied_from_context, dockerfile, final_stage
from tests.test_deploy_policy import LIBRARY_ENV, STARTUP_BUDGET_S, WRITABLE_ENV

MODEL_SERVICES = [s for s in SERVICES if s.gpu]
# The seeding job's own variables (its shell script's, as in the Kubernetes Job), not settings.
SEED_SCRIPT_ENV = frozenset(("SEED_MODELS", "IMAGENET_WEIGHTS_URL"))
UID = "10001:10001"  # the images' USER
ONE_SHOT = ("volume-init", "seed-models")  # jobs that run once per `up` and exit

parametrize_variants = pytest.mark.parametrize("variant", VARIANTS)
parametrize_services = pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)


# -- the specification ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [GPU_FILE, CPU_FILE], ids=lambda p: p.name)
def test_each_file_is_valid_compose_on_its_own(path: Path) -> None:
    assert schema_errors(plain(load(path))) == []


@parametrize_variants
def test_each_variant_merged_and_interpolated_is_valid_compose(variant: str) -> None:
    assert schema_errors(project(variant)) == []


def test_the_schema_check_refuses_what_compose_refuses() -> None:
    bad = json.loads(json.dumps(project("gpu")))
    bad["services"]["classifier"]["healthcheck"]["tset"] = bad["services"]["classifier"]["healthcheck"].pop(
        "test"
    )
    bad["services"]["gateway"]["deploy"]["resources"]["reservations"]["devices"] = [{"driver": "nvidia"}]
    errors = schema_errors(bad)
    assert any("tset" in e for e in errors) and any("capabilities" in e for e in errors), errors


@parametrize_variants
def test_docker_compose_config_accepts_each_variant_as_merged_here(variant: str) -> None:
    config = compose_config(variant)
    ours = project(variant)["services"]
    assert set(config["services"]) == set(ours)
    for name, spec in config["services"].items():
        devices = spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        assert devices == ours[name].get("deploy", {}).get("resources", {}).get("reservations", {}).get(
            "devices", []
        ), f"{variant} {name}: Compose merges the GPU reservations otherwise"
        assert spec["image"] == ours[name]["image"]
        expected = {k: v for k, v in environment(variant, name).items() if v is not None}
        assert {k: v for k, v in spec.get("environment", {}).items() if v is not None} == expected, name


# -- configuration -------------------------------------------------------------------------------------------
@parametrize_variants
@parametrize_services
def test_every_configured_variable_is_a_setting_the_service_reads(variant: str, service: Service) -> None:
    accepted = env_names_read_by(service)
    for name in environment(variant, service.name):
        assert name in accepted or name in LIBRARY_ENV, f"{service.name} does not read {name}"


def test_the_seeding_job_sets_only_what_its_image_and_script_read() -> None:
    accepted = env_names_read_by(BY_NAME["detector"]) | LIBRARY_ENV | SEED_SCRIPT_ENV
    assert set(environment("gpu", "seed-models")) <= accepted


@parametrize_variants
@parametrize_services
def test_every_service_accepts_its_configured_environment(
    variant: str, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("VISION_")]:
        monkeypatch.delenv(name)
    for name, value in environment(variant, service.name).items():
        if value is not None:
            monkeypatch.setenv(name, value)
    settings = settings_class(service)()
    assert settings.host == "0.0.0.0"
    if service.is_grpc:
        assert settings.device == ("cuda" if variant == "gpu" else "cpu"), "cuda fails visibly; cpu says so"
        assert settings.port == settings_class(service).model_fields["port"].default


def test_the_seeding_script_is_the_kubernetes_jobs() -> None:
    job = yaml.safe_load((K8S / "components" / "seed-models" / "job.yaml").read_text())
    k8s_script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    ours = project("gpu")["services"]["seed-models"]
    guard, _, rest = ours["command"][0].partition("\n")
    assert "SEED_MODELS" in guard and "exit 0" in guard
    assert rest == k8s_script
    assert ours["entrypoint"] == ["/bin/sh", "-ec"]
    assert ours["image"] == service_spec("gpu", BY_NAME["detector"])["image"], (
        "the detector's image: both code paths"
    )


# -- ports and addresses -------------------------------------------------------------------------------------
@parametrize_variants
def test_only_the_gateway_is_published_on_its_settings_port(variant: str) -> None:
    services = project(variant)["services"]
    published = {name for name, spec in services.items() if spec.get("ports")}
    assert published == {"gateway"}
    (port,) = services["gateway"]["ports"]
    host_ip, host_port, container = port.split(":")
    assert (host_ip, host_port) == ("127.0.0.1", "8000"), "loopback and 8000 unless .env says otherwise"
    assert int(container) == int(environment(variant, "gateway")["VISION_GATEWAY_PORT"] or 0)
    assert int(container) == settings_class(BY_NAME["gateway"]).model_fields["port"].default
    assert all("expose" not in spec for spec in services.values()), "metrics and gRPC ports stay internal"


@parametrize_variants
def test_the_gateway_reaches_every_service_by_name_on_its_port_over_a_shared_network(variant: str) -> None:
    services = project(variant)["services"]
    env = environment(variant, "gateway")
    gateway_networks = set(services["gateway"]["networks"])
    for service in [s for s in SERVICES if s.is_grpc]:
        target = env[f"VISION_GATEWAY_{service.name.upper()}_ADDR"] or ""
        assert (
            target
            == f"dns:///{service.name}:{environment(variant, service.name)[f'{service.env_prefix}PORT']}"
        )
        assert target.endswith(f":{settings_class(service).model_fields['port'].default}")
        assert gateway_networks & set(services[service.name]["networks"]), service.name
    assert env["VISION_GATEWAY_LB_POLICY"] == "round_robin", "every replica of a --scale'd service"


def test_networks_keep_the_services_in_and_let_only_the_downloaders_out() -> None:
    config = project("gpu")
    assert config["networks"]["internal"]["internal"] is True
    assert not config["networks"]["egress"].get("internal") and not config["networks"]["edge"].get("internal")
    networks = {name: set(spec.get("networks", [])) for name, spec in config["services"].items()}
    for service in MODEL_SERVICES:
        if service.inference:
            assert networks[service.name] == {"internal"}, f"{service.name} has no egress, as in Kubernetes"
    assert {name for name, nets in networks.items() if "egress" in nets} == {"trainer", "seed-models"}
    assert config["services"]["volume-init"]["network_mode"] == "none"


# -- GPUs and images -----------------------------------------------------------------------------------------
@parametrize_services
def test_the_model_services_reserve_one_nvidia_gpu_each(service: Service) -> None:
    devices = gpu_devices(service_spec("gpu", service))
    if not service.gpu:
        assert devices == []
        return
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert devices[0]["device_ids"] == ["0"], "the first GPU unless VISION_GPU_<SERVICE> names another"
    assert f"${{VISION_GPU_{service.name.upper()}:-0}}" in GPU_FILE.read_text()


def test_the_cpu_variant_reserves_no_gpu_and_runs_the_cpu_images() -> None:
    gpu, cpu = project("gpu")["services"], project("cpu")["services"]
    assert all(gpu_devices(spec) == [] for spec in cpu.values())
    for name, spec in cpu.items():
        torch_image = name != "gateway"
        assert spec["image"] == gpu[name]["image"] + ("-cpu" if torch_image else ""), name
        if name in BY_NAME:  # the rest of the reservation stays
            assert (
                spec["deploy"]["resources"]["reservations"]["memory"]
                == gpu[name]["deploy"]["resources"]["reservations"]["memory"]
            )


def test_images_are_the_ones_make_images_builds() -> None:
    makefile = (REPO / "Makefile").read_text()
    registry = re.search(r"^REGISTRY \?= (\S+)$", makefile, re.MULTILINE)
    tag = re.search(r"^TAG \?= (\S+)$", makefile, re.MULTILINE)
    assert registry and tag
    text = GPU_FILE.read_text()
    for service in SERVICES:
        assert f"${{VISION_REGISTRY:-{registry[1]}}}/vision-{service.name}:${{VISION_TAG:-{tag[1]}}}" in text
        assert service_spec("gpu", service)["image"] == f"{registry[1]}/vision-{service.name}:{tag[1]}"


# -- volumes -------------------------------------------------------------------------------------------------
@parametrize_variants
@parametrize_services
def test_the_store_and_the_data_are_named_volumes_where_the_settings_point(
    variant: str, service: Service
) -> None:
    config = project(variant)
    env = {k: v for k, v in environment(variant, service.name).items() if v is not None}
    found = mounts(config["services"][service.name])
    assert all(source in config["volumes"] for source, _ in found.values()), "named volumes only"
    if not service.is_grpc:
        assert found == {}, "the gateway needs no store"
        return
    model_dir = env["VISION_MODEL_DIR"]
    assert found[model_dir] == ("models", not service.inference), "read-only where the service only reads"
    if service.name == "trainer":
        assert found[env["VISION_DATA_DIR"]] == ("trainer-data", True)
        assert PurePosixPath(env["VISION_TRAINER_KAGGLEHUB_CACHE"]).is_relative_to(env["VISION_DATA_DIR"])


def test_the_seeding_job_writes_the_store_and_the_volumes_belong_to_the_services_user() -> None:
    services = project("gpu")["services"]
    assert mounts(services["seed-models"]) == {"/models": ("models", True)}
    init = services["volume-init"]
    assert init["entrypoint"][:2] == ["chown", UID] and set(init["entrypoint"][2:]) == set(mounts(init))
    assert init["cap_drop"] == ["ALL"] and init["cap_add"] == ["CHOWN"], "root for one chown, nothing else"
    for name in ("seed-models", "trainer"):
        assert services[name]["depends_on"]["volume-init"] == {"condition": "service_completed_successfully"}


# -- health, start order, shutdown ---------------------------------------------------------------------------
@parametrize_services
def test_every_health_check_runs_what_the_image_holds(service: Service) -> None:
    script, args = health_check_args(service_spec("gpu", service))
    entrypoint = next(i for i in final_stage(dockerfile(service)) if i.keyword == "ENTRYPOINT").json_args()
    assert "python" in entrypoint, "the image's python runs the check"
    packages = {destination.strip("./") for _, destination in copied_from_context(service)}
    lock = (REPO / "requirements" / f"{service.extra}.txt").read_text().lower()
    distributions = importlib_distributions()
    modules = {n.split(".")[0] for n in imported_modules(script)} | {
        a.split(".")[0] for a in args if ":" in a
    }
    for module in modules - set(sys.stdlib_module_names):
        if module in packages:
            continue
        names = distributions.get(module, [])
        assert any(f"\n{n.lower()}==" in lock for n in names), (
            f"{module} ({names}) is not in {service.extra}.txt"
        )
    if service.is_grpc:
        assert args == [BY_NAME[service.name].settings], "the service's own settings give the port"
    else:
        assert "/healthz" in script, "liveness, not /health (which reports the backends)"


@pytest.mark.parametrize("serving", [True, False], ids=["serving", "not-serving"])
def test_the_grpc_health_check_passes_only_while_the_service_says_serving(serving: bool) -> None:
    # A real gRPC server with the library's health servicer, as every service runs it, on a loopback port.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        servicer.set("", status)
        script, args = health_check_args(service_spec("gpu", BY_NAME["classifier"]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("VISION_")}
        env["VISION_CLASSIFIER_PORT"] = str(port)
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.stop(None)
    assert done.returncode == (0 if serving else 1), done.stderr


def test_the_gateway_health_check_passes_while_the_real_gateway_answers() -> None:
    script, args = health_check_args(service_spec("gpu", BY_NAME["gateway"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISION_")}

    def check(port: int) -> subprocess.CompletedProcess[str]:
        env["VISION_GATEWAY_PORT"] = str(port)
        command = [sys.executable, "-c", script, *args]
        return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)

    with live_gateway() as live:
        up = check(live.port)
    assert up.returncode == 0, up.stderr
    down = check(live.port)
    assert down.returncode != 0, "a stopped gateway fails its check"


def test_start_order_waits_for_health_and_for_the_seeding() -> None:
    services = project("gpu")["services"]
    gateway = services["gateway"]["depends_on"]
    assert gateway == {s.name: {"condition": "service_healthy"} for s in SERVICES if s.is_grpc}
    for service in MODEL_SERVICES:
        if service.inference:
            assert services[service.name]["depends_on"] == {
                "seed-models": {"condition": "service_completed_successfully"}
            }
    for name, spec in services.items():
        for dependency, condition in spec.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
            else:
                assert services[dependency]["restart"] == "no", f"{dependency} is a one-shot job"
        one_shot = name in ONE_SHOT
        assert spec["restart"] == ("no" if one_shot else "unless-stopped"), name
        if name in BY_NAME and BY_NAME[name].is_grpc:
            start = seconds(spec["healthcheck"]["start_period"])
            assert start >= STARTUP_BUDGET_S, (
                f"{name}: as long as the Kubernetes startup probe, to load models"
            )


def test_every_one_shot_job_is_awaited_so_up_wait_exits_zero() -> None:
    # `docker compose up --wait` takes an exited container for a failure unless a service waits for it to
    # complete (docker/compose#9572).
    services = project("gpu")["services"]
    for job in ONE_SHOT:
        waiting = [n for n, s in services.items() if s.get("depends_on", {}).get(job, {}).get("condition")]
        conditions = {services[n]["depends_on"][job]["condition"] for n in waiting}
        assert waiting and conditions == {"service_completed_successfully"}, job
        assert "healthcheck" not in services[job], f"{job} is done when it exits"


@parametrize_services
def test_stop_grace_covers_the_services_drain_as_in_kubernetes(service: Service) -> None:
    spec, env = service_spec("gpu", service), environment("gpu", service.name)
    grace = seconds(spec["stop_grace_period"])
    assert grace == k8s_container(service)["terminationGracePeriodSeconds"]
    if service.is_grpc:
        prefix = service.env_prefix
        assert grace > float(env[f"{prefix}SHUTDOWN_DELAY_SECONDS"] or 0) + float(
            env[f"{prefix}GRACE_SECONDS"] or 0
        )
    else:
        assert grace >= float(env["VISION_GATEWAY_DRAIN_S"] or 0) + 10


# -- hardening and resources ---------------------------------------------------------------------------------
def each_long_running() -> Iterator[tuple[str, Obj]]:
    """Every service but the root chown (the seeding job included: the same hardening)."""
    yield from ((n, s) for n, s in project("gpu")["services"].items() if n != "volume-init")


def test_every_container_runs_as_the_images_user_read_only_without_capabilities() -> None:
    for name, spec in each_long_running():
        assert spec["user"] == UID, name
        assert spec["read_only"] is True and spec["cap_drop"] == ["ALL"] and "cap_add" not in spec, name
        assert "no-new-privileges:true" in spec["security_opt"], name
        assert not {"privileged", "pid", "ipc", "network_mode"} & set(spec), name


def test_every_path_a_process_writes_is_on_a_tmpfs_or_a_volume() -> None:
    for name, spec in each_long_running():
        writable = [p for p, (_, rw) in mounts(spec).items() if rw] + list(tmpfs(spec))
        assert "/tmp" in tmpfs(spec), name
        env = {k: v for k, v in environment("gpu", name).items() if v}
        for variable in [v for v in WRITABLE_ENV if v in env]:
            path = PurePosixPath(env[variable])
            assert any(path.is_relative_to(w) for w in writable), f"{name}: {variable}={path} is read-only"


@parametrize_services
def test_limits_and_threads_are_sized_like_kubernetes(service: Service) -> None:
    resources = service_spec("gpu", service)["deploy"]["resources"]
    k8s = k8s_container(service)["resources"]
    assert float(resources["limits"]["cpus"]) == float(k8s["limits"]["cpu"])
    assert memory_bytes(resources["reservations"]["memory"]) == memory_bytes(k8s["requests"]["memory"])
    assert memory_bytes(resources["limits"]["memory"]) >= memory_bytes(k8s["limits"]["memory"])
    env = environment("gpu", service.name)
    if service.is_grpc:
        cores = str(math.ceil(float(resources["limits"]["cpus"])))
        threads = "VISION_TRAINER_TORCH_THREADS" if service.name == "trainer" else "VISION_TORCH_THREADS"
        assert env[threads] == cores and env["OMP_NUM_THREADS"] == cores, service.name
    # tmpfs pages count toward the container's memory: the largest /tmp must fit beside the process's own.
    spool = memory_bytes(tmpfs(service_spec("gpu", service))["/tmp"].split(",")[0].removeprefix("size="))
    assert memory_bytes(resources["limits"]["memory"]) - spool >= memory_bytes(k8s["requests"]["memory"])


# -- authentication ------------------------------------------------------------------------------------------
def test_authentication_is_on_with_the_keys_from_a_compose_secret() -> None:
    config = project("gpu")
    env = environment("gpu", "gateway")
    assert env["VISION_AUTH_REQUIRED"] == "true", "on, as in every Kubernetes deployment"
    (secret,) = config["services"]["gateway"]["secrets"]
    assert secret["target"] == env["VISION_AUTH_KEYS_FILE"]
    assert config["secrets"][secret["source"]] == {"file": "./secrets/keys.json"}
    assert [s for n, s in config["services"].items() if n != "gateway" and s.get("secrets")] == []
