#!/usr/bin/env bash
# Checks the Kubernetes packaging, offline:
#   1. every kustomization (manifests/, manifests/restore, manifests/examples/*, kustomize/overlays/**)
#      renders with `kubectl kustomize` and validates strictly (unknown fields are errors) against the
#      Kubernetes schemas shipped by the kubernetes-validate package (1.37.0 and 1.27.0; override with
#      LIFEBOAT_K8S_VERSIONS="1.33.0 ..."), and renders no Secret;
#   2. yamllint on our YAML (.yamllint);
#   3. hadolint on the Containerfile;
#   4. shellcheck on the packaging scripts (when shellcheck is installed);
#   5. pytest tests/manifests: per-platform assertions on the rendered YAML (and negative controls).
# Exit 0 when all pass, 1 when any fails, 2 when a required tool is missing (run scripts/install-deps.sh).
# Takes ~20 s.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v kubectl >/dev/null || missing+=(kubectl)
command -v yamllint >/dev/null || missing+=(yamllint)
command -v hadolint >/dev/null || missing+=(hadolint)
python3 -c 'import kubernetes_validate, yaml, pytest' 2>/dev/null || missing+=("python: kubernetes-validate pyyaml pytest")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'check-manifests: missing tools: %s (run scripts/install-deps.sh)\n' "${missing[*]}" >&2
  exit 2
fi

failed=()
step() { printf '\n== %s\n' "$1"; }

step "kustomize render + strict schema validation"
mapfile -t dirs < <(python3 tests/manifests/rendered.py list)
python3 tests/manifests/rendered.py validate "${dirs[@]}" || failed+=("validation")

step "yamllint"
yamllint -s -c .yamllint manifests kustomize .yamllint && echo "yamllint: ok" || failed+=("yamllint")

step "hadolint Containerfile"
hadolint Containerfile && echo "hadolint: ok" || failed+=("hadolint")

step "shellcheck (packaging scripts)"
if command -v shellcheck >/dev/null; then
  shellcheck scripts/build-image.sh scripts/check-manifests.sh scripts/lifeboat-job.sh \
    && echo "shellcheck: ok" || failed+=("shellcheck")
else
  echo "shellcheck: not installed, skipped"
fi

step "pytest tests/manifests"
python3 -m pytest -q tests/manifests || failed+=("pytest")

if [ ${#failed[@]} -gt 0 ]; then
  printf '\ncheck-manifests: FAILED: %s\n' "${failed[*]}" >&2
  exit 1
fi
printf '\ncheck-manifests: all checks passed\n'
