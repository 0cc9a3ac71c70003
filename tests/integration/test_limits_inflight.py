"""--max-inflight: a client pipelines 100k requests (PINGs, every tenth a
SEND) without reading a reply. The node stops reading it once 1024 (the
default) are unanswered: its memory stays flat although --max-output is
lifted to 1 GiB (which alone would let it buffer ~27 MB of replies),
another client is served promptly meanwhile, and once the first client
reads, every request gets its reply, in order."""
import os
import select
import socket
import ssl
import time

import cluster
from cluster import (ACK, HELLO, HEADER, HEADER_SIZE, PING, PONG, SEND, WELCOME, encode_frame,
                     hello_body, send_body)

COUNT = 100_000
PAYLOAD = b"p" * 256
STALL_S = 1.0        # no write progress this long: the node stopped reading
RSS_GROWTH_MAX = 12  # MiB


def rss_kib(pid):
    with open("/proc/%d/status" % pid, encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def sanitized_build():
    """True for an ASan build: its allocator keeps freed memory in
    quarantine (256 MiB by default), so the node runs with a small one, and
    the peak while replies stream out is not checked there."""
    try:
        with open(os.path.join(cluster.BUILD_DIR, "CMakeCache.txt"), encoding="utf-8") as f:
            return "BERTH_SANITIZE:BOOL=ON" in f.read()
    except OSError:
        return False


def request_stream():
    """The client's bytes (HELLO, then COUNT requests) and the expected
    reply type per request id."""
    parts = [encode_frame(HELLO, 1, hello_body("flood"))]
    want = {1: WELCOME}
    for k in range(COUNT):
        rid = 2 + k
        if k % 10 == 9:
            parts.append(encode_frame(SEND, rid, send_body(rid, b"m%d" % rid)))
            want[rid] = ACK
        else:
            parts.append(encode_frame(PING, rid, PAYLOAD))
            want[rid] = PONG
    return b"".join(parts), want


class Flood:
    """A non-blocking TLS client that writes the stream and reads replies
    only when told to, on one thread (an SSL object is not thread-safe)."""

    def __init__(self, c, data):
        host, port = c.node_addr(1).rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=c.ca)
        raw = socket.create_connection((host, int(port)), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.sock.setblocking(False)
        self.data = memoryview(data)
        self.sent = 0
        self.inbuf = bytearray()
        self.off = 0
        self.replies = 0

    def write_some(self):
        """Writes until the socket blocks; returns bytes written."""
        n0 = self.sent
        while self.sent < len(self.data):
            chunk = self.data[self.sent:self.sent + 16384]
            try:
                self.sent += self.sock.send(chunk)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                break
        return self.sent - n0

    def read_some(self, want):
        """Reads what is there and checks every whole reply against want."""
        while True:
            try:
                chunk = self.sock.recv(262144)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            assert chunk, "the node closed the connection after %d replies" % self.replies
            self.inbuf += chunk
        while len(self.inbuf) - self.off >= HEADER_SIZE:
            length, _v, ftype, _f, rid = HEADER.unpack_from(self.inbuf, self.off)
            if len(self.inbuf) - self.off < HEADER_SIZE + length:
                break
            expect_rid = 1 + self.replies
            assert rid == expect_rid, "reply for request %d where %d was due" % (rid, expect_rid)
            assert ftype == want[rid], "request %d answered by type 0x%02x" % (rid, ftype)
            if ftype == PONG:
                assert length == len(PAYLOAD), "PONG %d of %d bytes" % (rid, length)
            self.off += HEADER_SIZE + length
            self.replies += 1
        if self.off > 1 << 20:
            del self.inbuf[:self.off]
            self.off = 0


def test():
    env = {}
    if sanitized_build():
        opts = os.environ.get("ASAN_OPTIONS", "")
        env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "quarantine_size_mb=1"
    with cluster.Cluster(n=1, start_nodes=False) as c:
        c.start_node(1, ["--max-output", "1GiB"], env=env)
        c.wait_healthy(1)
        pid = c.proc(1).pid
        with c.session(1) as other:
            other.hello("other")
            limits = other.info(2)["limits"]
            assert limits["max_inflight"] == 1024, limits
            rss0 = rss_kib(pid)

            data, want = request_stream()
            flood = Flood(c, data)
            try:
                # Phase 1: write without reading until the node stops taking bytes.
                last_progress = time.monotonic()
                deadline = last_progress + 60
                while time.monotonic() - last_progress < STALL_S:
                    assert time.monotonic() < deadline, "the node never stopped reading"
                    if flood.write_some():
                        last_progress = time.monotonic()
                    select.select([], [flood.sock], [], 0.05)
                assert flood.sent < len(data), \
                    "the node took all %d bytes without a reply read" % len(data)
                rss1 = rss_kib(pid)
                growth = (rss1 - rss0) / 1024
                print("node stopped reading after %.1f of %.1f MB written; RSS %.1f -> %.1f MiB"
                      % (flood.sent / 1e6, len(data) / 1e6, rss0 / 1024, rss1 / 1024))
                assert growth < RSS_GROWTH_MAX, "node RSS grew by %.1f MiB" % growth

                # Meanwhile another client is served promptly.
                slowest = 0.0
                for k in range(20):
                    t0 = time.monotonic()
                    other.ping(10 + k, b"x")
                    other.send_message(100 + k, 9000 + k, b"other %d" % k)
                    slowest = max(slowest, time.monotonic() - t0)
                print("other client: 20 PING+SEND, slowest %.1f ms" % (slowest * 1000))
                assert slowest < 1.0, "the other client waited %.2fs" % slowest
                assert rss_kib(pid) - rss0 < RSS_GROWTH_MAX * 1024

                # Phase 2: the flood client reads; everything arrives, in order.
                t0 = time.monotonic()
                peak = rss1
                while flood.replies < COUNT + 1:
                    assert time.monotonic() - t0 < 90, "only %d replies" % flood.replies
                    wr = [flood.sock] if flood.sent < len(data) else []
                    select.select([flood.sock], wr, [], 0.5)
                    flood.write_some()
                    flood.read_some(want)
                    if flood.replies % 5000 == 0:
                        peak = max(peak, rss_kib(pid))
                peak = max(peak, rss_kib(pid))
                print("all %d replies in order in %.1fs; node RSS peak %.1f MiB"
                      % (flood.replies, time.monotonic() - t0, peak / 1024))
                if not sanitized_build():
                    assert (peak - rss0) / 1024 < RSS_GROWTH_MAX, \
                        "peak RSS %.1f MiB" % (peak / 1024)
            finally:
                flood.sock.close()
            other.ping(200)


if __name__ == "__main__":
    cluster.main(test)
