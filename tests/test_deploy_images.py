"""deploy/docker: one image per service, built from the repository root. No Docker engine runs the tests,
so they check what can be checked without one: each Dockerfile installs its own extra, runs its own
module as a numeric non-root user, copies every package that module imports, and keeps torch out of the
gateway; the torch images share one base layer (torch-base.Dockerfile), the detector runs headless OpenCV,
and the trainer runs under tini."""

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

from tests.deploy_manifests import BY_NAME, REPO, SERVICES, Service, default_metrics_port, default_port

DOCKER = REPO / "deploy" / "docker"
TORCH_BASE = DOCKER / "torch-base.Dockerfile"
# The lock the base installs: every other torch image's lock holds all of it (checked below).
BASE_LOCK = "requirements/classifier.txt"
FIRST_PARTY = ("vision", *(s.package for s in SERVICES))
GPU_SERVICES = [s for s in SERVICES if s.gpu]
# The model services: torch, and their images FROM the torch base (checked below).
TORCH_SERVICES = [s for s in SERVICES if s.gpu]
parametrize_services = pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
parametrize_torch_images = pytest.mark.parametrize("service", TORCH_SERVICES, ids=lambda s: s.name)


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
    return parse_dockerfile(DOCKER / f"{service.name}.Dockerfile")


def parse_dockerfile(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile (comments dropped, continuation lines joined)."""
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


def copied_from_context(service: Service | Path) -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context (not from another stage)."""
    pairs = []
    instructions = parse_dockerfile(service) if isinstance(service, Path) else dockerfile(service)
    for instruction in instructions:
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


def lock_files_installed(instructions: list[Instruction]) -> set[str]:
    """The lock files (requirements/*.txt) the Dockerfile's `pip install -r` commands install from."""
    return {
        match
        for i in instructions
        if i.keyword == "RUN" and "pip install" in i.args
        for match in re.findall(r"-r\s+(requirements/\S+\.txt)", i.args)
    }


@parametrize_services
def test_image_installs_its_own_extra_from_that_extras_lock(service: Service) -> None:
    # The lock of the extra, not `pip install ".[extra]"`: no resolution at build time (tests/
    # test_dependency_floors.py checks each lock holds exactly what its extra asks for, hashed). The
    # detector's OpenCV swap has a lock of its own (below).
    extra = {"requirements/opencv_headless.txt"} if service.name == "detector" else set()
    expected = {f"requirements/{service.extra}.txt", "requirements/build.txt", *extra}
    assert lock_files_installed(dockerfile(service)) == expected
    assert service.extra in pyproject()["project"]["optional-dependencies"]
    assert not [
        i for i in dockerfile(service) if i.keyword == "RUN" and re.search(r"pip install \S*\"?\.", i.args)
    ]


# Started under tini, Debian's init for containers, where the process has children of its own to reap.
INIT = {"trainer": ["tini", "--"]}


@parametrize_services
def test_image_runs_the_service_module_which_has_a_main(service: Service) -> None:
    runtime = final_stage(dockerfile(service))
    (entrypoint,) = [i for i in runtime if i.keyword == "ENTRYPOINT"]
    assert entrypoint.json_args() == [*INIT.get(service.name, []), "python", "-m", service.package]
    assert (REPO / service.package / "__main__.py").is_file()


def test_trainer_image_reaps_its_workers_with_tini_from_debian() -> None:
    # The trainer's job worker and its DataLoader workers leave orphans; a Python PID 1 never waits for them.
    runtime = final_stage(dockerfile(BY_NAME["trainer"]))
    installs = [i.args for i in runtime if i.keyword == "RUN" and "apt-get install" in i.args]
    assert any(re.search(r"apt-get install .*\btini\b", args) for args in installs), installs
    assert all("rm -rf /var/lib/apt/lists/*" in args for args in installs), "no apt lists left in the image"
    (entrypoint,) = [i for i in runtime if i.keyword == "ENTRYPOINT"]
    assert entrypoint.json_args()[:2] == ["tini", "--"]


@parametrize_services
def test_image_runs_as_a_numeric_non_root_user(service: Service) -> None:
    # Numeric, so that the kubelet can verify runAsNonRoot without reading /etc/passwd in the image.
    users = [i.args for i in final_stage(dockerfile(service)) if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) > 0), users[-1]


