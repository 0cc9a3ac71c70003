"""--ack-after replicated against a real 3-server JetStream cluster (R3
stream, file storage): every acknowledged message is in the stream exactly
once, also when the client fails over mid-stream and re-sends to another
node; a node whose machine is lost (kill -9 and its journal deleted) while
clients send loses nothing it acknowledged; one NATS server killed under
load costs clients nothing; with two killed (no quorum) the nodes refuse
SEND with ERROR unavailable and leave rotation within the heartbeat bound,
and come back, with their backlog forwarded, when the servers do."""
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import cluster  # noqa: E402
import journal_file  # noqa: E402
import jsverify  # noqa: E402
import natscluster  # noqa: E402

STREAM = "BERTH"
RATE = 150          # messages a second per client
INTERVAL = "250ms"  # heartbeat; the bounds below derive from it
UNHEALTHY_AFTER_S = 10  # --jetstream-unhealthy-after: above JetStream's 4-9 s leader election


class Sender:
    """One `berth send` through the balancers, fed numbered lines at RATE a
    second; collects its ack lines."""

    def __init__(self, c, name):
        self.name = name
        self.errf = open(os.path.join(c.dir, "%s.err" % name), "wb")
        self.p = subprocess.Popen([cluster.CLI_BIN, "send", "--balancer", c.balancer_url, "--ca",
                                   c.ca, "--name", name, "--retries", "60", "--timeout", "2s"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errf,
                                  cwd=c.dir, env=cluster.child_env())
        c._all.append(self.p)
        self.p.argv = ["berth", "send", name]
        self.stop = threading.Event()
        self.out = []
        self.sent = 0
        self.t = threading.Thread(target=self._feed, daemon=True)
        self.r = threading.Thread(target=lambda: self.out.append(self.p.stdout.read()),
                                  daemon=True)
        self.t.start()
        self.r.start()

    def _feed(self):
        t0 = time.monotonic()
        try:
            while not self.stop.is_set():
                due = int((time.monotonic() - t0) * RATE)
                chunk = []
                while self.sent < due:
                    self.sent += 1
                    chunk.append("%s-%08d\n" % (self.name, self.sent))
                if chunk:
                    self.p.stdin.write("".join(chunk).encode())
                    self.p.stdin.flush()
                time.sleep(0.01)
        except BrokenPipeError:
            pass
        finally:
            try:
                self.p.stdin.close()
            except BrokenPipeError:
                pass

    def finish(self, c):
        """Stops feeding, waits for the CLI; returns {(name, id): sha256}."""
        self.stop.set()
        self.t.join(10)
        self.p.wait(90)
        self.r.join(10)
        self.errf.close()
        with open(os.path.join(c.dir, "%s.err" % self.name), "rb") as f:
            err = f.read().decode(errors="replace")
        assert self.p.returncode == 0, "%s: exit %d: %s" % (self.name, self.p.returncode,
                                                            err[-2000:])
        acked = {}
        for m in re.finditer(r"ack id=(\d+) bytes=\d+ sha256=(\S+) node=\S+ seq=\d+",
                             self.out[0].decode()):
            acked[(self.name, int(m.group(1)))] = m.group(2)
        return acked, err


def merged(*ds):
    out = {}
    for d in ds:
        out.update(d)
    return out


def check_stream(nats, acked, what):
    recs = jsverify.stream_records(nats, STREAM)
    missing, dups, bad = jsverify.check_exactly_once(recs, acked)
    assert not bad, "%s: records whose payload does not match: %r" % (what, bad[:3])
    assert not missing, "%s: %d acknowledged messages not in the stream: %r" % (
        what, len(missing), missing[:10])
    assert not dups, "%s: stored more than once: %r" % (what, list(dups.items())[:10])
    return recs


def test():
    if not natscluster.find_nats_server():
        print("SKIP: nats-server is not installed (Debian package nats-server)")
        sys.exit(77)
    base = tempfile.mkdtemp(prefix="berth-jsrepl-")
    os.makedirs(os.path.join(base, "nats"))
    try:
        with natscluster.NatsCluster(os.path.join(base, "nats"), n=3) as nats:
            rc, _, err = nats.js(["create", "--stream", STREAM, "--subjects", "berth.>",
                                  "--replicas", "3", "--duplicates", "120000"])
            assert rc == 0, err
            nats.wait_stream_leader(STREAM)
            js = ["--jetstream", nats.urls(), "--jetstream-stream", STREAM, "--ack-after",
                  "replicated", "--jetstream-timeout", "1s",
                  "--jetstream-unhealthy-after", "%ds" % UNHEALTHY_AFTER_S]
            with cluster.Cluster(n=3, interval=INTERVAL, node_args=js, budget=400) as c:
                c.wait_healthy(3)
                # Out of rotation: the grace, one probe, one heartbeat, and slack.
                bound = UNHEALTHY_AFTER_S + 3 * c.interval_s + 2.0

                # 1. Failover: the node a client uses dies mid-stream; the
                # client re-sends elsewhere, the stream stores each once.
                s1 = Sender(c, "fo")
                time.sleep(8 * c.interval_s)
                busy = [i for i in (1, 2, 3)
                        if (c.node_health(c.node_id(i)) or {}).get("sessions", 0) > 0]
                victim = busy[0] if busy else 1
                c.kill_node(victim, signal.SIGKILL)
                time.sleep(8 * c.interval_s)
                c.start_node(victim)
                journal_file.wait_serving(c, victim)
                acked1, err1 = s1.finish(c)
                assert len(acked1) > 0.5 * s1.sent, "only %d of %d acknowledged" % (
                    len(acked1), s1.sent)
                recs = check_stream(nats, acked1, "failover")
                dup_reported = sum((c.node_health(c.node_id(i)) or {}).get("forward", {})
                                   .get("duplicates", 0) for i in (1, 2, 3))
                print("failover: %d acknowledged, %d in the stream, none twice (%d re-sends "
                      "JetStream dropped as duplicates)" % (len(acked1), len(recs), dup_reported))
                c.wait_healthy(3)

                # 2. Machine loss: kill -9 a node and delete its journal while
                # clients send; nothing acknowledged is lost.
                s2 = Sender(c, "loss")
                time.sleep(8 * c.interval_s)
                busy = [i for i in (1, 2, 3)
                        if (c.node_health(c.node_id(i)) or {}).get("sessions", 0) > 0]
                victim = busy[0] if busy else 2
                c.kill_node(victim, signal.SIGKILL)
                shutil.rmtree(os.path.join(c.dir, "journal-%s" % c.node_id(victim)))
                time.sleep(8 * c.interval_s)
                acked2, _ = s2.finish(c)
                check_stream(nats, merged(acked1, acked2), "machine loss")
                print("machine loss of %s (journal deleted): %d acknowledged, all in the stream"
                      % (c.node_id(victim), len(acked2)))
                c.start_node(victim)  # an empty journal: it forwards from seq 1 again
                c.wait_healthy(3)

                # 3. One NATS server down under load: no client error.
                s3 = Sender(c, "one")
                time.sleep(4 * c.interval_s)
                nats.kill(2)
                time.sleep(12 * c.interval_s)
                acked3, err3 = s3.finish(c)
                assert "ERROR" not in err3 and "unavailable" not in err3, err3[-1000:]
                check_stream(nats, merged(acked1, acked2, acked3), "one server down")
                print("one NATS server down: %d acknowledged, all in the stream, no client "
                      "error" % len(acked3))

                # 4. Two down: no quorum. SEND gets ERROR unavailable and the
                # nodes leave rotation within the bound.
                nats.kill(1)
                t0 = time.monotonic()
                cluster.wait_until(lambda: not c.healthy_ids(), bound, c.interval_s / 5,
                                   "every replicated node out of rotation")
                out_s = time.monotonic() - t0
                reasons = {(c.node_health(c.node_id(i)) or {}).get("reason") for i in (1, 2, 3)}
                with c.session(1) as s:
                    s.hello("noquorum")
                    f = s.request(cluster.SEND, 2, cluster.send_body(1, b"x"))
                    assert f.type == cluster.ERROR and f.error()[0] == cluster.ERR_UNAVAILABLE, f
                print("no quorum: out of rotation after %.2fs (%s), SEND -> ERROR unavailable"
                      % (out_s, sorted(r for r in reasons if r)))

                # Back: the servers return, the nodes return to rotation.
                nats.start(1)
                nats.start(2)
                nats.wait_stream_leader(STREAM)
                t0 = time.monotonic()
                c.wait_healthy(3, timeout=30)
                print("quorum back: all 3 nodes healthy after %.2fs" % (time.monotonic() - t0))
                more = journal_file.send_many(c, 1, 900000, 20, name="after")
                acked4 = {("after", mid): hashlib.sha256(b"msg-%d" % mid).hexdigest()
                          for mid in more}
                cluster.wait_until(lambda: not jsverify.check_exactly_once(
                    jsverify.stream_records(nats, STREAM), acked4)[0], 20, 0.2,
                    "the messages sent after the outage in the stream")
                check_stream(nats, merged(acked1, acked2, acked3, acked4), "after the outage")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    cluster.main(test)
