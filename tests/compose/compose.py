"""compose: the harness of the compose tests. Each test runs one berth
cluster from the real docker-compose.yml (image assembled by
deploy/offline-image.sh from this build's binaries), under a compose project
name of its own, on host ports picked free on 127.0.0.1, and tears it down
with `down -v` whatever happens: on success, on failure, on its time bound,
on SIGTERM (ctest's timeout). Host traffic goes to 127.0.0.1 only.

Environment (set by tests/CMakeLists.txt): BERTH_BUILD_DIR, BERTH_SOURCE_DIR.
BERTH_COMPOSE_IMAGE=TAG runs an existing image instead (one built from
deploy/Dockerfile, say); it is left in place afterwards.
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

SOURCE_DIR = os.path.abspath(
    os.environ.get("BERTH_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DIR = os.path.abspath(os.environ.get("BERTH_BUILD_DIR") or os.path.join(SOURCE_DIR, "build"))
COMPOSE_FILE = os.path.join(SOURCE_DIR, "docker-compose.yml")
CLI = os.path.join(BUILD_DIR, "shared", "berth")
NODES = ("node1", "node2", "node3")
BALANCERS = ("balancer1", "balancer2")
SERVICES = BALANCERS + NODES
# Project names "berthct<pid>x<hex>": a later run removes what a killed run left.
PROJECT_PREFIX = "berthct"
PROJECT_RE = re.compile(r"^%s(\d+)x[0-9a-f]+$" % PROJECT_PREFIX)
TMP_PREFIX = "berth-compose-"  # temporary directories: berth-compose-<pid>-XXXX
CONTAINER_UID = 10001  # the image's user (deploy/Dockerfile, deploy/offline-image.sh)


class TestFailure(Exception):
    """A check failed: the message says what was expected and what was seen."""


class TimeBound(Exception):
    """The test ran past its own time bound."""


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def run(cmd, timeout=60, check_rc=True, env=None, input_text=None):
    """Runs cmd (a list); returns CompletedProcess with text stdout/stderr."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise TestFailure("%s: no exit within %ss" % (" ".join(cmd), timeout)) from e
    if check_rc and p.returncode != 0:
        raise TestFailure("%s exited %d\nstdout: %s\nstderr: %s" %
                          (" ".join(cmd), p.returncode, p.stdout.strip(), p.stderr.strip()))
    return p


def wait_until(pred, timeout, step=0.025, what="condition"):
    """Polls pred() until it returns a true value; returns (value, seconds waited)."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        v = pred()
        if v:
            return v, time.monotonic() - start
        if time.monotonic() >= deadline:
            raise TestFailure("%s not reached within %.1fs" % (what, timeout))
        time.sleep(step)


# ---------------------------------------------------------------- docker

def docker_ready():
    """Makes sure an engine answers: deploy/docker-up.sh installs and starts one."""
    if run(["docker", "info"], timeout=20, check_rc=False).returncode == 0:
        return
    log("no Docker engine answers: running deploy/docker-up.sh")
    run(["bash", os.path.join(SOURCE_DIR, "deploy", "docker-up.sh")], timeout=600)


def compose_cli():
    """`docker compose` (v2) when it works, else docker-compose (1.29)."""
    if run(["docker", "compose", "version"], timeout=20, check_rc=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise TestFailure("neither 'docker compose' nor 'docker-compose' is installed (deploy/docker-up.sh)")


def project_objects(project):
    """Containers, networks and volumes labelled with this compose project."""
    label = "label=com.docker.compose.project=%s" % project
    found = {}
    for kind, cmd in (("container", ["docker", "ps", "-aq", "--filter", label]),
                      ("network", ["docker", "network", "ls", "-q", "--filter", label]),
                      ("volume", ["docker", "volume", "ls", "-q", "--filter", label])):
        out = run(cmd, timeout=30, check_rc=False).stdout.split()
        if out:
            found[kind] = out
    return found


def remove_objects(found):
    for cid in found.get("container", []):
        run(["docker", "rm", "-f", "-v", cid], timeout=60, check_rc=False)
    for net in found.get("network", []):
        run(["docker", "network", "rm", net], timeout=60, check_rc=False)
    for vol in found.get("volume", []):
        run(["docker", "volume", "rm", "-f", vol], timeout=60, check_rc=False)


def reap_stale_projects():
    """Removes projects (and image tags) of earlier runs whose process is gone,
    such as a run ctest killed on its timeout (SIGKILL leaves no finally)."""
    projects = set()
    for cmd in (["docker", "ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}'],
                ["docker", "network", "ls", "--format", '{{.Label "com.docker.compose.project"}}'],
                ["docker", "images", "--format", "{{.Repository}}"]):
        projects.update(run(cmd, timeout=30, check_rc=False).stdout.split())
    for project in sorted(projects):
        m = PROJECT_RE.match(project)
        if not m or pid_alive(int(m.group(1))):
            continue  # not ours, or its test still runs
        log("removing %s, left by a test run that no longer exists" % project)
        remove_objects(project_objects(project))
        run(["docker", "rmi", "-f", "%s:local" % project], timeout=60, check_rc=False)
    tmp = tempfile.gettempdir()
    for entry in os.listdir(tmp):
        m = re.match(r"^%s(\d+)-" % re.escape(TMP_PREFIX), entry)
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_ports(n):
    """n distinct TCP ports free on 127.0.0.1 right now."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


