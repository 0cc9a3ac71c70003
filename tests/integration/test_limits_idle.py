"""--idle-timeout: a session that sends nothing for the timeout gets ERROR
timeout and is closed; one that keeps sending requests more often than that
stays open well past it."""
import time

import cluster
from cluster import ERROR

IDLE_S = 0.8
SWEEP_S = 0.25


def test():
    with cluster.Cluster(n=1, node_args=["--idle-timeout", "%dms" % (IDLE_S * 1000)]) as c:
        c.wait_healthy(1)
        idle = c.session(1)
        w = idle.hello("idle")
        assert w["idle_timeout_ms"] == int(IDLE_S * 1000), w
        busy = c.session(1)
        busy.hello("busy")

        # The busy session talks every 0.3 s for 3 idle periods.
        rid = 2
        end = time.monotonic() + 3 * IDLE_S
        while time.monotonic() < end:
            busy.ping(rid)
            rid += 1
            time.sleep(0.3)
        busy.ping(rid)
        print("busy session served for %.1fs (%d pings)" % (3 * IDLE_S, rid - 1))

        frames = idle.expect_close(5)
        # The close came during the busy loop; the frames were buffered.
        assert frames and frames[-1].type == ERROR, frames
        code, text = frames[-1].error()
        print("idle session: ERROR %d %r, then closed (%s)" % (code, text, idle.close_how))
        assert code == cluster.ERR_TIMEOUT and frames[-1].request_id == 0, frames

        # Timing, on a fresh session watched alone.
        idle2 = c.session(1)
        idle2.hello("idle2")
        t0 = time.monotonic()
        f = idle2.recv_frame(IDLE_S + 5)
        took = time.monotonic() - t0
        assert f.type == ERROR and f.error()[0] == cluster.ERR_TIMEOUT, f
        idle2.expect_close(5)
        print("idle ERROR after %.3fs (timeout %.1fs)" % (took, IDLE_S))
        assert IDLE_S - 0.05 <= took <= IDLE_S + 2 * SWEEP_S + 0.5, took

        # The busy session has been silent since: it timed out the same way.
        frames = busy.expect_close(IDLE_S + 5)
        assert frames and frames[-1].type == ERROR and frames[-1].error()[0] == cluster.ERR_TIMEOUT, \
            frames
        assert c.node_state("node1") == "healthy"
        for s in (idle, idle2, busy):
            s.close()


if __name__ == "__main__":
    cluster.main(test)
