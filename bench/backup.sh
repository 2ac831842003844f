#!/usr/bin/env bash
# bench/backup.sh: `etcd-lifeboat backup` (stream + sha256 + verify + zstd + local store + manifest)
# versus `etcdctl snapshot save` alone (3.5.30), against the same running etcd holding the ~1 GiB
# benchmark database, alternating, BENCH_RUNS times each (default 5). Prints median wall time, the
# ratio ours/etcdctl and median peak RSS. Targets (issue "Backup pipeline"): wall ≤ 1.2×, RSS ≤ 64 MiB.
#
#   bench/backup.sh
#   BENCH_COMPRESSION=none bench/backup.sh      # measure without zstd
#   LIFEBOAT_BIN=path/to/etcd-lifeboat bench/backup.sh
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

runs=${BENCH_RUNS:-5}
bench_require
if [ -n "${LIFEBOAT_BIN:-}" ]; then
  ours=$LIFEBOAT_BIN
else
  bench_log "cargo build --release"
  (cd "$BENCH_ROOT" && cargo build --release --quiet --bin etcd-lifeboat) || bench_die "cargo build failed"
  ours=$BENCH_ROOT/target/release/etcd-lifeboat
fi
bench_build_db
bench_etcd_start "$BENCH_DB_DIR" --quota-backend-bytes="${BENCH_QUOTA:-8589934592}"

res=$BENCH_WORK/results/backup-$(date -u +%Y%m%dT%H%M%SZ)
out=$BENCH_WORK/backup-out
mkdir -p "$res" "$out/spool"

modes=(zstd none)
[ -n "${BENCH_COMPRESSION:-}" ] && modes=("$BENCH_COMPRESSION")

run_tool() { # TOOL MODE
  rm -rf "$out/store" "$out/saved.db"
  case $1 in
    etcdctl)
      bench_run "$res/etcdctl" env ETCDCTL_API=3 "$BENCH_ETCD_DIR/etcdctl" --endpoints="$BENCH_ENDPOINT" \
        --cacert="$BENCH_CA" --cert="$BENCH_CERT" --key="$BENCH_KEY" snapshot save "$out/saved.db" ;;
    ours)
      bench_run "$res/ours-$2" env LIFEBOAT_ETCD_ENDPOINTS="$BENCH_ENDPOINT" LIFEBOAT_ETCD_CACERT="$BENCH_CA" \
        LIFEBOAT_ETCD_CERT="$BENCH_CERT" LIFEBOAT_ETCD_KEY="$BENCH_KEY" LIFEBOAT_STORE="file://$out/store" \
        LIFEBOAT_SPOOL_DIR="$out/spool" LIFEBOAT_COMPRESSION="$2" LIFEBOAT_CLUSTER_NAME=bench "$ours" backup ;;
  esac
}

for ((i = 1; i <= runs; i++)); do
  run_tool etcdctl -
  for m in "${modes[@]}"; do run_tool ours "$m"; done
done

printf '\nbackup of the %s benchmark database, median of %d runs\n' "$(bench_human "$(stat -c %s "$BENCH_DB_DIR/member/snap/db")")" "$runs"
printf '%-34s  %10s  %8s  %14s\n' tool "wall (s)" ratio "peak RSS (MiB)"
read -r base _ < <(bench_summary "$res/etcdctl")
printf '%-34s  %10s  %8s  %14s\n' "etcdctl 3.5.30 snapshot save" "$base" "1.00" "$(bench_summary "$res/etcdctl" | awk '{print $2}')"
for m in "${modes[@]}"; do
  read -r wall rss < <(bench_summary "$res/ours-$m")
  printf '%-34s  %10s  %8s  %14s\n' "etcd-lifeboat backup ($m)" "$wall" "$(awk -v a="$wall" -v b="$base" 'BEGIN { printf "%.2f", a / b }')" "$rss"
done
printf 'raw runs: %s\n' "$res"
