#!/usr/bin/env python3
"""compose partition: `docker network disconnect` a node (a silent partition:
no FIN reaches the balancer, the process keeps running): it leaves rotation
within the heartbeat bound. `docker network connect`: it comes back after
`rise` heartbeats in a row, and clients reach it again."""
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compose  # noqa: E402
from compose import NODES, check, log, wait_until  # noqa: E402

MARGIN_S = 1.0
STABLE_S = 2.0  # 8 intervals at the default 250 ms


def node_record(c, node):
    status, body = c.http("/v1/health")
    if status != 200:
        return None
    return next((n for n in body.get("nodes", []) if n["id"] == node), None)


def test(c):
    c.up()
    interval, fall, rise = c.settings()
    bound = fall * interval + interval / 5 + MARGIN_S
    wait_until(lambda: (lambda r: r and len(r) == 3)(c.rotation()), 10, what="three nodes in rotation")
    victim = "node3"
    net = c.network()

    log("disconnecting %s from %s (bound %.2fs)" % (victim, net, bound))
    t0 = time.monotonic()
    c.docker("network", "disconnect", net, c.ids[victim])
    _, left_after = wait_until(lambda: (lambda r: r is not None and victim not in r)(c.rotation()),
                               bound + 5, what="%s out of rotation" % victim)
    log("%s out of rotation %.3fs after the disconnect" % (victim, left_after))
    check(left_after <= bound, "%s left rotation after %.2fs, bound %.2fs" % (victim, left_after, bound))
    check(c.state(victim)["Running"], "%s stopped running: a partition must not kill it" % victim)

    # Stay apart long enough that the balancer marks it down and the node
    # gives up on its socket (fall intervals on both sides).
    wait_until(lambda: (lambda n: n and n["state"] == "down")(node_record(c, victim)),
               bound + 5, what="%s down" % victim)
    time.sleep(2 * fall * interval)
    rec = node_record(c, victim)
    check(rec and rec["state"] == "down", "%s while partitioned: %s" % (victim, rec))
    hb_before = rec["heartbeats"]
    for _ in range(4):
        ok, served, out = c.send("while %s is partitioned\n" % victim)
        check(ok and served != victim, "send during the partition: %s" % out)

    c.docker("network", "connect", "--alias", victim, net, c.ids[victim])
    t1 = time.monotonic()
    # Watch every state the balancer reports until the node has been healthy
    # for STABLE_S without a break. Back "after rise heartbeats" means it
    # enters rotation once and stays: a node put back in rotation and then
    # dropped again was back before it was reachable.
    seen = []  # (seconds since reconnect, state, heartbeats)
    healthy_since = None
    deadline = t1 + 30
    while True:
        now = time.monotonic()
        rec = node_record(c, victim)
        if rec:
            st = (round(now - t1, 3), rec["state"], rec["heartbeats"])
            if not seen or seen[-1][1:] != st[1:]:
                seen.append(st)
            if rec["state"] == "healthy":
                healthy_since = healthy_since if healthy_since is not None else now
                if now - healthy_since >= STABLE_S:
                    break
            else:
                healthy_since = None
        check(now < deadline, "%s not stably healthy 30s after reconnect: %s" % (victim, seen))
        time.sleep(0.02)
    entered = [t for t, st, _ in seen if st == "healthy"]
    back_after = entered[0]
    log("%s after reconnect (s, state, heartbeats): %s" % (victim, seen))
    log("%s healthy %.3fs after reconnect, heartbeats %d -> %d" % (
        victim, back_after, hb_before, seen[-1][2]))
    flaps = [x for x in seen if x[0] > back_after and x[1] != "healthy"]
    check(not flaps, "%s entered rotation %.3fs after reconnect, then left it again (%s): it was put "
          "back before it was reachable (rise %d); states: %s" % (victim, back_after, flaps[0][1] if flaps else "",
                                                                   rise, seen))
    check(back_after <= 15, "%s took %.1fs to come back" % (victim, back_after))
    rot = c.rotation()
    check(rot is not None and set(rot) == set(NODES), "rotation after reconnect: %s" % rot)
    p = c.berth("ping", "--node", "127.0.0.1:%d" % c.node_ports[victim], "--ca", c.ca)
    check(p.returncode == 0, "ping %s after reconnect: %s" % (victim, (p.stdout + p.stderr).strip()))


if __name__ == "__main__":
    compose.main(test, bound_s=300)
