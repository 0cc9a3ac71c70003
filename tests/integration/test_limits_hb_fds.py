"""Idle TCP connections to the heartbeat port cannot starve the balancer:
under a 256-descriptor limit (the balancer raises its soft limit to the
hard one, so both are set), 300 connections that never send a ZeroMQ
greeting leave /healthz answering, the balancer's CPU low (no EMFILE busy
loop), are closed after --heartbeat-handshake-timeout (those over the
heartbeat connection cap at once), and a node registers meanwhile."""
import os
import socket
import time

import cluster
from cluster import wait_until

NOFILE = 256
IDLE = 300
HANDSHAKE_S = 1.0


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def closed_by_peer(s):
    """True once the balancer closed s (its ZMTP greeting read and dropped)."""
    try:
        while True:
            if s.recv(4096, socket.MSG_DONTWAIT) == b"":
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test():
    with cluster.Cluster(n=1, start_nodes=False, plaintext=True,
                         balancer_args=["--heartbeat-handshake-timeout",
                                        "%dms" % (HANDSHAKE_S * 1000)]) as c:
        c.kill_balancer()
        c.procs["balancer"].wait(5)
        argv = ["prlimit", "--nofile=%d:%d" % (NOFILE, NOFILE), "--"] + c.balancer_argv()
        p = c.spawn("balancer", argv)
        wait_until(lambda: cluster.http_get(c.http_port, "/healthz", 1.0)[0] == 200, 15,
                   what="balancer /healthz")
        conns = c.health()["heartbeats"]["connections"]
        print("heartbeat connections at start: %r" % conns)
        hb_max = conns["max"]
        assert 0 < hb_max < NOFILE - 64, conns
        assert c.health()["http"]["max"] + hb_max <= NOFILE - 64

        socks = []
        try:
            for _ in range(IDLE):
                s = socket.create_connection(("127.0.0.1", c.hb_port), timeout=2)
                socks.append(s)
            t0 = time.monotonic()
            cpu0 = cpu_seconds(p.pid)
            # HTTP keeps answering while they are held
            worst = 0.0
            while time.monotonic() - t0 < HANDSHAKE_S * 0.8:
                a = time.monotonic()
                st = cluster.http_get(c.http_port, "/healthz", 2.0)[0]
                worst = max(worst, time.monotonic() - a)
                assert st == 200, st
                time.sleep(0.05)
            h = c.health()["heartbeats"]
            print("held: %r, worst /healthz %.0f ms" % (h["connections"], worst * 1000))
            assert h["connections"]["open"] <= hb_max + 8, h["connections"]
            # a node comes up meanwhile and registers once the idle ones are gone
            c.start_node(1)
            # the kernel queues those libzmq has not accepted yet; each wave
            # of accepted ones lasts the handshake timeout at most
            waves = IDLE // hb_max + 2
            wait_until(lambda: all(closed_by_peer(s) for s in socks), waves * HANDSHAKE_S + 2,
                       0.05, what="idle connections closed by the balancer")
            closed_after = time.monotonic() - t0
            cpu = cpu_seconds(p.pid) - cpu0
            print("all %d idle connections closed %.2f s after they opened; balancer CPU %.2f s"
                  % (IDLE, closed_after, cpu))
            assert cpu < 0.5 * closed_after, "balancer busy: %.2f s CPU in %.2f s" % (cpu, closed_after)
            c.wait_healthy(1, timeout=10)
            h = c.health()["heartbeats"]["connections"]
            print("after: %r" % h)
            assert h["closed_limit"] > 0, h
        finally:
            for s in socks:
                s.close()
        wait_until(lambda: c.health()["heartbeats"]["connections"]["open"] <= 2, 5,
                   what="connections counted down")


if __name__ == "__main__":
    cluster.main(test)
