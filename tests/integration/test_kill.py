"""kill -9 a node: the balancer takes it out of rotation within
fall*interval (+ margin), never hands it out afterwards, and keeps serving
the others."""
import signal
import time

import cluster

MARGIN_S = 1.25  # a loaded 2-core CI machine


def test():
    with cluster.Cluster(n=3, interval="250ms") as c:
        h = c.wait_healthy(3)
        fall = int(h.get("fall", 3))
        bound = fall * c.interval_s + MARGIN_S

        c.kill_node(2, signal.SIGKILL)
        t0 = time.monotonic()
        cluster.wait_until(lambda: c.node_state("node2") != "healthy", bound + 5, 0.02,
                           "node2 out of rotation")
        took = time.monotonic() - t0
        print("node2 left rotation %.0f ms after kill -9 (bound %.0f ms, fall=%d interval=%.0f ms)"
              % (took * 1000, bound * 1000, fall, c.interval_s * 1000))
        assert took <= bound, "node2 left rotation after %.3fs, bound %.3fs" % (took, bound)

        seen = {}
        for k in range(300):
            query = "?key=user-%d" % k if k % 2 else ""
            status, p = c.pick(query)
            assert status == 200, "/v1/pick%s: %s %r" % (query, status, p)
            assert p["id"] != "node2", "/v1/pick%s returned the killed node2: %r" % (query, p)
            assert p["id"] in ("node1", "node3"), "/v1/pick returned %r" % p
            assert p["addr"] == c.node_addr(int(p["id"][-1])), "pick addr mismatch: %r" % p
            seen[p["id"]] = seen.get(p["id"], 0) + 1
        print("picks after the kill:", seen)
        assert set(seen) == {"node1", "node3"}, "both survivors should be served: %r" % seen

        # The same key keeps its node while the rotation is unchanged.
        first = c.pick("?key=sticky")[1]["id"]
        for _ in range(20):
            assert c.pick("?key=sticky")[1]["id"] == first, "key=sticky moved between nodes"

        # Excluding both survivors leaves nothing: 503 no_healthy_node.
        status, body = c.pick("?exclude=node1,node3")
        assert status == 503 and body and body.get("error") == "no_healthy_node", \
            "pick excluding every healthy node: %s %r" % (status, body)

        def node2_down():
            h = c.health()
            n2 = c.node_health("node2", h)
            return h if h["counts"]["healthy"] == 2 and n2 and n2["state"] == "down" else None
        h = cluster.wait_until(node2_down, fall * c.interval_s + 5, 0.05, "node2 down, 2 healthy")
        print("counts:", h["counts"])
        assert h["counts"]["healthy"] == 2 and h["counts"]["down"] == 1, h["counts"]
        status, nodes = c.http_get_json("/v1/nodes")
        assert status == 200 and sorted(n["id"] for n in nodes["nodes"]) == ["node1", "node3"], \
            "/v1/nodes: %r" % nodes

        # The survivors still speak the protocol.
        for i in (1, 3):
            with c.session(i) as s:
                assert s.hello()["node_id"] == "node%d" % i
                s.ping(2)


if __name__ == "__main__":
    cluster.main(test)
