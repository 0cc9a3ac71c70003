"""Pipelining: one TLS session writes 100 ECHO/SEND requests in one go; the
replies come back in request order with matching request ids, echoes and
sha256 digests."""
import hashlib

import cluster
from cluster import ACK, ECHO, ECHO_REPLY, SEND, encode_frame, send_body

COUNT = 100


def test():
    with cluster.Cluster(n=1, interval="250ms") as c:
        c.wait_healthy(1)
        with c.session(1) as s:
            s.hello("pipeline")
            batch = b""
            expect = []
            for k in range(COUNT):
                rid = 1000 + k * 7
                data = (b"msg-%03d|" % k) * (1 + k % 13) + bytes([k])
                if k % 2:
                    batch += encode_frame(SEND, rid, send_body(50_000 + k, data))
                    expect.append((rid, ACK, (50_000 + k, hashlib.sha256(data).hexdigest())))
                else:
                    batch += encode_frame(ECHO, rid, data)
                    expect.append((rid, ECHO_REPLY, data))
            s.send_raw(batch)
            print("sent %d pipelined frames in one write (%d bytes)" % (COUNT, len(batch)))
            for k, (rid, ftype, want) in enumerate(expect):
                f = s.recv_frame(15)
                assert f.request_id == rid, "reply %d: request id %d, want %d (%r)" % (
                    k, f.request_id, rid, f)
                assert f.type == ftype, "reply %d: %r, want type %#x" % (k, f, ftype)
                got = f.ack() if ftype == ACK else f.payload
                assert got == want, "reply %d (rid %d): %r, want %r" % (k, rid, got, want)
            print("all %d replies in order" % COUNT)

            # A second, larger round with big payloads split across TLS records.
            big = bytes(range(256)) * 1024  # 256 KiB
            batch = b"".join(encode_frame(SEND, 5000 + k, send_body(k, big[k:])) for k in range(8))
            s.send_raw(batch)
            for k in range(8):
                f = s.recv_frame(15)
                assert f.request_id == 5000 + k, f
                assert f.ack() == (k, hashlib.sha256(big[k:]).hexdigest()), f
            s.ping(9999)


if __name__ == "__main__":
    cluster.main(test)
