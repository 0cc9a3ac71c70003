"""Request bodies on the balancer's HTTP API: no endpoint takes one, so a
request announcing a body (a huge Content-Length, or chunked) is answered
from its headers alone and the connection closed, without reading the body:
the balancer never buffers what a client announces: 413 with a JSON error.
A Content-Length beyond any integer gets libmicrohttpd's own 413. The
balancer keeps serving throughout."""
import json
import socket
import time

import cluster

HUGE = 10 * 1024 ** 3


def exchange(port, head, timeout=2.0):
    """Sends head (request line + headers, no body); returns (status, headers
    dict, body bytes, seconds to the answer, sock). The socket is left open."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.monotonic()
    s.sendall(head)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    took = time.monotonic() - t0
    hdr, _, body = data.partition(b"\r\n\r\n")
    lines = hdr.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:want], took, s


def body_not_read(s):
    """After the answer the balancer closes: what we send now is not read."""
    closed = False
    try:
        for _ in range(64):
            s.sendall(b"x" * 65536)  # 4 MiB at most; a reader would take it all
    except OSError:
        closed = True
    if not closed:
        closed = cluster.wait_closed(s, 3.0) is not None
    s.close()
    return closed


def test():
    with cluster.Cluster(n=1) as c:
        c.wait_healthy(1)
        port = c.http_port
        cases = [
            ("GET /v1/pick, Content-Length 10 GiB",
             b"GET /v1/pick HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % HUGE),
            ("POST /v1/pick, Content-Length 10 GiB",
             b"POST /v1/pick HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % HUGE),
            ("GET /v1/health, chunked",
             b"GET /v1/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ("PUT /nope, Content-Length 10 GiB",
             b"PUT /nope HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % HUGE),
        ]
        for what, head in cases:
            status, headers, body, took, s = exchange(port, head)
            print("%-40s -> %d in %.3fs, Connection: %s, body %r" % (
                what, status, took, headers.get("connection"), body[:80]))
            assert took < 1.0, "%s: answered after %.3fs (was the body awaited?)" % (what, took)
            assert headers.get("connection", "").lower() == "close", (what, headers)
            assert headers.get("content-type", "").startswith("application/json"), (what, headers)
            j = json.loads(body)
            assert isinstance(j, dict), (what, j)
            assert status == 413 and j.get("error") == "body_too_large", (what, status, j)
            assert body_not_read(s), "%s: the connection stayed open to a body" % what

        # A length beyond any integer: MHD refuses it itself with 413.
        status, headers, body, took, s = exchange(
            port, b"GET /v1/pick HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n" % (b"9" * 30))
        print("%-40s -> %d in %.3fs" % ("Content-Length of 30 digits", status, took))
        assert status == 413 and took < 1.0, (status, took)
        s.close()

        # Still serving, also on a fresh keep-alive connection.
        status, j = c.pick()
        assert status == 200 and j["id"] == "node1", (status, j)
        assert c.health()["counts"]["healthy"] == 1


if __name__ == "__main__":
    cluster.main(test)
