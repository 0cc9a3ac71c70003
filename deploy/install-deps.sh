#!/usr/bin/env bash
# install-deps: the Debian 12 packages berth needs to build and test, through
# apt-get, non-interactively. Does nothing (and needs no network) when every
# package is already installed. Uses sudo only when not run as root.
#
#   deploy/install-deps.sh
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libssl-dev libzmq3-dev libjansson-dev libcmocka-dev libmicrohttpd-dev libcurl4-openssl-dev
  python3 python3-zmq openssl curl valgrind
  clang-14 libclang-rt-14-dev
  chromium chromium-driver python3-selenium python3-prometheus-client
  fuse3 python3-fusepy
  libnats-dev nats-server
  podman catatonit prometheus python3-yaml
  help2man dpkg-dev file groff-base systemd
)

# A package counts as installed when dpkg says "install ok installed".
missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

command -v apt-get >/dev/null || {
  echo "install-deps: apt-get not found; install by hand: ${missing[*]}" >&2
  exit 1
}

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || {
    echo "install-deps: not root and sudo is missing; as root run: apt-get install ${missing[*]}" >&2
    exit 1
  }
  sudo=(sudo)
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"
