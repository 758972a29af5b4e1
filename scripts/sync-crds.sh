#!/usr/bin/env bash
# Copy the generated CRDs (crds/*.yaml) into the chart (charts/kubetune/crds/), so that
# `helm install` installs the same CRDs that `kubectl apply -f crds/` would.
#   scripts/sync-crds.sh          copy, and remove chart copies that no longer exist in crds/
#   scripts/sync-crds.sh --check  change nothing; exit 1 and name the files that differ
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${root}/crds"
dst="${root}/charts/kubetune/crds"
check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

mkdir -p "${dst}"
shopt -s nullglob
status=0

for f in "${src}"/*.yaml; do
  name="$(basename "${f}")"
  if ! cmp -s "${f}" "${dst}/${name}"; then
    if "${check}"; then
      echo "out of sync: charts/kubetune/crds/${name} differs from crds/${name}" >&2
      status=1
    else
      cp "${f}" "${dst}/${name}"
      echo "copied crds/${name} -> charts/kubetune/crds/${name}"
    fi
  fi
done

for f in "${dst}"/*.yaml; do
  name="$(basename "${f}")"
  if [[ ! -e "${src}/${name}" ]]; then
    if "${check}"; then
      echo "stale: charts/kubetune/crds/${name} has no crds/${name}" >&2
      status=1
    else
      rm -- "${f}"
      echo "removed stale charts/kubetune/crds/${name}"
    fi
  fi
done

if "${check}" && [[ "${status}" -ne 0 ]]; then
  echo "run scripts/sync-crds.sh to fix" >&2
fi
exit "${status}"