def _python_image_default(instructions: list[Instruction]) -> str:
    (default,) = [i.args for i in instructions if i.keyword == "ARG" and i.args.startswith("PYTHON_IMAGE=")]
    return default


@parametrize_services
def test_image_is_multi_stage_and_the_runtime_takes_only_the_built_environment(service: Service) -> None:
    instructions = dockerfile(service)
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "a builder stage and a runtime stage"
    # The locks' Python (3.11: `make lock --python-version 3.11`), Debian slim.
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", _python_image_default(instructions))
    runtime = final_stage(instructions)
    assert not [i for i in runtime if i.keyword == "COPY" and "--from=" not in i.args], (
        "sources stay in the builder"
    )
    assert froms[0].startswith("${PYTHON_IMAGE} AS builder"), froms[0]
    if service in TORCH_SERVICES:
        # The runtime is the shared torch layer plus this service's own: the venv is the base's, extended.
        assert froms[-1] == "${BASE_IMAGE} AS runtime", froms[-1]
        assert not any(i.keyword == "COPY" and "/opt/venv" in i.args for i in runtime), "the base's venv"
        assert lock_files_installed(runtime) >= {f"requirements/{service.extra}.txt"}
    else:
        assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
        assert any(i.keyword == "COPY" and i.args.startswith("--from=builder /opt/venv") for i in runtime)


@parametrize_torch_images
def test_torch_images_are_built_on_the_shared_torch_base(service: Service) -> None:
    (arg,) = [i.args for i in dockerfile(service) if i.keyword == "ARG" and i.args.startswith("BASE_IMAGE=")]
    assert arg == "BASE_IMAGE=vision-torch-base", "the name torch-base.Dockerfile's comment builds it as"
    assert "torch" in requirements_of(service.extra)


def test_the_torch_base_installs_the_shared_lock_once_and_names_its_torch_build() -> None:
    base = parse_dockerfile(TORCH_BASE)
    assert [i.args for i in base if i.keyword == "FROM"] == ["${PYTHON_IMAGE}"], "one stage"
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", _python_image_default(base))
    assert lock_files_installed(base) == {BASE_LOCK}
    installs = [i.args for i in base if i.keyword == "RUN" and "pip install" in i.args]
    assert all("--require-hashes" in args for args in installs), installs
    assert any('"${TORCH_VERSION}+${TORCH_CUDA}"' in args for args in installs), "the torch build is checked"
    assert copied_from_context(TORCH_BASE) == [(BASE_LOCK, "./requirements/")], "the lock and nothing else"
    # The runtime user the services switch to, made once.
    assert any("useradd --uid 10001 --gid 10001" in i.args for i in base if i.keyword == "RUN")
    # The base is built as root and installs into /opt/venv; only the service images drop to 10001.
    assert not [i for i in base if i.keyword in ("USER", "ENTRYPOINT", "CMD")]


@pytest.mark.parametrize("service", TORCH_SERVICES[1:], ids=lambda s: s.name)
def test_every_torch_lock_holds_the_base_lock_at_the_same_pins_and_hashes(service: Service) -> None:
    # Else pip would replace a package of the shared layer in the service's layer: nothing would be shared.
    base, own = read_lock(BASE_LOCK), read_lock(f"requirements/{service.extra}.txt")
    for name, (version, hashes) in base.items():
        assert name in own, f"{service.extra}.txt lacks {name} (in {BASE_LOCK})"
        assert own[name] == (version, hashes), f"{service.extra}.txt: {name} differs from {BASE_LOCK}"


