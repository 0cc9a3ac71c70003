"""The dashboard in a real browser (Debian's headless chromium driven by
chromium-driver through python3-selenium): a balancer and three nodes, the
page shows three healthy rows with the right addresses, load charts and
the balancer each node reaches; a node three clients report unreachable
(POST /v1/reports from three addresses) shows as ejected with the reason; a
killed node's row turns down within the bound without a reload, and the
detection histogram counts it; a node drained through the admin API shows
as draining; when the balancer dies the page says so. Screenshots (laptop
and phone width) go to $BERTH_BUILD_DIR/artifacts/ as test artifacts."""
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import cluster  # noqa: E402

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:  # a pyenv python first on PATH: use Debian's
    cluster.require_zmq()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

TOKEN = "browser-test-admin-token-42"
REPORT_ARGS = ["--report-quorum", "3", "--report-eject", "5m", "--report-eject-max", "5m"]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# kill -9 -> row shows down: fall x interval (750 ms) + a reap period, plus
# up to one page poll (1 s) and the fetch.
DOWN_BOUND_S = 3.0
ARTIFACTS = os.path.join(cluster.BUILD_DIR, "artifacts")


def start_browser(profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1280,1000",
              "--user-data-dir=" + profile):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


# The table is rebuilt on every poll: read it in one script call, so no
# element goes stale between two reads.
ROWS_JS = """
const out = {};
for (const tr of document.querySelectorAll('#rows tr')) {
  const r = tr.querySelector('.reason');
  const bals = [...tr.querySelectorAll('td.balancers li')].map(
      li => [li.textContent, li.className]);
  out[tr.dataset.node] = [tr.dataset.state, tr.querySelector('td.addr').textContent,
                          tr.querySelector('.badge').textContent, r ? r.textContent : '',
                          bals];
}
return out;
"""


def rows(d):
    """{node id: [state attribute, address, badge text, reason, [[balancer, class]]]} as
    the page shows them."""
    return d.execute_script(ROWS_JS)


