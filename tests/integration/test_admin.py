"""Admin endpoints: POST /v1/nodes/{id}/drain and /undrain. Without a
configured token they answer 403; a missing or wrong bearer token gets 401;
an unknown node 404; another method on an admin path or a write on a
read-only path 405; and with the token a drained node leaves the rotation,
keeps heartbeating, shows as draining ("admin drain") and comes back on
undrain. Every answer is JSON."""
import json

import cluster

TOKEN = "itest-admin-token-0123456789"


def expect(got, status, error=None):
    st, body, hdrs = got
    assert st == status, "want %d, got %d %r" % (status, st, body)
    assert hdrs.get("content-type", "").startswith("application/json"), hdrs
    assert isinstance(body, dict), body
    if error:
        assert body.get("error") == error, body
    return body, hdrs


def no_token():
    with cluster.Cluster(n=1) as c:
        c.wait_healthy(1)
        expect(c.admin("node1", "drain"), 403, "admin_disabled")
        expect(c.admin("node1", "drain", token=TOKEN), 403, "admin_disabled")
        expect(c.admin("node1", "undrain", token=""), 403, "admin_disabled")
        assert c.node_state("node1") == "healthy"
        # A short token is refused at start, and the message does not echo it.
        rc, out, err = cluster.run_bin(cluster.BALANCER_BIN,
                                       ["--admin-token", "shortsecret", "--http", "127.0.0.1:0"])
        assert rc == 2 and "--admin-token" in err and "shortsecret" not in err, (rc, err)


def with_token():
    with cluster.Cluster(n=3, balancer_env={"BERTH_ADMIN_TOKEN": TOKEN}) as c:
        h = c.wait_healthy(3)
        assert h["admin"] is True, h

        # 401: no header, wrong token, wrong scheme, a prefix of the token
        _, hdrs = expect(c.admin("node1", "drain"), 401, "unauthorized")
        assert hdrs.get("www-authenticate", "").startswith("Bearer"), hdrs
        expect(c.admin("node1", "drain", token="wrong-" + TOKEN), 401, "unauthorized")
        expect(c.admin("node1", "drain", token=TOKEN[:-1]), 401, "unauthorized")
        st, body, _ = cluster.http_request(c.http_port, "POST", "/v1/nodes/node1/drain",
                                           {"Authorization": "Basic " + TOKEN})
        assert st == 401, (st, body)
        assert c.node_state("node1") == "healthy"

        # 404: unknown node, malformed id, over-long id (auth first: 401 without token)
        expect(c.admin("nosuchnode", "drain", token=TOKEN), 404, "unknown_node")
        expect(c.admin("bad%20id", "drain", token=TOKEN), 404, "unknown_node")
        expect(c.admin("x" * 200, "undrain", token=TOKEN), 404, "unknown_node")
        expect(c.admin("nosuchnode", "drain"), 401, "unauthorized")
        st, body, _ = cluster.http_request(c.http_port, "POST", "/v1/nodes/node1/reboot",
                                           {"Authorization": "Bearer " + TOKEN})
        assert st == 404, (st, body)

        # 405: other methods on admin paths; writes on read-only paths
        for m in ("GET", "PUT", "DELETE"):
            _, hdrs = expect(c.admin("node1", "drain", token=TOKEN, method=m), 405,
                             "method_not_allowed")
            assert hdrs.get("allow") == "POST", hdrs
        for path in ("/v1/health", "/v1/pick", "/v1/nodes", "/v1/history", "/metrics", "/",
                     "/healthz"):
            for m in ("POST", "PUT", "DELETE", "PATCH"):
                st, body, hdrs = cluster.http_request(c.http_port, m, path,
                                                      {"Authorization": "Bearer " + TOKEN})
                assert st == 405, "%s %s: %d %r" % (m, path, st, body)
                assert json.loads(body)["error"] == "method_not_allowed", body
                assert hdrs.get("allow") == "GET, HEAD", hdrs

        # Happy path: drain node2.
        before = c.node_health("node2")["heartbeats"]
        body, _ = expect(c.admin("node2", "drain", token=TOKEN), 200)
        assert body["id"] == "node2" and body["state"] == "draining", body
        assert body["admin_drained"] is True and body["reason"] == "admin drain", body
        n = c.node_health("node2")
        assert n["state"] == "draining" and n["reason"] == "admin drain", n
        assert n["admin_drained"] is True, n
        for _ in range(60):
            st, p = c.pick()
            assert st == 200 and p["id"] != "node2", p
        st, nodes = c.http_get_json("/v1/nodes")
        assert "node2" not in [x["id"] for x in nodes["nodes"]], nodes
        # Still heartbeating, still draining, a few intervals later.
        cluster.wait_until(lambda: c.node_health("node2")["heartbeats"] >= before + 4, 5, 0.05,
                           "node2 heartbeats while drained")
        n = c.node_health("node2")
        assert n["state"] == "draining" and n["last_heartbeat_age_ms"] < 1000, n
        # Draining twice is fine.
        expect(c.admin("node2", "drain", token=TOKEN), 200)

        # Undrain: back in rotation at once (it kept heartbeating).
        body, _ = expect(c.admin("node2", "undrain", token=TOKEN), 200)
        assert body["state"] == "healthy" and body["admin_drained"] is False, body
        assert c.node_state("node2") == "healthy"
        picked = set()
        for _ in range(200):
            st, p = c.pick()
            picked.add(p["id"])
        assert "node2" in picked, picked
        # Undrain of a node that is not drained is a no-op 200.
        body, _ = expect(c.admin("node3", "undrain", token=TOKEN), 200)
        assert body["state"] == "healthy", body

        # The balancer logged each change once, at info.
        log = open(c.logs["balancer"]).read()
        assert log.count("event=node_state node_id=node2 from=healthy to=draining") == 1, log
        assert log.count("event=node_state node_id=node2 from=draining to=healthy") == 1, log
        assert "event=admin_drain node_id=node2" in log, log
        assert TOKEN not in log, "the token leaked into the log"


def test():
    no_token()
    with_token()


if __name__ == "__main__":
    cluster.main(test)
