"""deploy/docker: one image per service, built from the repository root. No Docker engine runs the tests,
so they check what can be checked without one: each Dockerfile installs its own extra, runs its own
module as a numeric non-root user, copies every package that module imports, and keeps torch out of the
gateway."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy_manifests import REPO, SERVICES, Service, default_metrics_port, default_port

DOCKER = REPO / "deploy" / "docker"
FIRST_PARTY = ("vision", *(s.package for s in SERVICES))
GPU_SERVICES = [s for s in SERVICES if s.gpu]
parametrize_services = pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # 0 for the first FROM's stage

    def json_args(self) -> list[str]:
        value = ast.literal_eval(self.args)
        assert isinstance(value, list), f"{self.keyword} should use the exec (JSON) form: {self.args}"
        return [str(v) for v in value]


def dockerfile(service: Service) -> list[Instruction]:
    """The instructions of the service's Dockerfile (comments dropped, continuation lines joined)."""
    path = DOCKER / f"{service.name}.Dockerfile"
    assert path.is_file(), f"no {path.relative_to(REPO)}"
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions, stage = [], -1
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    data: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return data


def copied_from_context(service: Service) -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context (not from another stage)."""
    pairs = []
    for instruction in dockerfile(service):
        if instruction.keyword == "COPY" and "--from=" not in instruction.args:
            *sources, destination = shlex.split(instruction.args)
            pairs += [(source.rstrip("/"), destination) for source in sources]
    return pairs


def module_file(module: str) -> Path | None:
    """The source file of a first-party module, or None (third party, or a name inside a module)."""
    if module.split(".")[0] not in FIRST_PARTY:
        return None
    path = REPO.joinpath(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imports_in(path: Path, package: list[str]) -> tuple[list[str], set[str]]:
    """(modules the file imports, of which: those inside ``try: ... except ImportError``, i.e. optional).
    ``package`` is the file's package, for relative imports."""
    modules: list[str] = []
    optional: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            modules += [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            for inner in node.body:
                optional |= set(imports_in_node(inner))
    return modules, optional


def imports_in_node(node: ast.AST) -> list[str]:
    return [
        name
        for n in ast.walk(node)
        for name in (
            [a.name for a in n.names] if isinstance(n, ast.Import) else
            [n.module] if isinstance(n, ast.ImportFrom) and n.module and not n.level else []
        )
    ]  # fmt: skip


def import_closure(module: str) -> tuple[set[str], set[str]]:
    """(first-party modules, third-party top-level packages) that running ``module`` can import, followed
    through every import statement including the ones inside functions (a lazy import still has to find
    its module in the image); imports guarded by ``except ImportError`` are left out."""
    seen: set[str] = set()
    third_party: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]  # importing a.b.c runs a and a.b
        modules, optional = imports_in(path, parts if path.name == "__init__.py" else parts[:-1])
        todo += modules
        third_party |= {
            m.split(".")[0]
            for m in modules
            if m and m not in optional and m.split(".")[0] not in FIRST_PARTY
            and m.split(".")[0] not in sys.stdlib_module_names
        }  # fmt: skip
    return seen, third_party


def direct_requirements(extra: str) -> list[Requirement]:
    """What `pip install ".[extra]"` asks for: the project's dependencies plus the extra's, with the
    project's references to its own extras (vision-mesh[torch]) expanded."""
    project = pyproject()["project"]
    todo = [Requirement(r) for r in [*project["dependencies"], f"{project['name']}[{extra}]"]]
    found: list[Requirement] = []
    expanded: set[str] = set()
    while todo:
        requirement = todo.pop()
        if canonicalize_name(requirement.name) != canonicalize_name(project["name"]):
            found.append(requirement)
            continue
        for name in requirement.extras - expanded:
            expanded.add(name)
            todo += [Requirement(r) for r in project["optional-dependencies"][name]]
    return found


def requirements_of(extra: str) -> set[str]:
    """Names of the distributions an extra asks for directly (after expanding the project's own extras)."""
    return {canonicalize_name(r.name) for r in direct_requirements(extra)}


def installed_by(extra: str) -> set[str]:
    """Every distribution `pip install ".[extra]"` installs, dependencies of dependencies included, as the
    metadata installed here says (Linux, this Python: the image's platform)."""
    todo = direct_requirements(extra)
    found: set[str] = set()
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if (name, frozenset(requirement.extras)) in done:
            continue
        done.add((name, frozenset(requirement.extras)))
        try:
            dependencies = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: it provides nothing the checks below could find anyway
        found.add(name)
        for line in dependencies:
            dependency = Requirement(line)
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in {"", *requirement.extras}):
                todo.append(dependency)
    return found


