#!/usr/bin/env bash
# bench/run-all.sh: every benchmark on the one ~1 GiB database (built once into bench/work/):
# status (warm + cold) vs etcdutl, backup (local + loopback S3, zstd + none) vs etcdctl snapshot
# save, restore vs etcdutl snapshot restore, then the static binary and image sizes. The tables
# printed here are what docs/BENCHMARKS.md records.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${BENCH_RUNS:-5}
echo "== status";  BENCH_RUNS=$runs bash bench/status.sh
echo "== backup";  BENCH_RUNS=$runs bash bench/backup.sh
echo "== restore"; BENCH_RUNS=$runs bash bench/restore.sh
echo "== binary and image size"
if bash scripts/build-image.sh; then :; else echo "(image build skipped or failed: see above)"; fi
