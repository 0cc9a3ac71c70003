"""The authenticated heartbeat channel (CurveZMQ + ZAP allowlist): a
balancer without keys and without --heartbeat-plaintext refuses to start;
a sender with its own CURVE key that is not allowed, a plaintext sender and
one holding the wrong balancer key cannot register (counted as
"unauthenticated", logged); an allowed key forging another node's id gets
REGISTER, HEARTBEAT and LEAVE refused as "key_mismatch" and the real node
stays healthy; an allowed key registers its own id; a key taken off the
allowlist (SIGHUP) is refused at once on its open connection; the node
reports its certificate's SHA-256 and the balancers it reaches; the
plaintext mode works and warns."""
import hashlib
import json
import os
import signal
import ssl
import time

import cluster
from cluster import BALANCER_BIN, NODE_BIN, run_bin, wait_until

zmq = cluster.require_zmq()

BOOT = "0badc0de0badc0de"


def register_msg(node, seq, boot=BOOT):
    return {"type": "register", "node": node, "boot": boot, "seq": seq,
            "addr": "127.0.0.1:9", "capacity": 4, "version": "rogue-0"}


def heartbeat_msg(node, seq, boot=BOOT):
    return {"type": "heartbeat", "node": node, "boot": boot, "seq": seq, "sessions": 0,
            "accepted": 0, "msgs_per_sec": 0.0, "healthy": True, "draining": False,
            "reason": "", "workers": [{"ticks": seq, "hs_ok": 0, "hs_failed": 0}]}


def leave_msg(node, seq, boot=BOOT):
    return {"type": "leave", "node": node, "boot": boot, "seq": seq}


def send(sock, msg):
    sock.send(json.dumps(msg).encode(), zmq.NOBLOCK)


def rejected(c, reason):
    return c.health()["heartbeats"]["rejected"].get(reason, 0)


def log_text(c, name="balancer"):
    with open(c.logs[name], "rb") as f:
        return f.read().decode(errors="replace")


def refuses_to_start():
    port = cluster.free_ports(1)[0]
    base = ["--http", "127.0.0.1:0", "--heartbeat-bind", "tcp://127.0.0.1:%d" % port]
    rc, out, err = run_bin(BALANCER_BIN, base)
    print("balancer without keys -> %d: %s" % (rc, err.strip()))
    assert rc != 0, "a balancer without keys started"
    for word in ("--curve-secret", "--curve-allow", "--heartbeat-plaintext", "berth keygen"):
        assert word in err, "the refusal should name %s: %r" % (word, err)
    rc, out, err = run_bin(BALANCER_BIN, base + ["--curve-secret", "/nonexistent.key"])
    assert rc != 0 and "--curve-allow" in err, (rc, err)
    rc, out, err = run_bin(BALANCER_BIN, base + ["--heartbeat-plaintext", "--curve-allow", "/x"])
    assert rc != 0 and "contradicts" in err, (rc, err)
    # The environment mirrors the flags: BERTH_CURVE_SECRET alone names what is missing.
    rc, out, err = run_bin(BALANCER_BIN, base, env={"BERTH_CURVE_SECRET": "/nonexistent.key"})
    assert rc != 0 and "missing: --curve-allow" in err, (rc, err)


