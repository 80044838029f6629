"""Supply chain: the lower bounds in pyproject.toml stay at or above the releases that fixed the advisories
recorded below; the hashed locks in requirements/ (`make lock`) hold what pyproject.toml asks for and nothing
below a floor; `make install` and every image install from them alone, with hashes.

Raising a floor: change pyproject.toml and the table here together, then `make lock`. Adding a dependency:
record its floor here (an advisory, or why there is none).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "requirements"
DOCKER = REPO / "deploy" / "docker"

# package -> (floor, why). Every direct requirement of pyproject.toml has a row.
FLOORS: dict[str, tuple[str, str]] = {
    "grpcio": (
        "1.85.1",
        "the generated code's check; CVE-2024-7246 (HPACK poisoning) fixed 1.65.4",
    ),
    "grpcio-health-checking": ("1.85.1", "released with grpcio"),
    "grpcio-reflection": ("1.85.1", "released with grpcio"),
    "grpcio-tools": ("1.85.1", "exact: the checked-in generated code"),
    "grpcio-testing": ("1.85.0", "released with grpcio"),
    "protobuf": (
        "7.35.1",
        "the generated code's check; CVE-2025-4565 (recursion DoS) fixed 6.31.1",
    ),
    "pydantic": ("2.10", "CVE-2024-3772 (email validation ReDoS) fixed 2.4.0"),
    "pydantic-settings": ("2.7", "no advisory; NoDecode"),
    "pillow": (
        "12.3",
        "security-audit M8: the 12.x decoder fixes; CVE-2025-48379 (DDS overflow) 11.3.0",
    ),
    "numpy": ("1.26", "no advisory since CVE-2021-41495"),
    "isal": ("1.7", "no advisory"),
    "torch": (
        "2.10",
        "CVE-2026-24747 (weights_only unpickler memory corruption); CVE-2025-32434 2.6.0",
    ),
    "torchvision": ("0.25", "the release built for torch 2.10"),
    "safetensors": ("0.5", "no advisory"),
    "matplotlib": ("3.9", "no advisory"),
    "ultralytics": ("8.4.190", "past the compromised PyPI releases 8.3.41/42/45/46 (clean from 8.3.47)"),
    "onnxruntime": ("1.20", "no advisory"),
    "openvino": ("2026.4", "no advisory; the release the CPU fast path was built and measured with"),
    "onnx": ("1.21", "CVE-2026-27489 (symlink traversal), CVE-2026-34445, CVE-2026-28500 fixed 1.21.0"),
    "kagglehub": ("0.3.12", "no advisory"),
    "scikit-learn": ("1.5", "CVE-2024-5206 (TfidfVectorizer stop_words_ token leak) fixed 1.5.0"),
    "tqdm": ("4.66.3", "CVE-2024-34062 (CLI argument eval) fixed 4.66.3"),
    "kubernetes": ("33.1", "no advisory; the client of the Kubernetes 1.33 API (the trainer's job objects)"),
    "fastapi": ("0.133", "the first release that accepts starlette 1.3.1"),
    "starlette": ("1.3.1", "security-audit M8 (urlencoded form limits); CVE-2025-62727 fixed 0.49.1"),
    "uvicorn": ("0.34", "CVE-2020-7694/7695 (log injection, response splitting) fixed 0.11.7"),
    "python-multipart": ("0.0.32", "security-audit M8: CVE-2026-40347/-42561/-53537; CVE-2024-53981 0.0.18"),
    "prometheus-client": ("0.21", "no advisory"),
    "opentelemetry-api": ("1.45", "no advisory; the release the SDK and instrumentation below are built for"),
    "opentelemetry-sdk": ("1.45", "no advisory"),
    "opentelemetry-exporter-otlp-proto-grpc": ("1.45", "no advisory"),
    "opentelemetry-exporter-otlp-proto-http": ("1.45", "no advisory"),
    "opentelemetry-instrumentation-grpc": ("0.66b2", "no advisory; the release matching SDK 1.45"),
    "opentelemetry-instrumentation-fastapi": ("0.66b2", "no advisory; the release matching SDK 1.45"),
    "nvidia-ml-py": ("12.560", "no advisory; NVML bindings of the 560+ drivers"),
    "promql-parser": ("0.9", "no advisory; walk() from 0.9"),
    "pyjwt": ("2.10.1", "CVE-2024-53861 (partial iss match) fixed 2.10.1; CVE-2022-29217 fixed 2.4.0"),
    "cryptography": ("46.0.5", "CVE-2026-26007 (SECT curve subgroup validation) fixed 46.0.5"),
    "pytest": ("8.3", "no advisory"),
    "pytest-timeout": ("2.3", "no advisory"),
    "playwright": ("1.49", "no advisory"),
    "httpx": ("0.28", "no advisory"),
    "scikit-image": ("0.24", "no advisory"),
    "ruff": ("0.9", "no advisory"),
    "mypy": ("1.14", "no advisory"),
    "types-protobuf": ("5.29", "stubs"),
    "grpc-stubs": ("1.53", "stubs"),
    "kubernetes-validate": ("1.33", "the schemas the deploy tests use"),
    "pyyaml": ("6.0", "CVE-2020-14343 (full_load code execution) fixed 5.4"),
    "types-pyyaml": ("6.0", "stubs"),
    "setuptools": ("78.1.1", "CVE-2025-47273 (PackageIndex path traversal) fixed 78.1.1"),
    "import-linter": ("2.1", "no advisory"),
    "schemathesis": ("4.0", "no advisory"),
    "uv": ("0.9", "no advisory; `make lock`"),
    "tritonclient": ("2.73", "no advisory; the OIP tests' client"),
    "python-rapidjson": ("1.20", "no advisory"),
    "geventhttpclient": ("2.3.3", "no advisory"),
    "aiohttp": ("3.12.14", "CVE-2025-53643 (request smuggling) fixed 3.12.14"),
}
# What the direct requirements pull in, held to the same rule in every lock.
TRANSITIVE_FLOORS: dict[str, tuple[str, str]] = {
    "h11": ("0.16.0", "CVE-2025-43859 (chunked-encoding request smuggling), via uvicorn"),
    "gevent": ("23.9.0", "CVE-2023-41419 (WSGIServer privilege escalation), via geventhttpclient"),
    "urllib3": ("2.6.0", "CVE-2025-66471/-66418 (decompression bombs), via requests"),
    "requests": ("2.32.4", "CVE-2024-47081 (.netrc credential leak), via kagglehub and ultralytics"),
    "jinja2": ("3.1.6", "CVE-2025-27516 (sandbox escape), via torch"),
    "certifi": ("2024.7.4", "CVE-2024-39689 (GLOBALTRUST roots removed)"),
    "idna": ("3.7", "CVE-2024-3651 (encode() DoS)"),
    "zipp": ("3.19.1", "CVE-2024-5569 (infinite loop)"),
}
# Which lock serves which installation: the extras each one resolves.
LOCK_EXTRAS = {
    "dev": ("all", "dev"),
    "classifier": ("classifier",),
    "explain": ("explain",),
    "detector": ("detector",),
    "trainer": ("trainer",),
    "gateway": ("gateway",),
}
# The images' platform and the one `make install` runs on: what the locks are resolved for.
MARKER_ENV = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip


def pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    data: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return data


def direct_requirements() -> list[Requirement]:
    """Every third-party requirement of the project and its extras (the project's own extras left out)."""
    project = pyproject()["project"]
    lines = [*project["dependencies"], *(r for rs in project["optional-dependencies"].values() for r in rs)]
    own = canonicalize_name(project["name"])
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != own]


