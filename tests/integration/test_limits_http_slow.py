"""HTTP slowloris: a request trickling one header line every 0.3 s (each
byte resets libmicrohttpd's own timeout) is closed at the absolute
--http-request-timeout; a keep-alive connection gets a new deadline per
request; /healthz answers meanwhile; one client address holds at most
--http-per-ip-limit connections (counted in /v1/health and /metrics)."""
import socket
import time

import cluster
from cluster import wait_until

DEADLINE_S = 1.5
PER_IP = 4


def trickle_until_closed(port, limit_s):
    """Opens a request and sends a header line every 0.3 s; returns the
    seconds until the balancer closed the connection (or limit_s)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    t0 = time.monotonic()
    try:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        k = 0
        while time.monotonic() - t0 < limit_s:
            try:
                s.sendall(b"X-Slow-%d: x\r\n" % k)
            except OSError:
                return time.monotonic() - t0
            k += 1
            s.settimeout(0.3)
            try:
                if s.recv(4096) == b"":
                    return time.monotonic() - t0
            except socket.timeout:
                pass
            except OSError:
                return time.monotonic() - t0
        return limit_s
    finally:
        s.close()


def keep_alive(port):
    """Two requests on one connection, the second sent after 0.8 x the
    deadline: both answered."""
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        for _ in range(2):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(b"}\n"):
                chunk = s.recv(4096)
                assert chunk, "closed before the answer"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:40]
            time.sleep(DEADLINE_S * 0.8)
    finally:
        s.close()


def test():
    with cluster.Cluster(n=0, start_nodes=False, plaintext=True,
                         balancer_args=["--http-request-timeout", "%dms" % (DEADLINE_S * 1000),
                                        "--http-per-ip-limit", str(PER_IP)]) as c:
        h = c.health()["http"]
        assert h["request_timeout_ms"] == DEADLINE_S * 1000 and h["per_address_limit"] == PER_IP, h
        took = trickle_until_closed(c.http_port, DEADLINE_S * 4)
        print("trickling request closed after %.2f s (deadline %.1f s)" % (took, DEADLINE_S))
        assert DEADLINE_S * 0.8 <= took <= DEADLINE_S + 1.0, took
        keep_alive(c.http_port)
        assert c.health()["http"]["request_timeouts"] >= 1

        # per address: of PER_IP + 1 connections from one address, one is
        # refused at accept (closed before a byte is read)
        time.sleep(0.3)  # the health queries' connections are closed
        conns = [socket.create_connection(("127.0.0.1", c.http_port), timeout=2)
                 for _ in range(PER_IP + 1)]
        answered = 0
        try:
            time.sleep(0.3)
            for s in conns:
                try:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    if s.recv(100).startswith(b"HTTP/1.1 200"):
                        answered += 1
                except OSError:
                    pass
        finally:
            for s in conns:
                s.close()
        print("%d of %d connections from one address answered" % (answered, PER_IP + 1))
        assert answered == PER_IP, answered
        time.sleep(0.2)
        h = c.health()["http"]
        print("http: %r" % h)
        assert h["refused"]["per_address"] >= 1, h
        st, body, _ = cluster.http_get(c.http_port, "/metrics")
        assert b"berth_http_request_timeouts_total" in body
        assert b'berth_http_connections_refused_total{reason="per_address"}' in body


if __name__ == "__main__":
    cluster.main(test)
