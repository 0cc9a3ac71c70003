"""Chaos, bounded: clients send numbered messages through the balancer for a
fixed time while nodes are kill -9'd and restarted at random moments. Then
every message a client saw acknowledged must be in the journal of the node
that acknowledged it, under the seq of the ACK, with the same bytes: 0
lost. Duplicates (the client library re-sends unacknowledged messages
after a failover, with the same id) are counted and reported."""
import os
import random
import re
import signal
import subprocess
import threading
import time

import cluster
import journal_file as tj  # the journal reader and node helpers

RUN_S = float(os.environ.get("BERTH_CHAOS_SECONDS", "12"))
CLIENTS = 2
RATE = 400  # messages per second per client


def feeder(p, name, stop, rate=RATE):
    """Writes numbered lines to a `berth send` at rate a second until stop."""
    n = 0
    t0 = time.monotonic()
    try:
        while not stop.is_set():
            due = int((time.monotonic() - t0) * rate)
            chunk = []
            while n < due:
                n += 1
                chunk.append("%s-%08d\n" % (name, n))
            if chunk:
                p.stdin.write("".join(chunk).encode())
                p.stdin.flush()
            time.sleep(0.01)
    except BrokenPipeError:
        pass
    finally:
        try:
            p.stdin.close()
        except BrokenPipeError:
            pass


def test():
    rng = random.Random(int(os.environ.get("BERTH_CHAOS_SEED", str(int(time.time())))))
    with cluster.Cluster(n=3, interval="100ms") as c:
        c.wait_healthy(3)
        clients = []
        stop = threading.Event()
        for k in range(CLIENTS):
            name = "chaos%d" % k
            errf = open(os.path.join(c.dir, "%s.err" % name), "wb")
            p = subprocess.Popen([cluster.CLI_BIN, "send", "--balancer", c.balancer_url, "--ca", c.ca,
                                  "--name", name, "--retries", "50", "--timeout", "2s"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errf, cwd=c.dir, env=cluster.child_env())
            errf.close()
            c._all.append(p)  # the harness's teardown stops it whatever happens
            p.argv = ["berth", "send", name]
            out = []
            t = threading.Thread(target=feeder, args=(p, name, stop), daemon=True)
            r = threading.Thread(target=lambda p=p, out=out: out.append(p.stdout.read()),
                                 daemon=True)
            t.start()
            r.start()
            clients.append((name, p, t, r, out))

        kills = 0
        t_end = time.monotonic() + RUN_S
        while time.monotonic() < t_end:
            time.sleep(rng.uniform(0.3, 1.2))
            i = rng.randint(1, 3)
            c.kill_node(i, signal.SIGKILL)
            kills += 1
            time.sleep(rng.uniform(0.05, 0.8))
            c.start_node(i)
            tj.wait_serving(c, i)
        stop.set()

        acked = {}   # (client, id) -> (node, seq)
        lines_sent = {}
        for name, p, t, r, out in clients:
            t.join(10)
            p.wait(60)
            r.join(10)
            with open(os.path.join(c.dir, "%s.err" % name), "rb") as f:
                err = f.read().decode(errors="replace")
            assert p.returncode == 0, "%s: exit %d: %s" % (name, p.returncode, err[-2000:])
            for m in re.finditer(r"ack id=(\d+) bytes=\d+ sha256=\S+ node=(\S+) seq=(\d+)",
                                 out[0].decode()):
                acked[(name, int(m.group(1)))] = (m.group(2), int(m.group(3)))
            lines_sent[name] = sum(1 for k in acked if k[0] == name)
        # kill -9 all nodes: what was acknowledged must survive that too.
        for i in (1, 3, 2):
            c.kill_node(i, signal.SIGKILL)

        journals = {}
        for i in (1, 2, 3):
            recs = tj.read_journal(os.path.join(c.dir, "journal-node%d" % i))
            seqs = [r["seq"] for r in recs]
            assert seqs == list(range(1, len(seqs) + 1)), "node%d journal seqs not contiguous" % i
            journals["node%d" % i] = {r["seq"]: r for r in recs}
        lost = []
        for (name, mid), (node, seq) in acked.items():
            r = journals.get(node, {}).get(seq)
            want = ("%s-%08d" % (name, mid)).encode()
            if not r or r["id"] != mid or r["client"] != name or r["data"] != want:
                lost.append((name, mid, node, seq, r))
        copies = {}
        for node, recs in journals.items():
            for r in recs.values():
                key = (r["client"], r["id"])
                copies[key] = copies.get(key, 0) + 1
        dups = sum(n - 1 for n in copies.values() if n > 1)
        stored = sum(len(j) for j in journals.values())
        print("chaos: %.0fs, %d kill -9, %d messages acknowledged, %d records stored, "
              "%d lost, %d duplicates (%d messages stored more than once)"
              % (RUN_S, kills, len(acked), stored, len(lost), dups,
                 sum(1 for n in copies.values() if n > 1)))
        assert not lost, "acknowledged but not in the journal: %r" % lost[:10]
        assert len(acked) > RUN_S * RATE * CLIENTS * 0.3, "too few messages got through"
        assert kills >= 3


if __name__ == "__main__":
    cluster.main(test)
