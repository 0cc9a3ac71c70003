"""kill -9 the balancer and start a new one on the same ports: the nodes
re-register (reregister -> register) and all three are healthy again within
two intervals plus a margin."""
import signal
import time

import cluster

BOUND_S = 2.0


def test():
    with cluster.Cluster(n=3, interval="250ms") as c:
        c.wait_healthy(3)
        old = c.health()
        c.kill_balancer(signal.SIGKILL)
        # Nodes keep running without a balancer.
        time.sleep(1.0)
        for i in range(1, 4):
            assert c.proc(i).poll() is None, "node%d died while the balancer was away" % i

        t0 = time.monotonic()
        c.start_balancer(wait=False)
        up = cluster.wait_until(
            lambda: c._alive_or_raise("balancer") and
            cluster.http_get(c.http_port, "/healthz", 1.0)[0] == 200 and time.monotonic(),
            10, 0.01, "new balancer's /healthz")
        h = c.wait_healthy(3, timeout=BOUND_S + 10)
        took = time.monotonic() - t0
        print("3 nodes healthy %.0f ms after the balancer restart (%.0f ms after it answered HTTP)"
              % (took * 1000, (time.monotonic() - up) * 1000))
        assert took <= BOUND_S, "registry rebuilt in %.3fs, bound %.1fs" % (took, BOUND_S)
        assert h["uptime_ms"] <= took * 1000 + 500, "uptime %s ms: not the new balancer?" % h["uptime_ms"]
        assert old["uptime_ms"] >= 0
        assert sorted(n["addr"] for n in h["nodes"]) == sorted(c.node_addr(i) for i in range(1, 4))

        # Picks work again and go to every node over many keys.
        seen = set()
        for k in range(60):
            status, p = c.pick("?key=k%d" % k)
            assert status == 200, (status, p)
            seen.add(p["id"])
        assert seen == {"node1", "node2", "node3"}, seen


if __name__ == "__main__":
    cluster.main(test)
