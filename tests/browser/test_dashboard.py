"""The dashboard in a real browser (Debian's headless chromium driven by
chromium-driver through python3-selenium): a balancer and three nodes, the
page shows three healthy rows with the right addresses and load charts; a
killed node's row turns down within the bound without a reload, and the
detection histogram counts it; a node drained through the admin API shows
as draining; when the balancer dies the page says so. Screenshots (laptop
and phone width) go to $BERTH_BUILD_DIR/artifacts/ as test artifacts."""
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
  out[tr.dataset.node] = [tr.dataset.state, tr.querySelector('td.addr').textContent,
                          tr.querySelector('.badge').textContent, r ? r.textContent : ''];
}
return out;
"""


def rows(d):
    """{node id: [state attribute, address, badge text, reason]} as the page shows them."""
    return d.execute_script(ROWS_JS)


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
        with cluster.Cluster(n=3, balancer_env={"BERTH_ADMIN_TOKEN": TOKEN}) as c:
            c.wait_healthy(3)
            d = start_browser(profile)
            d.set_page_load_timeout(20)
            d.get(c.balancer_url + "/")
            assert d.title == "berth balancer", d.title

            def three_healthy():
                r = rows(d)
                return r if len(r) == 3 and all(v[0] == "healthy" for v in r.values()) else None
            r = cluster.wait_until(three_healthy, 10, 0.1, "three healthy rows")
            for i in (1, 2, 3):
                state, addr, badge, _ = r["node%d" % i]
                assert addr == c.node_addr(i), (i, addr)
                assert badge.endswith("healthy"), badge  # the state in text, not only colour
            assert text_of(d, "count-healthy") == "3"
            # Load charts from /v1/history (a sample every 2 s).
            cluster.wait_until(lambda: d.execute_script(
                "return document.querySelectorAll('svg.spark path').length;") == 3,
                               8, 0.1, "three load charts")

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
            state, _, badge, reason = rows(d)["node3"]
            assert badge.endswith("down") and reason.startswith("no heartbeat"), (badge, reason)
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
            _, _, badge, reason = rows(d)["node2"]
            assert badge.endswith("draining") and reason == "admin drain", (badge, reason)
            assert rows(d)["node1"][0] == "healthy"
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
