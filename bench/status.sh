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
bench_ours
ours=$BENCH_OURS
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
# shellcheck disable=SC2034 # used by name in bench_alternate
cmd_ours=("$ours" status "$snap" -w json)
# shellcheck disable=SC2034
cmd_etcdutl=("$etcdutl" snapshot status "$snap" -w json)
for mode in warm cold; do
  bench_alternate "$res" "$mode" "$runs" "$snap" "${tools[@]}"
done

printf '\nstatus of %s (%s, %s), median of %d runs\n' "$snap" \
  "$(bench_human "$(stat -c %s "$snap")")" "$(jq -r '"revision \(.revision), \(.totalKey) keys"' <<<"$want" 2>/dev/null || echo "$want")" "$runs"
bench_table_header
for mode in warm cold; do
  for t in "${tools[@]}"; do
    name="etcdutl 3.5.30"
    [ "$t" = ours ] && name="etcd-lifeboat"
    bench_table_row "$mode" "$name" "$res/$mode-$t" "$res/$mode-etcdutl"
  done
done
[ "$have_ours" = 1 ] || printf '(etcd-lifeboat not measured: its status failed, see %s)\n' "$res/ours-check.err"
printf 'raw runs: %s\n' "$res"
