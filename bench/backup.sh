#!/usr/bin/env bash
# bench/backup.sh: `etcd-lifeboat backup` (stream + sha256 + verify + zstd + local store + manifest)
# versus `etcdctl snapshot save` alone (3.5.30), against the same running etcd holding the ~1 GiB
# benchmark database, alternating, BENCH_RUNS times each (default 5). Prints median wall time, the
# ratio ours/etcdctl and median peak RSS, and for S3 the CPU time the loopback S3 server (same two
# cores) spent per backup. Targets (issue "Backup pipeline"): wall ≤ 1.2×, RSS ≤ 64 MiB.
#
#   bench/backup.sh
#   BENCH_COMPRESSION=none bench/backup.sh      # measure without zstd
#   BENCH_STORES=s3 bench/backup.sh             # only the loopback S3 store (examples/s3_server/)
#   LIFEBOAT_BIN=path/to/etcd-lifeboat bench/backup.sh
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

runs=${BENCH_RUNS:-5}
bench_require
bench_ours
ours=$BENCH_OURS
(cd "$BENCH_ROOT" && cargo build --release --quiet --example s3_server) || bench_die "cargo build failed"
bench_build_db
bench_etcd_start "$BENCH_DB_DIR" --quota-backend-bytes="${BENCH_QUOTA:-8589934592}"

res=$BENCH_WORK/results/backup-$(date -u +%Y%m%dT%H%M%SZ)
out=$BENCH_WORK/backup-out
mkdir -p "$res" "$out/spool"

modes=(zstd none)
# A mode is `none`, `zstd` (our default level) or `zstd@LEVEL`, e.g. BENCH_COMPRESSION="zstd@1 zstd@-1".
[ -n "${BENCH_COMPRESSION:-}" ] && read -r -a modes <<<"$BENCH_COMPRESSION"
read -r -a stores <<<"${BENCH_STORES:-local s3}"

# The loopback S3 server (s3s-fs, SigV4 checked), on this machine only.
mkdir -p "$out/s3"
"$BENCH_ROOT/target/release/examples/s3_server" "$out/s3" bench BENCHKEY bench-secret-not-real >"$out/s3.url" 2>"$out/s3.log" &
s3_pid=$!
trap 'kill "$s3_pid" 2>/dev/null || true; rm -rf "$out/s3"; bench_cleanup' EXIT
for _ in $(seq 100); do [ -s "$out/s3.url" ] && break; sleep 0.1; done
s3_url=$(head -n1 "$out/s3.url")

# CPU seconds (user + system) process PID has used so far.
cpu_of() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"
}
server_cpu() { cpu_of "$s3_pid"; }

# bench_run plus the CPU time etcd spent serving the run, appended to RESULTS.cpu, and the
# tool's own user + system time (from /usr/bin/time) appended to RESULTS.ourcpu.
timed() { # RESULTS CMD...
  local e0
  e0=$(cpu_of "$BENCH_ETCD_PID")
  bench_run "$@"
  awk -v a="$e0" -v b="$(cpu_of "$BENCH_ETCD_PID")" 'BEGIN { printf "%.2f\n", b - a }' >>"$1.cpu"
  awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.2f\n", s }' "$1.time" >>"$1.ourcpu"
}

# Every run starts from the same state: the previous run's files removed and written back (`sync`),
# so that no run pays for another's disk writeback.
run_tool() { # TOOL MODE STORE
  rm -rf "$out/store" "$out/saved.db" "$out/s3/bench/lifeboat" "$out"/s3/.bucket-*
  sync
  case $1 in
    etcdctl)
      timed "$res/etcdctl" env ETCDCTL_API=3 "$BENCH_ETCD_DIR/etcdctl" --endpoints="$BENCH_ENDPOINT" \
        --cacert="$BENCH_CA" --cert="$BENCH_CERT" --key="$BENCH_KEY" snapshot save "$out/saved.db" ;;
    ours)
      local store="file://$out/store"
      [ "$3" = s3 ] && store=s3://bench/lifeboat
      local cpu0 level=()
      cpu0=$(server_cpu)
      [[ $2 == *@* ]] && level=("LIFEBOAT_ZSTD_LEVEL=${2#*@}")
      timed "$res/ours-$2-$3" env LIFEBOAT_ETCD_ENDPOINTS="$BENCH_ENDPOINT" LIFEBOAT_ETCD_CACERT="$BENCH_CA" \
        LIFEBOAT_ETCD_CERT="$BENCH_CERT" LIFEBOAT_ETCD_KEY="$BENCH_KEY" LIFEBOAT_STORE="$store" \
        AWS_ENDPOINT_URL_S3="$s3_url" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=BENCHKEY \
        AWS_SECRET_ACCESS_KEY=bench-secret-not-real LIFEBOAT_S3_PATH_STYLE=true \
        LIFEBOAT_SPOOL_DIR="$out/spool" LIFEBOAT_COMPRESSION="${2%@*}" "${level[@]}" LIFEBOAT_CLUSTER_NAME=bench "$ours" backup
      # What the S3 server on these same two cores spent receiving this backup (a real S3 runs
      # elsewhere): the share of the wall time that is not ours.
      if [ "$3" = s3 ]; then
        awk -v a="$cpu0" -v b="$(server_cpu)" 'BEGIN { printf "%.2f\n", b - a }' >>"$res/s3-server-cpu-$2"
      fi
      ;;
  esac
}

for ((i = 1; i <= runs; i++)); do
  run_tool etcdctl -
  for st in "${stores[@]}"; do for m in "${modes[@]}"; do run_tool ours "$m" "$st"; done; done
done

printf '\nbackup of the %s benchmark database, median of %d runs\n' "$(bench_human "$(stat -c %s "$BENCH_DB_DIR/member/snap/db")")" "$runs"
printf '%-34s  %10s  %8s  %14s\n' tool "wall (s)" ratio "peak RSS (MiB)"
read -r base _ < <(bench_summary "$res/etcdctl")
printf '%-34s  %10s  %8s  %14s\n' "etcdctl 3.5.30 snapshot save" "$base" "1.00" "$(bench_summary "$res/etcdctl" | awk '{print $2}')"
for st in "${stores[@]}"; do for m in "${modes[@]}"; do
  read -r wall rss < <(bench_summary "$res/ours-$m-$st")
  printf '%-34s  %10s  %8s  %14s\n' "etcd-lifeboat backup ($st, $m)" "$wall" "$(awk -v a="$wall" -v b="$base" 'BEGIN { printf "%.2f", a / b }')" "$rss"
done; done
printf '\nCPU seconds per run (median), on this 2-core machine: the tool itself, etcd serving it'
echo
cpu_row() { # NAME RESULTS
  printf '%-34s  tool %5s s  etcd %5s s\n' "$1" "$(bench_median <"$2.ourcpu")" "$(bench_median <"$2.cpu")"
}
cpu_row "etcdctl 3.5.30 snapshot save" "$res/etcdctl"
for st in "${stores[@]}"; do for m in "${modes[@]}"; do
  cpu_row "etcd-lifeboat backup ($st, $m)" "$res/ours-$m-$st"
done; done
for m in "${modes[@]}"; do
  if [ -s "$res/s3-server-cpu-$m" ]; then
    printf 'loopback S3 server CPU per backup (%s, median): %s s\n' "$m" "$(bench_median <"$res/s3-server-cpu-$m")"
  fi
done
printf 'raw runs: %s\n' "$res"
