#!/usr/bin/env bash
# bench/restore.sh: `etcd-lifeboat restore` (verify + rebuild db, WAL, .snap + fsync + swap) versus
# `etcdutl snapshot restore` (3.5.30) on the ~1 GiB benchmark snapshot, alternating, BENCH_RUNS
# times each (default 5), warm page cache before every run. Prints median wall time, ratio and median peak RSS.
# Targets (issue "native restore"): ≥ 3× faster, peak RSS ≤ 64 MiB.
#
#   bench/restore.sh
#   LIFEBOAT_BIN=path/to/etcd-lifeboat bench/restore.sh
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

runs=${BENCH_RUNS:-5}
bench_require
bench_ours
ours=$BENCH_OURS
bench_snapshot
snap=$BENCH_SNAPSHOT
res=$BENCH_WORK/results/restore-$(date -u +%Y%m%dT%H%M%SZ)
out=$BENCH_WORK/restore-out
mkdir -p "$res"
cluster="m0=http://127.0.0.1:2380"

# Every run starts from the same state: the previous run's output removed and written back
# (`sync`), and the source in the page cache again (the status benchmark's cold runs drop it
# from the page cache; a source only partly cached would be timed as a partly cold read).
run_tool() { # TOOL
  rm -rf "$out"
  mkdir -p "$out"
  sync
  cat "$snap" >/dev/null
  case $1 in
    etcdutl)
      bench_run "$res/etcdutl" "$BENCH_ETCD_DIR/etcdutl" snapshot restore "$snap" --data-dir "$out/data" \
        --name m0 --initial-cluster "$cluster" --initial-advertise-peer-urls http://127.0.0.1:2380 ;;
    ours)
      bench_run "$res/ours" env LIFEBOAT_RESTORE_SOURCE="$snap" LIFEBOAT_DATA_DIR="$out/data" LIFEBOAT_NAME=m0 \
        LIFEBOAT_INITIAL_CLUSTER="$cluster" LIFEBOAT_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:2380 \
        LIFEBOAT_BUMP_REVISION=0 "$ours" restore ;;
  esac
}

for ((i = 1; i <= runs; i++)); do
  if ((i % 2)); then run_tool ours; run_tool etcdutl; else run_tool etcdutl; run_tool ours; fi
done
rm -rf "$out"

printf '\nrestore of %s (%s), median of %d runs, warm page cache, no revision bump\n' "$snap" "$(bench_human "$(stat -c %s "$snap")")" "$runs"
printf '%-28s  %10s  %8s  %14s\n' tool "wall (s)" ratio "peak RSS (MiB)"
read -r base brss < <(bench_summary "$res/etcdutl")
read -r wall rss < <(bench_summary "$res/ours")
printf '%-28s  %10s  %8s  %14s\n' "etcdutl 3.5.30" "$base" "1.00" "$brss"
printf '%-28s  %10s  %8s  %14s\n' "etcd-lifeboat restore" "$wall" "$(awk -v a="$wall" -v b="$base" 'BEGIN { printf "%.2f", a / b }')" "$rss"
printf 'speed-up: %sx; raw runs: %s\n' "$(awk -v a="$wall" -v b="$base" 'BEGIN { printf "%.1f", b / a }')" "$res"
