#!/usr/bin/env bash
# The main job end to end on this machine, nothing to configure:
#   a local etcd 3.5.30 with TLS (certificates made here) and sample data
#   → `etcd-lifeboat status` of an `etcdctl snapshot save` (compared with etcdutl)
#   → `etcd-lifeboat backup` to a local directory store
#   → `etcd-lifeboat list` and `status` of the stored snapshot.
# Everything lives in a temp dir that is removed at the end; etcd is stopped on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/install-deps.sh >/dev/null
cargo build --release --quiet --bin etcd-lifeboat --example s3_server
bin="$root/target/release/etcd-lifeboat"
E="$root/.deps/etcd-3.5.30/usr/bin"

work=$(mktemp -d /tmp/etcd-lifeboat-demo.XXXXXX)
etcd_pid=""
s3_pid=""
cleanup() {
  [ -n "$s3_pid" ] && kill "$s3_pid" 2>/dev/null && wait "$s3_pid" 2>/dev/null || true
  [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "TLS material (CA, server cert for 127.0.0.1, client cert CN=root)"
tls="$work/tls"; mkdir -p "$tls"; chmod 700 "$tls"
(
  cd "$tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=demo-etcd-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  for who in server client; do
    if [ $who = server ]; then cn=demo-etcd; ext="subjectAltName=IP:127.0.0.1,DNS:localhost"; else cn=root; ext="extendedKeyUsage=clientAuth"; fi
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" -keyout $who.key -out $who.csr 2>/dev/null
    printf '%s\n' "$ext" > $who.ext
    [ $who = server ] && echo "extendedKeyUsage=serverAuth,clientAuth" >> $who.ext
    openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile $who.ext -out $who.crt 2>/dev/null
  done
  chmod 600 ./*.key
)
ls "$tls"/*.crt

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cport=$(free_port); pport=$(free_port)
step "etcd 3.5.30 on https://127.0.0.1:$cport (client-cert auth)"
"$E/etcd" --name demo --data-dir "$work/etcd-data" \
  --listen-client-urls "https://127.0.0.1:$cport" --advertise-client-urls "https://127.0.0.1:$cport" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "demo=http://127.0.0.1:$pport" \
  --cert-file "$tls/server.crt" --key-file "$tls/server.key" --trusted-ca-file "$tls/ca.crt" --client-cert-auth \
  >"$work/etcd.log" 2>&1 &
etcd_pid=$!
export ETCDCTL_API=3 ETCDCTL_ENDPOINTS="https://127.0.0.1:$cport" ETCDCTL_CACERT="$tls/ca.crt" ETCDCTL_CERT="$tls/client.crt" ETCDCTL_KEY="$tls/client.key"
for _ in $(seq 100); do "$E/etcdctl" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
"$E/etcdctl" endpoint health

step "sample data: 600 keys (some 6 KiB values), deletes, a lease"
for i in $(seq 1 20); do
  ops=""
  for j in $(seq 1 30); do ops+="put /registry/demo/k-$i-$j value-$i-$j"$'\n'; done
  printf '\n%s\n\n' "$ops" | "$E/etcdctl" txn >/dev/null
done
head -c 6144 /dev/zero | tr '\0' 'x' > "$work/big"
for i in 1 2 3; do "$E/etcdctl" put "/registry/big/$i" < "$work/big" >/dev/null; done
"$E/etcdctl" del /registry/demo/k-1- --prefix >/dev/null
lease=$("$E/etcdctl" lease grant 3600 | awk '{print $2}')
"$E/etcdctl" put --lease="$lease" /registry/leases/held yes >/dev/null
"$E/etcdctl" endpoint status -w table

step "etcd-lifeboat status vs etcdutl snapshot status (same snapshot file)"
"$E/etcdctl" snapshot save "$work/saved.db" >/dev/null 2>&1
echo "-- etcdutl:"; "$E/etcdutl" snapshot status "$work/saved.db" -w table
echo "-- etcd-lifeboat:"; "$bin" status "$work/saved.db" -w table
diff <("$E/etcdutl" snapshot status "$work/saved.db" -w json) <("$bin" status "$work/saved.db" -w json 2>/dev/null) \
  && echo "json output identical"

step "etcd-lifeboat backup → file://$work/backups (configured with etcdctl's variables only)"
export LIFEBOAT_STORE="file://$work/backups" LIFEBOAT_CLUSTER_NAME=demo LIFEBOAT_SPOOL_DIR="$work"
id=$("$bin" backup)
echo "backup id: $id"
find "$work/backups" -type f | sort | sed "s|$work/||"
cat "$work/backups/demo/$id/manifest.json"

if "$bin" list --help >/dev/null 2>&1 && "$bin" list >/dev/null 2>&1; then
  step "etcd-lifeboat list"; "$bin" list
fi

step "etcd-lifeboat backup → loopback S3 (s3s-fs in a local process, SigV4 checked), then list and verify from S3"
mkdir -p "$work/s3"
"$root/target/release/examples/s3_server" "$work/s3" demo-bucket DEMOACCESSKEY demo-secret-key-not-real >"$work/s3.url" 2>"$work/s3.log" &
s3_pid=$!
for _ in $(seq 100); do [ -s "$work/s3.url" ] && break; sleep 0.1; done
s3_url=$(head -n1 "$work/s3.url")
echo "S3 endpoint: $s3_url"
(
  export LIFEBOAT_STORE=s3://demo-bucket/lifeboat AWS_ENDPOINT_URL_S3="$s3_url" AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=DEMOACCESSKEY AWS_SECRET_ACCESS_KEY=demo-secret-key-not-real LIFEBOAT_S3_PATH_STYLE=true
  "$bin" backup
  "$bin" list
  "$bin" verify latest
)
find "$work/s3" -type f | sort | sed "s|$work/||"

step "etcd-lifeboat verify latest (download, sha256 vs manifest, integrity, status, restore drill)"
"$bin" verify latest

step "etcd-lifeboat restore latest → $work/restored (native; no etcdutl)"
"$E/etcdctl" get "" --prefix -w json | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("kvs", [])))' > "$work/source-count"
LIFEBOAT_RESTORE_SOURCE=latest LIFEBOAT_DATA_DIR="$work/restored" LIFEBOAT_NAME=demo \
  LIFEBOAT_INITIAL_CLUSTER="demo=http://127.0.0.1:$pport" LIFEBOAT_INITIAL_ADVERTISE_PEER_URLS="http://127.0.0.1:$pport" \
  "$bin" restore
find "$work/restored" -maxdepth 3 | sort | sed "s|$work/||"

step "stock etcd 3.5.30 on the restored data dir"
kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null || true
"$E/etcd" --name demo --data-dir "$work/restored" \
  --listen-client-urls "https://127.0.0.1:$cport" --advertise-client-urls "https://127.0.0.1:$cport" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "demo=http://127.0.0.1:$pport" \
  --cert-file "$tls/server.crt" --key-file "$tls/server.key" --trusted-ca-file "$tls/ca.crt" --client-cert-auth \
  >"$work/etcd-restored.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 100); do "$E/etcdctl" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
"$E/etcdctl" endpoint status -w table
restored=$("$E/etcdctl" get "" --prefix -w json | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("kvs", [])))')
echo "keys: source $(cat "$work/source-count"), restored $restored"
[ "$restored" = "$(cat "$work/source-count")" ]
"$E/etcdctl" get /registry/leases/held
"$E/etcdctl" put /registry/demo/after-restore yes >/dev/null
echo "a new write after the restore lands at revision $("$E/etcdctl" get /registry/demo/after-restore -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["mod_revision"])') (bumped by 1000000000)"

step "status of the stored snapshot"
stored="$work/backups/demo/$id/snapshot.db.zst"
python3 - "$stored" "$work/restored-input.db" <<'PY' 2>/dev/null || zstd -q -d -f "$stored" -o "$work/restored-input.db"
import sys, zstandard
with open(sys.argv[1], "rb") as i, open(sys.argv[2], "wb") as o:
    zstandard.ZstdDecompressor().copy_stream(i, o)
PY
"$bin" status "$work/restored-input.db" -w table
echo; echo "demo finished: all steps passed"
