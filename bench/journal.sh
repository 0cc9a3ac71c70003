#!/usr/bin/env bash
# bench/journal.sh: acknowledged 256-byte SENDs per second on one node and
# the p99 ACK latency with the journal's fsync policies (batch, always, and
# off / no journal for reference), next to this disk's own fsync rate
# measured in the same run. ~10 s per row; node and load generator pinned to
# their own CPUs. Prints a Markdown report; with --save writes it to
# bench/results/journal-<date>.md too.
#
#   bench/journal.sh [--duration SECONDS] [--server-cpu N] [--load-cpu N] [--save]
#
# Needs a build (BERTH_BUILD_DIR, default ./build), taskset, openssl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
build=${BERTH_BUILD_DIR:-$src/build}
duration=10
server_cpu=0
load_cpu=1
save=0
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --server-cpu) server_cpu=$2; shift 2 ;;
    --load-cpu) load_cpu=$2; shift 2 ;;
    --save) save=1; shift ;;
    *) echo "bench/journal.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
node_bin=$build/node/berth-node
cli=$build/shared/berth
for b in "$node_bin" "$cli"; do
  [ -x "$b" ] || { echo "bench/journal.sh: $b is not built (BERTH_BUILD_DIR=$build)" >&2; exit 2; }
done
command -v taskset >/dev/null || { echo "bench/journal.sh: needs taskset" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-journal-XXXXXX")
node_pid=
cleanup() {
  if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
bash "$src/deploy/gen-certs.sh" "$work/certs" >/dev/null 2>&1

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
hbport=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# The disk's bound: 256-byte appends each followed by fdatasync, for 3 s, on
# the filesystem the journal uses.
fsync_rate=$(/usr/bin/python3 - "$work" <<'PY'
import os, sys, time
p = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
n, t0 = 0, time.monotonic()
while time.monotonic() - t0 < 3.0:
    os.write(fd, b"x" * 256)
    os.fdatasync(fd)
    n += 1
os.close(fd)
os.unlink(p)
print("%.0f" % (n / (time.monotonic() - t0)))
PY
)

# No balancer runs here: the heartbeat channel's authentication is not what
# is measured (nodes from before CURVE do not know the flag).
hb_flags=()
if "$node_bin" --help 2>/dev/null | grep -q -- --heartbeat-plaintext; then
  hb_flags=(--heartbeat-plaintext)
fi

row() { # name, node flags...
  local name=$1; shift
  rm -rf "$work/journal"
  taskset -c "$server_cpu" "$node_bin" --id bench --listen "127.0.0.1:$port" \
    --balancer "tcp://127.0.0.1:$hbport" --cert "$work/certs/node.pem" --key "$work/certs/node.key" \
    --workers 1 --journal-dir "$work/journal" --log-level warn "${hb_flags[@]}" "$@" >"$work/node.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
  done
  kill -0 "$node_pid" 2>/dev/null || { echo "bench/journal.sh: node did not start:" >&2; cat "$work/node.log" >&2; exit 1; }
  local json
  json=$(taskset -c "$load_cpu" "$cli" bench --mode send --node "127.0.0.1:$port" --ca "$work/certs/ca.pem" \
    --size 256 --connections 16 --pipeline 32 --duration "${duration}s" --json 2>/dev/null)
  kill "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=
  local bytes
  bytes=$(du -sb "$work/journal" 2>/dev/null | cut -f1 || echo 0)
  /usr/bin/python3 - "$name" "$json" "$bytes" <<'PY'
import json, sys
name, j, size = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3] or 0)
lat = j["latency_us"]
errs = j["errors"]["total"]
print("| %s | %.0f | %.2f | %.2f | %d | %.1f |" % (name, j["rate"], lat["p50"] / 1e3,
      lat["p99"] / 1e3, errs, size / 1e6))
PY
}

{
  echo "# berth-node journal: acknowledged 256-byte SENDs"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -srm), $(nproc) CPUs, node pinned to CPU $server_cpu"
  echo "(1 worker), load generator on CPU $load_cpu: berth bench --mode send --size 256"
  echo "--connections 16 --pipeline 32, ${duration} s per row. Filesystem of the journal:"
  echo "$(df -T "$work" | awk 'NR==2 {print $2 " on " $1}')."
  echo
  echo "Disk bound measured in this run: **$fsync_rate fdatasync/s** (256-byte append + fdatasync"
  echo "in a loop): \`always\` can never ACK more records per second than this times the records"
  echo "each fsync covers; \`batch\` covers many per fsync (group commit)."
  echo
  echo "| fsync | ACKs/s | p50 ms | p99 ms | errors | journal MB |"
  echo "|---|---|---|---|---|---|"
  row "batch (2 ms / 1024)" --fsync batch
  row "always" --fsync always
  row "off (unsafe)" --fsync off
  row "no journal" --journal off
} | tee "$work/report.md"
if [ "$save" = 1 ]; then
  out="$here/results/journal-$(date -u +%Y-%m-%d).md"
  cp "$work/report.md" "$out"
  echo "saved $out" >&2
fi