# ---------------------------------------------------------------- cluster

class Cluster:
    """One compose project from the real docker-compose.yml (and
    extra_files, compose files layered on it, e.g. deploy/compose.jetstream.yml)."""

    def __init__(self, extra_files=()):
        self.extra_files = list(extra_files)
        self.project = "%s%dx%04x" % (PROJECT_PREFIX, os.getpid(), random.getrandbits(16))
        self.given_image = os.environ.get("BERTH_COMPOSE_IMAGE") or None
        self.image = self.given_image or "%s:local" % self.project
        self.tmp = tempfile.mkdtemp(prefix="%s%d-" % (TMP_PREFIX, os.getpid()))
        self.certs = os.path.join(self.tmp, "certs")
        self.ca = os.path.join(self.certs, "ca.pem")
        ports = free_ports(6)
        self.http_ports = dict(zip(BALANCERS, ports[:2]))
        self.node_ports = dict(zip(NODES, ports[2:]))
        self.balancer_urls = {b: "http://127.0.0.1:%d" % p for b, p in self.http_ports.items()}
        # What host clients are given: both balancers, asked in this order.
        self.balancer_url = ",".join(self.balancer_urls[b] for b in BALANCERS)
        self.cli = compose_cli()
        self.ids = {}
        self.torn_down = False
        self.env = dict(os.environ)
        self.env.update({
            "BERTH_IMAGE": self.image,
            "BERTH_CERTS": self.certs,
            "BERTH_HTTP_PORT": str(self.http_ports["balancer1"]),
            "BERTH_HTTP2_PORT": str(self.http_ports["balancer2"]),
            "BERTH_NATS_PORT": str(ports[5]),
        })
        self.nats_url = "nats://127.0.0.1:%d" % ports[5]
        for i, name in enumerate(NODES, 1):
            self.env["BERTH_NODE%d_PORT" % i] = str(self.node_ports[name])

    # -- compose and docker
    def compose(self, *args, timeout=180, check_rc=True):
        cmd = self.cli + ["-p", self.project, "-f", COMPOSE_FILE]
        for f in self.extra_files:
            cmd += ["-f", f]
        cmd += ["--project-directory", SOURCE_DIR]
        return run(cmd + list(args), timeout=timeout, check_rc=check_rc, env=self.env)

    def prepare(self):
        """Certificates and the image, before any container starts."""
        run(["bash", os.path.join(SOURCE_DIR, "deploy", "gen-certs.sh"), self.certs], timeout=60)
        keys = os.path.join(self.certs, "keys")
        run(["bash", os.path.join(SOURCE_DIR, "deploy", "gen-keys.sh"), "--berth", CLI, keys]
            + list(NODES), timeout=60)
        # The containers run as 10001; gen-certs and gen-keys write secret
        # keys 0600 for their owner. Hand these throw-away keys to the
        # container user.
        secrets = [os.path.join(self.certs, "node.key")] + [
            os.path.join(keys, f) for f in os.listdir(keys) if f.endswith(".key")]
        for key in secrets:
            if os.geteuid() == 0:
                os.chown(key, CONTAINER_UID, CONTAINER_UID)
            else:
                os.chmod(key, 0o644)
        if self.given_image:
            log("image %s (BERTH_COMPOSE_IMAGE)" % self.image)
            return
        p = run(["bash", os.path.join(SOURCE_DIR, "deploy", "offline-image.sh"), BUILD_DIR, self.image],
                timeout=300)
        log(p.stdout.strip())

    def up(self, wait=True):
        log("project %s: balancers %s, nodes %s" % (
            self.project, ", ".join("%s 127.0.0.1:%d" % bp for bp in self.http_ports.items()),
            ", ".join("%s 127.0.0.1:%d" % (n, p) for n, p in self.node_ports.items())))
        self.prepare()
        self.compose("up", "-d", "--no-build", timeout=240)
        for svc in SERVICES:
            cid = self.compose("ps", "-q", svc).stdout.strip()
            check(cid, "compose ps shows no container for %s" % svc)
            self.ids[svc] = cid
        if wait:
            self.wait_healthy()

    def state(self, svc):
        p = run(["docker", "inspect", "--format", "{{json .State}}", self.ids[svc]], timeout=30)
        return json.loads(p.stdout)

    def health(self, svc):
        st = self.state(svc)
        return (st.get("Health") or {}).get("Status", "none"), st.get("Status")

    def wait_healthy(self, services=SERVICES, timeout=120):
        start = time.monotonic()
        while True:
            states = {svc: self.health(svc) for svc in services}
            if all(h == "healthy" for h, _ in states.values()):
                log("healthy after %.1fs: %s" % (time.monotonic() - start, ", ".join(services)))
                return
            dead = [svc for svc, (_, s) in states.items() if s in ("exited", "dead")]
            if dead or time.monotonic() - start > timeout:
                raise TestFailure("services not healthy (%s): %s" % (
                    "exited: " + ", ".join(dead) if dead else "after %ds" % timeout,
                    ", ".join("%s=%s/%s" % (svc, s, h) for svc, (h, s) in states.items())))
            time.sleep(0.5)

    def network(self):
        p = run(["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}",
                 self.ids["balancer1"]], timeout=30)
        nets = list(json.loads(p.stdout))
        check(len(nets) == 1, "balancer1 is on %d networks: %s" % (len(nets), nets))
        return nets[0]

    def docker(self, *args, timeout=60):
        return run(["docker"] + list(args), timeout=timeout)

    # -- host clients (127.0.0.1 only)
    def http(self, path, timeout=2.0, balancer="balancer1"):
        """(status, parsed JSON body) of GET path on one balancer; (None, error) when unreachable."""
        url = self.balancer_urls[balancer] + path
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body
        except (OSError, ValueError) as e:
            return None, str(e)

    def rotation(self, balancer="balancer1"):
        """Ids in rotation per /v1/nodes, or None when the balancer does not answer."""
        status, body = self.http("/v1/nodes", balancer=balancer)
        if status != 200 or not isinstance(body, dict):
            return None
        return {n["id"]: n for n in body.get("nodes", [])}

    def settings(self):
        status, body = self.http("/v1/health")
        check(status == 200, "GET /v1/health: %s %s" % (status, body))
        return body["interval_ms"] / 1000.0, body["fall"], body["rise"]

    def berth(self, *args, input_text=None, timeout=20):
        return run([CLI] + list(args), timeout=timeout, check_rc=False, input_text=input_text)

    def send(self, text, timeout=20, extra=()):
        """One `berth send` through the balancers: (ok, node id or None, output)."""
        p = self.berth("send", "--balancer", self.balancer_url, "--ca", self.ca, *extra,
                       input_text=text, timeout=timeout)
        out = (p.stdout + p.stderr).strip()
        return p.returncode == 0, parse_node(out), out

    # -- diagnostics and teardown
    def dump(self):
        log("---- compose ps / logs of %s ----" % self.project)
        for args in (("ps",), ("logs", "--no-color", "--tail", "60")):
            p = self.compose(*args, timeout=60, check_rc=False)
            print(p.stdout, p.stderr, flush=True)

    def down(self):
        """`down -v`, then a check: returns what was left behind (removed anyway)."""
        if self.torn_down:
            return {}
        self.torn_down = True
        p = self.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=180, check_rc=False)
        if p.returncode != 0:
            log("compose down exited %d: %s" % (p.returncode, p.stderr.strip()))
        left = project_objects(self.project)
        if left:
            log("compose down left %s: removing by hand" % left)
            remove_objects(left)
        if not self.given_image:
            run(["docker", "rmi", "-f", self.image], timeout=60, check_rc=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return left


NODE_RE = re.compile(r"\bnode[=: ]+\"?([A-Za-z0-9._-]+)")


def parse_node(out):
    m = NODE_RE.search(out)
    return m.group(1) if m else None


class Traffic:
    """A client on the host sending through the balancer, one `berth send` after
    another, until stop() or its own bound; records (start, end, ok, node, output)."""

    def __init__(self, cluster, bound_s=120.0):
        self.cluster = cluster
        self.bound_s = bound_s
        self.results = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        end = time.monotonic() + self.bound_s
        i = 0
        while not self._stop.is_set() and time.monotonic() < end:
            i += 1
            t0 = time.monotonic()
            ok, node, out = self.cluster.send("traffic %d\n" % i, timeout=15)
            self.results.append((t0, time.monotonic(), ok, node, out))

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)
        return self.results

    def since(self, t):
        return [r for r in self.results if r[0] >= t]


