"""Disk faults a node must notice without a client's help: its journal disk
freezes (fsfreeze) while no client writes, or it is restarted on a disk
that is still full. Either way the journal's own probe takes it out of
rotation within the heartbeat bound (probe interval + probe timeout + one
heartbeat, well inside fall x interval), with the cause in /v1/health, and
it comes back when the disk does. powerfs provides the frozen and the full
disk."""
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import cluster  # noqa: E402
import journal_file  # noqa: E402
import powermount  # noqa: E402

INTERVAL = "250ms"
PROBE_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 0.4


def wait_state(c, want, bound_s, what):
    """Waits until node1's state is want (or not healthy when want is None)
    for at most bound_s; returns (seconds it took, its health entry)."""
    t0 = time.monotonic()

    def ok():
        n = c.node_health("node1")
        if n is None:
            return None
        good = n.get("state") != "healthy" if want is None else n.get("state") == want
        return n if good else None
    n = cluster.wait_until(ok, bound_s, c.interval_s / 10, what)
    return time.monotonic() - t0, n


def test():
    with cluster.Cluster(n=1, interval=INTERVAL, start_nodes=False) as c, \
            powermount.PowerMount(os.path.join(c.dir, "disk")) as m:
        jdir = os.path.join(m.mnt, "journal")
        extra = ["--journal-dir", jdir, "--journal-probe-interval", "%dms" % (PROBE_INTERVAL_S * 1000),
                 "--journal-probe-timeout", "%dms" % (PROBE_TIMEOUT_S * 1000)]
        c.start_node(1, extra)
        c.wait_healthy(1)
        journal_file.send_many(c, 1, 1, 20)
        # The bound the issue sets: out of rotation before the balancer would
        # have noticed a silent node (fall x interval), plus the probe's own
        # period and timeout.
        bound = PROBE_INTERVAL_S + PROBE_TIMEOUT_S + 3 * c.interval_s + 1.0

        # 1. Frozen disk, no client writing.
        m.command("freeze")
        took, n = wait_state(c, None, bound, "node1 out of rotation on a frozen disk")
        assert "disk not responding" in n.get("reason", ""), n
        print("frozen disk: out of rotation after %.2fs (%s)" % (took, n.get("reason")))
        assert c.pick()[0] == 503, "a frozen node was handed out"
        m.command("thaw")
        took, _ = wait_state(c, "healthy", 20, "node1 back after thaw")
        print("thawed: healthy again after %.2fs" % took)

        # 2. Restarted on a disk that is still full: never handed out.
        c.kill_node(1, signal.SIGKILL)
        m.command("capacity %d" % m.stats()["used"])
        c.start_node(1, extra)
        journal_file.wait_serving(c, 1)
        # The killed process's entry may linger a moment (panic can hold a
        # node that was the whole rotation); from the new one's registration
        # on, node1 must never be healthy.
        cluster.wait_until(lambda: (c.node_health("node1") or {}).get("state") == "joining" or
                           "disk full" in (c.node_health("node1") or {}).get("reason", ""),
                           bound, c.interval_s / 10, "the restarted node1 registered")
        deadline = time.monotonic() + 3 * bound
        while time.monotonic() < deadline:
            n = c.node_health("node1")
            assert not n or n.get("state") != "healthy", "a node on a full disk is healthy: %r" % n
            status, body = c.pick()
            assert status != 200, "a node on a full disk was handed out: %r" % body
            if n and "disk full" in n.get("reason", ""):
                break
            time.sleep(c.interval_s / 5)
        assert n and "disk full" in n.get("reason", ""), "no 'disk full' cause: %r" % n
        print("restarted on a full disk: kept out (%s)" % n.get("reason"))
        m.command("capacity 0")
        took, _ = wait_state(c, "healthy", 20, "node1 healthy once the disk has room")
        journal_file.send_many(c, 1, 100, 5)
        print("room again: healthy after %.2fs, SENDs stored" % took)
        c.kill_node(1, signal.SIGKILL)  # before powerfs goes


if __name__ == "__main__":
    powermount.skip_unless_fuse()
    cluster.main(test)