def lock_files_installed(service: Service) -> set[str]:
    """The lock files (requirements/*.txt) the Dockerfile's `pip install -r` commands install from."""
    return {
        match
        for i in dockerfile(service)
        if i.keyword == "RUN" and "pip install" in i.args
        for match in re.findall(r"-r\s+(requirements/\S+\.txt)", i.args)
    }


@parametrize_services
def test_image_installs_its_own_extra_from_that_extras_lock(service: Service) -> None:
    # The lock of the extra, not `pip install ".[extra]"`: no resolution at build time (tests/
    # test_dependency_floors.py checks each lock holds exactly what its extra asks for, hashed).
    assert lock_files_installed(service) == {f"requirements/{service.extra}.txt", "requirements/build.txt"}
    assert service.extra in pyproject()["project"]["optional-dependencies"]
    assert not [
        i for i in dockerfile(service) if i.keyword == "RUN" and re.search(r"pip install \S*\"?\.", i.args)
    ]


@parametrize_services
def test_image_runs_the_service_module_which_has_a_main(service: Service) -> None:
    runtime = final_stage(dockerfile(service))
    (entrypoint,) = [i for i in runtime if i.keyword == "ENTRYPOINT"]
    assert entrypoint.json_args() == ["python", "-m", service.package]
    assert (REPO / service.package / "__main__.py").is_file()


@parametrize_services
def test_image_runs_as_a_numeric_non_root_user(service: Service) -> None:
    # Numeric, so that the kubelet can verify runAsNonRoot without reading /etc/passwd in the image.
    users = [i.args for i in final_stage(dockerfile(service)) if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) > 0), users[-1]