def read_lock(relative: str) -> dict[str, tuple[str, frozenset[str]]]:
    """{name: (version, sha256 hashes)} of a hashed lock."""
    pins = {}
    for entry in re.split(r"\n(?=\S)", (REPO / relative).read_text()):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", entry)
        if match:
            hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
            pins[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return pins


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
    runtime = final_stage(dockerfile(service))
    if service in TORCH_SERVICES:  # the base's environment is the runtime's too
        runtime = parse_dockerfile(TORCH_BASE) + runtime
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
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


def test_every_dockerfile_belongs_to_a_service_or_is_the_torch_base() -> None:
    expected = {f"{s.name}.Dockerfile" for s in SERVICES} | {TORCH_BASE.name}
    assert {p.name for p in DOCKER.glob("*.Dockerfile")} == expected


def test_the_torch_base_copies_only_what_the_build_context_keeps() -> None:
    for source, _ in copied_from_context(TORCH_BASE):
        assert (REPO / source).is_file() and not dockerignore_excludes(source), source


# -- the detector's OpenCV -----------------------------------------------------------------------------------
HEADLESS_IN = REPO / "requirements" / "opencv_headless.in"
HEADLESS_LOCK = "requirements/opencv_headless.txt"


def _detector_commands() -> list[str]:
    """The shell commands of the detector's runtime RUN that installs its lock, in order."""
    runs = [i.args for i in final_stage(dockerfile(BY_NAME["detector"])) if i.keyword == "RUN"]
    (run,) = [r for r in runs if "requirements/detector.txt" in r]
    return [c.strip() for c in run.split("&&")]


def test_detector_swaps_ultralytics_gui_opencv_for_the_headless_build_after_the_hashed_install() -> None:
    commands = _detector_commands()
    position = {
        "lock": next(i for i, c in enumerate(commands) if "-r requirements/detector.txt" in c),
        "uninstall": commands.index("pip uninstall --yes opencv-python"),
        "headless": commands.index(f"pip install --require-hashes --no-deps -r {HEADLESS_LOCK}"),
        "wheel": next(i for i, c in enumerate(commands) if c.endswith("/tmp/wheels/*.whl")),
    }
    assert position["lock"] < position["uninstall"] < position["headless"] < position["wheel"], commands
    assert "--require-hashes" in commands[position["lock"]]
    # cv2 is imported once at build time: a wheel that cannot load fails the build, not the pod.
    assert 'python -c "import cv2"' in commands[position["headless"] + 1 :]


def test_detector_image_installs_no_gui_libraries() -> None:
    # The headless wheel needs glibc and zlib alone; libGL and glib were the GUI build's.
    runtime = " ".join(i.args for i in final_stage(dockerfile(BY_NAME["detector"])) if i.keyword == "RUN")
    assert "libgl1" not in runtime and "libglib2.0" not in runtime and "apt-get" not in runtime


def test_the_headless_lock_pins_the_release_of_the_detectors_opencv_with_hashes() -> None:
    (gui_version, _) = read_lock("requirements/detector.txt")["opencv-python"]
    wanted = [line for line in HEADLESS_IN.read_text().splitlines() if line and not line.startswith("#")]
    assert wanted == [f"opencv-python-headless=={gui_version}"], (
        "the same release as requirements/detector.txt"
    )
    lock = read_lock(HEADLESS_LOCK)
    assert set(lock) == {"opencv-python-headless"}, "one wheel, no dependencies (--no-deps)"
    version, hashes = lock["opencv-python-headless"]
    assert version == gui_version and hashes
    header = (REPO / HEADLESS_LOCK).read_text().splitlines()[1]
    command = "uv pip compile requirements/opencv_headless.in --generate-hashes --python-version 3.11"
    assert command in header and "--no-deps" in header and "-o requirements/opencv_headless.txt" in header
