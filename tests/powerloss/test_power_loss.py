"""Power loss, many times over: a node journals onto powerfs (everything not
fsynced is lost at a power cut) while clients send at a steady rate; the
power goes at random moments and at chosen ones (right at a segment roll,
at a retention delete, inside a burst of fsyncs, with and without a torn
tail), the node is killed with it and restarted on what survived. Every
(message id, SHA-256, seq) a client saw acknowledged must then be in the
recovered journal and in the node's feed under that seq: 0 lost.

The negative control runs the same procedure with --fsync off, which
acknowledges before the disk has the record: there it must find acknowledged
messages missing, or this test could not tell a durable journal from one
that is not."""
import hashlib
import os
import random
import re
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import cluster  # noqa: E402
import journal_file  # noqa: E402
import powermount  # noqa: E402

RUN_S = float(os.environ.get("BERTH_POWER_SECONDS", "45"))      # the fsync'd run
CONTROL_CYCLES = int(os.environ.get("BERTH_POWER_CONTROL_CYCLES", "4"))
CLIENTS = 2
RATE = 150            # messages a second per client
SEGMENT = "16KiB"     # small: rolls every ~100 records
RETAIN = "256KiB"    # small: retention deletes segments all the time
INTERVAL = "250ms"    # heartbeat interval; the waits below derive from it
FEED_READ_S = 90      # longest a feed read of the whole journal may take


def payload(client, mid):
    """Data of message mid: its name, then a length that varies."""
    head = ("%s-%08d-" % (client, mid)).encode()
    return head + hashlib.sha256(head).hexdigest().encode()[: (mid * 7) % 64]


class Client(threading.Thread):
    """Sends numbered messages to node 1 at RATE a second, one at a time,
    while `running` is set; reconnects after any failure. Records what was
    acknowledged: (message id, sha256, seq)."""

    def __init__(self, c, name, running, stop):
        super().__init__(daemon=True)
        self.c, self.name, self.running, self.stop = c, name, running, stop
        self.acked = []
        self.errors = 0
        self.mid = 0

    def run(self):
        period = 1.0 / RATE
        while not self.stop.is_set():
            if not self.running.wait(0.05):
                continue
            try:
                s = cluster.Session(self.c.ca, self.c.node_addr(1), timeout=2.0)
            except OSError:
                self.errors += 1
                time.sleep(period)
                continue
            try:
                s.hello(self.name)
                rid = 2
                next_at = time.monotonic()
                while self.running.is_set() and not self.stop.is_set():
                    self.mid += 1
                    data = payload(self.name, self.mid)
                    f = s.request(cluster.SEND, rid, cluster.send_body(self.mid, data), timeout=2.0)
                    rid += 1
                    if f.type != cluster.ACK:
                        self.errors += 1
                        break  # the node refused it (its disk is gone): not acknowledged
                    mid, digest = f.ack()
                    assert mid == self.mid and digest == hashlib.sha256(data).hexdigest(), f
                    self.acked.append((self.mid, digest, journal_file.ack_seq(f)))
                    next_at += period
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        next_at = time.monotonic()
            except (OSError, cluster.Closed, AssertionError):
                self.errors += 1
            finally:
                s.close()


def deleted_segments(c):
    """First seqs of the segments the node's retention deleted (from every
    log of node1, earlier runs included)."""
    firsts = set()
    for name in os.listdir(c.dir):
        if name.startswith("node1.log"):
            with open(os.path.join(c.dir, name), "rb") as f:
                for m in re.finditer(rb"journal_segment_deleted .*?segment=(\d{20})\.seg", f.read()):
                    firsts.add(int(m.group(1)))
    return firsts


def read_feed(c, feed_ep, first, count):
    """count raw records from the node's feed, from seq first: {seq: record}."""
    out = os.path.join(c.dir, "feed.out")
    if os.path.exists(out):
        os.unlink(out)
    # Bounded by count; the duration only stops a feed that never ends (a
    # loaded machine reads a large journal through FUSE slowly).
    rc, _, err = c.run_cli(["tail", "--feed", feed_ep, "--from", str(first), "--count", str(count),
                            "--out", out, "--duration", "%ds" % FEED_READ_S],
                           timeout=FEED_READ_S + 30)
    assert rc == 0, "berth tail: %s" % err
    recs = {}
    for off, rec in journal_file.parse_segment(out):
        assert off != "bad", "the feed sent a bad record"
        recs[rec["seq"]] = rec
    return recs


def verify(c, jdir, feed_ep, clients, totals):
    """Checks every acknowledged message against the recovered journal and
    the feed; returns the number lost."""
    recs = {r["seq"]: r for r in journal_file.read_journal(jdir)}
    first = min(recs) if recs else None
    feed = read_feed(c, feed_ep, first, len(recs)) if recs else {}
    deleted = deleted_segments(c)
    lost = []
    retired = checked = 0
    for cl in clients:
        for mid, digest, seq in cl.acked:
            if first is not None and seq < first and any(d <= seq for d in deleted):
                retired += 1  # deleted by retention, as configured
                continue
            checked += 1
            for where, r in (("journal", recs.get(seq)), ("feed", feed.get(seq))):
                if (not r or r["id"] != mid or r["client"] != cl.name
                        or hashlib.sha256(r["data"]).hexdigest() != digest):
                    lost.append((where, cl.name, mid, seq))
    totals["checked"] = checked
    totals["checks"] = totals.get("checks", 0) + checked
    totals["retired"] = retired
    return lost


