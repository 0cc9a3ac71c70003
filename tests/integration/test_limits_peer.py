"""Per-address limits: one address holding bare TCP connections (the
handshake-slot hog) gets only --max-handshakes-per-addr of them, the rest are
closed at once; the ones it holds are closed at --first-byte-timeout, long
before --handshake-timeout; with TLS up it may hold only
--max-connections-per-addr sessions. Established sessions are served
throughout, and the refusals are counted in INFO and the node's log."""
import os
import select
import time

import cluster
from cluster import raw_connect, wait_closed

MAX_CONNECTIONS = 64
PER_ADDR_HS = 8
PER_ADDR_CONNS = 16
FIRST_BYTE_S = 1.0
HANDSHAKE_S = 8.0
SWEEP_S = 0.25  # the node's timer sweep period (node/worker.h WORKER_SWEEP_MS)
HOG = 100       # bare connections the hog opens at once


def test():
    args = ["--max-connections", str(MAX_CONNECTIONS),
            "--max-handshakes-per-addr", str(PER_ADDR_HS),
            "--max-connections-per-addr", str(PER_ADDR_CONNS),
            "--first-byte-timeout", "%dms" % (FIRST_BYTE_S * 1000),
            "--handshake-timeout", "%dms" % (HANDSHAKE_S * 1000)]
    with cluster.Cluster(n=1, node_args=args) as c:
        c.wait_healthy(1)
        addr = c.node_addr(1)
        good = c.session(1)
        good.hello("good")
        limits = good.info(2)["limits"]
        assert limits["max_handshakes_per_addr"] == PER_ADDR_HS, limits
        assert limits["max_connections_per_addr"] == PER_ADDR_CONNS, limits
        assert limits["first_byte_timeout_ms"] == FIRST_BYTE_S * 1000, limits

        # The hog: HOG bare TCP connections that never send a byte.
        t0 = time.monotonic()
        hog = []
        try:
            for _ in range(HOG):
                hog.append(raw_connect(addr))
            # Closed ones turn readable (EOF or reset) at once; give the node
            # a moment, well inside the first-byte timeout.
            open_ = set(hog)
            deadline = time.monotonic() + FIRST_BYTE_S / 2
            while len(open_) > PER_ADDR_HS and time.monotonic() < deadline:
                ready, _, _ = select.select(list(open_), [], [], 0.05)
                for k in ready:
                    try:
                        if k.recv(1) != b"":
                            raise AssertionError("the node sent bytes on a bare connection")
                    except ConnectionError:
                        pass
                    open_.discard(k)
            held = [k for k in hog if k in open_]
            print("hog: %d bare connections, %d closed at once (within %.3fs), %d held"
                  % (HOG, HOG - len(held), time.monotonic() - t0, len(held)))
            assert len(held) == PER_ADDR_HS, "%d held, want %d" % (len(held), PER_ADDR_HS)

            # The node is nowhere near full: what the hog holds is its share.
            info = good.info(3)
            print("node while hogged: sessions=%d counters=%r" % (info["sessions"],
                                                              info["counters"]))
            assert info["sessions"] <= 1 + PER_ADDR_HS, info["sessions"]
            assert info["counters"]["rejected_handshakes_per_addr"] >= HOG - PER_ADDR_HS, info
            good.ping(4, b"served while hogged")

            # The held ones go at the first-byte deadline, not the handshake's.
            slowest = 0.0
            for k in held:
                slowest = max(slowest, wait_closed(k, HANDSHAKE_S + 2))
            since = time.monotonic() - t0
            print("held connections closed %.3fs after they opened" % since)
            assert since <= FIRST_BYTE_S + 2 * SWEEP_S + 1.0, since
            assert since < HANDSHAKE_S, since
        finally:
            for k in hog:
                k.close()
        counters = good.info(5)["counters"]
        assert counters["first_byte_timeouts"] >= PER_ADDR_HS, counters

        # Established sessions: at most PER_ADDR_CONNS from one address
        # (good is one of them); the next TLS client is refused at once.
        sessions = [good]
        try:
            for i in range(PER_ADDR_CONNS - 1):
                s = c.session(1)
                s.hello("held-%d" % i)
                sessions.append(s)
            try:
                extra = c.session(1, timeout=5)
            except (OSError, ConnectionError) as e:
                print("TLS client over the per-address cap refused: %s" % type(e).__name__)
            else:
                try:
                    extra.hello("extra")
                except (cluster.Closed, OSError) as e:
                    print("TLS client over the per-address cap refused after the handshake: %s"
                          % type(e).__name__)
                else:
                    raise AssertionError("session %d from one address was served"
                                         % (PER_ADDR_CONNS + 1))
                finally:
                    extra.close()
            for i, s in enumerate(sessions):
                s.ping(10 + i, b"still here")
            counters = good.info(6)["counters"]
            assert counters["rejected_per_addr"] >= 1, counters
            # One leaves: the address may open another.
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
            late = cluster.wait_until(admitted, 5, 0.05, "a free per-address slot")
            sessions.append(late)
            late.ping(2)
        finally:
            for s in sessions:
                s.close()

        # The refusals are in the node's log as counts, not a line each.
        def logged():
            with open(c.logs["node1"]) as f:
                lines = [l for l in f if "event=connections_refused" in l]
            return lines or None
        lines = cluster.wait_until(logged, 3, 0.05, "a connections_refused log line")
        print(lines[0].strip())
        assert "max_handshakes_per_addr=" in lines[0], lines[0]
        assert c.node_state("node1") == "healthy"
        assert os.path.exists(c.logs["node1"])


if __name__ == "__main__":
    cluster.main(test)
