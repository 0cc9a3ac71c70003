"""Two balancers, no single point of failure: every node heartbeats to both
(one DEALER each); each balancer builds its own view. Killing one leaves the
other with every node healthy, and a client given both balancer URLs goes on
sending without errors. A node's drain reaches the surviving balancer, and a
bad --balancer list is refused at start."""
import hashlib
import json
import signal
import time

import cluster
from cluster import BALANCER_BIN, free_ports, http_get, wait_until


def test():
    with cluster.Cluster(n=2, start_nodes=False) as c:
        http2, hb2_port = free_ports(2)
        hb2 = "tcp://127.0.0.1:%d" % hb2_port
        c.spawn("balancer2", [BALANCER_BIN, "--http", "127.0.0.1:%d" % http2,
                              "--heartbeat-bind", hb2, "--interval", c.interval])
        wait_until(lambda: http_get(http2, "/healthz", 1.0)[0] == 200, 10, 0.05, "balancer2 up")
        c.node_args = ["--balancer", c.hb_endpoint + "," + hb2]
        for i in range(1, c.n + 1):
            c.start_node(i)
        c.wait_healthy()

        def counts2():
            st, body, _ = http_get(http2, "/v1/health", 1.0)
            return json.loads(body.decode())["counts"]
        wait_until(lambda: counts2()["healthy"] == 2, 10, 0.05, "balancer2 sees 2 healthy")

        both = "%s,http://127.0.0.1:%d" % (c.balancer_url, http2)
        lines = [b"before %d" % k for k in range(5)]
        rc, out, err = c.run_cli(["send", "--ca", c.ca, "--balancer", both], input=b"\n".join(lines))
        assert rc == 0, (rc, out, err)

        c.kill_balancer(signal.SIGKILL)
        # The survivor's view does not depend on the dead one: still 2 healthy
        # after more than fall intervals.
        time.sleep(1.0)
        assert counts2()["healthy"] == 2, counts2()

        lines = [b"after %d" % k for k in range(20)]
        rc, out, err = c.run_cli(["send", "--ca", c.ca, "--balancer", both], input=b"\n".join(lines))
        assert rc == 0, (rc, out, err)
        acks = [l for l in out.splitlines() if l.startswith("ack ")]
        assert len(acks) == len(lines), out
        for line, ack in zip(lines, acks):
            assert "sha256=%s" % hashlib.sha256(line).hexdigest() in ack, (line, ack)
        print("with balancer 1 dead, %d sends through balancer 2" % len(acks))

        c.kill_node(1, signal.SIGTERM)
        wait_until(lambda: counts2()["healthy"] == 1, 5, 0.05, "node1's drain seen by balancer 2")

        for bad in ["a,,b", "tcp://127.0.0.1:1,", ",", "tcp://127.0.0.1:1,tcp://127.0.0.1:1"]:
            rc, out, err = cluster.run_bin(cluster.NODE_BIN, c.node_argv(2)[1:] + ["--balancer", bad])
            assert rc == 2 and "balancer" in err, (bad, rc, err)


if __name__ == "__main__":
    cluster.main(test)