# ---------------------------------------------------------------- running a test

def main(test, bound_s=300, bring_up=True, extra_files=()):
    """Runs test(cluster) with a fresh cluster (test(None) when not bring_up),
    bounded by bound_s; tears the cluster down in every case; exits 0 on
    success, 1 on failure."""
    def on_signal(signum, _frame):
        raise SystemExit("signal %d" % signum)

    def on_alarm(_signum, _frame):
        raise TimeBound("test ran past its bound of %ds" % bound_s)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    name = os.path.basename(sys.argv[0])
    for path in (CLI, os.path.join(BUILD_DIR, "balancer", "berth-balancer"),
                 os.path.join(BUILD_DIR, "node", "berth-node")):
        if not os.access(path, os.X_OK):
            log("%s: %s is not built" % (name, path))
            sys.exit(1)
    rc = 1
    cluster = None
    signal.alarm(bound_s)
    try:
        docker_ready()
        reap_stale_projects()
        if bring_up:
            cluster = Cluster(extra_files)
        test(cluster)
        rc = 0
    except BaseException as e:  # noqa: B036 - report anything, then tear down
        log("%s FAILED: %s" % (name, e))
        traceback.print_exc()
        if cluster is not None and not cluster.torn_down:
            try:
                cluster.dump()
            except BaseException as e2:  # noqa: B036
                log("could not dump logs: %s" % e2)
    finally:
        signal.alarm(0)
        if cluster is not None:
            left = cluster.down()
            if left:
                log("teardown: compose down -v left %s behind" % left)
                rc = 1
    print("%s: %d passed, %d failed" % (name, 1 if rc == 0 else 0, 0 if rc == 0 else 1), flush=True)
    sys.exit(rc)
