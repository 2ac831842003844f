# shellcheck shell=bash
# bench/lib.sh: shared helpers for the benchmark scripts (bench/status.sh, and later backup and
# restore benches). Source it; it defines bench_* functions and BENCH_* variables and touches
# nothing until a function is called.
#
# What it gives a bench script (DESIGN.md "Performance method"):
#   - TLS material made with openssl (no network), a local etcd 3.5.30 with mTLS on a free loopback
#     port, waited for until healthy, and always stopped when the script exits;
#   - the ~1 GiB benchmark database, built once with examples/loadgen.rs into bench/work/ (git-
#     ignored) and reused afterwards, and an `etcdctl snapshot save` of it;
#   - measuring: wall time and peak RSS (/usr/bin/time -v) per run, medians, cold-cache runs
#     (posix_fadvise DONTNEED on the input first), and a small result table.
#
# Knobs (environment): BENCH_WORK (default bench/work), BENCH_KEYS (100000), BENCH_VALUE_SIZE
# (5000), BENCH_UPDATE_FRACTION (0.7), BENCH_CONCURRENCY (8), BENCH_QUOTA (8 GiB),
# LIFEBOAT_TEST_ETCD_3_5_30 (directory with etcd, etcdctl, etcdutl 3.5.30).
# Delete bench/work/db (or all of bench/work) to rebuild the database with other knobs.

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_WORK=${BENCH_WORK:-$BENCH_ROOT/bench/work}
BENCH_ETCD_DIR=${LIFEBOAT_TEST_ETCD_3_5_30:-$BENCH_ROOT/.deps/etcd-3.5.30/usr/bin}
BENCH_ETCD_PID=""
BENCH_ENDPOINT=""

bench_log() { printf 'bench: %s\n' "$*" >&2; }
bench_die() {
  bench_log "error: $*"
  exit 1
}

bench_require() {
  local f
  for f in "$BENCH_ETCD_DIR/etcd" "$BENCH_ETCD_DIR/etcdctl" "$BENCH_ETCD_DIR/etcdutl"; do
    [ -x "$f" ] || bench_die "$f missing: run scripts/install-deps.sh (or set LIFEBOAT_TEST_ETCD_3_5_30)"
  done
  command -v openssl >/dev/null || bench_die "openssl missing"
  command -v python3 >/dev/null || bench_die "python3 missing (used for posix_fadvise and ports)"
  [ -x /usr/bin/time ] || bench_die "/usr/bin/time missing (apt-get install time)"
  mkdir -p "$BENCH_WORK"
}

# Seconds since the epoch with nanoseconds, for wall-clock deltas.
bench_now() { date +%s.%N; }

# bench_tls: CA, server cert (SANs 127.0.0.1, localhost) and client cert (CN root) under
# $BENCH_WORK/tls, made once. Sets BENCH_CA, BENCH_CERT, BENCH_KEY, BENCH_SERVER_CERT, BENCH_SERVER_KEY.
bench_tls() {
  local d=$BENCH_WORK/tls
  BENCH_CA=$d/ca.crt BENCH_CERT=$d/client.crt BENCH_KEY=$d/client.key
  BENCH_SERVER_CERT=$d/server.crt BENCH_SERVER_KEY=$d/server.key
  [ -f "$d/.complete" ] && return 0
  rm -rf "$d" && mkdir -p "$d" && chmod 700 "$d"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  (
    cd "$d"
    umask 077
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 -subj /CN=lifeboat-bench-ca \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl req "${ec[@]}" -keyout server.key -out server.csr -subj /CN=lifeboat-bench-server 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 2 -days 3650 \
      -extfile server.ext -out server.crt 2>/dev/null
    openssl req "${ec[@]}" -keyout client.key -out client.csr -subj /CN=root 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -set_serial 3 -days 3650 \
      -extfile client.ext -out client.crt 2>/dev/null
    touch .complete
  ) || bench_die "openssl failed making TLS material in $d"
}

# bench_ours: our binary: $LIFEBOAT_BIN, or the binary the image ships, built exactly as
# scripts/build-image.sh builds it (profile `min`, static). Sets BENCH_OURS.
# shellcheck disable=SC2034 # used by the scripts that source this file
bench_ours() {
  if [ -n "${LIFEBOAT_BIN:-}" ]; then
    BENCH_OURS=$LIFEBOAT_BIN
  else
    local target=x86_64-unknown-linux-gnu
    bench_log "cargo build --profile image --target $target (the image's binary)"
    (cd "$BENCH_ROOT" && RUSTFLAGS='-C target-feature=+crt-static' cargo build --locked --quiet \
      --profile image --target "$target" --bin etcd-lifeboat) || bench_die "cargo build failed"
    BENCH_OURS=$BENCH_ROOT/target/$target/image/etcd-lifeboat
  fi
}

