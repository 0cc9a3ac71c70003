"""A peer inventing node ids cannot grow the registry without bound: with
--max-nodes 3 and three real nodes registered, REGISTER of a fourth id is
refused and counted (rejected.full), while the real nodes stay healthy."""
import json
import time

import cluster

zmq = cluster.require_zmq()


def test():
    with cluster.Cluster(n=3, balancer_args=["--max-nodes", "3"]) as c:
        c.wait_healthy(3)
        ctx = zmq.Context()
        try:
            fake = c.dealer(ctx)
            for k in range(20):
                fake.send(json.dumps({"type": "register", "node": "fake%d" % k,
                                      "boot": "00c0ffee00c0ffee", "seq": k + 1,
                                      "addr": "127.0.0.1:9", "capacity": 1,
                                      "version": "fake"}).encode())

            def full():
                h = c.health()
                return h["heartbeats"]["rejected"].get("full", 0) >= 20 and h
            h = cluster.wait_until(full, 5, 0.05, "20 registrations refused as full")
            ids = sorted(n["id"] for n in h["nodes"])
            assert ids == ["node1", "node2", "node3"], ids
            assert not fake.poll(200), "a refused REGISTER was answered"
            time.sleep(0.5)
            assert c.health()["counts"]["healthy"] == 3
        finally:
            ctx.destroy(linger=0)


if __name__ == "__main__":
    cluster.main(test)
