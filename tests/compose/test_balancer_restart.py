#!/usr/bin/env python3
"""compose balancer restart: `docker restart` balancer1: the new process
knows none of the nodes; they are told to register again and the registry is
whole (all three healthy) within two heartbeat intervals once the nodes reach
it, and lookups and sends work again.

Measured from the new process's start (its uptime_ms), the bound is two
intervals plus an allowance for the nodes' ZeroMQ reconnect (their connect
timeout is one interval, so a connect issued while the container had no
address does not hang) and for scheduling on a loaded 2-core machine."""
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compose  # noqa: E402
from compose import NODES, check, log, wait_until  # noqa: E402

MARGIN_S = 0.5  # reconnect (ZMQ_RECONNECT_IVL), 20 ms polling, a loaded machine


def test(c):
    c.up()
    interval, fall, rise = c.settings()
    bound = 2 * interval + MARGIN_S
    wait_until(lambda: (lambda r: r and len(r) == 3)(c.rotation()), 10, what="three nodes in rotation")
    status, before = c.http("/v1/health")
    check(status == 200, "/v1/health: %s" % before)

    log("restarting balancer1 (bound: registry whole %.2fs after it starts)" % bound)
    t0 = time.monotonic()
    c.docker("restart", "-t", "5", c.ids["balancer1"])
    log("docker restart returned after %.2fs" % (time.monotonic() - t0))

    def rebuilt():
        status, body = c.http("/v1/health", timeout=1.0)
        if status == 200 and body["uptime_ms"] < (time.monotonic() - t0) * 1000 + 1000:
            if body["counts"]["healthy"] == 3:
                return body
        return None

    body, _ = wait_until(rebuilt, 30, step=0.02, what="a restarted balancer with three healthy nodes")
    rebuilt_s = body["uptime_ms"] / 1000.0
    log("registry rebuilt %.3fs after the new balancer started (%.1f intervals; epoch %s, was %s)" % (
        rebuilt_s, rebuilt_s / interval, body["epoch"], before["epoch"]))
    check(rebuilt_s <= bound, "registry rebuilt after %.2fs, bound %.2fs" % (rebuilt_s, bound))
    check(c.health("balancer1")[1] == "running", "balancer not running: %s" % (c.health("balancer1"),))

    status, pick = c.http("/v1/pick")
    check(status == 200 and pick.get("id") in NODES, "/v1/pick after restart: %s %s" % (status, pick))
    for i in range(6):
        ok, node, out = c.send("after the restart %d\n" % i)
        check(ok and node in NODES, "send after restart: %s" % out)
    c.wait_healthy(services=("balancer1",), timeout=60)


if __name__ == "__main__":
    compose.main(test, bound_s=300)
