#!/usr/bin/env python3
"""compose bring-up: the real docker-compose.yml comes up with every service
healthy per Docker (two balancers, both with all three nodes); a client on
the host asks the balancers (127.0.0.1) and
gets acks from the node it was given; the containers run as non-root on a
read-only root with only 127.0.0.1 published; `down -v` leaves nothing."""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compose  # noqa: E402
from compose import NODES, SERVICES, check, log, wait_until  # noqa: E402


def published(c, svc):
    p = c.docker("inspect", "--format", "{{json .HostConfig.PortBindings}}", c.ids[svc])
    return compose.json.loads(p.stdout) or {}


def test(c):
    c.up()

    status, body = c.http("/healthz")
    check(status == 200 and body == {"status": "ok"}, "GET /healthz: %s %s" % (status, body))
    rot, waited = wait_until(lambda: (lambda r: r if r and len(r) == 3 else None)(c.rotation()),
                             10, what="three nodes in /v1/nodes")
    for n in NODES:
        want = "127.0.0.1:%d" % c.node_ports[n]
        check(rot[n]["addr"] == want, "%s advertises %s, want %s" % (n, rot[n]["addr"], want))
    status, health = c.http("/v1/health")
    check(status == 200 and health["counts"]["healthy"] == 3, "/v1/health: %s" % health)

    # Hardening and exposure, as Docker sees it.
    for svc in SERVICES:
        p = c.docker("inspect", "--format",
                     "{{.Config.User}}|{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.RestartPolicy.Name}}",
                     c.ids[svc])
        user, ro, restart = p.stdout.strip().split("|")
        check(user == "10001:10001", "%s runs as %r, want 10001:10001" % (svc, user))
        check(ro == "true", "%s: root filesystem not read-only" % svc)
        check(restart == "unless-stopped", "%s: restart policy %s" % (svc, restart))
        for port, binds in published(c, svc).items():
            for b in binds or []:
                check(b.get("HostIp") == "127.0.0.1", "%s publishes %s on %r" % (svc, port, b))
    for b in compose.BALANCERS:
        bal = published(c, b)
        check(list(bal) == ["8080/tcp"], "%s publishes %s, want only 8080/tcp" % (b, list(bal)))
        status, h = c.http("/v1/health", balancer=b)
        check(status == 200 and h["counts"]["healthy"] == 3, "%s /v1/health: %s" % (b, h))
    for n in NODES:
        mounts = c.docker("inspect", "--format", "{{json .Mounts}}", c.ids[n]).stdout
        m = [x for x in compose.json.loads(mounts) if x["Destination"] == "/certs"]
        check(m and m[0]["RW"] is False, "%s: /certs not mounted read-only: %s" % (n, m))

    # A host client: ask the balancer, connect to the node it names, get acks.
    before = {n["id"]: n["accepted"] for n in health["nodes"]}
    served = {}
    for i in range(9):
        ok, node, out = c.send("hello %d from the host\n" % i)
        check(ok, "berth send through the balancer failed: %s" % out)
        check(node in NODES, "berth send names no node of ours: %s" % out)
        served[node] = served.get(node, 0) + 1
    log("sends served by %s" % served)
    # The balancer learns the counts from heartbeats: wait one or two intervals.
    def counted():
        status, h = c.http("/v1/health")
        if status != 200:
            return None
        after = {n["id"]: n["accepted"] for n in h["nodes"]}
        return after if all(after.get(n, 0) - before.get(n, 0) >= k for n, k in served.items()) else None

    try:
        wait_until(counted, 5, step=0.05, what="accepted counts")
    except compose.TestFailure:
        raise compose.TestFailure("sends served by %s, but the nodes' accepted counts in /v1/health "
                                  "went %s -> %s" % (served, before, c.http("/v1/health")[1]))

    # Every advertised address answers a direct ping from the host.
    for n in NODES:
        p = c.berth("ping", "--node", "127.0.0.1:%d" % c.node_ports[n], "--ca", c.ca)
        check(p.returncode == 0, "ping %s: %s" % (n, (p.stdout + p.stderr).strip()))

    left = c.down()
    check(not left, "compose down -v left %s" % left)
    gone = compose.project_objects(c.project)
    check(not gone, "after down -v: %s" % gone)


if __name__ == "__main__":
    compose.main(test, bound_s=300)
