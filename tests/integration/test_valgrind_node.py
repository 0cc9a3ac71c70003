"""A node under valgrind memcheck (2 workers, journal on, a --feed) through a
short bounded load of TLS sessions (HELLO, SEND, ECHO, PING, INFO, BYE), bad
frames, plaintext garbage and abandoned handshakes, a `berth tail` replaying
every stored SEND from the feed, then SIGTERM: the node must drain and exit
0 with no memcheck error and no definitely lost block."""
import os
import re
import shutil
import signal
import socket
import time

import cluster
from cluster import ECHO, ECHO_REPLY, ERROR, encode_frame, raw_connect

LOAD_S = 5.0


def one_round(c, k):
    """One good session and one hostile connection; returns requests made."""
    n = 0
    with c.session(1) as s:
        s.hello("vg-%d" % k)
        for i in range(4):
            s.send_message(10 + i, k * 100 + i, os.urandom(64 + 300 * i))
            f = s.request(ECHO, 20 + i, b"e" * (i * 1000))
            assert f.type == ECHO_REPLY, f
            s.ping(30 + i, b"p")
            n += 3
        s.info(40)
        f = s.request(cluster.BYE, 41)
        assert f.type == cluster.BYE, f
        s.expect_close(10)
        n += 2
    bad = k % 4
    if bad == 0:  # a frame the node refuses: ERROR, close
        with c.session(1) as s:
            s.hello("vg-bad-%d" % k)
            s.send_raw(encode_frame(ECHO, 5, b"", length=1 << 30))
            frames = s.expect_close(10)
            assert frames and frames[-1].type == ERROR, frames
    elif bad == 1:  # not TLS at all
        r = raw_connect(c.node_addr(1))
        r.sendall(b"GET / HTTP/1.0\r\n\r\n" * 8)
        cluster.wait_closed(r, 10)
        r.close()
    elif bad == 2:  # a handshake abandoned half-way
        r = raw_connect(c.node_addr(1))
        r.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20)
        r.close()
    else:  # a session dropped mid-frame without BYE
        s = c.session(1)
        s.hello("vg-drop-%d" % k)
        s.send_raw(encode_frame(ECHO, 9, b"x" * 100)[:50])
        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    return n


def sanitized_build():
    """True when the binaries carry ASan (BERTH_SANITIZE): valgrind cannot
    run them, and ASan checks the same things in that build."""
    try:
        with open(os.path.join(cluster.BUILD_DIR, "CMakeCache.txt"), encoding="utf-8") as f:
            return "BERTH_SANITIZE:BOOL=ON" in f.read()
    except OSError:
        return False


def test():
    if sanitized_build():
        print("skipped: %s is an ASan build; valgrind runs on the plain build" % cluster.BUILD_DIR)
        return
    vg = shutil.which("valgrind")
    assert vg, "valgrind is not installed (deploy/install-deps.sh installs it)"
    # The log path is relative: processes run in the cluster's temp dir.
    prefix = [vg, "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
              "--show-leak-kinds=definite", "--num-callers=30", "--log-file=valgrind.log"]
    t0 = time.monotonic()
    feed = "tcp://127.0.0.1:%d" % cluster.free_ports(1)[0]
    with cluster.Cluster(n=1, workers=2, node_prefix=prefix,
                         node_args=["--feed", feed, "--feed-plaintext"]) as c:
        vglog = os.path.join(c.dir, "valgrind.log")
        c.wait_healthy(1, timeout=60)
        print("node healthy under valgrind after %.1fs" % (time.monotonic() - t0))

        rounds = requests = 0
        end = time.monotonic() + LOAD_S
        while time.monotonic() < end:
            requests += one_round(c, rounds)
            rounds += 1
        print("load: %d rounds, %d requests in %.1fs" % (rounds, requests, LOAD_S))
        assert rounds >= 4, "too little load got through valgrind: %d rounds" % rounds

        # The feed thread and the journal reader under memcheck too.
        sends = rounds * 4
        rc, out, err = c.run_cli(["tail", "--feed", feed, "--from", "1", "--count", str(sends),
                                  "--duration", "30s"], timeout=60)
        assert rc == 0, err
        assert len(out.splitlines()) == sends, "tail printed %d records of %d" % (
            len(out.splitlines()), sends)
        print("tail replayed %d records from the feed" % sends)

        p = c.proc(1)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(90)
        with open(vglog, encoding="utf-8", errors="replace") as f:
            report = f.read()
        summary = [l for l in report.splitlines()
                   if re.search(r"ERROR SUMMARY|definitely lost|in use at exit|All heap", l)]
        print("\n".join(summary))
        if rc != 0:
            print(report[-6000:])
        assert rc != 99, "valgrind found errors (exit 99); see the report above"
        assert rc == 0, "node exited %d under valgrind" % rc
        m = re.search(r"ERROR SUMMARY: (\d+) errors", report)
        assert m and m.group(1) == "0", "memcheck errors: %s" % (m.group(0) if m else "no summary")
        lost = re.search(r"definitely lost: ([\d,]+) bytes", report)
        assert lost is None or lost.group(1) == "0", lost.group(0)


if __name__ == "__main__":
    cluster.main(test)
