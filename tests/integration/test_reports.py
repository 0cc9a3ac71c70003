"""Client reports: POST /v1/reports. Reports about one node from three
distinct client addresses (127.0.0.2/.3/.4) eject it although its heartbeats
still arrive, /v1/pick stops handing it out, and it comes back after the
ejection time; one address reporting many times never ejects (it counts
once, then gets 429); reports never eject more than the max share of the
rotation; bad bodies get JSON 4xx answers. One address cannot hold more
than --http-per-ip-limit (64) HTTP connections; another is still served."""
import http.client
import json
import socket
import time

import cluster

EJECT_S = 4
ARGS = ["--report-quorum", "3", "--report-window", "10s", "--report-eject", "%ds" % EJECT_S,
        "--report-eject-max", "20s", "--report-max-eject-percent", "50", "--report-rate", "5"]


def post(port, body, source="127.0.0.1", content_type="application/json", headers=None,
         method="POST", path="/v1/reports"):
    """(status, parsed JSON or None, headers) of one request from source."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3.0,
                                      source_address=(source, 0))
    try:
        h = dict(headers or {})
        if content_type is not None:
            h["Content-Type"] = content_type
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        try:
            return r.status, json.loads(data.decode()), hdrs
        except ValueError:
            return r.status, None, hdrs
    finally:
        conn.close()


def expect(got, status, error=None):
    st, body, hdrs = got
    assert st == status, "want %d, got %d %r" % (status, st, body)
    assert hdrs.get("content-type", "").startswith("application/json"), hdrs
    assert isinstance(body, dict), body
    if error:
        assert body.get("error") == error, body
    return body


def report(c, node, source, reason="tls"):
    return post(c.http_port, {"node": node, "reason": reason, "detail": "itest"}, source)


def bad_bodies(c):
    port = c.http_port
    expect(post(port, "{not json"), 400, "bad_json")
    expect(post(port, ""), 400, "bad_json")
    expect(post(port, [1, 2]), 400, "bad_report")
    expect(post(port, {"reason": "tls"}), 400, "bad_report")
    expect(post(port, {"node": 7, "reason": "tls"}), 400, "bad_report")
    expect(post(port, {"node": "bad id", "reason": "tls"}), 400, "bad_report")
    expect(post(port, {"node": "node1", "reason": "bored"}), 400, "bad_report")
    expect(post(port, {"node": "node1"}), 400, "bad_report")
    expect(post(port, {"node": "node1", "reason": "tls", "detail": "x" * 201}), 400,
           "bad_report")
    expect(post(port, {"node": "node1", "reason": "tls", "detail": 5}), 400, "bad_report")
    expect(post(port, '{"node":"node1","node":"node2","reason":"tls"}'), 400, "bad_json")
    expect(post(port, '{"node":"node1","reason":"tls\\u0000"}'), 400, "bad_json")
    expect(post(port, {"node": "node1", "reason": "tls"}, content_type="text/plain"), 415,
           "bad_content_type")
    expect(post(port, {"node": "node1", "reason": "tls"}, content_type=None), 415,
           "bad_content_type")
    # oversize: announced, and chunked (no length given)
    expect(post(port, {"node": "node1", "reason": "tls", "detail": "x" * 3000}), 413,
           "body_too_large")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3.0)
    try:
        conn.request("POST", "/v1/reports", body=iter([b"{" + b" " * 800, b" " * 800 + b"}"]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        r = conn.getresponse()
        body = json.loads(r.read().decode())
        assert r.status == 413 and body["error"] == "body_too_large", (r.status, body)
    finally:
        conn.close()
    # unknown node, other methods
    expect(post(port, {"node": "nosuchnode", "reason": "connect"}), 404, "unknown_node")
    expect(post(port, None, method="GET", content_type=None), 405, "method_not_allowed")
    st, body, hdrs = post(port, None, method="DELETE", content_type=None)
    assert st == 405 and hdrs.get("allow") == "POST", (st, body, hdrs)
    # a well-formed report is accepted: content type parameters and any case
    body = expect(post(port, {"node": "node4", "reason": "timeout"},
                       content_type="Application/JSON; charset=utf-8"), 202)
    assert body == {"node": "node4", "reporters": 1, "ejected": False}, body


def one_address_cannot_eject(c):
    got = []
    for _ in range(5):
        body = expect(report(c, "node1", "127.0.0.5"), 202)
        got.append(body["reporters"])
    assert got == [1] * 5, got
    body = expect(report(c, "node1", "127.0.0.5"), 429, "rate_limited")
    assert c.node_state("node1") == "healthy"
    # a body claiming to be someone else changes nothing: the address counts
    body = expect(post(c.http_port, {"node": "node1", "reason": "tls", "reporter": "10.0.0.9"},
                       "127.0.0.6"), 202)
    assert body["reporters"] == 2 and body["ejected"] is False, body
    time.sleep(1.1)  # the rate window of .5 moves on
    body = expect(report(c, "node1", "127.0.0.5"), 202)
    assert body["reporters"] == 2, body
    assert c.node_state("node1") == "healthy"


def quorum_ejects(c):
    h0 = c.node_health("node2")
    expect(report(c, "node2", "127.0.0.2"), 202)
    body = expect(report(c, "node2", "127.0.0.3", "connect"), 202)
    assert body == {"node": "node2", "reporters": 2, "ejected": False}, body
    body = expect(report(c, "node2", "127.0.0.4"), 202)
    assert body == {"node": "node2", "reporters": 3, "ejected": True}, body
    n = c.node_health("node2")
    assert n["state"] == "ejected", n
    assert "reported unreachable by 3 clients" in n["reason"], n
    # its heartbeats still arrive
    time.sleep(3 * c.interval_s)
    n = c.node_health("node2")
    assert n["state"] == "ejected" and n["heartbeats"] > h0["heartbeats"], (h0, n)
    assert n["last_heartbeat_age_ms"] < 1000, n
    for _ in range(40):
        st, p = c.pick()
        assert st == 200 and p["id"] != "node2", (st, p)
    st, nodes = c.http_get_json("/v1/nodes")
    assert "node2" not in [x["id"] for x in nodes["nodes"]], nodes
    return time.monotonic()


def max_share(c):
    # node2 is ejected; node3 may be too (2 of 4 = 50 %), node4 not
    for node in ("node3", "node4"):
        for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            expect(report(c, node, src), 202)
    h = c.health()
    assert h["counts"]["ejected"] == 2, h["counts"]
    assert c.node_state("node3") == "ejected"
    assert c.node_state("node4") == "healthy"
    assert h["reports"]["ejections"] == 2 and h["reports"]["capped"] >= 1, h["reports"]
    assert h["reports"]["quorum"] == 3 and h["reports"]["rate_limited"] >= 1, h["reports"]
    n4 = c.node_health("node4", h)
    assert n4["reporters"] == 4, n4  # with the one from 127.0.0.1 in bad_bodies
    st, text, _ = cluster.http_get(c.http_port, "/metrics")
    text = text.decode()
    assert st == 200
    for line in ('berth_nodes{state="ejected"} 2', "berth_report_ejections_total 2",
                 'berth_reports_total{result="rate_limited"} 1'):
        assert line in text, line
    st, hist = c.http_get_json("/v1/history")
    assert st == 200


def per_ip_limit(c):
    """One address holds at most --http-per-ip-limit (default 64)
    connections: the next one from it is closed unanswered, another
    address is still served, and the first one is served again once it
    lets go."""
    held = []
    try:
        for _ in range(64):
            held.append(socket.create_connection(("127.0.0.1", c.http_port), timeout=3,
                                                 source_address=("127.0.0.1", 0)))
        other = http.client.HTTPConnection("127.0.0.1", c.http_port, timeout=3.0,
                                           source_address=("127.0.0.5", 0))
        try:
            other.request("GET", "/healthz")
            st = other.getresponse().status
        finally:
            other.close()
        assert st == 200, "another address not served: %d" % st
        extra = socket.create_connection(("127.0.0.1", c.http_port), timeout=3,
                                         source_address=("127.0.0.1", 0))
        try:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            refused = False
            try:
                refused = extra.recv(100) == b""
            except (ConnectionResetError, socket.timeout):
                refused = True
            assert refused, "a 65th connection from one address was served"
        finally:
            extra.close()
    finally:
        for s in held:
            s.close()
    cluster.wait_until(lambda: cluster.http_get(c.http_port, "/healthz")[0] == 200, 5, 0.05,
                       "127.0.0.1 served again once its connections closed")
    print("per-address limit: 64 held from 127.0.0.1, the 65th closed, 127.0.0.5 served")


def test():
    with cluster.Cluster(n=4, balancer_args=ARGS) as c:
        c.wait_healthy(4)
        per_ip_limit(c)
        bad_bodies(c)
        one_address_cannot_eject(c)
        t_eject = quorum_ejects(c)
        max_share(c)
        # after the ejection time the nodes come back through the normal path
        c.wait_healthy(4, timeout=EJECT_S + 5)
        assert time.monotonic() - t_eject >= EJECT_S - 1
        st, p = c.pick("?key=abc")
        assert st == 200, (st, p)
        # reports off: --report-quorum 0 counts but never ejects
    with cluster.Cluster(n=2, balancer_args=["--report-quorum", "0"]) as c:
        c.wait_healthy(2)
        for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            body = expect(report(c, "node1", src), 202)
        assert body == {"node": "node1", "reporters": 4, "ejected": False}, body
        assert c.node_state("node1") == "healthy"


if __name__ == "__main__":
    cluster.main(test)
