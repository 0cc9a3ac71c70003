"""SIGTERM a node with a session open: the session gets BYE (request id 0),
the balancer shows the node draining (or gone) and stops handing it out
within about two intervals, and the node exits 0 within its drain timeout."""
import signal
import time

import cluster

DRAIN_TIMEOUT_S = 3.0


def test():
    with cluster.Cluster(n=3, interval="250ms",
                         node_args=["--drain-timeout", "%dms" % (DRAIN_TIMEOUT_S * 1000)]) as c:
        c.wait_healthy(3)
        s = c.session(1)
        w = s.hello("drain-test")
        assert w["node_id"] == "node1", w
        s.ping(2)

        t0 = time.monotonic()
        c.kill_node(1, signal.SIGTERM)

        # Out of rotation: draining, or already gone from the registry.
        def out_of_rotation():
            n = c.node_health("node1")
            return n is None or n["state"] == "draining"
        cluster.wait_until(out_of_rotation, 5, 0.02, "node1 draining")
        took = time.monotonic() - t0
        state = c.node_state("node1")
        print("node1 out of rotation %.0f ms after SIGTERM (state %s)" % (took * 1000, state))
        assert took <= 2 * c.interval_s + 1.0, "node1 left rotation after %.3fs" % took
        for _ in range(100):
            status, p = c.pick()
            assert status == 200, "/v1/pick: %s %r" % (status, p)
            assert p["id"] != "node1", "/v1/pick returned draining node1: %r" % p

        # The open session is told goodbye: BYE with request id 0, then close.
        frames = []
        try:
            while True:
                f = s.recv_frame(DRAIN_TIMEOUT_S + 3)
                frames.append(f)
                if f.type == cluster.BYE:
                    break
        except cluster.Closed:
            raise AssertionError("session closed without BYE; frames: %r (%s)"
                                 % (frames, s.close_how)) from None
        bye = frames[-1]
        print("session got %r after %.0f ms" % (frames, (time.monotonic() - t0) * 1000))
        assert bye.request_id == 0 and bye.length == 0, "BYE frame %r" % bye
        assert frames == [bye], "unexpected frames before BYE: %r" % frames
        rest = s.expect_close(DRAIN_TIMEOUT_S + 3)
        assert rest == [], "frames after BYE: %r" % rest
        s.close()

        p = c.proc(1)
        try:
            rc = p.wait(DRAIN_TIMEOUT_S + 3)
        except Exception:
            raise AssertionError("node1 still runs %.1fs after SIGTERM"
                                 % (time.monotonic() - t0)) from None
        exited = time.monotonic() - t0
        print("node1 exited with %d after %.0f ms (drain timeout %.0f ms)"
              % (rc, exited * 1000, DRAIN_TIMEOUT_S * 1000))
        assert rc == 0, "node1 exited with status %d after SIGTERM" % rc
        assert exited <= DRAIN_TIMEOUT_S + 1.0, "node1 took %.2fs to exit" % exited

        # New connections to the stopped node are refused; the others serve.
        h = c.health()
        assert c.node_state("node1") in (None, "draining", "down"), h
        assert h["counts"]["healthy"] == 2, h["counts"]
        with c.session(2) as s2:
            s2.hello()
            s2.ping(2)


if __name__ == "__main__":
    cluster.main(test)
