"""The dashboard with node ids that are Object.prototype members
("constructor", "toString", "__proto__", "hasOwnProperty") beside an
ordinary one, in headless chromium (--dump-dom, no driver needed): every
row is drawn, with its load chart once the history has a sample (a plain
{} indexed by id returned a prototype member and blanked the page), and
the page's script loads under a CSP that forbids inline script."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import cluster  # noqa: E402
from cluster import wait_until  # noqa: E402

zmq = cluster.require_zmq()
CHROMIUM = shutil.which("chromium")
IDS = ["constructor", "toString", "__proto__", "hasOwnProperty", "plain-node"]


def pump(c, ids, stop):
    ctx = zmq.Context()
    sock = c.dealer(ctx)
    seq = 0
    try:
        for i in ids:
            seq += 1
            sock.send(json.dumps({"type": "register", "node": i, "boot": "00000000000000aa",
                                  "seq": seq, "addr": "127.0.0.1:9", "capacity": 4,
                                  "version": "ids-0"}).encode())
        while not stop.wait(c.interval_s):
            for i in ids:
                seq += 1
                sock.send(json.dumps({
                    "type": "heartbeat", "node": i, "boot": "00000000000000aa", "seq": seq,
                    "sessions": 1, "accepted": 0, "msgs_per_sec": 0.0, "healthy": True,
                    "draining": False, "reason": "",
                    "workers": [{"ticks": seq, "hs_ok": 0, "hs_failed": 0}]}).encode())
            while sock.poll(0):
                sock.recv()
    finally:
        sock.close(0)
        ctx.term()


def dump_dom(url, profile):
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--disable-dev-shm-usage",
                        "--user-data-dir=" + profile, "--virtual-time-budget=4000",
                        "--dump-dom", url], capture_output=True, timeout=60)
    return r.stdout.decode(errors="replace")


def test():
    if not CHROMIUM:
        print("SKIP: no chromium")
        sys.exit(77)
    with cluster.Cluster(n=0, start_nodes=False, plaintext=True) as c:
        stop = threading.Event()
        t = threading.Thread(target=pump, args=(c, IDS, stop), daemon=True)
        profile = tempfile.mkdtemp(prefix="berth-chromium-")
        try:
            # Register just after a history sample, so the page first sees
            # the ids in /v1/health but not yet in /v1/history: a {} keyed
            # by id then handed it Object.prototype's "constructor".
            taken = c.http_get_json("/v1/history")[1]["taken"]
            wait_until(lambda: c.http_get_json("/v1/history")[1]["taken"] != taken, 5, 0.01,
                       what="a history sample")
            t.start()
            wait_until(lambda: set(c.healthy_ids()) >= set(IDS), 10, 0.01, what="ids healthy")
            early = dump_dom(c.balancer_url + "/", profile)
            print("early dom: %d bytes, %d rows" % (len(early), early.count("<tr")))
            for i in IDS:
                assert ">%s<" % i in early, "row for %s missing before its history" % i
            wait_until(lambda: len(c.http_get_json("/v1/history")[1]["nodes"]) >= len(IDS), 10,
                       what="a history sample")
            st, body, ctype = cluster.http_get(c.http_port, "/dashboard.js")
            assert st == 200 and "javascript" in ctype, (st, ctype)
            conn = __import__("http.client").client.HTTPConnection("127.0.0.1", c.http_port)
            conn.request("GET", "/")
            r = conn.getresponse()
            csp = r.getheader("Content-Security-Policy")
            page = r.read().decode()
            conn.close()
            assert "script-src 'self'" in csp and "unsafe-inline'; connect" not in csp.split(
                "script-src")[1].split(";")[0], csp
            assert "<script>" not in page and '<script src="/dashboard.js">' in page
            dom = dump_dom(c.balancer_url + "/", profile)
            rows = dom.count("<tr")
            print("dom: %d bytes, %d rows" % (len(dom), rows))
            for i in IDS:
                assert ">%s<" % i in dom, "row for %s missing" % i
            assert dom.count('class="spark"') >= len(IDS), "load charts missing"
        finally:
            stop.set()
            t.join(5)
            shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    cluster.main(test)
