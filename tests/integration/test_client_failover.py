"""`berth send` fails over through libberth: 2000 numbered lines fed slowly
through a pipe while the node the CLI is connected to is killed (SIGKILL)
half-way. The CLI exits 0, every line has an ack with its sha256 (duplicates
are allowed and counted), and lines written after the kill are acked by
another node. With every node killed the CLI exits 1 with a message naming
the cause, within a bound."""
import hashlib
import re
import subprocess
import threading
import time

import cluster
from cluster import CLI_BIN

ACK = re.compile(r"^ack id=(\d+) bytes=(\d+) sha256=([0-9a-f]{64}) node=(\S+) seq=(\d+)$")
LINES = 2000
BATCH = 20          # lines per write
PAUSE_S = 0.03      # between writes: 100 writes, about 3 s in all
ALL_DEAD_BOUND_S = 20.0


def line(i):
    return b"line %06d of the failover test" % i


class Cli:
    """A `berth send` whose stdin we feed and whose stdout a thread reads."""

    def __init__(self, c, extra=()):
        self.acks = []  # (id, bytes, sha, node), in the order printed
        self.lock = threading.Lock()
        self.p = subprocess.Popen([CLI_BIN, "send", "--ca", c.ca, "--balancer", c.balancer_url,
                                   "--timeout", "2s"] + list(extra),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=c.dir, start_new_session=True)
        self.other = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        self.err = b""
        self.te = threading.Thread(target=self._read_err, daemon=True)
        self.te.start()

    def _read(self):
        for raw in self.p.stdout:
            m = ACK.match(raw.decode("utf-8", "replace").rstrip("\n"))
            with self.lock:
                if m:
                    self.acks.append((int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)))
                else:
                    self.other.append(raw)

    def _read_err(self):
        self.err = self.p.stderr.read()

    def write(self, first, n):
        self.p.stdin.write(b"".join(line(i) + b"\n" for i in range(first, first + n)))
        self.p.stdin.flush()

    def nodes_so_far(self):
        with self.lock:
            return [a[3] for a in self.acks]

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


def test_one_node_killed(c):
    cli = Cli(c)
    killed = None
    killed_at = None  # the first line written after the kill
    try:
        i = 1
        while i <= LINES:
            try:
                cli.write(i, BATCH)
            except BrokenPipeError:
                raise AssertionError("the CLI went away at line %d: %s" % (i, cli.err))
            i += BATCH
            if killed is None and i > LINES // 2:
                # Some acks are out by now (the CLI prints them whenever stdin
                # is idle); kill the node they come from, messages in flight.
                cluster.wait_until(lambda: cli.nodes_so_far(), 10, 0.01, "first acks")
                killed = cli.nodes_so_far()[-1]
                idx = int(killed[len("node"):])
                c.kill_node(idx)
                killed_at = i
                print("killed %s (SIGKILL) after writing %d lines" % (killed, i - 1))
            time.sleep(PAUSE_S)
        t0 = time.monotonic()
        rc = cli.finish(60)
        err = cli.err.decode("utf-8", "replace")
        print("berth send -> %d in %.1fs after EOF; stderr: %s" % (rc, time.monotonic() - t0,
                                                                  err.strip()[:500]))
        assert rc == 0, "berth send exited %d: %s" % (rc, err)
    finally:
        cli.kill()

    seen = {}
    for mid, nbytes, sha, node in cli.acks:
        assert 1 <= mid <= LINES, "ack for an unknown id %d" % mid
        want = hashlib.sha256(line(mid)).hexdigest()
        assert sha == want, "id %d: sha256 %s, want %s" % (mid, sha, want)
        assert nbytes == len(line(mid)), "id %d: bytes=%d" % (mid, nbytes)
        seen.setdefault(mid, []).append(node)
    missing = [m for m in range(1, LINES + 1) if m not in seen]
    dups = {m: n for m, n in seen.items() if len(n) > 1}
    print("%d ack lines, %d ids, %d duplicated %s, %d unexpected lines" %
          (len(cli.acks), len(seen), len(dups), sorted(dups)[:20], len(cli.other)))
    assert not missing, "%d lines never acked, first %s" % (len(missing), missing[:10])
    before = {n for m, ns in seen.items() if m < killed_at for n in ns}
    after = {n for m, ns in seen.items() if m >= killed_at for n in ns}
    print("acked before the kill by %s, after by %s" % (sorted(before), sorted(after)))
    assert killed in before, "no ack came from %s before it was killed" % killed
    assert killed not in after, "lines written after the kill were acked by %s" % killed
    assert after, "no ack after the kill"


def test_all_nodes_killed(c):
    cli = Cli(c, extra=["--retries", "2"])
    try:
        cli.write(1, BATCH)
        cluster.wait_until(lambda: len(cli.nodes_so_far()) == BATCH, 10, 0.01, "first acks")
        for i in range(1, c.n + 1):
            if c.proc(i).poll() is None:
                c.kill_node(i)
        t0 = time.monotonic()
        try:
            cli.write(BATCH + 1, BATCH)
        except BrokenPipeError:
            pass
        rc = cli.finish(ALL_DEAD_BOUND_S)
        took = time.monotonic() - t0
        err = cli.err.decode("utf-8", "replace").strip()
        print("all nodes killed: berth send -> %d in %.1fs: %s" % (rc, took, err))
    finally:
        cli.kill()
    assert rc == 1, "berth send exited %d with every node dead, want 1" % rc
    assert took < ALL_DEAD_BOUND_S, took
    assert err.startswith("berth: "), err
    # The message names the session that broke and why nothing took over.
    assert "node" in err and "took over" in err, "unclear message: %r" % err
    assert "%d messages acked" % BATCH in err, "message does not count the acks: %r" % err


def test():
    with cluster.Cluster(n=3) as c:
        c.wait_healthy(3)
        test_one_node_killed(c)
        c.wait_healthy(2)
        test_all_nodes_killed(c)


if __name__ == "__main__":
    cluster.main(test)