# bench_free_port: a free TCP port on 127.0.0.1 (asked from the kernel).
bench_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# bench_etcdctl ARGS...: etcdctl 3.5.30 against the running bench etcd, with TLS.
bench_etcdctl() {
  ETCDCTL_API=3 "$BENCH_ETCD_DIR/etcdctl" --endpoints="$BENCH_ENDPOINT" --cacert="$BENCH_CA" \
    --cert="$BENCH_CERT" --key="$BENCH_KEY" "$@"
}

# bench_etcd_start DATA_DIR [ETCD ARGS...]: start etcd 3.5.30 with mTLS on loopback, log to
# DATA_DIR.log, wait (at most 120 s) until healthy. Sets BENCH_ENDPOINT and BENCH_ETCD_PID; the
# member is stopped by bench_etcd_stop or when the script exits.
bench_etcd_start() {
  local data=$1
  shift
  [ -z "$BENCH_ETCD_PID" ] || bench_die "an etcd is already running (pid $BENCH_ETCD_PID)"
  bench_tls
  local cport pport
  cport=$(bench_free_port)
  pport=$(bench_free_port)
  BENCH_ENDPOINT=https://127.0.0.1:$cport
  "$BENCH_ETCD_DIR/etcd" --name=bench --data-dir="$data" \
    --listen-client-urls="$BENCH_ENDPOINT" --advertise-client-urls="$BENCH_ENDPOINT" \
    --listen-peer-urls="http://127.0.0.1:$pport" --initial-advertise-peer-urls="http://127.0.0.1:$pport" \
    --initial-cluster="bench=http://127.0.0.1:$pport" --initial-cluster-state=new \
    --client-cert-auth --trusted-ca-file="$BENCH_CA" --cert-file="$BENCH_SERVER_CERT" \
    --key-file="$BENCH_SERVER_KEY" --logger=zap --log-outputs=stderr "$@" \
    </dev/null >"$data.log" 2>&1 &
  BENCH_ETCD_PID=$!
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  local deadline=$((SECONDS + 120))
  until bench_etcdctl endpoint health --command-timeout=2s >/dev/null 2>&1; do
    if ! kill -0 "$BENCH_ETCD_PID" 2>/dev/null; then
      tail -n 30 "$data.log" >&2
      BENCH_ETCD_PID=""
      bench_die "etcd exited during start-up (log: $data.log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$data.log" >&2
      bench_die "etcd not healthy after 120 s (log: $data.log)"
    fi
    sleep 0.2
  done
  bench_log "etcd 3.5.30 up at $BENCH_ENDPOINT (pid $BENCH_ETCD_PID, data $data)"
}

