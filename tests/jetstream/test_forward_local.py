"""--jetstream with --ack-after local (the default) against a real 3-server
JetStream cluster: every acknowledged message reaches the stream once, in
journal order, with the forwarder's headers; a node killed and restarted
resumes from its durable position with no gap and no duplicate; a node
whose machine is lost (kill -9, journal deleted) loses at most what it had
not forwarded, which its heartbeats reported as lag."""
import os
import shutil
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import cluster  # noqa: E402
import journal_file  # noqa: E402
import jsverify  # noqa: E402
import natscluster  # noqa: E402

STREAM = "BERTH"


def send_batch(c, i, first, n, name):
    """n SENDs to node i; returns {(name, mid): sha256} of the acknowledged."""
    acked = {}
    seqs = journal_file.send_many(c, i, first, n, name=name)
    import hashlib
    for mid in seqs:
        acked[(name, mid)] = hashlib.sha256(b"msg-%d" % mid).hexdigest()
    return acked


def wait_forwarded(nats, count, timeout):
    def ok():
        info = nats.js_json(["info", "--stream", STREAM])
        return info if info["messages"] >= count else None
    return cluster.wait_until(ok, timeout, 0.05, "%d messages in the stream" % count)


def test():
    if not natscluster.find_nats_server():
        print("SKIP: nats-server is not installed (Debian package nats-server)")
        sys.exit(77)
    base = tempfile.mkdtemp(prefix="berth-jslocal-")
    os.makedirs(os.path.join(base, "nats"))
    try:
        with natscluster.NatsCluster(os.path.join(base, "nats"), n=3) as nats:
            rc, _, err = nats.js(["create", "--stream", STREAM, "--subjects", "berth.>",
                                  "--replicas", "3", "--duplicates", "120000"])
            assert rc == 0, err
            nats.wait_stream_leader(STREAM)
            js = ["--jetstream", nats.urls(), "--jetstream-stream", STREAM]
            with cluster.Cluster(n=2, node_args=js) as c:
                c.wait_healthy(2)
                acked = {}
                acked.update(send_batch(c, 1, 1, 300, "fwd-a"))
                acked.update(send_batch(c, 2, 1, 200, "fwd-b"))
                wait_forwarded(nats, 500, 20)
                recs = jsverify.stream_records(nats, STREAM)
                missing, dups, bad = jsverify.check_exactly_once(recs, acked)
                assert not missing and not dups and not bad, (missing[:5], dups, bad[:3])
                seqs = jsverify.per_node_seqs(recs)
                assert seqs["node1"] == list(range(1, 301)) and seqs["node2"] == list(range(1, 201))
                r0 = [r for r in recs if r["node"] == "node1" and r["seq"] == 1][0]
                assert r0["subject"] == "berth.node1" and r0["msg_id"] == "node1/1", r0
                # In journal order within a node's subject.
                order = [r["seq"] for r in recs if r["node"] == "node1"]
                assert order == sorted(order), "node1's records out of order in the stream"
                print("500 acknowledged, 500 in the stream, each once, in journal order")

                # kill -9 and restart: the forwarder resumes from its position.
                c.kill_node(1, signal.SIGKILL)
                c.start_node(1)
                journal_file.wait_serving(c, 1)
                acked.update(send_batch(c, 1, 1000, 100, "fwd-a"))
                wait_forwarded(nats, 600, 20)
                time.sleep(4 * c.interval_s)  # anything more would be a duplicate: let it come
                recs = jsverify.stream_records(nats, STREAM)
                missing, dups, bad = jsverify.check_exactly_once(recs, acked)
                assert not missing and not dups and not bad, (missing[:5], dups, bad[:3])
                assert jsverify.per_node_seqs(recs)["node1"] == list(range(1, 401)), \
                    "gap or duplicate after the restart"
                print("restart: resumed at seq 301, 100 more, no gap, no duplicate")

                # Machine loss in local mode: what is lost is at most the lag
                # the node last reported (here: nothing, it had caught up).
                h = c.node_health("node2")
                assert h and "forward" in h, "no forwarder figures in /v1/health: %r" % h
                status, metrics, _ = cluster.http_get(c.http_port, "/metrics")
                assert status == 200 and b'berth_node_forward_lag_records{node="node2"}' in \
                    metrics, "no forwarder lag in /metrics"
                c.kill_node(2, signal.SIGKILL)
                shutil.rmtree(os.path.join(c.dir, "journal-node2"))
                recs = jsverify.stream_records(nats, STREAM)
                have = sum(1 for r in recs if r["node"] == "node2")
                lag = h["forward"]["lag_records"]
                assert 200 - have <= lag, "lost %d, reported lag %d" % (200 - have, lag)
                print("machine loss (local): %d of 200 in the stream, reported lag %d"
                      % (have, lag))

                # JetStream lost its stream: --jetstream-replay-from re-publishes
                # from the journal.
                rc, _, err = nats.js(["delete", "--stream", STREAM])
                assert rc == 0, err
                rc, _, err = nats.js(["create", "--stream", STREAM, "--subjects", "berth.>",
                                      "--replicas", "3", "--duplicates", "120000"])
                assert rc == 0, err
                nats.wait_stream_leader(STREAM)
                c.kill_node(1, signal.SIGKILL)
                c.start_node(1, ["--jetstream-replay-from", "1"])
                journal_file.wait_serving(c, 1)
                wait_forwarded(nats, 400, 20)
                replayed = jsverify.per_node_seqs(jsverify.stream_records(nats, STREAM))
                assert replayed.get("node1") == list(range(1, 401)), "replay incomplete"
                print("stream lost and re-created: --jetstream-replay-from 1 re-published "
                      "node1's 400 records")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    cluster.main(test)
