#!/usr/bin/env bash
# scale.sh: one balancer against 10,000 simulated nodes (tests/tools/hb_sim)
# at 1 Hz, side by side with 3 nodes, in one run. Measures the balancer's
# CPU (from /proc), heartbeats processed per second, /v1/pick lookups/s and
# p99 (wrk), /v1/health time and size, and how fast the registry is whole
# again after a kill -9 restart of the balancer. Writes
# bench/results/scale-<date>.md.
#
# usage: bench/scale.sh [build dir]   (default: $BERTH_BUILD_DIR or ./build)
# env:   NODES (10000) PICK_SECONDS (10) CPU_SECONDS (20) WRK_CONNS (32)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-${BERTH_BUILD_DIR:-$ROOT/build}}
BAL=$BUILD/balancer/berth-balancer
SIM=$BUILD/tests/hb_sim
NODES=${NODES:-10000}
PICK_SECONDS=${PICK_SECONDS:-10}
CPU_SECONDS=${CPU_SECONDS:-20}
WRK_CONNS=${WRK_CONNS:-32}
INTERVAL=1s
HTTP_PORT=${HTTP_PORT:-18480}
HB_PORT=${HB_PORT:-17480}
HTTP=127.0.0.1:$HTTP_PORT
HB=tcp://127.0.0.1:$HB_PORT
OUT_DIR=$ROOT/bench/results
OUT=$OUT_DIR/scale-$(date -u +%Y-%m-%d).md
TMP=$(mktemp -d /tmp/berth-scale.XXXXXX)
CLK_TCK=$(getconf CLK_TCK)

for bin in "$BAL" "$SIM"; do
    [[ -x $bin ]] || { echo "scale.sh: $bin missing: build first (cmake --build $BUILD)" >&2; exit 2; }
done
command -v wrk >/dev/null || { echo "scale.sh: wrk is not installed" >&2; exit 2; }
command -v curl >/dev/null || { echo "scale.sh: curl is not installed" >&2; exit 2; }

# Pinning: the balancer on CPU 0, the simulator and wrk on the others, so
# the load generators do not take the balancer's core (when taskset and a
# second core exist).
PIN_BAL=()
PIN_LOAD=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    PIN_BAL=(taskset -c 0)
    PIN_LOAD=(taskset -c 1-$(( $(nproc) - 1 )))
fi

BAL_PID=""
SIM_PID=""
stop() { # stop <pid>: TERM, then KILL after 3 s; only processes we started
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop "$SIM_PID"
    stop "$BAL_PID"
    rm -rf "$TMP"
}
trap cleanup EXIT

start_balancer() { # start_balancer <log name>
    # plaintext heartbeats: hb_sim speaks no CURVE (it measures the registry
    # and the loop, not the handshake)
    "${PIN_BAL[@]}" "$BAL" --http "$HTTP" --heartbeat-bind "$HB" --interval "$INTERVAL" --log-level warn \
        --heartbeat-plaintext --http-per-ip-limit 0 >>"$TMP/$1.log" 2>&1 &
    BAL_PID=$!
    for _ in $(seq 100); do
        curl -sf "http://$HTTP/healthz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "scale.sh: the balancer did not come up; log:" >&2
    cat "$TMP/$1.log" >&2
    exit 1
}

start_sim() { # start_sim <nodes> <prefix>
    "${PIN_LOAD[@]}" "$SIM" --balancer "$HB" --nodes "$1" --prefix "$2" --interval-ms 1000 \
        --sockets $(( $1 < 50 ? $1 : 50 )) >"$TMP/sim-$2.jsonl" 2>"$TMP/sim-$2.err" &
    SIM_PID=$!
}

health() { # health <query> -> JSON on stdout
    curl -sf "http://$HTTP/v1/health$1"
}

jget() { # jget <python expression on h> reads JSON on stdin
    python3 -c "import json,sys; h=json.load(sys.stdin); print($1)"
}

count_healthy() { health "?limit=0" | jget 'h["counts"]["healthy"]'; }

