"""--max-connections: with the node full, every further connection is closed
at once (no handshake, no waiting), while the sessions already open keep
being served; when one of them leaves, a new client gets in."""
import socket
import time

import cluster
from cluster import raw_connect, wait_closed

LIMIT = 8
EXCESS = 200  # a burst of connections over the cap, opened together


def test():
    with cluster.Cluster(n=1, node_args=["--max-connections", str(LIMIT)]) as c:
        c.wait_healthy(1)
        addr = c.node_addr(1)
        sessions = []
        for i in range(LIMIT):
            s = c.session(1)
            s.hello("held-%d" % i)
            sessions.append(s)
        info = sessions[0].info(2)
        assert info["limits"]["max_connections"] == LIMIT, info["limits"]

        # The burst: every one is closed by the node, quickly, with no bytes.
        t0 = time.monotonic()
        excess = []
        try:
            for _ in range(EXCESS):
                excess.append(raw_connect(addr))
            slowest = 0.0
            for k in excess:
                slowest = max(slowest, wait_closed(k, 5.0))
        finally:
            for k in excess:
                k.close()
        print("%d connections over the cap of %d: all closed, the last %.3fs after the burst"
              " (slowest wait %.3fs)" % (EXCESS, LIMIT, time.monotonic() - t0, slowest))
        assert time.monotonic() - t0 < 5.0, "refusing the burst took too long"

        # A TLS client over the cap sees the connection closed, not a hang.
        try:
            extra = c.session(1, timeout=5)
        except (OSError, ConnectionError) as e:
            print("TLS client over the cap refused: %s: %s" % (type(e).__name__, e))
        else:
            extra.close()
            raise AssertionError("a TLS handshake succeeded over --max-connections")

        # The sessions held all along are still served, every one of them.
        for i, s in enumerate(sessions):
            s.ping(10 + i, b"still here")
            s.send_message(100 + i, i, b"data %d" % i)
        print("the %d held sessions are still served" % LIMIT)

        # One leaves: a new client is admitted in its place.
        sessions.pop().close()

        def admitted():
            try:
                s = c.session(1, timeout=3)
            except (OSError, ConnectionError):
                return None
            try:
                s.hello("late")
                return s
            except (cluster.Closed, OSError):
                s.close()
                return None
        late = cluster.wait_until(admitted, 5, 0.05, "a free slot after a session left")
        late.ping(2)
        sessions.append(late)
        print("after one session left, a new client got in")
        assert c.node_state("node1") == "healthy"
        for s in sessions:
            s.close()


if __name__ == "__main__":
    cluster.main(test)
