#!/usr/bin/env bash
# The local cluster path: kind cluster, JobSet controller, images, the demo overlay.
# Needs docker, kind, kubectl and skaffold on PATH. Usage: scripts/kind-demo.sh [overlay]
set -euo pipefail
cd "$(dirname "$0")/.."
OVERLAY=${1:-demo-cpu}
JOBSET_VERSION=v0.12.0   # matches ../shared/schemas/jobset-v0.12.0-crd.yaml

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done
kind get clusters | grep -qx showwork || kind create cluster --config k8s/kind/cluster.yaml
kubectl apply --server-side -f "https://github.com/kubernetes-sigs/jobset/releases/download/${JOBSET_VERSION}/manifests.yaml"
kubectl -n jobset-system rollout status deployment/jobset-controller-manager --timeout=180s

docker build -f images/base.Dockerfile -t showwork-base .
for image in data-prep sft grpo-session eval; do
  docker build -f "images/${image}.Dockerfile" --build-arg BASE=showwork-base -t "showwork-${image}" .
  kind load docker-image --name showwork "showwork-${image}"
done

kubectl apply -k "k8s/overlays/${OVERLAY}"
name=$(kubectl kustomize "k8s/overlays/${OVERLAY}" | awk '/^kind: JobSet/{f=1} f&&/^  name:/{print $2; exit}')
echo "waiting for JobSet ${name} (python -m jobs.status to watch)"
kubectl wait "jobset/${name}" --for=condition=Completed --timeout=3h
