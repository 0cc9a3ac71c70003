"""--handshake-timeout (slowloris): a TCP connection that sends nothing, one
that sends half a ClientHello, and a TLS session that never says HELLO are
all closed once the timeout has passed (the last with ERROR timeout), and a
good session beside them is served throughout."""
import ssl
import time

import cluster
from cluster import ERROR, raw_connect, wait_closed

TIMEOUT_S = 0.6
SWEEP_S = 0.25  # the node's timer sweep period (node/worker.h WORKER_SWEEP_MS)


def client_hello():
    """The bytes of a real TLS ClientHello, from an in-memory handshake."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    assert len(data) > 100 and data[0] == 0x16, "not a ClientHello: %r" % data[:8]
    return data


def check_closed_at_timeout(what, sock, t_open):
    took = wait_closed(sock, TIMEOUT_S + 5)
    since_open = time.monotonic() - t_open
    print("%-30s closed after %.3fs" % (what, since_open))
    assert since_open >= TIMEOUT_S - 0.05, "%s: closed before the timeout (%.3fs)" % (what, since_open)
    assert since_open <= TIMEOUT_S + 2 * SWEEP_S + 0.5, \
        "%s: closed %.3fs after opening, timeout is %.1fs" % (what, since_open, TIMEOUT_S)
    return took


def test():
    with cluster.Cluster(n=1, node_args=["--handshake-timeout", "%dms" % (TIMEOUT_S * 1000)]) as c:
        c.wait_healthy(1)
        addr = c.node_addr(1)
        good = c.session(1)
        good.hello("good")

        silent = raw_connect(addr)
        t_silent = time.monotonic()
        half = raw_connect(addr)
        ch = client_hello()
        half.sendall(ch[:len(ch) // 2])
        t_half = time.monotonic()
        # TLS done, but no HELLO: the handshake timeout covers HELLO too.
        mute = c.session(1)
        t_mute = time.monotonic()

        # The good session keeps being served while the others wait it out.
        for rid in range(2, 6):
            good.ping(rid)
            time.sleep(0.05)

        check_closed_at_timeout("silent TCP connection", silent, t_silent)
        check_closed_at_timeout("half a ClientHello", half, t_half)
        frames = mute.expect_close(TIMEOUT_S + 5)
        since = time.monotonic() - t_mute
        print("%-30s closed after %.3fs with %r" % ("TLS without HELLO", since, frames))
        assert frames and frames[-1].type == ERROR, frames
        code, text = frames[-1].error()
        assert code == cluster.ERR_TIMEOUT, (code, text)
        assert TIMEOUT_S - 0.05 <= since <= TIMEOUT_S + 2 * SWEEP_S + 0.5, since
        for s in (silent, half, mute):
            s.close()

        # A handshake dribbled byte by byte still ends at the timeout.
        slow = raw_connect(addr)
        t_slow = time.monotonic()
        try:
            for b in ch[:40]:
                slow.sendall(bytes([b]))
                time.sleep(0.05)
        except OSError:
            pass  # closed while dribbling: also right, checked below
        check_closed_at_timeout("ClientHello at 20 bytes/s", slow, t_slow)
        slow.close()

        good.ping(9, b"after")
        w = good.info(10)
        assert w["limits"]["handshake_timeout_ms"] == int(TIMEOUT_S * 1000), w["limits"]
        assert c.node_state("node1") == "healthy"
        good.close()


if __name__ == "__main__":
    cluster.main(test)
