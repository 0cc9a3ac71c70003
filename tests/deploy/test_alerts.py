"""deploy/prometheus/berth-alerts.yml: promtool check rules and promtool
test rules (deploy/prometheus/berth-alerts.test.yml, which must test every
rule both firing and not firing), and every metric name the rules use
against the /metrics of a live balancer (tests/integration/cluster.py,
plaintext heartbeats) with a node that forwards to JetStream (a one-server
nats-server on 127.0.0.1), so the per-node series exist. Skips (77) when
promtool (Debian package prometheus) is missing; without nats-server the
forwarding names are checked against the # TYPE lines alone, and it says so."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import cluster  # noqa: E402

PROM_DIR = os.path.join(cluster.SOURCE_DIR, "deploy", "prometheus")
RULES = os.path.join(PROM_DIR, "berth-alerts.yml")
RULES_TEST = os.path.join(PROM_DIR, "berth-alerts.test.yml")
# What Prometheus itself provides, not the balancer.
PROMETHEUS_NAMES = {"up"}
PROMQL_WORDS = {"on", "and", "or", "unless", "without", "by", "ignoring", "group_left",
                "group_right", "bool", "offset",
                # aggregation operators, which may stand before "without (...)"
                "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk",
                "bottomk", "quantile", "count_values"}


def run(argv, timeout=60):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                       env=cluster.child_env())
    return r.returncode, r.stdout + r.stderr


def rule_exprs():
    import yaml  # noqa: PLC0415
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def metric_names(expr):
    # Strip label matchers and strings, then take identifiers that are not
    # functions (followed by "(") nor PromQL keywords.
    e = re.sub(r"\{[^}]*\}", " ", expr)
    e = re.sub(r'"[^"]*"', " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    names = set()
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word in PROMQL_WORDS or re.fullmatch(r"\d.*", word):
            continue
        names.add(word)
    # Grouping label lists: "without (from, to)", "on (instance, job, node)".
    for m in re.finditer(r"\b(?:without|by|on|ignoring)\s*\(([^)]*)\)", e):
        for lab in m.group(1).split(","):
            names.discard(lab.strip())
    return names


def live_metrics():
    """(sample names, # TYPE names, how the forwarding series came about)."""
    base = tempfile.mkdtemp(prefix="berth-alerts-")
    nats = None
    try:
        node_args = []
        how = "no nats-server: forwarding names checked against # TYPE lines only"
        server = shutil.which("nats-server") or (
            "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None)
        if server:
            port = cluster.free_ports(1)[0]
            log = open(os.path.join(base, "nats.log"), "wb")
            nats = subprocess.Popen([server, "-a", "127.0.0.1", "-p", str(port), "-js",
                                     "-sd", os.path.join(base, "js")],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            cluster.wait_until(lambda: _port_open(port), 15, 0.05, "nats-server on %d" % port)
            node_args = ["--jetstream", "nats://127.0.0.1:%d" % port, "--jetstream-create",
                         "--jetstream-replicas", "1"]
            how = "node1 forwards to a one-server JetStream (nats-server on 127.0.0.1:%d)" % port
        with cluster.Cluster(n=2, plaintext=True, node_args={1: node_args}, budget=120) as c:
            c.wait_healthy(2)

            def forwarding():
                if not node_args:
                    return True
                body = cluster.http_get(c.http_port, "/metrics")[1]
                return b"berth_node_forward_healthy{node=\"node1\"} 1" in body
            cluster.wait_until(forwarding, 20, 0.1, "node1's forwarding series")
            status, body, _ = cluster.http_get(c.http_port, "/metrics")
            assert status == 200, status
        text = body.decode()
        samples = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", ln).group(0)
                   for ln in text.splitlines() if ln and not ln.startswith("#")}
        types = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}
        return samples, types, how, text
    finally:
        if nats:
            nats.kill()
            nats.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def _port_open(port):
    import socket  # noqa: PLC0415
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def test():
    promtool = shutil.which("promtool")
    if not promtool:
        print("SKIP: promtool not found (Debian package prometheus, deploy/install-deps.sh)")
        sys.exit(77)
    try:
        import yaml  # noqa: PLC0415
    except ImportError:
        print("SKIP: python3-yaml is missing (deploy/install-deps.sh installs it)")
        sys.exit(77)

    rc, out = run([promtool, "check", "rules", RULES])
    assert rc == 0, out
    print("checked: promtool check rules %s: %s" % (os.path.relpath(RULES, cluster.SOURCE_DIR),
                                                    out.strip().splitlines()[-1].strip()))

    rc, out = run([promtool, "test", "rules", RULES_TEST])
    assert rc == 0, out
    print("checked: promtool test rules berth-alerts.test.yml: SUCCESS")

    exprs = rule_exprs()
    with open(RULES_TEST) as f:
        tdoc = yaml.safe_load(f)
    fired, quiet = set(), set()
    for t in tdoc["tests"]:
        for a in t["alert_rule_test"]:
            (fired if a.get("exp_alerts") else quiet).add(a["alertname"])
    for name in exprs:
        assert name in fired, "%s: no promtool test where it fires" % name
        assert name in quiet, "%s: no promtool test where it must not fire" % name
    extra = (fired | quiet) - set(exprs)
    assert not extra, "tests for alerts the rules do not have: %s" % sorted(extra)
    print("checked: each of the %d alerts has a firing and a not-firing promtool case: %s"
          % (len(exprs), ", ".join(sorted(exprs))))

    used = set()
    for name, expr in exprs.items():
        names = metric_names(expr)
        assert names, "%s: no metric name found in %r" % (name, expr)
        used |= names
    # The name check can fail: a name the balancer does not write is caught.
    assert metric_names('rate(berth_no_such_total{a="b"}[5m]) > 0') == {"berth_no_such_total"}
    samples, types, how, text = live_metrics()
    assert "berth_no_such_total" not in samples
    print("live balancer /metrics: %d sample names, %d families; %s" % (len(samples), len(types), how))
    missing = []
    for m in sorted(used - PROMETHEUS_NAMES):
        if m.startswith("berth_node_forward_") and "only" in how:
            ok = m in types
        else:
            ok = m in samples
        if not ok:
            missing.append(m)
    assert not missing, "metric names the rules use that the balancer does not export: %s" % missing
    print("checked: every metric the rules use is exported by the live balancer: %s"
          % ", ".join(sorted(used - PROMETHEUS_NAMES)))
    print("  (plus %s, which Prometheus itself writes per scrape target)"
          % ", ".join(sorted(used & PROMETHEUS_NAMES)))
    # The label values the rules match on exist too.
    for needle in ('berth_nodes{state="healthy"}', 'berth_nodes{state="flapping"}',
                   'to="down"'):
        assert needle in text, "%s not in /metrics" % needle
    print('checked: label values the rules match exist: state="healthy", state="flapping", to="down"')


if __name__ == "__main__":
    cluster.main(test)
