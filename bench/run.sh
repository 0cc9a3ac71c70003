#!/usr/bin/env bash
# bench/run.sh: berth side by side with nginx, HAProxy and Redis Sentinel in
# one run on this machine; writes bench/results/<date>.md, .json and .png.
#
#   bench/run.sh [--duration SECONDS] [--server-cpu N] [--load-cpu N] [--skip-slow]
#
# Needs a build (BERTH_BUILD_DIR, default ./build) and the Debian packages
# nginx-light wrk gnuplot-nox haproxy redis-server redis-sentinel.
# --skip-slow leaves out the rows measured at the peers' default settings
# (Sentinel notices a dead master after 30 s by default).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
missing=()
for b in nginx wrk gnuplot haproxy redis-server redis-sentinel redis-benchmark taskset openssl curl; do
  command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench/run.sh: missing ${missing[*]}; install with:" >&2
  echo "  apt-get install -y nginx-light wrk gnuplot-nox haproxy redis-server redis-sentinel" >&2
  exit 2
fi
exec /usr/bin/python3 "$here/side_by_side.py" "$@"
