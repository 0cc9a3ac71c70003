"""A wedged worker: a node started with --debug-hooks --debug-stall 4s stalls
one worker loop on SIGUSR2. Its heartbeats keep arriving, yet the balancer
takes it out of rotation (down, reason naming the stall) because the node
reports itself unhealthy; when the stall ends it comes back healthy."""
import signal
import time

import cluster

STALL_S = 4.0
LEAVE_BOUND_S = 2.5


def test():
    with cluster.Cluster(n=2, interval="250ms",
                         node_args={1: ["--debug-hooks", "--debug-stall", "%ds" % STALL_S]}) as c:
        c.wait_healthy(2)
        # A session on the node before the stall; other workers keep serving.
        hb0 = c.node_health("node1")["heartbeats"]

        t0 = time.monotonic()
        c.kill_node(1, signal.SIGUSR2)
        samples = []

        def down():
            n = c.node_health("node1")
            samples.append((time.monotonic() - t0, n["state"], n["last_heartbeat_age_ms"],
                            n["heartbeats"], n.get("reason", "")))
            return n if n["state"] == "down" else None
        n = cluster.wait_until(down, LEAVE_BOUND_S + 5, 0.02, "stalled node1 down")
        took = time.monotonic() - t0
        print("node1 down %.0f ms after SIGUSR2: reason %r, healthy=%r, last heartbeat %d ms ago"
              % (took * 1000, n.get("reason"), n.get("healthy"), n["last_heartbeat_age_ms"]))
        assert took <= LEAVE_BOUND_S, "stalled node left rotation after %.3fs" % took
        assert n.get("healthy") is False, n
        assert "stall" in n.get("reason", "").lower(), "reason %r does not mention the stall" % n
        assert c.node_state("node2") == "healthy"

        # While wedged: still heartbeating (not silence), never picked.
        ages = []
        hb1 = n["heartbeats"]
        while time.monotonic() - t0 < STALL_S - 0.5:
            n = c.node_health("node1")
            ages.append(n["last_heartbeat_age_ms"])
            assert n["state"] == "down", "node1 %s during the stall" % n["state"]
            status, p = c.pick()
            assert status == 200 and p["id"] == "node2", (status, p)
            time.sleep(0.05)
        hb2 = c.node_health("node1")["heartbeats"]
        print("during the stall: heartbeats %d -> %d -> %d, max last_heartbeat_age %d ms"
              % (hb0, hb1, hb2, max(ages)))
        assert hb2 > hb1 > hb0, "heartbeats stopped during the stall: %d %d %d" % (hb0, hb1, hb2)
        assert max(ages) <= 3 * c.interval_s * 1000 + 500, \
            "heartbeats lagged %d ms during the stall" % max(ages)

        # The stall ends: rise heartbeats later the node is healthy again.
        n = cluster.wait_until(lambda: (lambda n: n if n["state"] == "healthy" else None)(
            c.node_health("node1")), STALL_S + 10, 0.02, "node1 healthy after the stall")
        back = time.monotonic() - t0
        print("node1 healthy again %.0f ms after SIGUSR2 (stall %.0f ms)" % (back * 1000,
                                                                           STALL_S * 1000))
        assert back >= STALL_S - 0.5, "node1 healthy before its stall could end"
        assert n["healthy"] is True and n.get("reason", "") == "", n
        c.wait_healthy(2)
        with c.session(1) as s:
            s.hello()
            s.send_message(2, 1, b"after the stall")
        assert c.proc(1).poll() is None


if __name__ == "__main__":
    cluster.main(test)
