#!/usr/bin/env bash
# docker-up: makes sure a Docker engine answers and a compose CLI is there, for
# the compose tests and the docker bring-up. Installs Debian's docker.io and
# docker-compose when missing, and starts dockerd itself when no engine
# answers (CI machines run no service manager). Exits non-zero, saying why,
# when it cannot.
#   deploy/docker-up.sh            BERTH_DOCKER_WAIT=60 (seconds to wait for the engine)
set -euo pipefail

wait_s=${BERTH_DOCKER_WAIT:-60}
log=${BERTH_DOCKERD_LOG:-/var/log/berth-dockerd.log}

die() { echo "docker-up: $*" >&2; exit 1; }
engine_ok() { timeout 10 docker info >/dev/null 2>&1; }
compose_cmd() {
  if docker compose version >/dev/null 2>&1; then echo "docker compose"
  elif command -v docker-compose >/dev/null && docker-compose version >/dev/null 2>&1; then echo "docker-compose"
  fi
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"
  else die "need root to run: $*"
  fi
}

if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null || [ -z "$(compose_cmd)" ]; then
  command -v apt-get >/dev/null || die "docker.io/docker-compose missing and no apt-get to install them"
  echo "docker-up: installing docker.io and docker-compose (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq || die "apt-get update failed"
  as_root apt-get install -y -qq docker.io docker-compose >/dev/null ||
    die "apt-get install docker.io docker-compose failed"
fi
command -v dockerd >/dev/null || die "dockerd not found after installing docker.io"
compose=$(compose_cmd)
[ -n "$compose" ] || die "neither 'docker compose' nor 'docker-compose' works"

if ! engine_ok; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    as_root systemctl start docker || true
  fi
fi
if ! engine_ok; then
  echo "docker-up: starting dockerd (log: $log)"
  # setsid: the engine outlives this script and the shell that ran it.
  as_root setsid nohup dockerd >>"$log" 2>&1 </dev/null &
  pid=$!
  deadline=$((SECONDS + wait_s))
  until engine_ok; do
    if [ $SECONDS -ge $deadline ]; then
      tail -n 20 "$log" >&2 || true
      die "no Docker engine answered within ${wait_s}s after starting dockerd"
    fi
    # $pid may be sudo's or setsid's; pgrep (when there) looks for dockerd itself.
    if ! kill -0 "$pid" 2>/dev/null && command -v pgrep >/dev/null && ! pgrep -x dockerd >/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "dockerd exited at start (see $log)"
    fi
    sleep 1
  done
fi

server=$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo "?")
echo "docker-up: engine $server ready; compose CLI: $compose"
