#!/usr/bin/env bash
# Builds the etcd-lifeboat image from a binary built on this host, then smoke-tests it.
#
#   scripts/build-image.sh            build binary (cargo --profile image, static) + image, smoke test
#   IMAGE=reg/etcd-lifeboat:tag scripts/build-image.sh
#   SKIP_CARGO=1 scripts/build-image.sh   reuse target/x86_64-unknown-linux-gnu/image/etcd-lifeboat
#   BINARY=/path/to/etcd-lifeboat scripts/build-image.sh   package a binary built elsewhere (static)
#   OUTPUT=oci-archive:/tmp/lifeboat.tar scripts/build-image.sh   also export the image
#
# The image is `FROM scratch` (Containerfile, target `image-from-context`), so nothing is pulled.
# buildah runs with chroot isolation and the vfs driver in a private storage root under target/, so it
# works as root without user namespaces or overlayfs and never touches the machine's image store.
#
# Exit codes: 0 built and smoke-tested; 1 failure (build, smoke test, size budget exceeded);
#             77 buildah unavailable or not permitted in this sandbox (CI treats it as "skipped").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

readonly MAX_BINARY_BYTES=$((15 * 1024 * 1024))   # stripped static binary budget: 15 MiB
readonly MAX_IMAGE_BYTES=$((20 * 1024 * 1024))    # image budget (uncompressed layers): 20 MiB
readonly EXIT_SKIP=77

target=x86_64-unknown-linux-gnu
bin=${BINARY:-$root/target/$target/image/etcd-lifeboat}
version=$(awk -F'"' '/^version *=/{print $2; exit}' Cargo.toml)
image=${IMAGE:-localhost/etcd-lifeboat:$version}
work="$root/target/image-build"
store="$work/storage"
ctx="$work/context"

log() { printf 'build-image: %s\n' "$*"; }
skip() { printf 'build-image: SKIPPED: %s\n' "$*" >&2; exit "$EXIT_SKIP"; }
die() { printf 'build-image: FAILED: %s\n' "$*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN{printf "%.2f MiB", b/1048576}'; }

# --- 1. the static binary -----------------------------------------------------------------------------
if [ "${SKIP_CARGO:-0}" != 1 ] && [ -z "${BINARY:-}" ]; then
  log "cargo build --profile image --target $target (crt-static)"
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --locked --profile image --target "$target"
fi
[ -x "$bin" ] || die "binary not found: $bin"
if command -v file >/dev/null; then
  file -b "$bin" | grep -q 'static' || die "$bin is not statically linked: $(file -b "$bin")"
fi
bin_bytes=$(stat -c %s "$bin")
log "binary: $bin ($bin_bytes bytes, $(mib "$bin_bytes"); budget $(mib "$MAX_BINARY_BYTES"))"
[ "$bin_bytes" -le "$MAX_BINARY_BYTES" ] || die "binary exceeds its size budget"

# --- 2. buildah available and allowed? -----------------------------------------------------------------
command -v buildah >/dev/null || skip "buildah is not installed (apt-get install buildah)"
export BUILDAH_ISOLATION=chroot
mkdir -p "$store/root" "$store/runroot"
# A private signature policy and registries config, so the script works on a bare machine too.
policy="$work/policy.json"
printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' > "$policy"
regconf="$work/registries.conf"
printf 'unqualified-search-registries = []\n' > "$regconf"
export CONTAINERS_REGISTRIES_CONF="$regconf"
bh=(buildah --root "$store/root" --runroot "$store/runroot" --storage-driver vfs)
probe_err=$("${bh[@]}" --signature-policy "$policy" from --name lifeboat-probe scratch 2>&1 >/dev/null) \
  || skip "buildah cannot create a container here (namespaces or mounts denied?): $probe_err"
"${bh[@]}" rm lifeboat-probe >/dev/null

# --- 3. the build context -----------------------------------------------------------------------------
ca=""
for c in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  [ -s "$c" ] && { ca=$c; break; }
done
[ -n "$ca" ] || die "no CA bundle on this host (apt-get install ca-certificates)"
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp"
install -m 0755 "$bin" "$ctx/rootfs/etcd-lifeboat"
install -m 0644 "$ca" "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' > "$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$ctx/rootfs/etc/group"
chmod 0644 "$ctx/rootfs/etc/passwd" "$ctx/rootfs/etc/group"
chmod 1777 "$ctx/rootfs/tmp"

# --- 4. build -----------------------------------------------------------------------------------------
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "buildah bud --target image-from-context -t $image"
"${bh[@]}" bud --isolation chroot --signature-policy "$policy" --layers=false \
  -f "$root/Containerfile" --target image-from-context \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
  -t "$image" "$ctx"

# --- 5. smoke test: run the binary from the image, as the image's user ---------------------------------
cont=$("${bh[@]}" from --signature-policy "$policy" --pull-never "$image")
cleanup() { "${bh[@]}" rm "$cont" >/dev/null 2>&1 || true; }
trap cleanup EXIT
out=$("${bh[@]}" run --isolation chroot "$cont" -- /etcd-lifeboat version) || die "smoke test: 'etcd-lifeboat version' failed in the image"
log "smoke test: $out"
case "$out" in *"$version"*) ;; *) die "smoke test: expected version $version, got: $out" ;; esac
user=$("${bh[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
entry=$("${bh[@]}" inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$image")
[ "$user" = "65532:65532" ] || die "image user is '$user', expected 65532:65532"
[ "$entry" = '[/etcd-lifeboat]' ] || die "image entrypoint is $entry, expected [/etcd-lifeboat]"
# Errors must surface as a non-zero exit from inside the image too.
"${bh[@]}" run --isolation chroot "$cont" -- /etcd-lifeboat status /nonexistent >/dev/null 2>&1 \
  && die "smoke test: 'status /nonexistent' unexpectedly succeeded"

# --- 6. size budget -----------------------------------------------------------------------------------
# Measure the image as exported in an OCI layout: compressed (what a registry stores and a node pulls)
# and uncompressed (what a node unpacks). The budget applies to the uncompressed size.
oci_dir="$work/oci-size-probe"
rm -rf "$oci_dir"
"${bh[@]}" push --quiet --signature-policy "$policy" "$image" "oci:$oci_dir" >/dev/null
img_gz_bytes=$(du -sb "$oci_dir" | cut -f1)
img_bytes=0
for blob in "$oci_dir"/blobs/sha256/*; do
  if gzip -t "$blob" 2>/dev/null; then n=$(gzip -dc "$blob" | wc -c); else n=$(stat -c %s "$blob"); fi
  img_bytes=$((img_bytes + n))
done
rm -rf "$oci_dir"
log "image: $image (uncompressed $img_bytes bytes, $(mib "$img_bytes"); compressed $(mib "$img_gz_bytes"); budget $(mib "$MAX_IMAGE_BYTES") uncompressed)"
[ "$img_bytes" -le "$MAX_IMAGE_BYTES" ] || die "image exceeds its size budget"

# Drop the images this tag replaced (vfs keeps full copies).
"${bh[@]}" rmi --prune >/dev/null 2>&1 || true

if [ -n "${OUTPUT:-}" ]; then
  log "exporting to $OUTPUT"
  "${bh[@]}" push --signature-policy "$policy" "$image" "$OUTPUT"
fi
log "OK: $image (binary $(mib "$bin_bytes"), image $(mib "$img_bytes"))"
