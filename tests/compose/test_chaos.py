#!/usr/bin/env python3
"""compose chaos, bounded: two host clients send numbered messages through
both balancers for a fixed time while node containers are `docker kill`ed
and started again at random moments. Each node journals to its own named
volume, so a killed container comes back with its journal. Afterwards every
message a client saw acknowledged is in the journal of the node that
acknowledged it (copied out of the stopped containers with `docker cp`),
under the ACK's seq, with the same bytes: 0 lost. Duplicates (re-sent after
a failover, same id) are counted and reported."""
import importlib.util
import os
import random
import re
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(HERE, "..", "integration"))
import compose  # noqa: E402
from compose import CLI, NODES, check, log, wait_until  # noqa: E402
import journal_file as tj  # the journal reader and node helpers

# The process chaos test's feeder; loaded by path, as this file has its name.
_spec = importlib.util.spec_from_file_location(
    "integration_chaos", os.path.join(HERE, "..", "integration", "test_chaos.py"))
integration_chaos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(integration_chaos)

RUN_S = float(os.environ.get("BERTH_CHAOS_SECONDS", "20"))
CLIENTS = 2
RATE = 200  # messages per second per client


def serving(c, node):
    p = c.berth("ping", "--node", "127.0.0.1:%d" % c.node_ports[node], "--ca", c.ca,
                "--timeout", "1s", timeout=10)
    return p.returncode == 0


def test(c):
    rng = random.Random(int(os.environ.get("BERTH_CHAOS_SEED", str(int(time.time())))))
    c.up()
    clients = []
    stop = threading.Event()
    for k in range(CLIENTS):
        name = "chaos%d" % k
        errpath = os.path.join(c.tmp, "%s.err" % name)
        with open(errpath, "wb") as errf:
            p = subprocess.Popen([CLI, "send", "--balancer", c.balancer_url, "--ca", c.ca,
                                  "--name", name, "--retries", "50", "--timeout", "2s"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf)
        out = []
        t = threading.Thread(target=integration_chaos.feeder, args=(p, name, stop, RATE),
                             daemon=True)
        r = threading.Thread(target=lambda p=p, out=out: out.append(p.stdout.read()), daemon=True)
        t.start()
        r.start()
        clients.append((name, p, t, r, out, errpath))

    kills = 0
    try:
        t_end = time.monotonic() + RUN_S
        while time.monotonic() < t_end:
            time.sleep(rng.uniform(0.5, 2.0))
            node = rng.choice(NODES)
            c.docker("kill", c.ids[node])
            kills += 1
            time.sleep(rng.uniform(0.1, 1.0))
            c.docker("start", c.ids[node])
            wait_until(lambda: serving(c, node), 30, step=0.1, what="%s serving again" % node)
        log("%d docker kills in %.0f s" % (kills, RUN_S))
    finally:
        stop.set()

    acked = {}  # (client, id) -> (node, seq)
    for name, p, t, r, out, errpath in clients:
        t.join(10)
        try:
            p.wait(90)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
        r.join(10)
        with open(errpath, "rb") as f:
            err = f.read().decode(errors="replace")
        check(p.returncode == 0, "%s: exit %d: %s" % (name, p.returncode, err[-2000:]))
        for m in re.finditer(r"ack id=(\d+) bytes=\d+ sha256=\S+ node=(\S+) seq=(\d+)",
                             out[0].decode()):
            acked[(name, int(m.group(1)))] = (m.group(2), int(m.group(3)))

    # Kill every node once more: what was acknowledged must survive that too.
    journals = {}
    for node in NODES:
        c.docker("kill", c.ids[node])
    for node in NODES:
        dest = os.path.join(c.tmp, "journal-" + node)
        c.docker("cp", "%s:/var/lib/berth/journal" % c.ids[node], dest, timeout=120)
        recs = tj.read_journal(dest)
        journals[node] = {rec["seq"]: rec for rec in recs}
    lost = []
    for (name, mid), (node, seq) in acked.items():
        rec = journals.get(node, {}).get(seq)
        want = ("%s-%08d" % (name, mid)).encode()
        if not rec or rec["id"] != mid or rec["client"] != name or rec["data"] != want:
            lost.append((name, mid, node, seq))
    copies = {}
    for recs in journals.values():
        for rec in recs.values():
            copies[(rec["client"], rec["id"])] = copies.get((rec["client"], rec["id"]), 0) + 1
    dups = sum(n - 1 for n in copies.values() if n > 1)
    stored = sum(len(j) for j in journals.values())
    log("compose chaos: %d docker kills, %d messages acknowledged, %d records stored, "
        "%d lost, %d duplicates" % (kills, len(acked), stored, len(lost), dups))
    check(not lost, "acknowledged but not in the journal: %r" % lost[:10])
    check(len(acked) > RUN_S * RATE * CLIENTS * 0.3, "too few messages got through: %d" % len(acked))
    check(kills >= 3, "only %d kills" % kills)


if __name__ == "__main__":
    compose.main(test, bound_s=400)