# bench_etcd_stop: SIGTERM the bench etcd and wait for it (SIGKILL after 30 s).
bench_etcd_stop() {
  [ -n "$BENCH_ETCD_PID" ] || return 0
  local pid=$BENCH_ETCD_PID i
  BENCH_ETCD_PID=""
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

bench_cleanup() { bench_etcd_stop; }

# bench_build_db: the benchmark database, as an etcd data dir in $BENCH_WORK/db (built once; the
# build time is kept in $BENCH_WORK/db/.complete). Sets BENCH_DB_DIR.
bench_build_db() {
  bench_require
  BENCH_DB_DIR=$BENCH_WORK/db
  if [ -f "$BENCH_DB_DIR/.complete" ]; then
    bench_log "reusing $BENCH_DB_DIR ($(cat "$BENCH_DB_DIR/.complete"))"
    return 0
  fi
  rm -rf "$BENCH_DB_DIR" "$BENCH_DB_DIR.log"
  bench_log "building the loadgen example"
  (cd "$BENCH_ROOT" && cargo build --release --quiet --example loadgen) || bench_die "cargo build failed"
  bench_etcd_start "$BENCH_DB_DIR" --quota-backend-bytes="${BENCH_QUOTA:-8589934592}"
  local t0 t1 secs line
  t0=$(bench_now)
  line=$("$BENCH_ROOT/target/release/examples/loadgen" --endpoint "$BENCH_ENDPOINT" \
    --cacert "$BENCH_CA" --cert "$BENCH_CERT" --key "$BENCH_KEY" \
    --keys "${BENCH_KEYS:-100000}" --value-size "${BENCH_VALUE_SIZE:-5000}" \
    --update-fraction "${BENCH_UPDATE_FRACTION:-0.7}" --concurrency "${BENCH_CONCURRENCY:-8}") ||
    bench_die "loadgen failed"
  t1=$(bench_now)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  bench_etcd_stop
  printf 'built in %s s; %s; member/snap/db %s bytes\n' "$secs" "$line" \
    "$(stat -c %s "$BENCH_DB_DIR/member/snap/db")" >"$BENCH_DB_DIR/.complete"
  bench_log "built $BENCH_DB_DIR: $(cat "$BENCH_DB_DIR/.complete")"
}

# bench_snapshot: `etcdctl snapshot save` of the benchmark database into $BENCH_WORK/snapshot.db
# (made once). Sets BENCH_SNAPSHOT.
bench_snapshot() {
  bench_build_db
  BENCH_SNAPSHOT=$BENCH_WORK/snapshot.db
  [ -f "$BENCH_SNAPSHOT" ] && return 0
  bench_etcd_start "$BENCH_DB_DIR" --quota-backend-bytes="${BENCH_QUOTA:-8589934592}"
  local t0 t1
  t0=$(bench_now)
  bench_etcdctl snapshot save "$BENCH_SNAPSHOT.tmp" >"$BENCH_WORK/snapshot-save.log" 2>&1 ||
    bench_die "snapshot save failed (see $BENCH_WORK/snapshot-save.log)"
  t1=$(bench_now)
  bench_etcd_stop
  mv "$BENCH_SNAPSHOT.tmp" "$BENCH_SNAPSHOT"
  bench_log "saved $BENCH_SNAPSHOT ($(stat -c %s "$BENCH_SNAPSHOT") bytes) in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
}

# bench_drop_cache FILE...: write back and evict FILE's pages from the page cache, so the next
# read comes from disk (posix_fadvise DONTNEED; no root needed).
bench_drop_cache() {
  python3 - "$@" <<'PY'
import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
PY
}

# bench_run RESULTS_FILE CMD...: run CMD once (stdout discarded, stderr kept in RESULTS_FILE.err),
# append "<wall seconds> <peak RSS KiB>" to RESULTS_FILE. Fails if CMD fails.
bench_run() {
  local out=$1
  shift
  local tv=$out.time t0 t1 rss
  t0=$(bench_now)
  if ! /usr/bin/time -v -o "$tv" "$@" >/dev/null 2>>"$out.err"; then
    bench_die "failed: $* (see $out.err)"
  fi
  t1=$(bench_now)
  rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tv")
  awk -v a="$t0" -v b="$t1" -v r="$rss" 'BEGIN { printf "%.4f %d\n", b - a, r }' >>"$out"
}

# bench_median: the median of the numbers on stdin (one per line).
bench_median() {
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench_summary RESULTS_FILE: "<median wall s> <median peak RSS MiB>" of a bench_run file.
bench_summary() {
  local wall rss
  wall=$(awk '{ print $1 }' "$1" | bench_median)
  rss=$(awk '{ print $2 }' "$1" | bench_median)
  awk -v w="$wall" -v r="$rss" 'BEGIN { printf "%.3f %.1f\n", w, r / 1024 }'
}

# bench_alternate RESDIR MODE RUNS INPUT TOOL...: time each TOOL RUNS times, alternating the order
# from run to run (A B, B A, ...) so that neither always runs after the other. A TOOL is a name
# whose command the caller puts in the array `cmd_<TOOL>`; if a function `before_<TOOL>` exists,
# it runs (untimed) before each run, e.g. to remove the previous run's output. MODE `cold` drops
# INPUT from the page cache before each run; `warm` reads it once first. Results go to
# RESDIR/MODE-TOOL (see bench_run).
bench_alternate() {
  local res=$1 mode=$2 runs=$3 input=$4 i t
  shift 4
  local tools=("$@") order
  [ "$mode" = warm ] && cat "$input" >/dev/null
  for ((i = 1; i <= runs; i++)); do
    order=("${tools[@]}")
    if ((i % 2 == 0)); then
      order=()
      for ((t = ${#tools[@]} - 1; t >= 0; t--)); do order+=("${tools[t]}"); done
    fi
    for t in "${order[@]}"; do
      if declare -F "before_$t" >/dev/null; then "before_$t"; fi
      [ "$mode" = cold ] && bench_drop_cache "$input"
      local -n cmd="cmd_$t"
      bench_run "$res/$mode-$t" "${cmd[@]}"
      unset -n cmd
    done
  done
}

# bench_table_header / bench_table_row MODE LABEL RESULTS_FILE BASELINE_RESULTS_FILE: the result
# table, one row per (mode, tool): median wall time, ratio to the baseline, median peak RSS.
bench_table_header() {
  printf '%-5s  %-20s  %10s  %8s  %14s\n' mode tool "wall (s)" ratio "peak RSS (MiB)"
}
bench_table_row() {
  local wall rss base_wall ratio
  read -r wall rss < <(bench_summary "$3")
  read -r base_wall _ < <(bench_summary "$4")
  ratio=$(awk -v a="$wall" -v b="$base_wall" 'BEGIN { printf "%.2f", a / b }')
  printf '%-5s  %-20s  %10s  %8s  %14s\n' "$1" "$2" "$wall" "$ratio" "$rss"
}

# bench_human BYTES: e.g. 1.02 GiB.
bench_human() {
  awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", u); i = 1
    while (b >= 1024 && i < 5) { b /= 1024; i++ } printf "%.2f %s\n", b, u[i] }'
}
