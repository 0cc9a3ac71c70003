#!/usr/bin/env python3
"""compose node loss: `docker kill` a node while a host client sends through
the balancer without pause: the node leaves rotation within the heartbeat
bound (fall x interval + one reap period, plus a margin for Docker and
polling), and the client goes on through the other nodes."""
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compose  # noqa: E402
from compose import NODES, Traffic, check, log, wait_until  # noqa: E402

MARGIN_S = 1.0  # docker kill's own latency, 25 ms polling, a loaded 2-core machine


def test(c):
    c.up()
    interval, fall, rise = c.settings()
    bound = fall * interval + interval / 5 + MARGIN_S
    wait_until(lambda: (lambda r: r and len(r) == 3)(c.rotation()), 10, what="three nodes in rotation")

    traffic = Traffic(c).start()
    wait_until(lambda: sum(1 for r in traffic.results if r[2]) >= 5, 30, step=0.1,
               what="five successful sends before the kill")
    # The victim: the node that served the latest send, so traffic was going there.
    victim = next((r[3] for r in reversed(traffic.results) if r[2] and r[3] in NODES), "node2")
    log("killing %s (interval %.3fs, fall %d: bound %.2fs)" % (victim, interval, fall, bound))
    t_kill = time.monotonic()
    c.docker("kill", c.ids[victim])
    _, left_after = wait_until(lambda: (lambda r: r is not None and victim not in r)(c.rotation()),
                               bound + 5, what="%s out of rotation" % victim)
    t_gone = t_kill + left_after
    log("%s out of rotation %.3fs after docker kill" % (victim, left_after))
    check(left_after <= bound, "%s left rotation after %.2fs, bound %.2fs" % (victim, left_after, bound))

    # The client goes on: enough sends after the node left, all through others.
    wait_until(lambda: sum(1 for r in traffic.since(t_gone) if r[1] > t_gone) >= 10, 60, step=0.1,
               what="ten sends after the node left")
    results = traffic.stop()
    after = [r for r in results if r[0] >= t_gone]
    window = [r for r in results if r[1] > t_kill and r[0] < t_gone]
    failed_after = [r for r in after if not r[2]]
    log("%d sends in all; %d while %s was dying (%d failed); %d after it left (%d failed)" % (
        len(results), len(window), victim, sum(1 for r in window if not r[2]), len(after), len(failed_after)))
    check(not failed_after, "sends failed after %s left rotation: %s" % (victim, [r[4] for r in failed_after][:3]))
    served = {r[3] for r in after}
    check(victim not in served, "%s served sends after it left rotation" % victim)
    check(served <= set(NODES) - {victim}, "sends served by %s" % served)
    rot = c.rotation()
    check(rot is not None and set(rot) == set(NODES) - {victim},
          "rotation is %s, want the two other nodes" % (sorted(rot) if rot else rot))


if __name__ == "__main__":
    compose.main(test, bound_s=300)
