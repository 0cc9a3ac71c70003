"""GET /metrics: parsed by prometheus_client's text-format parser (Debian's
python3-prometheus-client), every metric the balancer promises is there
with the right type, and the figures move: picks per node, HTTP requests
by status, state transitions and a detection latency sample after a node
is killed. Also checks --log-format json writes one JSON object per line
with the same fields as text."""
import json
import signal

import cluster

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # a pyenv python first on PATH: use Debian's
    cluster.require_zmq()  # re-executes under /usr/bin/python3
    from prometheus_client.parser import text_string_to_metric_families

# family name (as the parser reports it) -> type
EXPECTED = {
    "berth_build_info": "gauge",
    "berth_uptime_seconds": "gauge",
    "berth_membership_epoch": "gauge",
    "berth_nodes": "gauge",
    "berth_heartbeats_received": "counter",
    "berth_heartbeats_dropped": "counter",
    "berth_heartbeats_rejected": "counter",
    "berth_heartbeat_replies": "counter",
    "berth_node_state_transitions": "counter",
    "berth_detection_latency_seconds": "histogram",
    "berth_lookup_duration_seconds": "histogram",
    "berth_http_requests": "counter",
    "berth_picks": "counter",
    "berth_node_sessions": "gauge",
    "berth_node_capacity": "gauge",
    "berth_node_load_ratio": "gauge",
    "berth_node_messages_per_second": "gauge",
    "berth_node_accepted_connections": "counter",
    "berth_node_heartbeats": "counter",
    "berth_node_last_heartbeat_age_seconds": "gauge",
    "berth_node_in_rotation": "gauge",
    "berth_reports": "counter",
    "berth_report_ejections": "counter",
    "berth_report_ejections_capped": "counter",
}


def scrape(c):
    status, body, ctype = cluster.http_get(c.http_port, "/metrics")
    assert status == 200, status
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = {}
    for f in fams.values():
        for s in f.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return fams, samples


def val(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test():
    with cluster.Cluster(n=3, balancer_args=["--log-format", "json"],
                         node_args={1: ["--log-format", "json"]}) as c:
        c.wait_healthy(3)
        # A fresh balancer admits nodes on REGISTER, before any heartbeat.
        cluster.wait_until(lambda: all(n["heartbeats"] > 0 for n in c.health()["nodes"]),
                           5, 0.02, "a heartbeat from every node")
        for _ in range(30):
            assert c.pick()[0] == 200
        cluster.http_get(c.http_port, "/nope")  # one 404

        fams, s = scrape(c)
        missing = [n for n in EXPECTED if n not in fams]
        assert not missing, "missing metric families: %s" % missing
        wrong = {n: fams[n].type for n in EXPECTED if fams[n].type != EXPECTED[n]}
        assert not wrong, "wrong types: %s" % wrong

        assert val(s, "berth_nodes", state="healthy") == 3
        for st in ("joining", "suspect", "down", "draining", "flapping", "ejected"):
            assert val(s, "berth_nodes", state=st) == 0, st
        assert val(s, "berth_heartbeats_received_total") > 0
        for reason in ("frames", "empty", "oversize", "parse", "type", "field", "unexpected",
                       "handshake"):
            assert val(s, "berth_heartbeats_rejected_total", reason=reason) == 0, reason
        picks = sum(val(s, "berth_picks_total", node="node%d" % i) for i in (1, 2, 3))
        assert picks == 30, picks
        assert val(s, "berth_lookup_duration_seconds_count") == 30
        assert val(s, "berth_lookup_duration_seconds_bucket", le="+Inf") == 30
        assert val(s, "berth_http_requests_total", code="200") >= 31
        assert val(s, "berth_http_requests_total", code="404") == 1
        assert val(s, "berth_node_state_transitions_total", **{"from": "joining", "to": "healthy"}) == 3
        for i in (1, 2, 3):
            nid = "node%d" % i
            assert val(s, "berth_node_capacity", node=nid) > 0
            assert val(s, "berth_node_in_rotation", node=nid) == 1
            assert val(s, "berth_node_heartbeats_total", node=nid) > 0
            assert 0 <= val(s, "berth_node_last_heartbeat_age_seconds", node=nid) < 1
            for g in ("berth_node_sessions", "berth_node_load_ratio",
                      "berth_node_messages_per_second", "berth_node_accepted_connections_total"):
                val(s, g, node=nid)
        assert val(s, "berth_detection_latency_seconds_count") == 0
        for result in ("accepted", "unknown_node", "rate_limited"):
            assert val(s, "berth_reports_total", result=result) == 0, result
        assert val(s, "berth_report_ejections_total") == 0
        assert val(s, "berth_report_ejections_capped_total") == 0

        # Kill a node: a down transition and one detection sample.
        c.kill_node(3, signal.SIGKILL)
        cluster.wait_until(lambda: c.node_state("node3") == "down", 5, 0.02, "node3 down")
        fams, s = scrape(c)
        assert val(s, "berth_nodes", state="down") == 1
        assert val(s, "berth_node_in_rotation", node="node3") == 0
        assert val(s, "berth_detection_latency_seconds_count") == 1
        lat = val(s, "berth_detection_latency_seconds_sum")
        print("detection latency of node3: %.0f ms" % (lat * 1000))
        # the closed heartbeat connection (at once), or silence: suspect after
        # 1.5 intervals, plus one reap period and some slack
        assert 0 <= lat <= 1.0, lat
        down = sum(val(s, "berth_node_state_transitions_total", **{"from": f, "to": "down"})
                   for f in ("healthy", "suspect"))
        assert down == 1, down
        h = c.health()
        assert h["detection"]["count"] == 1 and abs(h["detection"]["p50_ms"] - lat * 1000) < 1, h

        # JSON logs: every balancer line is one JSON object with the fixed
        # fields, and the state change is logged once, at info.
        lines = [ln for ln in open(c.logs["balancer"]).read().splitlines() if ln.strip()]
        objs = [json.loads(ln) for ln in lines]
        for o in objs:
            assert {"ts", "level", "component", "event"} <= set(o), o
            assert o["component"] == "balancer", o
        start = [o for o in objs if o["event"] == "start"]
        assert start and isinstance(start[0]["fall"], int), start
        down_lines = [o for o in objs if o["event"] == "node_state" and o["node_id"] == "node3"
                      and o["to"] == "down"]
        assert len(down_lines) == 1 and down_lines[0]["level"] == "info", down_lines
        assert (down_lines[0]["reason"].startswith("no heartbeat for")
                or down_lines[0]["reason"] == "connection closed"), down_lines
        node_objs = [json.loads(ln) for ln in open(c.logs["node1"]).read().splitlines()
                     if ln.strip()]
        assert node_objs and all(o["node"] == "node1" and o["component"] == "node"
                                 for o in node_objs), node_objs[:3]


if __name__ == "__main__":
    cluster.main(test)
