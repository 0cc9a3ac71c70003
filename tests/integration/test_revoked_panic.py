"""Panic is bounded and never holds what the balancer itself refused.
1. A stolen key registers most of the rotation; the operator revokes it
   (its .pub removed, SIGHUP): its ids leave the rotation within one
   interval, its connection is ended, no panic, and /v1/pick never hands
   them out again.
2. Another allowed key registers most of the rotation and goes quiet:
   panic holds its ids at most --panic-hold-max, then they leave and panic
   ends (shown in /v1/health: hold_max_ms, expired)."""
import json
import os
import signal
import threading
import time

import cluster
from cluster import wait_until

zmq = cluster.require_zmq()

HOLD_MAX_MS = 2000


class Pumper(threading.Thread):
    """Registers ids on one DEALER with key `name` and heartbeats them
    every interval until stop() (the socket lives in this thread)."""

    def __init__(self, c, name, ids):
        super().__init__(daemon=True)
        self.c, self.name, self.ids = c, name, ids
        self.stop_ev = threading.Event()
        self.quiet_ev = threading.Event()  # keeps the connection, sends nothing
        self.ctx = zmq.Context()

    def run(self):
        sock = self.c.dealer(self.ctx, self.name)
        seq = 0
        boot = "%016x" % (abs(hash(self.name)) & 0xffffffffffffffff)
        try:
            for i in self.ids:
                seq += 1
                sock.send(json.dumps({"type": "register", "node": i, "boot": boot, "seq": seq,
                                      "addr": "127.0.0.1:9", "capacity": 4,
                                      "version": "thief-0"}).encode())
            while not self.stop_ev.wait(self.c.interval_s):
                for i in ([] if self.quiet_ev.is_set() else self.ids):
                    seq += 1
                    try:
                        sock.send(json.dumps({
                            "type": "heartbeat", "node": i, "boot": boot, "seq": seq,
                            "sessions": 0, "accepted": 0, "msgs_per_sec": 0.0, "healthy": True,
                            "draining": False, "reason": "",
                            "workers": [{"ticks": seq, "hs_ok": 0, "hs_failed": 0}]}).encode(),
                            zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                while sock.poll(0):
                    sock.recv()
        finally:
            sock.close(0)
            self.ctx.term()

    def quiet(self):
        self.quiet_ev.set()

    def stop(self):
        self.stop_ev.set()
        self.join(5)


def rotation(c):
    return set(c.healthy_ids())


def picks(c, n=40):
    seen = set()
    for _ in range(n):
        st, body = c.pick()
        if st == 200:
            seen.add(body["id"])
    return seen


def revoked(c):
    thief_ids = ["stolen%d" % k for k in range(4)]
    p = Pumper(c, "thief", thief_ids)
    p.start()
    try:
        wait_until(lambda: rotation(c) >= set(thief_ids) | {"node1", "node2"}, 10,
                   what="thief ids in rotation")
        os.unlink(os.path.join(c.allow_dir, "thief.pub"))
        t0 = time.monotonic()
        c.procs["balancer"].send_signal(signal.SIGHUP)
        wait_until(lambda: not (rotation(c) & set(thief_ids)), 5, 0.01,
                   what="revoked ids out of rotation")
        took = time.monotonic() - t0
        print("revoked ids out of rotation %.0f ms after SIGHUP" % (took * 1000))
        assert took <= c.interval_s + 0.25, "took %.3f s, more than one interval" % took
        h = c.health()
        for i in thief_ids:
            n = c.node_health(i, h)
            assert n["state"] == "down" and n["reason"] == "heartbeat key revoked", n
        assert not h["panic"]["active"], h["panic"]
        assert h["panic"]["refused"] >= 4, h["panic"]
        # its connection was ended; a reconnect meets the ZAP handler
        wait_until(lambda: c.health()["heartbeats"]["connections"]["closed_revoked"] >= 1, 5,
                   what="revoked connection ended")
        # silence after the revocation: still no panic, never picked
        time.sleep(6 * c.interval_s)
        h = c.health()
        assert not h["panic"]["active"], h["panic"]
        assert not (picks(c) & set(thief_ids))
    finally:
        p.stop()


def quiet(c):
    ids = ["quiet%d" % k for k in range(5)]
    p = Pumper(c, "tester", ids)
    p.start()
    wait_until(lambda: rotation(c) >= set(ids), 10, what="quiet ids in rotation")
    p.quiet()  # goes quiet, its connection open: 5 of 7 silent, panic
    t0 = time.monotonic()
    wait_until(lambda: c.health()["panic"]["active"], 5, 0.02, what="panic")
    h = c.health()
    assert h["panic"]["hold_max_ms"] == HOLD_MAX_MS, h["panic"]
    wait_until(lambda: not c.health()["panic"]["active"], HOLD_MAX_MS / 1000.0 + 3, 0.05,
               what="panic over")
    took = time.monotonic() - t0
    print("panic ended %.0f ms after the ids went quiet (bound %d ms)" % (took * 1000, HOLD_MAX_MS))
    h = c.health()
    assert h["panic"]["expired"] >= len(ids), h["panic"]
    assert rotation(c) == {"node1", "node2"}, rotation(c)
    for i in ids:
        assert "panic holds a silent node" in c.node_health(i, h)["reason"]
    time.sleep(4 * c.interval_s)
    assert not c.health()["panic"]["active"]
    assert picks(c) <= {"node1", "node2"}
    p.stop()


def test():
    with cluster.Cluster(n=2, balancer_args=["--panic-hold-max", "%dms" % HOLD_MAX_MS]) as c:
        c.node_keys("thief")  # made after the balancer started: load it
        c.procs["balancer"].send_signal(signal.SIGHUP)
        c.wait_healthy(2)
        time.sleep(0.2)
        revoked(c)
        quiet(c)


if __name__ == "__main__":
    cluster.main(test)
