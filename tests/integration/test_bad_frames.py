"""Hostile and broken clients against one node: each gets the ERROR the
protocol names (and a close where it must), and none of it disturbs a good
session open beside them or the node's health."""
import hashlib
import socket
import struct
import time

import cluster
from cluster import (ERROR, HELLO, PING, SEND, encode_frame, hello_body, send_body)


def error_of(frames, what):
    errs = [f for f in frames if f.type == ERROR]
    assert errs, "%s: no ERROR frame, got %r" % (what, frames)
    return errs[0]


def check_error(c, what, payload, code, rid, hello_first=True, must_close=True):
    """Opens a session, optionally says HELLO, sends payload and checks for
    ERROR(code) with request id rid, then (must_close) the node closing."""
    with c.session(1) as s:
        if hello_first:
            s.hello("bad-" + what.replace(" ", "-"), request_id=1)
        s.send_raw(payload)
        f = s.recv_frame(10)
        assert f.type == ERROR, "%s: want ERROR %d, got %r" % (what, code, f)
        got, text = f.error()
        print("%-22s -> ERROR %d %r (rid %d)" % (what, got, text, f.request_id))
        assert got == code, "%s: ERROR code %d (%r), want %d" % (what, got, text, code)
        assert f.request_id == rid, "%s: ERROR request id %d, want %d" % (what, f.request_id, rid)
        assert text, "%s: ERROR without text" % what
        if must_close:
            rest = s.expect_close(10)
            assert all(r.type == ERROR for r in rest), "%s: after ERROR: %r" % (what, rest)
            print("%-22s    closed (%s)" % ("", s.close_how))