@parametrize_services
def test_image_is_multi_stage_and_the_runtime_takes_only_the_built_environment(service: Service) -> None:
    instructions = dockerfile(service)
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "a builder stage and a runtime stage"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    (default,) = [i.args for i in instructions if i.keyword == "ARG" and i.args.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", default), default
    runtime = final_stage(instructions)
    assert not [i for i in runtime if i.keyword == "COPY" and "--from=" not in i.args], (
        "sources stay in the builder"
    )
    assert any(i.keyword == "COPY" and i.args.startswith("--from=builder /opt/venv") for i in runtime)


@parametrize_services
def test_image_copies_every_first_party_package_its_service_imports(service: Service) -> None:
    copied = {source for source, _ in copied_from_context(service)}
    modules, _ = import_closure(f"{service.package}.__main__")
    needed = {module.split(".")[0] for module in modules}
    assert needed <= copied, f"missing from the image: {sorted(needed - copied)}"
    assert {"pyproject.toml", "README.md"} <= copied, "the package build reads both"
    others = set(FIRST_PARTY) - needed
    assert not (others & copied), f"{service.name}'s image carries other services: {sorted(others & copied)}"


@parametrize_services
def test_image_installs_every_third_party_package_its_service_imports(service: Service) -> None:
    _, imported = import_closure(f"{service.package}.__main__")
    providers = importlib.metadata.packages_distributions()
    installed = installed_by(service.extra)
    missing = {
        module: providers.get(module, ["(not installed here either)"])
        for module in sorted(imported)
        if not {canonicalize_name(d) for d in providers.get(module, [])} & installed
    }
    assert not missing, f"{service.name} imports what pip install '.[{service.extra}]' lacks: {missing}"


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Names in the wheel the images install, built from what the images copy (no build/ in the repo)."""
    context = tmp_path_factory.mktemp("context")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    for package in FIRST_PARTY:
        shutil.copytree(REPO / package, context / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        # The dev extra has the build backend: no isolated build environment to download.
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@parametrize_services
def test_image_wheel_carries_every_file_of_its_packages(service: Service, wheel_files: set[str]) -> None:
    # Templates, static files and stubs are not Python: the wheel has them only if pyproject says so.
    for package in ("vision", service.package):
        for path in (REPO / package).rglob("*"):
            relative = path.relative_to(REPO).as_posix()
            if path.is_file() and "__pycache__" not in relative and path.suffix != ".pyc":
                assert relative in wheel_files, f"{relative} is not in the wheel: add it to package-data"


@parametrize_services
def test_image_listens_on_all_interfaces_and_exposes_the_service_and_metrics_ports(service: Service) -> None:
    runtime = final_stage(dockerfile(service))
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert f"{service.env_prefix}HOST=0.0.0.0" in env
    exposed = [int(p.split("/")[0]) for i in runtime if i.keyword == "EXPOSE" for p in i.args.split()]
    assert exposed == [default_port(service), default_metrics_port(service)]


def build_args(service: Service) -> dict[str, str]:
    return dict(
        i.args.split("=", 1) for i in dockerfile(service) if i.keyword == "ARG" and "=" in i.args
    )  # fmt: skip


@pytest.mark.parametrize("service", GPU_SERVICES, ids=lambda s: s.name)
def test_gpu_images_name_the_torch_build_their_lock_pins(service: Service) -> None:
    assert "torch" in requirements_of(service.extra)
    lock = (REPO / "requirements" / f"{service.extra}.txt").read_text()
    pinned = re.search(r"^torch==(\S+)", lock, re.MULTILINE)
    assert pinned is not None, "torch is not in the lock"
    args = build_args(service)
    version, _, flavour = pinned.group(1).partition("+")
    assert args["TORCH_VERSION"] == version
    assert re.fullmatch(r"cu\d{3}|cpu", args["TORCH_CUDA"]), args["TORCH_CUDA"]
    assert flavour in ("", args["TORCH_CUDA"]), "a lock made from another index names its flavour"
    # By default PyPI (whose Linux wheel is the CUDA build the lock pins): no other index.
    assert args["TORCH_INDEX_URL"] == '""'
    # The build checks that the installed torch is the one these arguments name.
    assert any(
        '"${TORCH_VERSION}+${TORCH_CUDA}"' in i.args for i in dockerfile(service) if i.keyword == "RUN"
    )


@parametrize_services
def test_gpu_images_ask_the_nvidia_runtime_for_cuda(service: Service) -> None:
    # Unset, the runtime mounts the "utility" driver libraries only: nvidia-smi works, CUDA does not.
    env = " ".join(i.args for i in final_stage(dockerfile(service)) if i.keyword == "ENV")
    capabilities = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env)
    if service.gpu:
        assert capabilities is not None and "compute" in capabilities.group(1).split(",")
    else:
        assert capabilities is None
    assert "NVIDIA_VISIBLE_DEVICES" not in env, "the device plugin decides which GPUs a pod sees"


def test_gateway_image_pulls_no_torch() -> None:
    assert not {"torch", "torchvision", "ultralytics"} & requirements_of("gateway")
    assert not [i for i in dockerfile(SERVICES[-1]) if "torch" in i.args.lower() and i.keyword == "RUN"]


def test_gateway_starts_without_torch_installed() -> None:
    blocked = (
        "import sys\nfor m in ('torch', 'torchvision', 'ultralytics', 'cv2'):\n    sys.modules[m] = None\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", f"{blocked}\nimport gateway.__main__, gateway.main"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def dockerignore_excludes(path: str) -> bool:
    """.dockerignore semantics, enough for ours: patterns in order, the last match wins, ! negates."""
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, f"**/{pattern}") for p in prefixes):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "var/models/x",
        ".cache/k8s-tools/x",
        "tests/test_store.py",
        "vision/__pycache__/a.pyc",
        "benchmarks/classifier/__main__.py",
        "deploy/k8s/base/kustomization.yaml",
    ],
)
def test_build_context_leaves_out_what_no_image_needs(path: str) -> None:
    assert dockerignore_excludes(path)


@parametrize_services
def test_build_context_keeps_what_the_image_copies(service: Service) -> None:
    for source, _ in copied_from_context(service):
        probe = f"{source}/__init__.py" if (REPO / source).is_dir() else source
        assert (REPO / probe).exists(), f"{service.name}'s image copies {source}, which does not exist"
        assert not dockerignore_excludes(probe), f"{probe} is needed by {service.name}'s image"


def test_every_dockerfile_belongs_to_a_service() -> None:
    assert {p.name for p in DOCKER.glob("*.Dockerfile")} == {f"{s.name}.Dockerfile" for s in SERVICES}


def test_detector_image_has_the_libraries_opencv_loads() -> None:
    runtime = " ".join(i.args for i in final_stage(dockerfile(SERVICES[2])) if i.keyword == "RUN")
    assert "libgl1" in runtime and "libglib2.0-0" in runtime