def requirements_of(extras: tuple[str, ...]) -> list[Requirement]:
    """What installing the project with ``extras`` asks for directly (its own extras expanded)."""
    project = pyproject()["project"]
    own = canonicalize_name(project["name"])
    todo = [Requirement(r) for r in project["dependencies"]] + [
        Requirement(f"{project['name']}[{e}]") for e in extras
    ]
    found: list[Requirement] = []
    expanded: set[str] = set()
    while todo:
        requirement = todo.pop()
        if canonicalize_name(requirement.name) != own:
            found.append(requirement)
            continue
        for extra in requirement.extras - expanded:
            expanded.add(extra)
            todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return found


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [
        Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=", "===", ">")
    ]
    return max(bounds) if bounds else None


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def read_lock(name: str) -> dict[str, Pin]:
    """{package: pin} of requirements/<name>.txt (the format `uv pip compile --generate-hashes` writes)."""
    path = LOCKS / f"{name}.txt"
    assert path.is_file(), f"{path.relative_to(REPO)} is missing: run `make lock`"
    pins: dict[str, Pin] = {}
    for entry in re.split(r"\n(?=\S)", path.read_text()):
        if entry.startswith("#") or not entry.strip():
            continue
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", entry)
        assert match, f"{path.name}: not an exact pin: {entry.splitlines()[0]}"
        hashes = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
        pins[canonicalize_name(match.group(1))] = Pin(match.group(2), hashes)
    return pins


