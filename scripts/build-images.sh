#!/usr/bin/env bash
# Build showwork's images as skaffold builds them: the base, then the four stage images on it.
#   scripts/build-images.sh [--debian-base] [--tag TAG] [--platform cpu|tpu]
# --debian-base: no registry is reachable, so build the Python base from Debian's packages
#   (mmdebstrap bookworm: python3 3.11, python3-venv, ca-certificates; `docker import`) and use
#   it instead of the digest-pinned official image. Needs mmdebstrap, and root.
# Behind a TLS-re-signing proxy, pip's CA bundle (PIP_CERT, or pip.conf's `cert`) is copied to
# images/pip/ca.crt for the build stage only; builds use the host's network.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=local PLATFORM=cpu DEBIAN_BASE=0
while (($#)); do
  case "$1" in
    --debian-base) DEBIAN_BASE=1 ;;
    --tag) TAG=$2; shift ;;
    --platform) PLATFORM=$2; shift ;;
    *) echo "usage: $0 [--debian-base] [--tag TAG] [--platform cpu|tpu]" >&2; exit 2 ;;
  esac
  shift
done
command -v docker >/dev/null || { echo "error: docker is not installed" >&2; exit 1; }
# One build at a time per machine: two at once (two test workers, two terminals) would race on the
# Debian base and on images/pip/ca.crt; the second waits, then finds every layer cached.
exec 9>"${TMPDIR:-/tmp}/showwork-build-images.lock"
flock 9

args=(--network host --build-arg "JAX_PLATFORM=${PLATFORM}")
if ((DEBIAN_BASE)); then
  base=showwork-python-base:bookworm
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null || { echo "error: --debian-base needs mmdebstrap" >&2; exit 1; }
    tmp=$(mktemp -d)
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tmp/base.tar"
    docker import "$tmp/base.tar" "$base" >/dev/null
    rm -rf "$tmp"
  fi
  args+=(--build-arg "PYTHON_BASE=${base}")
fi

cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
rm -f images/pip/ca.crt
if [[ -n "$cert" && -f "$cert" ]]; then cp "$cert" images/pip/ca.crt; fi
trap 'rm -f images/pip/ca.crt' EXIT

start=$SECONDS
docker build -q "${args[@]}" -f images/base.Dockerfile -t "showwork-base:${TAG}" . >/dev/null
for image in data-prep sft grpo-session eval; do
  docker build -q -f "images/${image}.Dockerfile" --build-arg "BASE=showwork-base:${TAG}" \
    -t "showwork-${image}:${TAG}" . >/dev/null
done
echo "built showwork-base and the four stage images (:${TAG}, ${PLATFORM}) in $((SECONDS - start)) s"
