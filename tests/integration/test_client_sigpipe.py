"""A libberth program that keeps the DEFAULT SIGPIPE action (shared/examples/
send_lines.c, written from berth.h alone) survives its node being killed
mid-stream and fails over. The node is killed (SIGKILL) while the program
has unacknowledged messages and more than one TLS record of SENDs buffered,
so its next flush writes twice into a connection the peer has reset: with
write(2) under the socket BIO that is death by SIGPIPE; libberth sends with
MSG_NOSIGNAL, so it must be a failover. Every line must be acked (duplicates
allowed), lines sent after the kill by another node, twice in a row."""
import os
import subprocess
import threading

import cluster

SEND_LINES_BIN = os.path.join(cluster.BUILD_DIR, "tests", "send_lines")
BATCH = 100         # lines per batch: more than the 64-message window
LINE_BYTES = 2000   # 36 buffered SENDs are 72 KB, several TLS records
SIGPIPE_BIT = 1 << (13 - 1)


def line(i):
    head = b"line %06d " % i
    return head + b"x" * (LINE_BYTES - len(head))


class Sender:
    """send_lines with a thread reading its stdout."""

    def __init__(self, c):
        # Popen restores SIGPIPE to SIG_DFL in the child (restore_signals).
        self.p = subprocess.Popen([SEND_LINES_BIN, "--balancer", c.balancer_url, "--ca", c.ca,
                                   "--timeout-ms", "2000"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=c.dir, start_new_session=True)
        self.acks = []  # (id, node) in the order printed
        self.done = None
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        self.err = b""
        self.te = threading.Thread(target=self._read_err, daemon=True)
        self.te.start()

    def _read(self):
        for raw in self.p.stdout:
            words = raw.decode("utf-8", "replace").split()
            with self.lock:
                if words and words[0] == "ack":
                    f = dict(w.split("=", 1) for w in words[1:])
                    self.acks.append((int(f["id"]), f["node"]))
                elif words and words[0] == "done":
                    self.done = dict(w.split("=", 1) for w in words[1:])

    def _read_err(self):
        self.err = self.p.stderr.read()

    def sigpipe_ignored(self):
        with open("/proc/%d/status" % self.p.pid) as f:
            for ln in f:
                if ln.startswith("SigIgn:"):
                    return bool(int(ln.split()[1], 16) & SIGPIPE_BIT)
        raise AssertionError("no SigIgn in /proc/%d/status" % self.p.pid)

    def write(self, first, n):
        """False when the program has gone (its exit status says why)."""
        try:
            self.p.stdin.write(b"".join(line(i) + b"\n" for i in range(first, first + n)))
            self.p.stdin.flush()
            return True
        except BrokenPipeError:
            return False

    def snapshot(self):
        with self.lock:
            return list(self.acks)

    def finish(self, timeout):
        try:
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        rc = self.p.wait(timeout)
        self.t.join(5)
        self.te.join(5)
        return rc

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


def one_round(c, alive):
    s = Sender(c)
    try:
        cluster.wait_until(lambda: s.p.poll() is None and s.sigpipe_ignored() is False, 5, 0.01,
                           "send_lines running")
        assert not s.sigpipe_ignored(), "the test program must keep the default SIGPIPE action"
        s.write(1, BATCH)
        # The first ACKs come once the window is full; the rest of the batch
        # stays buffered, unsent and unacknowledged, while stdin is quiet.
        cluster.wait_until(lambda: len(s.snapshot()) >= BATCH - 64, 20, 0.01, "first acks")
        victim = s.snapshot()[-1][1]
        idx = int(victim[len("node"):])
        assert idx in alive, (victim, alive)
        c.kill_node(idx)
        alive.remove(idx)
        print("killed %s with %d of %d lines acked" % (victim, len(s.snapshot()), BATCH))
        s.write(BATCH + 1, BATCH)
        rc = s.finish(60)
        err = s.err.decode("utf-8", "replace").strip()
        print("send_lines -> %d; %s; stderr: %s" % (rc, s.done, err[:400]))
    finally:
        s.kill()
    assert rc != -13, "send_lines died of SIGPIPE when its node was killed"
    assert rc == 0, "send_lines exited %d: %s" % (rc, err)
    seen = {}
    for mid, node in s.acks:
        seen.setdefault(mid, []).append(node)
    missing = [m for m in range(1, 2 * BATCH + 1) if m not in seen]
    assert not missing, "%d lines never acked, first %s" % (len(missing), missing[:10])
    after = {n for m, ns in seen.items() if m > BATCH for n in ns}
    assert victim not in after, "lines written after the kill were acked by %s" % victim
    assert after, "no ack after the kill"
    assert s.done and int(s.done["failovers"]) >= 1, s.done
    assert int(s.done["sent"]) == 2 * BATCH, s.done


def test():
    with cluster.Cluster(n=3) as c:
        c.wait_healthy(3)
        alive = [1, 2, 3]
        one_round(c, alive)
        c.wait_healthy(2)
        one_round(c, alive)


if __name__ == "__main__":
    cluster.main(test)