# -- pyproject.toml ---------------------------------------------------------------------------------------
def test_every_direct_requirement_has_a_recorded_floor() -> None:
    missing = sorted({canonicalize_name(r.name) for r in direct_requirements()} - set(FLOORS))
    assert not missing, f"record a floor (and its advisory, or none) for {missing}"


@pytest.mark.parametrize("requirement", direct_requirements(), ids=str)
def test_no_lower_bound_is_below_its_floor(requirement: Requirement) -> None:
    floor, why = FLOORS[canonicalize_name(requirement.name)]
    bound = lower_bound(requirement)
    assert bound is not None, f"{requirement}: no lower bound, so any vulnerable release satisfies it"
    assert bound >= Version(floor), f"{requirement} is below {floor}: {why}"


def test_the_gateway_has_jwt_verification_with_its_crypto_backend() -> None:
    gateway = {str(canonicalize_name(r.name)): r for r in requirements_of(("gateway",))}
    assert "crypto" in gateway["pyjwt"].extras, "RS256/ES256 need PyJWT's cryptography backend"
    dev = {canonicalize_name(r.name) for r in requirements_of(("dev",))}
    assert "cryptography" in dev, "the tests make certificates and keys"


# -- the locks ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lock", LOCK_EXTRAS, ids=str)
def test_each_lock_pins_with_hashes_what_its_extras_ask_for(lock: str) -> None:
    pins = read_lock(lock)
    unhashed = [name for name, pin in pins.items() if not pin.hashes]
    assert not unhashed, f"requirements/{lock}.txt: no hashes for {unhashed}"
    for requirement in requirements_of(LOCK_EXTRAS[lock]):
        if requirement.marker is not None and not requirement.marker.evaluate(MARKER_ENV):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"requirements/{lock}.txt lacks {requirement}: run `make lock`"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"requirements/{lock}.txt pins {requirement.name}=={pin.version}, pyproject asks {requirement}: "
            "run `make lock`"
        )


@pytest.mark.parametrize("lock", LOCK_EXTRAS, ids=str)
def test_no_lock_pins_a_release_below_a_floor(lock: str) -> None:
    for name, pin in read_lock(lock).items():
        floor, why = {**FLOORS, **TRANSITIVE_FLOORS}.get(name, ("0", ""))
        assert Version(pin.version) >= Version(floor), (
            f"requirements/{lock}.txt: {name}=={pin.version}: {why}"
        )


@pytest.mark.parametrize("lock", [name for name in LOCK_EXTRAS if name != "dev"], ids=str)
def test_every_image_lock_agrees_with_the_development_lock(lock: str) -> None:
    # One set of versions everywhere: what `make test` ran against is what the images run.
    dev = read_lock("dev")
    for name, pin in read_lock(lock).items():
        assert name in dev and dev[name].version == pin.version, f"{lock}.txt {name}=={pin.version}"
        assert set(pin.hashes) <= set(dev[name].hashes), name


def _torch_in() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (LOCKS / "torch.in").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


@pytest.mark.parametrize("lock", ["dev", "classifier", "explain", "detector", "trainer"], ids=str)
def test_torch_is_pinned_as_requirements_torch_in_says(lock: str) -> None:
    pins = read_lock(lock)
    for name, version in _torch_in().items():
        assert pins[name].version == version, f"{lock}.txt {name}=={pins[name].version}, torch.in {version}"