wait_healthy() { # wait_healthy <n> <timeout s>: prints seconds taken, or fails
    local n=$1 t0 now
    t0=$(date +%s.%N)
    while :; do
        [[ $(count_healthy 2>/dev/null || echo 0) -ge $n ]] && break
        now=$(date +%s.%N)
        if (( $(echo "$now - $t0 > $2" | bc) )); then
            echo "timeout"
            return 1
        fi
        sleep 0.05
    done
    echo "$(date +%s.%N) - $t0" | bc
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hb_received() { health "?limit=0" | jget 'h["heartbeats"]["received"]'; }

# measure_cpu <seconds>: sets CPU_PCT and HB_RATE over that many seconds
measure_cpu() {
    local c0 c1 r0 r1 t0 t1
    c0=$(cpu_ticks "$BAL_PID"); r0=$(hb_received); t0=$(date +%s.%N)
    sleep "$1"
    c1=$(cpu_ticks "$BAL_PID"); r1=$(hb_received); t1=$(date +%s.%N)
    CPU_PCT=$(echo "scale=1; 100 * ($c1 - $c0) / $CLK_TCK / ($t1 - $t0)" | bc)
    HB_RATE=$(echo "scale=0; ($r1 - $r0) / ($t1 - $t0)" | bc)
}

# lookup_sum_count: "sum count" of the balancer's own lookup histogram (the
# time from request to answer inside the balancer: query, pick, JSON)
lookup_sum_count() {
    curl -sf "http://$HTTP/metrics" |
        awk '/^berth_lookup_duration_seconds_sum/ {s=$2} /^berth_lookup_duration_seconds_count/ {c=$2} END {print s, c}'
}

# measure_pick <label> <heartbeat-only CPU %>: sets PICK_RPS, PICK_P99 (wrk,
# plain GET, no Lua), PICK_US (mean in-balancer lookup time, microseconds)
# and PICK_CPU_US (balancer CPU per lookup from /proc, the heartbeat-only CPU
# rate taken off: what a lookup costs the server whatever shares its core)
measure_pick() {
    local s0 c0 s1 c1 t0 t1 k0 k1
    read -r s0 c0 <<<"$(lookup_sum_count)"
    k0=$(cpu_ticks "$BAL_PID"); t0=$(date +%s.%N)
    "${PIN_LOAD[@]}" wrk -t1 -c"$WRK_CONNS" -d"${PICK_SECONDS}s" --latency "http://$HTTP/v1/pick" >"$TMP/wrk-$1.txt"
    PICK_RPS=$(awk '/^Requests\/sec:/ {print $2}' "$TMP/wrk-$1.txt")
    PICK_P99=$(awk '$1 == "99%" {print $2}' "$TMP/wrk-$1.txt")
    PICK_ERR=$(awk '/Non-2xx/ {print $NF}' "$TMP/wrk-$1.txt")
    PICK_ERR=${PICK_ERR:-0}
    k1=$(cpu_ticks "$BAL_PID"); t1=$(date +%s.%N)
    read -r s1 c1 <<<"$(lookup_sum_count)"
    local reqs
    reqs=$(awk '/requests in/ {print $1}' "$TMP/wrk-$1.txt")
    PICK_CPU_US=$(python3 -c "print('%.2f' % (1e6 * max(0.0, ($k1 - $k0) / $CLK_TCK - ${2:-0} / 100.0 * ($t1 - $t0)) / max(1, $reqs)))")
    PICK_US=$(python3 -c "print('%.2f' % (1e6 * ($s1 - $s0) / max(1, $c1 - $c0)))")
}

curl_time() { # curl_time <query> -> "seconds bytes"
    curl -sf -o /dev/null -w '%{time_total} %{size_download}' "http://$HTTP/v1/health$1"
}

echo "== 3 nodes"
start_balancer small
start_sim 3 small
wait_healthy 3 10 >/dev/null
measure_cpu 5
SMALL_CPU=$CPU_PCT; SMALL_HB=$HB_RATE
measure_pick small "$SMALL_CPU"
SMALL_RPS=$PICK_RPS; SMALL_P99=$PICK_P99; SMALL_ERR=$PICK_ERR; SMALL_US=$PICK_US
SMALL_CPU_US=$PICK_CPU_US
read -r SMALL_HEALTH_S SMALL_HEALTH_B <<<"$(curl_time "")"
stop "$SIM_PID"; SIM_PID=""
stop "$BAL_PID"; BAL_PID=""
echo "3 nodes: cpu ${SMALL_CPU}% hb/s $SMALL_HB pick/s $SMALL_RPS p99 $SMALL_P99"

echo "== $NODES nodes"
start_balancer big
start_sim "$NODES" sim
REG_S=$(wait_healthy "$NODES" 30)
sleep 2
measure_cpu "$CPU_SECONDS"
BIG_CPU=$CPU_PCT; BIG_HB=$HB_RATE
measure_pick big "$BIG_CPU"
BIG_RPS=$PICK_RPS; BIG_P99=$PICK_P99; BIG_ERR=$PICK_ERR; BIG_US=$PICK_US
BIG_CPU_US=$PICK_CPU_US
measure_cpu 5 # CPU while only heartbeats flow again (sanity)
read -r FULL_S FULL_B <<<"$(curl_time "")"
read -r PAGE_S PAGE_B <<<"$(curl_time "?limit=100&offset=5000")"
read -r DOWN_S DOWN_B <<<"$(curl_time "?state=down&limit=100")"
read -r COUNTS_S COUNTS_B <<<"$(curl_time "?limit=0")"
BEFORE=$(health "?limit=0")
PANIC_BEFORE=$(jget 'h["panic"]["active"]' <<<"$BEFORE")

echo "== kill -9 the balancer, start a new one"
kill -KILL "$BAL_PID"; wait "$BAL_PID" 2>/dev/null || true
SIM_DROPPED_0=$(tail -1 "$TMP/sim-sim.jsonl" | jget 'h["send_dropped"]')
T_KILL=$(date +%s.%N)
start_balancer restart
T_UP=$(date +%s.%N)
SIM_DROPPED_UP=$(tail -1 "$TMP/sim-sim.jsonl" | jget 'h["send_dropped"]')
RESTART_S=$(wait_healthy "$NODES" 10 || true)
sleep 1.2 # one more stats line from the simulator
SIM_DROPPED_1=$(tail -1 "$TMP/sim-sim.jsonl" | jget 'h["send_dropped"]')
AFTER=$(health "?limit=0")
HB_DROPPED=$(jget 'h["heartbeats"]["dropped"]' <<<"$AFTER")
REPLIES_DROPPED=$(jget 'h["heartbeats"]["replies"]["dropped"]' <<<"$AFTER")
PANIC_AFTER=$(jget 'h["panic"]["active"]' <<<"$AFTER")
DOWNTIME_S=$(echo "scale=2; ($T_UP - $T_KILL) / 1" | bc)

pct() { echo "scale=1; 100 * ($1 - $2) / $2" | bc; }
RPS_DIFF=$(pct "$BIG_RPS" "$SMALL_RPS")

mkdir -p "$OUT_DIR"
{
    echo "# berth scale benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "One berth-balancer (\`--interval $INTERVAL\`, single-threaded) against \`tests/tools/hb_sim\`"
    echo "on the same host ($(nproc) cores; ${PIN_BAL[*]:-no pinning} for the balancer, ${PIN_LOAD[*]:-no pinning}"
    echo "for the simulator and wrk). Simulated nodes heartbeat at 1 Hz with ±10% jitter, 50 DEALER sockets."
    echo "Lookups: \`wrk -t1 -c$WRK_CONNS -d${PICK_SECONDS}s --latency /v1/pick\` (plain GET, keep-alive),"
    echo "run while the nodes keep heartbeating."
    echo
    echo "| | 3 nodes | $NODES nodes | target |"
    echo "|---|---|---|---|"
    echo "| balancer CPU (% of one core, heartbeats only) | $SMALL_CPU | $BIG_CPU | < 25 |"
    echo "| heartbeats processed / s | $SMALL_HB | $BIG_HB | $NODES |"
    echo "| /v1/pick lookups / s | $SMALL_RPS | $BIG_RPS ($RPS_DIFF %) | within 10 % |"
    echo "| /v1/pick p99 | $SMALL_P99 | $BIG_P99 | |"
    echo "| /v1/pick non-2xx | $SMALL_ERR | $BIG_ERR | 0 |"
    echo "| mean time inside the balancer per lookup (µs, berth_lookup_duration_seconds) | $SMALL_US | $BIG_US | |"
    echo "| balancer CPU per lookup (µs, /proc, heartbeat-only CPU rate taken off) | $SMALL_CPU_US | $BIG_CPU_US ($(pct "$BIG_CPU_US" "$SMALL_CPU_US") %) | |"
    echo "| /v1/health (all nodes) time / size | ${SMALL_HEALTH_S} s / $SMALL_HEALTH_B B | ${FULL_S} s / $FULL_B B | |"
    echo "| /v1/health?limit=100&offset=5000 | | ${PAGE_S} s / $PAGE_B B | |"
    echo "| /v1/health?state=down&limit=100 | | ${DOWN_S} s / $DOWN_B B | |"
    echo "| /v1/health?limit=0 (counts only) | | ${COUNTS_S} s / $COUNTS_B B | |"
    echo "| first registration, all healthy after | | ${REG_S} s | |"
    echo
    echo "## Balancer restart (kill -9, new process on the same ports)"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| balancer down for | ${DOWNTIME_S} s |"
    echo "| all $NODES healthy again, after the new balancer answered | ${RESTART_S} s (target: within 3 intervals = 3 s) |"
    echo "| heartbeats the new balancer dropped or rejected | $HB_DROPPED |"
    echo "| replies the new balancer could not queue | $REPLIES_DROPPED |"
    echo "| simulator sends refused while no balancer listened | $(( SIM_DROPPED_UP - SIM_DROPPED_0 )) |"
    echo "| simulator sends refused after the new balancer was up, before its DEALERs had reconnected (ZMQ_IMMEDIATE, as on real nodes; not a full buffer: 200 nodes share a 10,000-message SNDHWM) | $(( SIM_DROPPED_1 - SIM_DROPPED_UP )) |"
    echo "| panic before / after restart | $PANIC_BEFORE / $PANIC_AFTER |"
    echo
    echo "## Raw wrk output"
    echo
    echo '### 3 nodes'
    echo '```'
    cat "$TMP/wrk-small.txt"
    echo '```'
    echo "### $NODES nodes"
    echo '```'
    cat "$TMP/wrk-big.txt"
    echo '```'
} >"$OUT"
echo "wrote $OUT"
cat "$OUT"