def secure():
    with cluster.Cluster(n=2, interval="250ms") as c:
        h = c.wait_healthy(2)
        # Real nodes report their certificate and the balancer they reach.
        with open(c.cert, "rb") as f:
            der = ssl.PEM_cert_to_DER_cert(f.read().decode())
        digest = hashlib.sha256(der).hexdigest()
        for i in (1, 2):
            n = c.node_health("node%d" % i, h)
            assert n["cert_sha256"] == digest, (n.get("cert_sha256"), digest)
        wait_until(lambda: c.node_health("node1")["balancers"] ==
                   [{"endpoint": c.hb_endpoint, "reached": True}], 5, 0.05,
                   "node1 reports it reaches the balancer")
        status, p = c.pick()
        assert status == 200 and p["cert_sha256"] == digest, p
        # The node log says nothing about plaintext; the balancer says curve.
        assert "heartbeat_plaintext" not in log_text(c, "node1")
        assert "mode=curve" in log_text(c) and "heartbeat_plaintext" not in log_text(c)

        ctx = zmq.Context()
        try:
            server_key = cluster.read_key(c.balancer_key[1])

            # 1. A sender with a CURVE key of its own, not in the allowlist.
            pub, sec = zmq.curve_keypair()
            rogue = ctx.socket(zmq.DEALER)
            rogue.setsockopt(zmq.LINGER, 0)
            rogue.curve_secretkey, rogue.curve_publickey, rogue.curve_serverkey = sec, pub, server_key
            rogue.connect(c.hb_endpoint)
            u0 = rejected(c, "unauthenticated")
            for k in range(3):
                try:
                    send(rogue, register_msg("rogue1", k + 1))
                except zmq.Again:
                    pass
            wait_until(lambda: rejected(c, "unauthenticated") > u0, 5, 0.05,
                       "the unknown key counted as unauthenticated")
            assert not rogue.poll(300), "the rogue got an answer"
            assert c.node_health("rogue1") is None, "rogue1 registered"
            text = log_text(c)
            assert "reason=unauthenticated" in text and pub.decode() in text, \
                "no log line naming the refused key"
            print("unknown key refused: unauthenticated %d -> %d" % (u0, rejected(c, "unauthenticated")))

            # 2. A plaintext sender. Which side sees the mechanism mismatch
            # first is a race: the balancer counts it as unauthenticated, or,
            # when the client hung up first, as a failed handshake.
            def refused_connections():
                return rejected(c, "unauthenticated") + rejected(c, "handshake")
            u1 = refused_connections()
            plain = ctx.socket(zmq.DEALER)
            plain.setsockopt(zmq.LINGER, 0)
            plain.connect(c.hb_endpoint)
            try:
                send(plain, register_msg("plain1", 1))
            except zmq.Again:
                pass
            wait_until(lambda: refused_connections() > u1, 5, 0.05,
                       "the plaintext sender's connection refused")
            assert not plain.poll(200) and c.node_health("plain1") is None

            # 3. An allowed node key with the wrong balancer key.
            u2 = rejected(c, "unauthenticated")
            wrong = ctx.socket(zmq.DEALER)
            wrong.setsockopt(zmq.LINGER, 0)
            tsec, tpub = c.node_keys("tester")
            wrong.curve_secretkey = cluster.read_key(tsec)
            wrong.curve_publickey = cluster.read_key(tpub)
            wrong.curve_serverkey = zmq.curve_keypair()[0]
            wrong.connect(c.hb_endpoint)
            try:
                send(wrong, register_msg("wrongkey1", 1))
            except zmq.Again:
                pass
            wait_until(lambda: rejected(c, "unauthenticated") > u2, 5, 0.05,
                       "the wrong balancer key counted as unauthenticated")
            assert c.node_health("wrongkey1") is None

            # 4. An allowed key forging node1: REGISTER, HEARTBEAT, LEAVE refused.
            tester = c.dealer(ctx, "tester")
            m0 = rejected(c, "key_mismatch")
            send(tester, register_msg("node1", 1))
            send(tester, heartbeat_msg("node1", 2))
            send(tester, leave_msg("node1", 3))
            wait_until(lambda: rejected(c, "key_mismatch") >= m0 + 3, 5, 0.05,
                       "three forged messages counted as key_mismatch")
            assert not tester.poll(200), "a forged message was answered"
            assert "reason=key_mismatch" in log_text(c)
            # The real node1 stays healthy (a LEAVE would have drained it at once).
            for _ in range(10):
                assert c.node_state("node1") == "healthy", c.node_health("node1")
                time.sleep(0.1)
            print("forged REGISTER/HEARTBEAT/LEAVE for node1 refused: key_mismatch %d -> %d"
                  % (m0, rejected(c, "key_mismatch")))

            # 5. The allowed key registers an id of its own and is answered.
            send(tester, register_msg("tester1", 10))
            assert tester.poll(3000), "an allowed key's REGISTER got no answer"
            reply = json.loads(tester.recv())
            assert reply["type"] == "ack", reply
            wait_until(lambda: c.node_health("tester1") is not None, 5, 0.05, "tester1 known")

            # 6. Taken off the allowlist and SIGHUP: refused on its open connection.
            os.unlink(os.path.join(c.allow_dir, "tester.pub"))
            c.procs["balancer"].send_signal(signal.SIGHUP)
            wait_until(lambda: "allowlist_reloaded" in log_text(c), 5, 0.05, "allowlist reloaded")
            u3 = rejected(c, "unauthenticated")
            send(tester, heartbeat_msg("tester1", 11))
            wait_until(lambda: rejected(c, "unauthenticated") > u3, 5, 0.05,
                       "a revoked key's heartbeat refused")
            while tester.poll(0):
                tester.recv()
            assert not tester.poll(300), "a revoked key was answered"
            # A broken allowlist on SIGHUP keeps the old one.
            with open(os.path.join(c.allow_dir, "broken.pub"), "w") as f:
                f.write("not a key\n")
            c.procs["balancer"].send_signal(signal.SIGHUP)
            wait_until(lambda: "allowlist_reload_failed" in log_text(c), 5, 0.05,
                       "broken allowlist reported")
            assert c.healthy_ids() == ["node1", "node2"], c.healthy_ids()

            # /metrics carries both reasons.
            status, body, _ = cluster.http_get(c.http_port, "/metrics")
            text = body.decode()
            for reason in ("unauthenticated", "key_mismatch"):
                line = [ln for ln in text.splitlines()
                        if ln.startswith('berth_heartbeats_rejected_total{reason="%s"}' % reason)]
                assert line and float(line[0].split()[-1]) > 0, (reason, line)
        finally:
            ctx.destroy(linger=0)
        assert c.healthy_ids() == ["node1", "node2"]


