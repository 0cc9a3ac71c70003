"""--max-frame below the default: WELCOME announces it, a payload of exactly
that size is served, and a frame whose header announces one byte more gets
ERROR too_large from the header alone (no payload sent), then a close."""
import time

import cluster
from cluster import ECHO, ECHO_REPLY, ERROR, SEND, encode_frame, send_body

MAX = 2048  # the default is 1 MiB


def test():
    with cluster.Cluster(n=1, node_args=["--max-frame", "2KiB"]) as c:
        c.wait_healthy(1)
        with c.session(1) as s:
            w = s.hello("frames")
            assert w["max_payload"] == MAX, w
            f = s.request(ECHO, 2, b"e" * MAX)
            assert f.type == ECHO_REPLY and f.payload == b"e" * MAX, f
            s.send_message(3, 1, b"s" * (MAX - 8))  # SEND body = 8-byte id + data
            print("payloads of exactly %d bytes served" % MAX)

            # Only the 16 header bytes go out: the node must not wait for more.
            t0 = time.monotonic()
            s.send_raw(encode_frame(ECHO, 4, b"", length=MAX + 1))
            f = s.recv_frame(5)
            took = time.monotonic() - t0
            assert f.type == ERROR, f
            code, text = f.error()
            print("header announcing %d bytes -> ERROR %d %r in %.3fs" % (MAX + 1, code, text,
                                                                          took))
            assert code == cluster.ERR_TOO_LARGE and f.request_id == 4, f
            assert took < 1.0, took
            rest = s.expect_close(5)
            assert not rest, rest

        # The same for SEND, and for a length near 4 GiB.
        for rid, frame in ((5, encode_frame(SEND, 5, send_body(1, b""), length=MAX + 1)[:16]),
                           (6, encode_frame(ECHO, 6, b"", length=0xFFFFFFFF))):
            with c.session(1) as s:
                s.hello("frames-%d" % rid)
                s.send_raw(frame)
                f = s.recv_frame(5)
                assert f.type == ERROR and f.error()[0] == cluster.ERR_TOO_LARGE, f
                assert f.request_id == rid, f
                s.expect_close(5)

        # The limit holds before HELLO too.
        with c.session(1) as s:
            s.send_raw(encode_frame(cluster.HELLO, 7, b"", length=MAX + 1))
            f = s.recv_frame(5)
            assert f.type == ERROR and f.error()[0] == cluster.ERR_TOO_LARGE, f
            s.expect_close(5)
        assert c.node_state("node1") == "healthy"


if __name__ == "__main__":
    cluster.main(test)
