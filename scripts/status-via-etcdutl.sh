#!/usr/bin/env bash
# A stand-in for `etcd-lifeboat status`, assembled from the oracles (etcdutl 3.5.30; etcdutl 3.5.1
# for --ascii) plus a sha256 trailer check, following the status contract: stdout as etcdutl,
# exit 4 on an integrity or trailer failure. It exists to validate the test harness and the bench
# scripts while the native engine is not on a branch:
#   LIFEBOAT_TEST_BIN=$PWD/scripts/status-via-etcdutl.sh cargo test --test status_oracle
#   LIFEBOAT_BIN=$PWD/scripts/status-via-etcdutl.sh bench/status.sh
# Not shipped, not used by anything else.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" != status ]; then
  echo "status-via-etcdutl: only \`status\` is emulated" >&2
  exit 9
fi
shift
file="" w=simple ascii=0
while [ $# -gt 0 ]; do
  case "$1" in
    -w | --write-out) w=$2; shift 2 ;;
    -w=* | --write-out=*) w=${1#*=}; shift ;;
    --ascii) ascii=1; shift ;;
    -*) echo "status-via-etcdutl: unknown flag $1" >&2; exit 2 ;;
    *) file=$1; shift ;;
  esac
done
tool="${LIFEBOAT_TEST_ETCD_3_5_30:-$root/.deps/etcd-3.5.30/usr/bin}/etcdutl"
if [ "$ascii" = 1 ]; then tool="${LIFEBOAT_TEST_ETCD_3_5_1:-$root/.deps/etcd-3.5.1}/etcdutl"; fi

size=$(stat -c %s "$file")
if [ $((size % 512)) -eq 32 ]; then
  stored=$(tail -c 32 "$file" | od -An -tx1 | tr -d ' \n')
  computed=$(head -c $((size - 32)) "$file" | sha256sum | cut -d' ' -f1)
  if [ "$stored" != "$computed" ]; then
    echo "status-via-etcdutl: $file: sha256 trailer mismatch" >&2
    exit 4
  fi
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! "$tool" snapshot status "$file" -w "$w" >"$out"; then
  exit 4
fi
cat "$out"