def pinned():
    """allow/<id>.pub pins the id to that key: another allowed key cannot
    take the id first, neither before the node ever registered nor after a
    balancer restart; ids without a file of their name stay first come."""
    with cluster.Cluster(n=1, interval="250ms", start_nodes=False) as c:
        ctx = zmq.Context()
        try:
            for round_ in ("fresh", "restarted"):
                if round_ == "restarted":
                    # node1 down, so the tester speaks first to the new balancer
                    c.kill_node(1)
                    c.restart_balancer(signal.SIGKILL)
                tester = c.dealer(ctx, "tester")
                m0 = rejected(c, "key_mismatch")
                send(tester, register_msg("node1", 1))
                wait_until(lambda: rejected(c, "key_mismatch") > m0, 5, 0.05,
                           "%s: a foreign key's REGISTER of node1 refused" % round_)
                assert not tester.poll(200), "the squatting REGISTER was answered"
                assert c.node_health("node1") is None or \
                    c.node_health("node1")["version"] != "rogue-0", c.node_health("node1")
                assert "pinned to key" in log_text(c), "the refusal does not say why"
                # An id without a file of its name: first come, as before.
                send(tester, register_msg("free-%s" % round_, 1))
                assert tester.poll(3000), "an unpinned id's REGISTER got no answer"
                assert json.loads(tester.recv())["type"] == "ack"
                tester.close()
                # The real node1 registers with its own key.
                c.start_node(1)
                wait_until(lambda: c.node_state("node1") == "healthy", 10, 0.05,
                           "%s: node1 healthy with its own key" % round_)
            print("pinned: node1 refused to the tester key before node1 registered and after "
                  "a balancer restart; node1 healthy")
        finally:
            ctx.destroy(linger=0)


def plaintext():
    with cluster.Cluster(n=1, interval="250ms", plaintext=True) as c:
        c.wait_healthy(1)
        assert "event=heartbeat_plaintext" in log_text(c), "no plaintext warning from the balancer"
        assert "event=heartbeat_plaintext" in log_text(c, "node1"), "no plaintext warning from the node"
        # A secure node cannot talk to a plaintext balancer, and a node
        # without keys or the flag refuses to start.
        rc, out, err = run_bin(NODE_BIN, c.node_argv(1)[1:])
        assert rc != 0 and "--curve-secret" in err and "--heartbeat-plaintext" in err, (rc, err)


def test():
    refuses_to_start()
    secure()
    pinned()
    plaintext()


if __name__ == "__main__":
    cluster.main(test)
