"""An oversized heartbeat body (over 16 KiB, up to 32 KiB) is read and
counted as "oversize" in /v1/health and /metrics (it was never counted:
libzmq's ZMQ_MAXMSGSIZE dropped the connection first); a larger one still
only costs its own connection; the node in rotation stays."""
import json
import time

import cluster
from cluster import wait_until

zmq = cluster.require_zmq()


def test():
    with cluster.Cluster(n=1) as c:
        c.wait_healthy(1)
        ctx = zmq.Context()
        s = c.dealer(ctx)
        try:
            body = json.dumps({"type": "register", "node": "evil", "boot": "0badc0de0badc0de",
                               "seq": 1, "addr": "127.0.0.1:9", "capacity": 4, "version": "x",
                               "padding": "p" * 20000}).encode()
            for _ in range(3):
                s.send(body)
            wait_until(lambda: c.health()["heartbeats"]["rejected"]["oversize"] >= 3, 5,
                       what="oversize counted")
            st, text, _ = cluster.http_get(c.http_port, "/metrics")
            line = [l for l in text.decode().splitlines()
                    if l.startswith('berth_heartbeats_rejected_total{reason="oversize"}')]
            print(line)
            assert line and int(line[0].split()[-1]) >= 3, line
            s.send(b"x" * (1 << 20))  # beyond: its connection is dropped
            time.sleep(3 * c.interval_s)
            h = c.health()
            assert "evil" not in {n["id"] for n in h["nodes"]}
            assert c.healthy_ids(h) == ["node1"], h["nodes"]
        finally:
            s.close(0)
            ctx.term()


if __name__ == "__main__":
    cluster.main(test)
