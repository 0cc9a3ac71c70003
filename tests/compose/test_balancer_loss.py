#!/usr/bin/env python3
"""compose balancer loss: `docker kill` balancer1 while a host client sends
through the list of both balancers: every send succeeds (the client moves to
balancer2), balancer2 keeps all three nodes in rotation, and the nodes tell
balancer2 they no longer reach balancer1 (the dashboard's per-node balancer
column). balancer1 then comes back and is used again."""
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compose  # noqa: E402
from compose import NODES, check, log, wait_until  # noqa: E402


def reached(c, balancer, endpoint_part):
    """{node id: reached flag of the balancer whose endpoint contains
    endpoint_part}, as the nodes last told `balancer`."""
    status, h = c.http("/v1/health", balancer=balancer)
    if status != 200:
        return None
    out = {}
    for n in h["nodes"]:
        for b in n.get("balancers", []):
            if endpoint_part in b["endpoint"]:
                out[n["id"]] = b["reached"]
    return out


def test(c):
    c.up()
    for b in compose.BALANCERS:
        wait_until(lambda b=b: (lambda r: r and len(r) == 3)(c.rotation(b)), 10,
                   what="three nodes in rotation at %s" % b)
    both, _ = wait_until(lambda: (lambda r: r if r and len(r) == 3 and all(r.values()) else None)(
        reached(c, "balancer2", "balancer1")), 10, what="nodes reporting balancer1 reached")
    log("nodes reach balancer1 (as balancer2 hears): %s" % both)

    traffic = compose.Traffic(c, bound_s=60).start()
    time.sleep(2.0)
    t_kill = time.monotonic()
    c.docker("kill", c.ids["balancer1"])
    log("killed balancer1")
    time.sleep(4.0)
    results = traffic.stop()
    after = [r for r in results if r[0] >= t_kill]
    failed = [r for r in results if not r[2]]
    log("%d sends, %d after the kill, %d failed" % (len(results), len(after), len(failed)))
    check(len(after) >= 3, "only %d sends after the kill" % len(after))
    check(not failed, "sends failed: %s" % [r[4][:300] for r in failed[:3]])
    check(all(r[3] in NODES for r in after), "sends after the kill: %s" % [r[3] for r in after])

    rot = c.rotation("balancer2")
    check(rot and len(rot) == 3, "balancer2 rotation after the kill: %s" % rot)
    gone, waited = wait_until(
        lambda: (lambda r: r if r and len(r) == 3 and not any(r.values()) else None)(
            reached(c, "balancer2", "balancer1")), 10, what="nodes reporting balancer1 unreached")
    log("nodes report balancer1 unreached %.2fs later: %s" % (waited, gone))

    # Back up (docker start; the restart policy may have been first), the
    # nodes register there again.
    c.docker("start", c.ids["balancer1"])
    wait_until(lambda: (lambda r: r and len(r) == 3)(c.rotation("balancer1")), 30,
               what="balancer1 back with three nodes")
    ok, node, out = c.send("after balancer1 came back\n")
    check(ok and node in NODES, "send after balancer1 returned: %s" % out)


if __name__ == "__main__":
    compose.main(test, bound_s=300)