def test_the_build_lock_holds_the_build_backend() -> None:
    backend = {canonicalize_name(Requirement(r).name) for r in pyproject()["build-system"]["requires"]}
    assert backend <= set(read_lock("build")), "the images build the wheel with the locked backend"


def _dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)", path.read_text(), re.MULTILINE))


def test_the_installed_torch_is_the_build_the_images_name() -> None:
    # torch.__version__ carries the CUDA flavour that the distribution's version (PyPI's) does not.
    locked = read_lock("dev")["torch"].version
    try:
        installed = metadata.version("torch")
    except metadata.PackageNotFoundError:
        pytest.skip("torch is not installed here")
    if installed != locked:
        pytest.skip(f"torch {installed} is installed here, the lock has {locked}: `make install`")
    version_py = next(f for f in metadata.files("torch") or [] if str(f) == "torch/version.py")
    built = re.search(r"^__version__ = '([^']+)'", version_py.read_text(), re.MULTILINE)
    assert built is not None
    for dockerfile in sorted(DOCKER.glob("*.Dockerfile")):
        args = _dockerfile_args(dockerfile)
        if "TORCH_VERSION" in args:
            assert f"{args['TORCH_VERSION']}+{args['TORCH_CUDA']}" == built.group(1), dockerfile.name


# -- who installs from them ----------------------------------------------------------------------------------
def _pip_installs(text: str) -> list[list[str]]:
    """The arguments of every `pip install` command in a shell text (continuations joined; commands split at
    &&, ||, ; and | outside quotes)."""
    commands = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        lexer = shlex.shlex(line.replace("$(PIP)", "pip"), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token not in ("&&", "||", ";", "|", "&"):
                words.append(token)
                continue
            for i, word in enumerate(words):
                if word.endswith("pip") and words[i + 1 : i + 2] == ["install"]:
                    commands.append(words[i + 2 :])
            words = []
    return commands


def _install_is_locked(args: list[str]) -> str:
    """'' when the install takes nothing but hashed lock files, or only the project / local wheels without
    their dependencies; else what is wrong with it."""
    targets, locks, i = [], [], 0
    while i < len(args):
        word = args[i]
        if word in ("-r", "--requirement"):
            locks.append(args[i + 1])
            i += 2
            continue
        if word in ("-e", "--editable"):
            targets.append(args[i + 1])
            i += 2
            continue
        if not word.startswith("-") and not word.startswith("${"):
            targets.append(word)
        i += 1
    if locks:
        if "--require-hashes" not in args:
            return f"{locks} without --require-hashes"
        if targets or not all(re.fullmatch(r"requirements/\w+\.txt", lock) for lock in locks):
            return f"more than the locks: {targets or locks}"
        return ""
    if "--no-deps" in args and all(t == "." or t.endswith(".whl") for t in targets):
        return ""
    return f"resolves dependencies outside the lock: {targets}"


@pytest.mark.parametrize("path", sorted(DOCKER.glob("*.Dockerfile")), ids=lambda p: p.name)
def test_every_image_installs_only_from_hashed_locks(path: Path) -> None:
    installs = _pip_installs(path.read_text())
    assert installs, f"{path.name} installs nothing"
    for args in installs:
        assert not _install_is_locked(args), (
            f"{path.name}: pip install {' '.join(args)}: {_install_is_locked(args)}"
        )
    assert any("--require-hashes" in args for args in installs)


def test_make_install_installs_only_from_the_hashed_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^\$\(STAMP\):(.*)\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None, "the Makefile's $(STAMP) target (make install)"
    assert "requirements/dev.txt" in recipe.group(1), "a new lock must reinstall"
    installs = _pip_installs(recipe.group(2))
    assert ["--quiet", "--require-hashes", "-r", "requirements/dev.txt"] in installs
    for args in _pip_installs(makefile):  # anywhere in the Makefile, torch included
        assert not _install_is_locked(args), (
            f"Makefile: pip install {' '.join(args)}: {_install_is_locked(args)}"
        )
