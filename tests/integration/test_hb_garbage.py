"""Garbage on the balancer's heartbeat port: raw TCP junk and every kind of
bad ZeroMQ message. The balancer stays up, counts what it drops, keeps the
real nodes healthy, and still accepts a well-formed (fake) node, which it
then retires when it falls silent."""
import json
import socket
import time

import cluster

zmq = cluster.require_zmq()

BOOT = "00c0ffee00c0ffee"


def hb_counts(h):
    hb = h.get("heartbeats", {})
    rejected = hb.get("rejected", {})
    return hb.get("received", 0), hb.get("dropped", 0), sum(rejected.values()) if isinstance(
        rejected, dict) else rejected


def register_msg(node, seq):
    return {"type": "register", "node": node, "boot": BOOT, "seq": seq,
            "addr": "127.0.0.1:9", "capacity": 4, "version": "fake-0"}


def heartbeat_msg(node, seq):
    return {"type": "heartbeat", "node": node, "boot": BOOT, "seq": seq, "sessions": 0,
            "accepted": 0, "msgs_per_sec": 0.0, "healthy": True, "draining": False,
            "reason": "", "workers": [{"ticks": seq, "hs_ok": 0, "hs_failed": 0}]}


def test():
    # forget-after short so that the fake node's removal is seen in the test.
    # Plaintext: the junk must reach the heartbeat decoder; a secure
    # balancer refuses an unauthenticated sender before that (test_curve).
    with cluster.Cluster(n=2, interval="250ms", balancer_args=["--forget-after", "2s"],
                         plaintext=True) as c:
        c.wait_healthy(2)
        before = c.health()
        r0, d0, j0 = hb_counts(before)
        print("before: received=%d dropped=%d rejected=%d" % (r0, d0, j0))

        # Raw TCP junk: not even a ZMTP greeting.
        for junk in (b"GET / HTTP/1.0\r\n\r\n", b"\xff" * 10 + b"\x7f" + b"\x00" * 64,
                     bytes(range(256)) * 40, b""):
            s = socket.create_connection(("127.0.0.1", c.hb_port), timeout=5)
            try:
                s.sendall(junk)
                time.sleep(0.05)
            except OSError:
                pass
            finally:
                s.close()

        ctx = zmq.Context()
        try:
            bad = ctx.socket(zmq.DEALER)
            bad.setsockopt(zmq.LINGER, 0)
            bad.connect(c.hb_endpoint)
            good_hb = heartbeat_msg("node1", 1)
            wrong_types = dict(good_hb, sessions="many")
            missing = {k: v for k, v in heartbeat_msg("node1", 2).items() if k != "boot"}
            garbage = [
                b"not json at all",
                b"",
                b"\x00\x01\x02\xff\xfe",
                b"[1, 2, 3]",
                b'"a string"',
                b"42",
                b"null",
                b'{"type": "heartbeat"',              # truncated
                b"{}",
                json.dumps({"type": "no-such-type", "node": "x"}).encode(),
                json.dumps({"type": 7, "node": "x"}).encode(),
                json.dumps(missing).encode(),
                json.dumps(wrong_types).encode(),
                json.dumps(dict(good_hb, healthy="yes")).encode(),
                json.dumps(dict(good_hb, seq=-1)).encode(),
                json.dumps(dict(good_hb, boot="XYZ")).encode(),
                json.dumps(dict(good_hb, workers="none")).encode(),
                json.dumps(dict(good_hb, workers=[{"ticks": "x"}])).encode(),
                json.dumps(dict(good_hb, msgs_per_sec=-5)).encode(),
                json.dumps(dict(register_msg("evil", 1), node="bad id with spaces")).encode(),
                json.dumps(dict(register_msg("evil", 1), node="n" * 65)).encode(),
                json.dumps(dict(register_msg("evil", 1), addr="no-port")).encode(),
                json.dumps(dict(register_msg("evil", 1), capacity=0)).encode(),
                json.dumps(dict(register_msg("evil", 1), version="v" * 10000)).encode(),
                json.dumps(dict(register_msg("evil", 1), node="e" * 12000)).encode(),
                json.dumps({"type": "ack", "node": "node1", "interval_ms": 1, "epoch": 1}).encode(),
                b'{"type": "heartbeat", "node": "node1", "node": "node2"}',
                b"\xc3\x28" + b'{"type":"leave"}',     # invalid UTF-8
                b"{" * 5000,                          # deep nesting
            ]
            for g in garbage:
                bad.send(g)
            # Multi-frame messages: the protocol is one frame per message.
            bad.send_multipart([b"{}", b"{}"])
            bad.send_multipart([json.dumps(good_hb).encode(), b"tail"])
            bad.send_multipart([b""] * 5)
            # A leave for a node that is not ours, with a bogus boot id: must
            # not take node1 out of rotation.
            bad.send(json.dumps({"type": "leave", "node": "node1", "boot": "1111111111111111",
                                 "seq": 1}).encode())
            # The balancer answers what it can parse; drain those replies.
            time.sleep(0.5)
            replies = []
            while bad.poll(100):
                replies.append(bad.recv_multipart())
            print("balancer answered %d of the bad messages" % len(replies))
            bad.close()

            # Over 16 KiB: libzmq refuses it (ZMQ_MAXMSGSIZE) and drops that
            # connection, so it goes on a socket of its own.
            big = ctx.socket(zmq.DEALER)
            big.setsockopt(zmq.LINGER, 0)
            big.connect(c.hb_endpoint)
            big.send(json.dumps(dict(register_msg("evil", 1), padding="p" * 20000)).encode())
            big.send(b"x" * (1 << 20))
            time.sleep(0.3)
            big.close()

            status, hz = c.http_get_json("/healthz")
            assert status == 200 and hz == {"status": "ok"}, (status, hz)
            assert c.proc("balancer").poll() is None, "balancer exited"

            def counted():
                r, d, j = hb_counts(c.health())
                return (r, d, j) if d + j >= d0 + j0 + 20 else None
            r1, d1, j1 = cluster.wait_until(counted, 5, 0.05, "dropped/rejected counters to grow")
            h = c.health()
            print("after: received=%d dropped=%d rejected=%d %s"
                  % (r1, d1, j1, json.dumps(h["heartbeats"].get("rejected"))))

            # The real nodes never left rotation.
            time.sleep(3 * c.interval_s)
            h = c.wait_healthy(2, timeout=5)
            assert "evil" not in {n["id"] for n in h["nodes"]}, h["nodes"]

            # A well-formed fake node registers, rises to healthy, and is served.
            fake = ctx.socket(zmq.DEALER)
            fake.setsockopt(zmq.LINGER, 0)
            fake.connect(c.hb_endpoint)
            fake.send(json.dumps(register_msg("fake1", 1)).encode())
            assert fake.poll(5000), "no answer to the fake node's register"
            ack = json.loads(fake.recv())
            print("register answered:", ack)
            assert ack.get("type") == "ack" and ack.get("node") == "fake1", ack
            assert ack.get("interval_ms") == 250, ack
            seq = 2
            t_end = time.monotonic() + 10
            while time.monotonic() < t_end:
                fake.send(json.dumps(heartbeat_msg("fake1", seq)).encode())
                seq += 1
                if fake.poll(1000):
                    reply = json.loads(fake.recv())
                    assert reply.get("type") == "ack", reply
                if c.node_state("fake1") == "healthy":
                    break
                time.sleep(c.interval_s)
            h = c.health()
            n = c.node_health("fake1", h)
            assert n and n["state"] == "healthy" and n["addr"] == "127.0.0.1:9", n
            assert h["counts"]["healthy"] == 3, h["counts"]
            # A heartbeat from another boot of fake1 is told to register again.
            other = dict(heartbeat_msg("fake1", seq), boot="0000000000000001")
            fake.send(json.dumps(other).encode())
            assert fake.poll(5000), "no answer to a heartbeat from an unknown boot"
            reply = json.loads(fake.recv())
            print("unknown boot answered:", reply)
            assert reply.get("type") == "reregister", reply

            # Silence: out of rotation, down, then forgotten (forget-after 2s).
            t0 = time.monotonic()
            fake.close()
            cluster.wait_until(lambda: c.node_state("fake1") not in ("healthy",), 3, 0.02,
                               "silent fake1 out of rotation")
            t_out = time.monotonic() - t0
            cluster.wait_until(lambda: c.node_state("fake1") == "down", 5, 0.02, "fake1 down")
            t_down = time.monotonic() - t0
            cluster.wait_until(lambda: c.node_health("fake1") is None, 10, 0.05, "fake1 forgotten")
            t_gone = time.monotonic() - t0
            print("silent fake1: out %.0f ms, down %.0f ms, forgotten %.0f ms"
                  % (t_out * 1000, t_down * 1000, t_gone * 1000))
            c.wait_healthy(2, timeout=5)
            for _ in range(50):
                status, p = c.pick()
                assert status == 200 and p["id"] in ("node1", "node2"), (status, p)
        finally:
            ctx.destroy(linger=0)


if __name__ == "__main__":
    cluster.main(test)