def test():
    with cluster.Cluster(n=1, interval="250ms") as c:
        c.wait_healthy(1)
        good = c.session(1)
        w = good.hello("good")
        assert w["node_id"] == "node1" and w["version"] == 1, w
        max_payload = w["max_payload"]
        print("WELCOME", w)
        good.ping(2)

        check_error(c, "request before HELLO", encode_frame(PING, 7), cluster.ERR_NOT_READY, 7,
                    hello_first=False)
        check_error(c, "oversized length", encode_frame(SEND, 8, b"", length=2 ** 31),
                    cluster.ERR_TOO_LARGE, 8)
        check_error(c, "length > max_payload",
                    encode_frame(SEND, 9, b"", length=max_payload + 1),
                    cluster.ERR_TOO_LARGE, 9)
        check_error(c, "unknown type 0x42", encode_frame(0x42, 10, b""), cluster.ERR_UNKNOWN_TYPE,
                    10, must_close=False)
        check_error(c, "bad version", encode_frame(PING, 11, b"", version=2),
                    cluster.ERR_BAD_VERSION, 11, must_close=False)
        # HELLO whose name length byte says 10 but carries 2 bytes.
        check_error(c, "malformed HELLO", encode_frame(HELLO, 12, struct.pack(">HB", 1, 10) + b"ab"),
                    cluster.ERR_MALFORMED, 12, hello_first=False, must_close=False)
        check_error(c, "HELLO with 0-byte name", encode_frame(HELLO, 13, struct.pack(">HB", 1, 0)),
                    cluster.ERR_MALFORMED, 13, hello_first=False, must_close=False)
        check_error(c, "nonzero flags", encode_frame(PING, 14, b"", flags=1),
                    cluster.ERR_MALFORMED, 14, must_close=False)
        check_error(c, "second HELLO", encode_frame(HELLO, 15, hello_body("again")),
                    cluster.ERR_UNEXPECTED, 15, must_close=False)
        check_error(c, "reply type sent to node", encode_frame(cluster.PONG, 16, b""),
                    cluster.ERR_UNEXPECTED, 16, must_close=False)
        # The reply-type check comes before the HELLO-first one (PROTOCOL.md 5.1).
        check_error(c, "reply type before HELLO", encode_frame(cluster.PONG, 17, b""),
                    cluster.ERR_UNEXPECTED, 17, hello_first=False, must_close=False)
        # U+0085 (NEXT LINE) is a C1 control character: not in a name.
        check_error(c, "C1 control in name",
                    encode_frame(HELLO, 18, struct.pack(">HB", 1, 4) + b"d\xc2\x85o"),
                    cluster.ERR_MALFORMED, 18, hello_first=False, must_close=False)
        # Version negotiation: no version in common (0) is bad_version; a
        # later one is answered with the highest both speak, the node's 2.
        check_error(c, "HELLO version 0", encode_frame(HELLO, 19, hello_body("v0", version=0)),
                    cluster.ERR_BAD_VERSION, 19, hello_first=False, must_close=False)
        with c.session(1) as s:
            f = s.request(HELLO, 20, hello_body("v3", version=3))
            assert f.type == cluster.WELCOME and f.welcome()["version"] == 2, f
            s.ping(21)
            print("HELLO version 3        -> WELCOME version 2")
        # Version 2 carries a producer id; one in a version 1 HELLO, or
        # outside the node-id charset, is malformed.
        with c.session(1) as s:
            body = struct.pack(">HB", 2, 2) + b"p2" + struct.pack(">B", 5) + b"prod1"
            f = s.request(HELLO, 22, body)
            assert f.type == cluster.WELCOME and f.welcome()["version"] == 2, f
        check_error(c, "producer in version 1",
                    encode_frame(HELLO, 23, struct.pack(">HB", 1, 2) + b"p1" +
                                 struct.pack(">B", 5) + b"prod1"),
                    cluster.ERR_MALFORMED, 23, hello_first=False, must_close=False)
        check_error(c, "bad producer",
                    encode_frame(HELLO, 24, struct.pack(">HB", 2, 2) + b"p2" +
                                 struct.pack(">B", 3) + b"a b"),
                    cluster.ERR_MALFORMED, 24, hello_first=False, must_close=False)

        # Garbage over TLS: an ERROR or a close, and the node goes on.
        with c.session(1) as s:
            s.send_raw(bytes(range(256)) * 64)
            frames = s.expect_close(15)
            print("garbage over TLS       -> %r, closed (%s)" % (frames, s.close_how))
            assert all(f.type == ERROR for f in frames), frames

        # A truncated frame, then the client hangs up mid-frame.
        with c.session(1) as s:
            s.hello("truncated")
            s.send_raw(encode_frame(SEND, 3, send_body(1, b"x" * 100))[:40])
        # Plaintext garbage to the TLS port: the handshake fails and the node closes.
        for junk in (b"GET / HTTP/1.0\r\n\r\n", b"\x00" * 16 + b"\xff" * 1000,
                     encode_frame(HELLO, 1, hello_body("plain"))):
            raw = socket.create_connection(("127.0.0.1", c.node_ports[1]), timeout=10)
            try:
                raw.sendall(junk)
                t0 = time.monotonic()
                got = b""
                while True:
                    try:
                        chunk = raw.recv(4096)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
                    got += chunk
                print("plaintext %-12r -> %d bytes back, closed after %.0f ms"
                      % (junk[:12], len(got), (time.monotonic() - t0) * 1000))
            except socket.timeout:
                raise AssertionError("node kept a plaintext connection open 10 s") from None
            finally:
                raw.close()
        # Connect and say nothing then hang up; connect and hang up at once.
        for _ in range(20):
            socket.create_connection(("127.0.0.1", c.node_ports[1]), timeout=5).close()

        # The good session still works, in order, with the right hashes.
        good.ping(100, b"still there")
        for k in range(5):
            data = b"payload %d " % k * (k + 1)
            good.send_message(200 + k, 1000 + k, data)
        f = good.request(cluster.ECHO, 300, b"echo me")
        assert f.type == cluster.ECHO_REPLY and f.payload == b"echo me", f
        good.close()

        h = c.health()
        n = c.node_health("node1", h)
        print("node1 after the abuse:", {k: n.get(k) for k in ("state", "healthy", "reason",
                                                                "accepted", "sessions")})
        assert n["state"] == "healthy" and n["healthy"] is True, n
        assert c.proc(1).poll() is None, "node1 exited"

        # The node's counters, as the balancer reports them, saw all of it:
        # 21 TLS sessions, 3 plaintext connections whose handshake failed.
        def counted():
            n = c.node_health("node1")
            failed = sum(w["hs_failed"] for w in n["workers"])
            return n if n["accepted"] >= 21 and failed >= 3 else None
        n = cluster.wait_until(counted, 3, 0.05, "accepted/hs_failed counters")
        print("accepted=%d workers=%r" % (n["accepted"], n["workers"]))
        # Fresh clients are still served.
        with c.session(1) as s:
            s.hello("after")
            s.send_message(2, 1, b"fin")
            assert hashlib.sha256(b"fin").hexdigest()


if __name__ == "__main__":
    cluster.main(test)
