"""--max-session-memory: clients that send requests and never read the
replies make the node buffer them (up to --max-output each, plus a frame
and a partial request). With many of them the node-wide budget holds: the
sessions holding the most go first, the node's RSS stays near the budget,
the memory comes back when they are gone, and a session that reads its
replies is served throughout. Sizes are small so the test stays light;
the mechanism does not depend on them."""
import os
import socket
import ssl
import time

import cluster
from cluster import ECHO, encode_frame, hello_body

MIB = 1 << 20
MAX_OUTPUT = 1 * MIB
MAX_FRAME = 256 * 1024
BUDGET = 16 * MIB
CLIENTS = 40           # each can make the node hold ~1.5-2.5 MiB: ~80 MiB without the budget
PAYLOAD = MAX_FRAME - 16


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for pid %d" % pid)


def sanitized_build():
    """True for an ASan build: its allocator keeps freed memory in
    quarantine and shadow memory grows with the heap, so RSS says nothing
    about the budget there; the node's own count is still checked."""
    try:
        with open(os.path.join(cluster.BUILD_DIR, "CMakeCache.txt"), encoding="utf-8") as f:
            return "BERTH_SANITIZE:BOOL=ON" in f.read()
    except OSError:
        return False


def slow_reader(c, i):
    """A TLS client with a tiny receive buffer that says HELLO, then sends
    ECHOs until the node stops reading, and never reads a reply."""
    host, port = c.node_addr(1).rsplit(":", 1)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(5)
    raw.connect((host, int(port)))
    ctx = ssl.create_default_context(cafile=c.ca)
    s = ctx.wrap_socket(raw, server_hostname=host)
    s.sendall(encode_frame(cluster.HELLO, 1, hello_body("slow-%d" % i)))
    s.settimeout(0.3)
    body = bytes([0x41 + i % 26]) * PAYLOAD
    sent = 0
    try:
        for rid in range(2, 200):
            s.sendall(encode_frame(ECHO, rid, body))
            sent += len(body)
    except (socket.timeout, TimeoutError, ssl.SSLError, ConnectionError):
        pass  # blocked (the node stopped reading) or closed (evicted)
    return s, sent


def test():
    args = ["--max-output", "1MiB", "--max-frame", "256KiB",
            "--max-session-memory", "%dMiB" % (BUDGET // MIB)]
    env, check_rss = {}, not sanitized_build()
    if not check_rss:
        opts = os.environ.get("ASAN_OPTIONS", "")
        env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "quarantine_size_mb=1"
    with cluster.Cluster(n=1, start_nodes=False) as c:
        c.start_node(1, args, env=env)
        c.wait_healthy(1)
        pid = c.proc(1).pid
        good = c.session(1)
        good.hello("good")
        assert good.info(2)["limits"]["max_session_memory"] == BUDGET
        time.sleep(0.2)
        base = rss_bytes(pid)
        peak = base
        slow, sent = [], 0
        try:
            for i in range(CLIENTS):
                s, n = slow_reader(c, i)
                slow.append(s)
                sent += n
                peak = max(peak, rss_bytes(pid))
                if i % 10 == 9:
                    good.ping(100 + i, b"served while others do not read")
            time.sleep(0.3)
            peak = max(peak, rss_bytes(pid))
            counters = good.info(3)["counters"]
            print("%d slow readers sent %.0f MiB; node RSS %.1f -> peak %.1f MiB; counters %r"
                  % (CLIENTS, sent / MIB, base / MIB, peak / MIB, counters))
            assert counters["memory_evictions"] >= 1, counters
            assert counters["session_memory"] <= BUDGET, counters
            # The budget bounds what the node holds: RSS grows by about the
            # budget, not by CLIENTS times a slow reader's share.
            assert not check_rss or peak - base <= BUDGET + 12 * MIB, \
                "RSS grew %.1f MiB with a %d MiB budget" % ((peak - base) / MIB, BUDGET // MIB)
            # The session that reads is served, in order, with big replies too.
            good.ping(4, b"still here")
            f = good.request(ECHO, 5, b"e" * 100000)
            assert f.type == cluster.ECHO_REPLY and len(f.payload) == 100000, f
        finally:
            for s in slow:
                s.close()

        # Gone: the node gives their memory back.
        def returned():
            counters = good.info(6)["counters"]
            rss = rss_bytes(pid)
            return (rss, counters) if counters["session_memory"] == 0 and \
                (not check_rss or rss - base <= 8 * MIB) else None
        rss, counters = cluster.wait_until(returned, 5, 0.1, "session memory returned")
        print("after the slow readers left: RSS %.1f MiB (base %.1f), counters %r"
              % (rss / MIB, base / MIB, counters))
        with open(c.logs["node1"]) as f:
            evicted = [l for l in f if "event=session_evicted" in l]
        assert evicted and "reason=max_session_memory" in evicted[0], evicted[:1]
        print(evicted[0].strip())
        good.ping(7)
        good.close()
        assert c.node_state("node1") == "healthy"


if __name__ == "__main__":
    cluster.main(test)
