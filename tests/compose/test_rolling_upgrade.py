#!/usr/bin/env python3
"""compose rolling upgrade: every node container is replaced in turn
(`up --force-recreate` of one node service, the next only once the new
container is healthy) while two host clients send at a steady rate through
both balancers. Each old container gets SIGTERM and drains (LEAVE, out of
rotation, finish, exit) before it stops. Required: both clients exit 0 with
an ACK for every line (0 failed sends), every node left rotation by its
drain (the balancer logged it draining, not a closed connection), and the
longest pause between two ACKs of a client is reported."""
import os
import re
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compose  # noqa: E402
from compose import CLI, NODES, check, log, wait_until  # noqa: E402

CLIENTS = 2
RATE = 100  # messages per second per client


class Client:
    """`berth send` fed numbered lines at RATE a second; each ACK line is
    timestamped as it arrives."""

    def __init__(self, c, name):
        self.name = name
        self.errpath = os.path.join(c.tmp, "%s.err" % name)
        with open(self.errpath, "wb") as errf:
            self.p = subprocess.Popen([CLI, "send", "--balancer", c.balancer_url, "--ca", c.ca,
                                       "--name", name, "--retries", "60", "--timeout", "2s"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf)
        self.stop = threading.Event()
        self.sent = 0
        self.acks = []  # monotonic time of each ACK line
        self.t = threading.Thread(target=self._feed, daemon=True)
        self.r = threading.Thread(target=self._read, daemon=True)
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

    def _read(self):
        for line in self.p.stdout:
            if line.startswith(b"ack "):
                self.acks.append(time.monotonic())

    def finish(self):
        self.stop.set()
        self.t.join(10)
        self.p.wait(120)
        self.r.join(10)
        with open(self.errpath, "rb") as f:
            err = f.read().decode(errors="replace")
        return self.p.returncode, err


def test(c):
    c.up()
    clients = [Client(c, "roll%d" % k) for k in range(CLIENTS)]
    interval, _, _ = c.settings()
    time.sleep(8 * interval)
    t_start = time.monotonic()
    try:
        for node in NODES:
            t0 = time.monotonic()
            c.compose("up", "-d", "--no-deps", "--no-build", "--force-recreate", node, timeout=120)
            c.ids[node] = c.compose("ps", "-q", node).stdout.strip()
            c.wait_healthy([node], timeout=120)
            wait_until(lambda: node in (c.rotation() or {}), 60, interval, "%s back in rotation" % node)
            log("%s replaced in %.1f s" % (node, time.monotonic() - t0))
        time.sleep(8 * interval)
    finally:
        results = [(cl, cl.finish()) for cl in clients]
    for cl, (rc, err) in results:
        check(rc == 0, "%s: exit %d: %s" % (cl.name, rc, err[-1500:]))
        check(len(cl.acks) == cl.sent, "%s: %d lines sent, %d acknowledged" % (
            cl.name, cl.sent, len(cl.acks)))
    # Each node left rotation by its drain: the balancer saw it draining.
    logs = c.docker("logs", c.ids["balancer1"], timeout=60)
    text = logs.stdout + logs.stderr
    for node in NODES:
        check(re.search(r"event=node_state node_id=%s from=healthy to=draining" % node, text),
              "balancer1 never saw %s draining: it left rotation some other way" % node)
    stall = max(max(b - a for a, b in zip(cl.acks, cl.acks[1:])) for cl, _ in results)
    log("rolling upgrade of %d nodes in %.1f s: %d messages acknowledged, 0 failed sends, "
        "every node drained out of rotation first; longest pause between two ACKs %.2f s"
        % (len(NODES), time.monotonic() - t_start, sum(len(cl.acks) for cl, _ in results), stall))


if __name__ == "__main__":
    compose.main(test, bound_s=420)
