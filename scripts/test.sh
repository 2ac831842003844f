#!/usr/bin/env bash
# Every check CI runs, in order; the README's "run all the tests" command.
#   1. install what the tests need (apt, etcd 3.5.30 from Debian unstable, PyPI tools) — idempotent
#   2. cargo fmt --check, cargo clippy -D warnings
#   3. cargo test: unit tests, golden vectors, mutation test, and integration tests against real
#      etcd 3.4.23 / 3.5.1 / 3.5.30 processes with TLS on loopback (and the in-process S3 server)
#   4. Kubernetes manifests: kustomize render + schema validation + lint (when present)
#   5. the FROM scratch image build + smoke test with buildah (when buildah can run here)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== install dependencies"
bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --all-targets --no-fail-fast 2>&1 | tee /tmp/etcd-lifeboat-cargo-test.log
test "${PIPESTATUS[0]}" -eq 0

if [ -x scripts/check-manifests.sh ]; then
  echo "== Kubernetes manifests"
  bash scripts/check-manifests.sh
fi

if [ -x scripts/build-image.sh ]; then
  echo "== container image"
  set +e
  bash scripts/build-image.sh
  rc=$?
  set -e
  if [ $rc -eq 77 ]; then
    echo "image build skipped: buildah cannot run on this machine (see message above)"
  elif [ $rc -ne 0 ]; then
    exit $rc
  fi
fi

echo "== all checks passed"
