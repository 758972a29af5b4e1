#!/usr/bin/env bash
# End-to-end check on a throwaway kind cluster (needs Docker, kind, kubectl and helm):
# build both images with scripts/build-images (Docker engine), load them into kind, install
# the chart with the in-chart PostgreSQL, run examples/quickstart.yaml (a CPU study) and wait
# until it has Succeeded.
#
#   scripts/kind-e2e.sh
#
# Environment:
#   CLUSTER_NAME   kind cluster name (default kubetune-e2e; created and deleted by this script)
#   KEEP_CLUSTER   1 keeps the cluster after the run for inspection (default 0)
#   TIMEOUT        how long to wait for the study, as a kubectl duration (default 30m)
#   HELM           helm binary (default: helm on PATH, else scripts/fetch-helm.py's)
#   KUBETUNE_*     passed on to scripts/build-images (e.g. KUBETUNE_TRAINER_BASE)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cluster="${CLUSTER_NAME:-kubetune-e2e}"
keep="${KEEP_CLUSTER:-0}"
timeout="${TIMEOUT:-30m}"
namespace="kubetune"
release="kubetune"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "${root}/pyproject.toml" | head -n 1)"
operator_image="localhost/kubetune:${version}"
trainer_image="localhost/kubetune-trainer:${version}"
# The name examples/quickstart.yaml runs (docker.io/library/... inside kind).
quickstart_trainer_image="kubetune-trainer:${version}"
context="kind-${cluster}"

log() { printf '\n==> %s\n' "$*"; }

need() {
  command -v "$1" > /dev/null 2>&1 || { echo "kind-e2e: '$1' is required but not on PATH" >&2; exit 1; }
}
need docker
need kind
need kubectl

if [[ -n "${HELM:-}" ]]; then
  helm_bin="${HELM}"
elif command -v helm > /dev/null 2>&1; then
  helm_bin="$(command -v helm)"
else
  helm_bin="$(python3 "${root}/scripts/fetch-helm.py")"
fi

kc() { kubectl --context "${context}" "$@"; }

dump_state() {
  log "State at failure"
  kc -n "${namespace}" get ts,jobs,pods -o wide || true
  kc -n "${namespace}" describe ts quickstart || true
  kc -n "${namespace}" logs "deployment/${release}" --tail=200 || true
}

cleanup() {
  local rc=$?
  if [[ ${rc} -ne 0 ]]; then
    dump_state
  fi
  if [[ "${keep}" == "1" ]]; then
    log "Kept cluster ${cluster} (delete it with: kind delete cluster --name ${cluster})"
  else
    log "Deleting cluster ${cluster}"
    kind delete cluster --name "${cluster}" || true
  fi
  exit "${rc}"
}
trap cleanup EXIT

log "Creating kind cluster ${cluster}"
kind create cluster --name "${cluster}" --wait 120s

log "Building ${operator_image} and ${trainer_image}"
"${root}/scripts/build-images" --engine docker
docker tag "${trainer_image}" "${quickstart_trainer_image}"

log "Loading images into kind"
kind load docker-image --name "${cluster}" "${operator_image}" "${quickstart_trainer_image}"

log "Installing the chart (in-chart PostgreSQL)"
"${helm_bin}" --kube-context "${context}" install "${release}" "${root}/charts/kubetune" \
  --namespace "${namespace}" --create-namespace \
  --set postgresql.enabled=true \
  --set postgresql.persistence.enabled=false \
  --set image.repository=localhost/kubetune --set image.tag="${version}" \
  --wait --timeout 5m

kc -n "${namespace}" rollout status "deployment/${release}" --timeout=180s
kc -n "${namespace}" rollout status "statefulset/${release}-postgresql" --timeout=180s

log "Applying examples/quickstart.yaml"
kc -n "${namespace}" apply -f "${root}/examples/quickstart.yaml"
kc -n "${namespace}" get ts

log "Waiting up to ${timeout} for the study to succeed"
kc -n "${namespace}" wait ts/quickstart --for=condition=Succeeded --timeout="${timeout}"

log "Study status"
kc -n "${namespace}" get ts quickstart
kc -n "${namespace}" get ts quickstart -o jsonpath='{.status}' | python3 -m json.tool
log "kind end-to-end run passed"
