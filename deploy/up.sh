#!/usr/bin/env bash
# up: the one command that brings up a berth cluster (two balancers, three
# nodes heartbeating to both): builds, makes development certificates, starts everything and waits
# until all three nodes are healthy. With a Docker engine it runs the real
# docker-compose.yml (image built from deploy/Dockerfile where the base image
# can be pulled, else assembled offline from the local binaries); without one,
# it runs the same programs as local processes on 127.0.0.1.
#
#   deploy/up.sh          build, then (re)start balancer1, balancer2 + node1..node3
#   deploy/up.sh down     stop them (compose down -v; SIGTERM, SIGKILL after a bound)
#   deploy/up.sh status   show what runs
#
# Everything lives in ./run (relative to the repository): certs/, *.log, *.pid.
# The heartbeat channel is secure (CurveZMQ): deploy/gen-keys.sh writes the
# balancer's and each node's key pair and the allowlist to run/certs/keys
# (inside the certificate directory so compose mounts them too).
# Environment overrides:
#   BERTH_UP_MODE        auto | docker | local         (auto: docker when an engine answers)
#   BERTH_UP_HTTP_PORT   balancer1 HTTP port           (8080; balancer2 on BERTH_UP_HTTP2_PORT, 8081)
#   BERTH_UP_HB_PORT     balancer1 heartbeat port      (7100, local mode; balancer2 on BERTH_UP_HB2_PORT, 7110)
#   BERTH_UP_NODE_PORTS  the three node TLS ports      ("7001 7002 7003")
#   BERTH_UP_BUILD_DIR   CMake build directory         (build)
#   BERTH_UP_WAIT        seconds to wait for health    (30; 120 in docker mode)
#   BERTH_UP_JETSTREAM   1: also a 3-server NATS JetStream cluster, the nodes forwarding
#                        every journal record to its stream BERTH (docker: adds
#                        deploy/compose.jetstream.yml; local: nats-server processes on
#                        BERTH_UP_NATS_PORTS, "4222 4223 4224"); BERTH_ACK_AFTER=replicated
#                        makes the ACK wait for the stream
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
run=$root/run
build=${BERTH_UP_BUILD_DIR:-build}
http_port=${BERTH_UP_HTTP_PORT:-8080}
hb_port=${BERTH_UP_HB_PORT:-7100}
http2_port=${BERTH_UP_HTTP2_PORT:-8081}
hb2_port=${BERTH_UP_HB2_PORT:-7110}
read -r -a node_ports <<<"${BERTH_UP_NODE_PORTS:-7001 7002 7003}"
mode=${BERTH_UP_MODE:-auto}
jetstream=${BERTH_UP_JETSTREAM:-0}
read -r -a nats_ports <<<"${BERTH_UP_NATS_PORTS:-4222 4223 4224}"
ack_after=${BERTH_ACK_AFTER:-local}
case $mode in
  auto) if command -v docker >/dev/null && docker info >/dev/null 2>&1; then mode=docker; else mode=local; fi ;;
  docker|local) ;;
  *) echo "up: BERTH_UP_MODE must be auto, docker or local, got '$mode'" >&2; exit 1 ;;
esac
if [ "$mode" = docker ]; then wait_s=${BERTH_UP_WAIT:-120}; else wait_s=${BERTH_UP_WAIT:-30}; fi
project=berth
stop_bound_s=10
health_url=http://127.0.0.1:$http_port/v1/health
balancers_flag="--balancer http://127.0.0.1:$http_port,http://127.0.0.1:$http2_port"

die() { echo "up: $*" >&2; exit 1; }
say() { echo "up: $*"; }