def report(c, node, source):
    """POST /v1/reports about node from the loopback address source."""
    conn = http.client.HTTPConnection("127.0.0.1", c.http_port, timeout=3.0,
                                      source_address=(source, 0))
    try:
        conn.request("POST", "/v1/reports", body=json.dumps({"node": node, "reason": "tls"}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read().decode())
    finally:
        conn.close()


def text_of(d, elem_id):
    return d.execute_script("const e = document.getElementById(arguments[0]);"
                            "return e ? e.textContent : null;", elem_id)


def test():
    for b in (CHROMIUM, CHROMEDRIVER):
        assert os.access(b, os.X_OK), "%s missing: deploy/install-deps.sh installs it" % b
    os.makedirs(ARTIFACTS, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="berth-chromium-")
    d = None
    try:
        with cluster.Cluster(n=3, balancer_env={"BERTH_ADMIN_TOKEN": TOKEN},
                             balancer_args=REPORT_ARGS) as c:
            c.wait_healthy(3)
            d = start_browser(profile)
            d.set_page_load_timeout(20)
            d.get(c.balancer_url + "/")
            assert d.title == "berth balancer", d.title

            def three_healthy():
                r = rows(d)
                return r if len(r) == 3 and all(v[0] == "healthy" for v in r.values()) else None
            r = cluster.wait_until(three_healthy, 10, 0.1, "three healthy rows")
            # the balancer each node heartbeats to, reached (from its heartbeats)
            hb_endpoints = {b["endpoint"] for n in c.health()["nodes"] for b in n["balancers"]}
            assert len(hb_endpoints) == 1, hb_endpoints

            def balancers_shown():
                r = rows(d)
                return r if all(v[4] for v in r.values()) else None
            r = cluster.wait_until(balancers_shown, 5, 0.1, "balancers column")
            for i in (1, 2, 3):
                state, addr, badge, _, bals = r["node%d" % i]
                assert addr == c.node_addr(i), (i, addr)
                assert badge.endswith("healthy"), badge  # the state in text, not only colour
                assert bals == [[list(hb_endpoints)[0], "ok"]], bals
            assert text_of(d, "count-healthy") == "3"
            # Load charts from /v1/history (a sample every 2 s).
            cluster.wait_until(lambda: d.execute_script(
                "return document.querySelectorAll('svg.spark path').length;") == 3,
                               8, 0.1, "three load charts")

            # Three clients report node1 unreachable: its row shows ejected, why,
            # and the count tile; its heartbeats go on.
            for src in ("127.0.0.2", "127.0.0.3"):
                st, body = report(c, "node1", src)
                assert st == 202 and body["ejected"] is False, (st, body)
            cluster.wait_until(lambda: "2 clients report" in d.execute_script(
                "const e = document.querySelector('tr[data-node=node1] .reports');"
                "return e ? e.textContent : '';"), 3, 0.05, "node1 shows 2 reporters")
            st, body = report(c, "node1", "127.0.0.4")
            assert st == 202 and body == {"node": "node1", "reporters": 3, "ejected": True}, body
            cluster.wait_until(lambda: rows(d)["node1"][0] == "ejected", 3, 0.05,
                               "node1 row ejected")
            _, _, badge, reason, _ = rows(d)["node1"]
            assert badge.endswith("ejected") and "reported unreachable by 3 clients" in reason, \
                (badge, reason)
            assert text_of(d, "count-ejected") == "1"

            # Some picks so picks/s moves.
            for _ in range(50):
                c.pick()

            # kill -9 node3: its row turns down without a reload.
            marker = d.execute_script("window.__noReload = 1; return window.__noReload;")
            t0 = time.monotonic()
            c.kill_node(3, signal.SIGKILL)
            cluster.wait_until(lambda: rows(d)["node3"][0] == "down", DOWN_BOUND_S + 2, 0.05,
                               "node3 row down")
            took = time.monotonic() - t0
            print("node3 row shows down %.0f ms after kill -9 (bound %.0f ms)"
                  % (took * 1000, DOWN_BOUND_S * 1000))
            assert took <= DOWN_BOUND_S, "row turned down after %.2fs" % took
            assert d.execute_script("return window.__noReload;") == marker, "page was reloaded"
            state, _, badge, reason, _ = rows(d)["node3"]
            # silence, or at once when the balancer sees the heartbeat connection close
            assert badge.endswith("down") and (reason.startswith("no heartbeat") or
                                               reason == "connection closed"), (badge, reason)
            cluster.wait_until(lambda: text_of(d, "d-count") == "1", 3, 0.1,
                               "detection count 1")
            p50 = text_of(d, "d-p50")
            assert p50.endswith("ms"), p50
            print("dashboard detection p50 %s, p99 %s" % (p50, text_of(d, "d-p99")))
            assert d.execute_script("return document.querySelectorAll('#dchart svg rect').length;"), \
                "no histogram bars"

            # Drain node2 through the admin API: shown draining, reason given.
            st, body, _ = c.admin("node2", "drain", token=TOKEN)
            assert st == 200, (st, body)
            cluster.wait_until(lambda: rows(d)["node2"][0] == "draining", 3, 0.05,
                               "node2 row draining")
            _, _, badge, reason, _ = rows(d)["node2"]
            assert badge.endswith("draining") and reason == "admin drain", (badge, reason)
            assert rows(d)["node1"][0] == "ejected"
            time.sleep(2.2)  # one more history sample so the charts show the changes

            shot = os.path.join(ARTIFACTS, "dashboard.png")
            assert d.save_screenshot(shot), shot
            d.set_window_size(390, 1400)
            time.sleep(0.3)
            phone = os.path.join(ARTIFACTS, "dashboard-phone.png")
            assert d.save_screenshot(phone), phone
            width = d.execute_script("return document.documentElement.scrollWidth;")
            inner = d.execute_script("return window.innerWidth;")
            assert width <= inner + 1, "page scrolls sideways on a phone: %d > %d" % (width, inner)
            d.set_window_size(1280, 1000)
            print("screenshots: %s %s" % (shot, phone))

            # The balancer stops answering: the banner says so.
            assert not d.find_element(By.ID, "banner").is_displayed()
            c.kill_balancer(signal.SIGKILL)
            cluster.wait_until(lambda: d.find_element(By.ID, "banner").is_displayed(), 6, 0.1,
                               "balancer-down banner")
            text = d.find_element(By.ID, "banner").text
            assert "not answering" in text, text
            d.save_screenshot(os.path.join(ARTIFACTS, "dashboard-offline.png"))
    finally:
        if d is not None:
            d.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    cluster.main(test)
