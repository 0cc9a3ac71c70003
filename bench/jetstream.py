#!/usr/bin/python3
"""bench/jetstream.py: 256-byte SENDs acknowledged per second, and their
p99, by a node with --ack-after replicated (journal fsync AND the PubAck of
a 3-replica JetStream stream), side by side with the same messages
published straight into the same JetStream cluster by libnats's async
publish (tests/tools/js_tool bench: the peer), in one run; then the same
load with --ack-after local, sampling the forwarding lag the node reports.

Node pinned to CPU 0 (one worker), load generators (berth bench, js_tool)
to CPU 1; the three nats-servers are not pinned (they serve both sides).
Prints a Markdown report; --save also writes bench/results/jetstream-<date>.md.

  bench/jetstream.py [--duration SECONDS] [--save]
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "jetstream"))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
BUILD = os.environ.get("BERTH_BUILD_DIR") or os.path.join(SRC, "build")
os.environ["BERTH_BUILD_DIR"] = BUILD

import cluster  # noqa: E402
import natscluster  # noqa: E402

SIZE = 256
CONNECTIONS, PIPELINE = 16, 32
STREAM = "BENCH"


def berth_bench(c, seconds, connections=CONNECTIONS, pipeline=PIPELINE):
    out = subprocess.run(["taskset", "-c", "1", cluster.CLI_BIN, "bench", "--mode", "send",
                          "--node", c.node_addr(1), "--ca", c.ca, "--size", str(SIZE),
                          "--connections", str(connections), "--pipeline", str(pipeline),
                          "--duration", "%ds" % seconds, "--json"],
                         capture_output=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError("berth bench: %s" % out.stderr.decode(errors="replace")[-500:])
    return json.loads(out.stdout)


def run_node(c, nats, ack_after):
    c.start_node(1, ["--workers", "1", "--jetstream", nats.urls(), "--jetstream-stream", STREAM,
                     "--ack-after", ack_after, "--log-level", "warn"], )
    c.wait_healthy(1, timeout=30)


def sample_lag(c, stop, out):
    """Largest forwarding lag the node reports while stop is not set."""
    while not stop.is_set():
        n = c.node_health("node1") or {}
        f = n.get("forward") or {}
        out.append((f.get("lag_records", 0), f.get("lag_ms", 0)))
        time.sleep(c.interval_s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--save", action="store_true")
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix="berth-bench-js-")
    os.makedirs(os.path.join(base, "nats"))
    rows = []
    try:
        with natscluster.NatsCluster(os.path.join(base, "nats"), n=3) as nats:
            rc, _, err = nats.js(["create", "--stream", STREAM, "--subjects", "berth.>",
                                  "--replicas", "3", "--duplicates", "120000", "--timeout",
                                  "15000"], timeout=20)
            assert rc == 0, err
            nats.wait_stream_leader(STREAM)
            # The peer: as many messages as berth acknowledges in the run's
            # time, published straight in, in flight as many as berth's load.
            with cluster.Cluster(n=1, start_nodes=False, plaintext=True,
                                 node_args=["--max-connections-per-addr", "0",
                                            "--max-handshakes-per-addr", "0"],
                                 budget=a.duration * 4 + 240) as c:
                run_node(c, nats, "replicated")
                repl = berth_bench(c, a.duration)
                # The client's in-flight messages are split between the
                # journal's fsync, the forwarder and JetStream: with the
                # same 512 the stream sees fewer than the peer gives it.
                repl4 = berth_bench(c, a.duration, CONNECTIONS * 4)
                fw = (c.node_health("node1") or {}).get("forward") or {}
                repl_errors, repl_dups = fw.get("errors", 0), fw.get("duplicates", 0)
                c.kill_node(1)
                count = max(1000, int(repl["rate"] * a.duration))
                rc, out, err = nats.js(["bench", "--subject", "berth.peer", "--count", str(count),
                                        "--size", str(SIZE), "--max-pending",
                                        str(CONNECTIONS * PIPELINE), "--timeout", "10000"],
                                       timeout=a.duration * 4 + 60)
                assert rc == 0, err
                peer = json.loads(out)
                run_node(c, nats, "local")
                stop, lags = threading.Event(), []
                t = threading.Thread(target=sample_lag, args=(c, stop, lags), daemon=True)
                t.start()
                # At a rate below what the stream takes straight in (fewer
                # in flight), so the lag says whether forwarding keeps up.
                local = berth_bench(c, a.duration, 4, 8)
                stop.set()
                t.join(5)
                t0 = time.monotonic()
                cluster.wait_until(lambda: ((c.node_health("node1") or {}).get("forward") or {})
                                   .get("lag_records", 1) == 0, 60, 0.05, "forwarder caught up")
                drain_s = time.monotonic() - t0
                c.kill_node(1)
        max_lag = max((l for l in lags), default=(0, 0))
        lat = lambda j, k: j["latency_us"][k] / 1000.0  # noqa: E731
        rows.append("| berth, `--ack-after replicated` (node CPU 0, 1 worker) | %.0f | %.2f | %.2f |"
                    % (repl["rate"], lat(repl, "p50"), lat(repl, "p99")))
        rows.append("| libnats async publish straight into the stream (js_tool, CPU 1), %d in flight | %.0f | %.2f | %.2f |"
                    % (CONNECTIONS * PIPELINE, peer["rate"], peer["p50_ms"], peer["p99_ms"]))
        rows.append("| berth, `--ack-after replicated`, 4x the connections (%d in flight) | %.0f | %.2f | %.2f |"
                    % (CONNECTIONS * PIPELINE * 4, repl4["rate"], lat(repl4, "p50"), lat(repl4, "p99")))
        rows.append("| berth, `--ack-after local` (forwarding asynchronous), 4 x 8 in flight | %.0f | %.2f | %.2f |"
                    % (local["rate"], lat(local, "p50"), lat(local, "p99")))
        ratio = repl["rate"] / peer["rate"] if peer["rate"] else 0
        p99r = lat(repl, "p99") / peer["p99_ms"] if peer["p99_ms"] else 0
        report = "\n".join([
            "# berth-node into NATS JetStream: acknowledged 256-byte SENDs",
            "",
            "%s, %s, %d CPUs; nats-server %s, 3 servers, stream R3 file storage, "
            "duplicate window 2 min. berth bench --mode send --size %d --connections %d "
            "--pipeline %d for %d s; the peer publishes the same number of %d-byte messages "
            "with %d in flight." % (datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
                                    " ".join(platform.uname()[0:3:2]), os.cpu_count(),
                                    subprocess.run(["nats-server", "--version"],
                                                   capture_output=True, text=True).stdout.strip(),
                                    SIZE, CONNECTIONS, PIPELINE, a.duration, SIZE,
                                    CONNECTIONS * PIPELINE),
            "",
            "| what | acknowledged/s | p50 ms | p99 ms |",
            "|---|---|---|---|",
        ] + rows + [
            "",
            "berth replicated / direct publish: **%.2f×** the rate, p99 **%.2f×** (goals: "
            "≥ 0.75×, ≤ 2×). The forwarder restarted %d times in the replicated runs "
            "(%d re-sends dropped as duplicates)." % (ratio, p99r, repl_errors, repl_dups),
            "",
            "`--ack-after local` at %.0f/s: largest forwarding lag the node reported %d records "
            "/ %d ms (goal < 1 s); after the load stopped it caught up in %.2f s."
            % (local["rate"], max_lag[0], max_lag[1], drain_s),
            "",
        ])
        print(report)
        if a.save:
            path = os.path.join(HERE, "results", "jetstream-%s.md" %
                                datetime.date.today().isoformat())
            with open(path, "w") as f:
                f.write(report)
            print("saved %s" % path, file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