for p in "$http_port" "$hb_port" "$http2_port" "$hb2_port" "${node_ports[@]}"; do
  [[ $p =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || die "bad port '$p'"
done
[ ${#node_ports[@]} -eq 3 ] || die "BERTH_UP_NODE_PORTS must list three ports, got '${node_ports[*]}'"
[[ $wait_s =~ ^[0-9]+$ ]] || die "BERTH_UP_WAIT must be whole seconds, got '$wait_s'"

# Processes started by us: one pid file per process name in ./run.
names=(balancer1 balancer2 node1 node2 node3)
nats_names=(nats1 nats2 nats3)

alive() { # pid file -> true when its process runs
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

down() {
  local name pidf pid pids=() deadline
  # "balancer": the pid file of an up.sh from before there were two.
  for name in node3 node2 node1 balancer2 balancer1 balancer nats3 nats2 nats1; do
    pidf=$run/$name.pid
    if alive "$pidf"; then
      pid=$(cat "$pidf")
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      say "sent SIGTERM to $name (pid $pid)"
    fi
  done
  deadline=$((SECONDS + stop_bound_s))
  for pid in "${pids[@]+"${pids[@]}"}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "pid $pid still runs after ${stop_bound_s}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for name in "${names[@]}" "${nats_names[@]}"; do rm -f "$run/$name.pid"; done
  [ ${#pids[@]} -gt 0 ] && say "stopped" || say "nothing was running"
}

tail_logs() {
  local name
  for name in "${names[@]}"; do
    if [ -f "$run/$name.log" ]; then
      echo "----- last lines of run/$name.log -----" >&2
      tail -n 20 "$run/$name.log" >&2
    fi
  done
}

# Prints "healthy-count" from the health JSON on stdin (python3 is a build dep).
healthy_count() {
  python3 -c 'import json,sys
try: print(int(json.load(sys.stdin)["counts"]["healthy"]))
except Exception: print(-1)'
}

status() {
  local name
  for name in "${names[@]}"; do
    if alive "$run/$name.pid"; then say "$name running (pid $(cat "$run/$name.pid"))"
    else say "$name not running"; fi
  done
  curl -fsS --max-time 2 "$health_url" 2>/dev/null && echo || say "no answer from $health_url"
}

# `docker compose` (v2) when it works, else Debian's docker-compose 1.29.
compose() {
  local files=(-f docker-compose.yml)
  # The JetStream file is remembered, so that `down` takes its services too.
  if [ "$jetstream" = 1 ] || [ -f "$run/compose.jetstream" ]; then
    files+=(-f deploy/compose.jetstream.yml)
  fi
  if docker compose version >/dev/null 2>&1; then docker compose -p "$project" "${files[@]}" "$@"
  else docker-compose -p "$project" "${files[@]}" "$@"; fi
}

compose_env() {
  export BERTH_HTTP_PORT=$http_port BERTH_HTTP2_PORT=$http2_port BERTH_CERTS=$run/certs \
    BERTH_NODE1_PORT=${node_ports[0]} BERTH_NODE2_PORT=${node_ports[1]} BERTH_NODE3_PORT=${node_ports[2]}
}

compose_down() {
  [ -f "$run/compose.up" ] || return 0
  compose_env
  compose down -v --remove-orphans && rm -f "$run/compose.up" "$run/compose.jetstream"
  say "compose project '$project' is down"
}

case ${1:-up} in
  down) compose_down; down; exit 0 ;;
  status) status; exit 0 ;;
  up) ;;
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown command '$1' (up, down, status)" ;;
esac

# Build. Dependencies are installed only when something is missing.
if ! command -v cmake >/dev/null || ! command -v pkg-config >/dev/null || ! command -v curl >/dev/null ||
   ! command -v python3 >/dev/null ||
   ! pkg-config --exists openssl libzmq jansson libmicrohttpd libcurl cmocka 2>/dev/null; then
  say "build dependencies missing: running deploy/install-deps.sh"
  deploy/install-deps.sh
fi
say "building in $build"
cmake -S . -B "$build" >/dev/null || die "cmake configure failed"
cmake --build "$build" -j"$(nproc)" >/dev/null || die "build failed (run: cmake --build $build)"
balancer_bin=$build/balancer/berth-balancer
case $build in /*) cli=$build/shared/berth ;; *) cli=./$build/shared/berth ;; esac
node_bin=$build/node/berth-node
for b in "$balancer_bin" "$node_bin" "$build/shared/berth"; do
  [ -x "$b" ] || die "$b was not built"
done

mkdir -p "$run"
deploy/gen-certs.sh "$run/certs"
keys=$run/certs/keys
deploy/gen-keys.sh --berth "$build/shared/berth" "$keys" node1 node2 node3

if [ "$mode" = docker ]; then
  # The containers run as uid 10001 and gen-certs writes the key 0600.
  if [ "$(id -u)" -eq 0 ]; then chown 10001:10001 "$run/certs/node.key" "$keys"/*.key
  else chmod 0644 "$run/certs/node.key" "$keys"/*.key; say "made the development keys readable for the container user"; fi
  compose_env
  down # local processes from an earlier local-mode run would hold the ports
  # deploy/Dockerfile needs debian:bookworm-slim; without a registry the
  # same tag is assembled from the binaries just built.
  if docker image inspect debian:bookworm-slim >/dev/null 2>&1 && compose build; then
    say "image built from deploy/Dockerfile"
  else
    say "building the image offline from $build (no base image to pull)"
    deploy/offline-image.sh "$build" >/dev/null || die "deploy/offline-image.sh failed"
  fi
  touch "$run/compose.up"
  if [ "$jetstream" = 1 ]; then touch "$run/compose.jetstream"; export BERTH_ACK_AFTER=$ack_after; fi
  compose up -d --no-build || die "compose up failed"
  deadline=$((SECONDS + wait_s))
  healthy=-1
  while [ $SECONDS -lt $deadline ]; do
    body=$(curl -fsS --max-time 2 "$health_url" 2>/dev/null) || body=
    healthy=$(printf '%s' "$body" | healthy_count)
    [ "$healthy" = 3 ] && break
    sleep 0.5
  done
  if [ "$healthy" != 3 ]; then
    compose ps; compose logs --tail 20
    die "after ${wait_s}s $health_url does not show 3 healthy nodes (deploy/up.sh down stops it)"
  fi
  cat <<MSG
up: berth is up in docker (compose project '$project'): 2 balancers, 3 healthy nodes
  health:  $health_url
  try:     echo hello | $cli send --ca run/certs/ca.pem $balancers_flag
  dashboard: http://127.0.0.1:$http_port/ and http://127.0.0.1:$http2_port/
  logs:    docker logs ${project}_node1_1 (or: docker compose -p $project logs)
  stop:    deploy/up.sh down
MSG
  exit 0
fi

# A fresh start: stop whatever an earlier `up` left running.
for name in "${names[@]}"; do
  if alive "$run/$name.pid"; then say "stopping the cluster an earlier run left"; down; break; fi
done

# start NAME COMMAND...: in the background, in its own session so that a
# Ctrl-C in this shell does not reach it; output to run/NAME.log.
start() {
  local name=$1; shift
  setsid "$@" >"$run/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
  say "started $name (pid $!), log run/$name.log"
}

start balancer1 "$balancer_bin" --http "127.0.0.1:$http_port" --heartbeat-bind "tcp://127.0.0.1:$hb_port" \
  --curve-secret "$keys/balancer.key" --curve-allow "$keys/allow"
start balancer2 "$balancer_bin" --http "127.0.0.1:$http2_port" --heartbeat-bind "tcp://127.0.0.1:$hb2_port" \
  --curve-secret "$keys/balancer.key" --curve-allow "$keys/allow"
js_flags=()
if [ "$jetstream" = 1 ]; then
  command -v nats-server >/dev/null || die "BERTH_UP_JETSTREAM=1 needs nats-server (deploy/install-deps.sh)"
  [ ${#nats_ports[@]} -eq 3 ] || die "BERTH_UP_NATS_PORTS must list three ports"
  urls=() routes=()
  for k in 0 1 2; do urls+=("nats://127.0.0.1:${nats_ports[$k]}"); routes+=("nats://127.0.0.1:$((nats_ports[k] + 2000))"); done
  for k in 0 1 2; do
    others=$(printf '%s\n' "${routes[@]}" | grep -v ":$((nats_ports[k] + 2000))\$" | paste -sd, -)
    start "nats$((k + 1))" nats-server -a 127.0.0.1 -p "${nats_ports[$k]}" -n "nats$((k + 1))" -js \
      -sd "$run/nats$((k + 1))" --cluster_name berth --cluster "${routes[$k]}" --routes "$others" \
      -m "$((nats_ports[k] + 4000))"
  done
  # JetStream answers once its meta group has a leader: /healthz says so.
  deadline=$((SECONDS + wait_s))
  for k in 0 1 2; do
    until curl -fsS --max-time 1 "http://127.0.0.1:$((nats_ports[k] + 4000))/healthz" >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || { tail_logs; die "nats$((k + 1)) not healthy after ${wait_s}s"; }
      sleep 0.2
    done
  done
  say "NATS JetStream cluster up: ${urls[*]}"
  js_flags=(--jetstream "$(IFS=,; echo "${urls[*]}")" --jetstream-create --ack-after "$ack_after")
  names+=("${nats_names[@]}")
fi
i=1
for port in "${node_ports[@]}"; do
  # A node that finds no JetStream quorum yet exits; it is started again below.
  start "node$i" "$node_bin" --id "node$i" --listen "127.0.0.1:$port" \
    --balancer "tcp://127.0.0.1:$hb_port,tcp://127.0.0.1:$hb2_port" --cert "$run/certs/node.pem" --key "$run/certs/node.key" \
    --curve-secret "$keys/node$i.key" --balancer-key "$keys/balancer.pub" \
    --journal-dir "$run/journal-node$i" "${js_flags[@]+"${js_flags[@]}"}"
  i=$((i + 1))
done

# Bounded wait for three healthy nodes.
deadline=$((SECONDS + wait_s))
healthy=-1
while [ $SECONDS -lt $deadline ]; do
  for name in "${names[@]}"; do
    alive "$run/$name.pid" || { tail_logs; die "$name exited during start-up (see run/$name.log)"; }
  done
  body=$(curl -fsS --max-time 2 "$health_url" 2>/dev/null) || body=
  healthy=$(printf '%s' "$body" | healthy_count)
  [ "$healthy" = 3 ] && break
  sleep 0.2
done
if [ "$healthy" != 3 ]; then
  tail_logs
  if [ "$healthy" = -1 ]; then shown="no usable answer"; else shown="$healthy healthy nodes"; fi
  die "after ${wait_s}s $health_url shows $shown, not 3 healthy nodes (deploy/up.sh down stops what started)"
fi

cat <<MSG
up: berth is up: 2 balancers, 3 healthy nodes
  health:  $health_url
  dashboard: http://127.0.0.1:$http_port/ and http://127.0.0.1:$http2_port/
  try:     echo hello | $cli send --ca run/certs/ca.pem $balancers_flag
  stop:    deploy/up.sh down
MSG
