#!/usr/bin/env bash
# offline-image: assembles the berth image (the tag docker-compose.yml runs)
# FROM scratch out of locally built binaries and the exact shared libraries
# they load, for machines with a Docker engine but no registry to pull from.
#
#   deploy/offline-image.sh BUILD_DIR [TAG]        TAG defaults to $BERTH_IMAGE or berth:local
#
# The image holds /usr/local/bin/{berth,berth-balancer,berth-node}, every
# library ldd lists for them (the dynamic loader included) at the path the
# loader looks it up by, /etc/passwd and /etc/group with the non-root user
# berth (10001:10001), and /etc/nsswitch.conf; nothing else. Docker itself
# provides /etc/hosts and /etc/resolv.conf at run time; glibc >= 2.34 has the
# "files" and "dns" NSS modules built into libc.so.6, so name lookups of
# compose service names ("balancer") work with libc alone (checked below).
# Same user, paths and default command as deploy/Dockerfile, so
# `docker compose up --no-build` runs the very same compose file.
set -euo pipefail

die() { echo "offline-image: $*" >&2; exit 1; }

if [ $# -lt 1 ] || [ $# -gt 2 ]; then die "usage: $0 BUILD_DIR [TAG]"; fi
build_dir=$1
tag=${2:-${BERTH_IMAGE:-berth:local}}
[ -d "$build_dir" ] || die "build directory '$build_dir' does not exist"
command -v docker >/dev/null || die "docker client not found (deploy/docker-up.sh installs it)"
command -v ldd >/dev/null || die "ldd not found"
docker info >/dev/null 2>&1 || die "no Docker engine answers (start one with deploy/docker-up.sh)"

# The three programs, where CMake puts them (shared/cli builds `berth`).
declare -A rel=([berth]=shared/berth [berth-balancer]=balancer/berth-balancer [berth-node]=node/berth-node)
binaries=()
for name in berth berth-balancer berth-node; do
  path=$build_dir/${rel[$name]}
  [ -x "$path" ] || die "$path is missing or not executable: build first (cmake --build $build_dir)"
  binaries+=("$path")
done
# nats-server (Debian's package) rides along for the JetStream compose file
# (deploy/compose.jetstream.yml): no registry needed for that either.
if nats=$(command -v nats-server); then
  binaries+=("$(readlink -f "$nats")")
else
  echo "offline-image: nats-server not installed: the image cannot run deploy/compose.jetstream.yml" >&2
fi

ctx=$(mktemp -d "${TMPDIR:-/tmp}/berth-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc"

# copy_file SRC DEST: the file's content (symlinks followed) at DEST inside
# the image, so every name the loader asks for is a plain file.
copy_file() {
  local src=$1 dest=$root$2 mode=$3
  mkdir -p "$(dirname "$dest")"
  [ -e "$dest" ] || install -m "$mode" "$(readlink -f "$src")" "$dest"
}

# ldd lines: "libx.so.1 => /path/libx.so.1 (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)"
# (the loader: the kernel execs it, so it needs its x bit), "linux-vdso.so.1
# (0x..)" (in the kernel, nothing to copy), "libx => not found".
# Prints "MODE PATH" lines.
libraries_of() {
  local out
  out=$(ldd "$1") || die "ldd $1 failed (is it a dynamically linked program for this machine?)"
  if grep -q "not found" <<<"$out"; then
    die "$1 needs libraries this machine lacks: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
  fi
  awk '$2 == "=>" && $3 ~ /^\// { print "0644", $3 } $1 ~ /^\// { print "0755", $1 }' <<<"$out"
}

declare -A libs=()
for bin in "${binaries[@]}"; do
  copy_file "$bin" "/usr/local/bin/$(basename "$bin")" 0755
  while read -r mode lib; do
    [ -n "$lib" ] && libs[$lib]=$mode
  done < <(libraries_of "$bin")
done
[ ${#libs[@]} -gt 0 ] || die "ldd listed no libraries: the image would not start"
for lib in "${!libs[@]}"; do
  copy_file "$lib" "$lib" "${libs[$lib]}"
done

# Root for files the engine writes; berth (10001) is the user every process runs as.
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
berth:x:10001:10001:berth:/nonexistent:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
berth:x:10001:
EOF
# /etc/hosts first (the container's own name, extra_hosts), then Docker's DNS
# (127.0.0.11 on a compose network, which knows the service names).
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group:  files
hosts:  files dns
EOF

# The journal's home (compose mounts a volume there; a new volume takes the
# directory's owner from the image, so berth can write it).
mkdir -p "$ctx/data"
touch "$ctx/data/.keep"

cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 data/ /var/lib/berth/
ENV PATH=/usr/local/bin
USER 10001:10001
LABEL org.opencontainers.image.title="berth" \\
      org.opencontainers.image.description="berth-node, berth-balancer, the berth CLI and nats-server (offline image: local binaries on scratch)"
CMD ["berth", "--help"]
EOF

# The classic builder needs nothing from a registry for FROM scratch (its
# deprecation notice goes to the log, shown only when the build fails).
if ! DOCKER_BUILDKIT=0 docker build --tag "$tag" "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  die "docker build of $tag failed"
fi

# Prove the image runs: the loader finds every library, the user is not root.
ver=$(docker run --rm --network none "$tag" berth --version 2>&1) ||
  die "image $tag does not start: $ver"
uid=$(docker image inspect --format '{{.Config.User}}' "$tag")
echo "offline-image: built $tag ($(du -sh "$root" | cut -f1) rootfs, ${#libs[@]} libraries, user $uid): $ver"
