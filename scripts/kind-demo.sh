#!/usr/bin/env bash
# The local cluster path: kind cluster, JobSet controller, images, the demo overlay.
# Needs docker, kind and kubectl on PATH. Usage: scripts/kind-demo.sh [overlay]
# SHOWWORK_DEBIAN_BASE=1 builds the Python base from Debian's packages (no registry reachable).
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

# The cpu component pins these tags with imagePullPolicy IfNotPresent: the kubelet uses what
# `kind load` put on the node and never goes to a registry.
scripts/build-images.sh --tag local ${SHOWWORK_DEBIAN_BASE:+--debian-base}
for image in data-prep sft grpo-session eval; do
  kind load docker-image --name showwork "showwork-${image}:local"
done

kubectl apply -k "k8s/overlays/${OVERLAY}"
name=$(kubectl kustomize "k8s/overlays/${OVERLAY}" | awk '/^kind: JobSet/{f=1} f&&/^  name:/{print $2; exit}')
echo "waiting for JobSet ${name} (python -m jobs.status to watch)"
# Stop at the first terminal state: a failed JobSet ends the wait at once, with its reason.
deadline=$((SECONDS + 3 * 3600))
while ((SECONDS < deadline)); do
  state=$(kubectl get "jobset/${name}" -o jsonpath='{.status.terminalState}')
  case "$state" in
    Completed) echo "JobSet ${name} completed"; exit 0 ;;
    Failed) kubectl get "jobset/${name}" -o jsonpath='{range .status.conditions[*]}{.type}: {.reason} {.message}{"\n"}{end}' >&2
            echo "error: JobSet ${name} failed" >&2; exit 1 ;;
  esac
  sleep 10
done
echo "error: JobSet ${name} did not finish in 3 hours" >&2
exit 1
