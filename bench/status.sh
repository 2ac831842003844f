#!/usr/bin/env bash
# bench/status.sh: `etcd-lifeboat status` versus `etcdutl snapshot status` (3.5.30) on the ~1 GiB
# benchmark snapshot, warm and cold page cache, alternating the two tools, BENCH_RUNS times each
# (default 5). Prints median wall time, the ratio ours/etcdutl, and median peak RSS.
#
#   bench/status.sh                       # builds target/release/etcd-lifeboat first
#   LIFEBOAT_BIN=path/to/etcd-lifeboat bench/status.sh
#   BENCH_RUNS=9 bench/status.sh
#
# The database and snapshot are built once into bench/work/ and reused (see bench/lib.sh). Before
# timing, our `-w json` output must equal etcdutl's; if our binary cannot do `status` yet, only
# etcdutl is measured and the table says so.
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
etcdutl=$BENCH_ETCD_DIR/etcdutl

bench_snapshot
snap=$BENCH_SNAPSHOT
res=$BENCH_WORK/results/status-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$res"

want=$("$etcdutl" snapshot status "$snap" -w json)
have_ours=1
if ! got=$("$ours" status "$snap" -w json 2>"$res/ours-check.err"); then
  bench_log "our status failed on $snap ($(tail -n 1 "$res/ours-check.err")); measuring etcdutl only"
  have_ours=0
elif [ "$got" != "$want" ]; then
  bench_die "our status differs from etcdutl's: $got vs $want"
fi

tools=(etcdutl)
[ "$have_ours" = 1 ] && tools=(ours etcdutl)

run_tool() { # TOOL MODE
  local out=$res/$2-$1
  case $1 in
    ours) bench_run "$out" "$ours" status "$snap" -w json ;;
    etcdutl) bench_run "$out" "$etcdutl" snapshot status "$snap" -w json ;;
  esac
}

for mode in warm cold; do
  [ "$mode" = warm ] && cat "$snap" >/dev/null # fill the page cache once
  for ((i = 1; i <= runs; i++)); do
    order=("${tools[@]}")
    if ((i % 2 == 0)) && [ "${#tools[@]}" = 2 ]; then order=("${tools[1]}" "${tools[0]}"); fi
    for t in "${order[@]}"; do
      [ "$mode" = cold ] && bench_drop_cache "$snap"
      run_tool "$t" "$mode"
    done
  done
done

printf '\nstatus of %s (%s, %s), median of %d runs\n' "$snap" \
  "$(bench_human "$(stat -c %s "$snap")")" "$(jq -r '"revision \(.revision), \(.totalKey) keys"' <<<"$want" 2>/dev/null || echo "$want")" "$runs"
printf '%-5s  %-20s  %10s  %8s  %14s\n' mode tool "wall (s)" ratio "peak RSS (MiB)"
for mode in warm cold; do
  read -r base_wall _ < <(bench_summary "$res/$mode-etcdutl")
  for t in "${tools[@]}"; do
    read -r wall rss < <(bench_summary "$res/$mode-$t")
    name="etcdutl 3.5.30"
    [ "$t" = ours ] && name="etcd-lifeboat"
    ratio=$(awk -v a="$wall" -v b="$base_wall" 'BEGIN { printf "%.2f", a / b }')
    printf '%-5s  %-20s  %10s  %8s  %14s\n' "$mode" "$name" "$wall" "$ratio" "$rss"
  done
done
[ "$have_ours" = 1 ] || printf '(etcd-lifeboat not measured: its status failed, see %s)\n' "$res/ours-check.err"
printf 'raw runs: %s\n' "$res"