def run(c, fsync, seconds, max_cycles, rng, stop_when_lost=False):
    """One series of power cuts; returns totals."""
    feed_port = cluster.free_ports(1)[0]
    feed_ep = "tcp://127.0.0.1:%d" % feed_port
    base = os.path.join(c.dir, "power-%s" % fsync)
    os.makedirs(base)
    totals = {"fsync": fsync, "cycles": 0, "acked": 0, "lost": 0, "kinds": {}}
    with powermount.PowerMount(base) as m:
        jdir = os.path.join(m.mnt, "journal")
        node_extra = ["--journal-dir", jdir, "--fsync", fsync, "--journal-segment-bytes", SEGMENT,
                      "--journal-retain-bytes", RETAIN, "--feed", feed_ep,
                      "--feed-plaintext"]
        running, stop = threading.Event(), threading.Event()
        clients = [Client(c, "power%d" % k, running, stop) for k in range(CLIENTS)]
        c.start_node(1, node_extra)
        journal_file.wait_serving(c, 1)
        for cl in clients:
            cl.start()
        t_end = time.monotonic() + seconds
        lost = []
        try:
            while time.monotonic() < t_end and totals["cycles"] < max_cycles:
                running.set()
                kind = rng.choice(["random", "random", "roll", "delete", "fsync"])
                torn = rng.random() < 0.5
                seed = rng.randrange(1 << 30)
                if kind == "random":
                    time.sleep(rng.uniform(2, 8) * c.interval_s)
                    m.crash(torn=torn, seed=seed)
                else:
                    op, n = {"roll": ("create", 1), "delete": ("unlink", 1),
                             "fsync": ("fsync", rng.randint(1, 60))}[kind]
                    time.sleep(rng.uniform(1, 3) * c.interval_s)
                    m.command("arm %s %d%s %d" % (op, n, " torn" if torn else "", seed))
                    deadline = time.monotonic() + 40 * c.interval_s
                    while not m.stats()["dead"] and time.monotonic() < deadline:
                        time.sleep(c.interval_s / 10)
                    if not m.stats()["dead"]:
                        kind = "random"  # the moment never came: cut the power now
                        m.crash(torn=torn, seed=seed)
                totals["kinds"][kind] = totals["kinds"].get(kind, 0) + 1
                # The power is gone: so is the node, and every client sees it.
                c.kill_node(1, signal.SIGKILL)
                running.clear()
                m.remount()
                c.start_node(1, node_extra)
                journal_file.wait_serving(c, 1, timeout=30)
                totals["cycles"] += 1
                lost = verify(c, jdir, feed_ep, clients, totals)
                if lost and (stop_when_lost or fsync != "off"):
                    break
        finally:
            stop.set()
            running.clear()
            for cl in clients:
                cl.join(10)
            c.kill_node(1, signal.SIGKILL)
        totals["acked"] = sum(len(cl.acked) for cl in clients)
        totals["lost"] = len({(name, mid) for _, name, mid, _ in lost})
        totals["lost_sample"] = lost[:5]
        totals["client_errors"] = sum(cl.errors for cl in clients)
        totals["powerfs"] = m.stats()
    return totals


def report(t):
    print("power loss --fsync %s: %d cycles %r, %d acknowledged, %d (message, cycle) checks "
          "(%d still on disk at the end, %d deleted by retention as configured), %d lost; "
          "powerfs: %d bytes and %d files lost, %d torn bytes kept"
          % (t["fsync"], t["cycles"], t["kinds"], t["acked"], t.get("checks", 0),
             t.get("checked", 0), t.get("retired", 0), t["lost"], t["powerfs"]["bytes_lost"],
             t["powerfs"]["files_lost"], t["powerfs"]["torn_bytes_kept"]), flush=True)


def test():
    seed = int(os.environ.get("BERTH_POWER_SEED", str(int(time.time()))))
    print("seed %d (BERTH_POWER_SEED)" % seed, flush=True)
    rng = random.Random(seed)
    budget = RUN_S + 120
    with cluster.Cluster(n=1, interval=INTERVAL, start_nodes=False, budget=budget) as c:
        safe = run(c, "batch", RUN_S, 10 ** 6, rng)
        report(safe)
        assert safe["lost"] == 0, "acknowledged messages lost with --fsync batch: %r" % (
            safe["lost_sample"],)
        assert safe["cycles"] >= 10, "too few power cuts: %d" % safe["cycles"]
        assert safe["checked"] > 0 and safe["acked"] > RUN_S * RATE * CLIENTS * 0.2, \
            "too few messages got through"
        for kind in ("roll", "delete", "fsync"):
            assert safe["kinds"].get(kind), "no power cut at a %s" % kind

        control = run(c, "off", RUN_S, CONTROL_CYCLES, rng, stop_when_lost=True)
        report(control)
        assert control["lost"] > 0, ("--fsync off lost nothing across %d power cuts: this test "
                                     "cannot tell a durable journal from one that is not"
                                     % control["cycles"])


if __name__ == "__main__":
    powermount.skip_unless_fuse()
    cluster.main(test)
