"""natscluster: a real NATS JetStream cluster for the forwarder's tests. Starts
n nats-server processes on free 127.0.0.1 ports (JetStream on, file storage
in BASE/sN, logs in BASE/sN.log), kills and restarts single servers, runs
js_tool against them, and always kills every server it started, also on
failures and exceptions.

Only the Python standard library."""

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time

# ---------------------------------------------------------------- locations

SOURCE_DIR = os.environ.get("BERTH_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DIR = os.environ.get("BERTH_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")

# Every wait here is this many seconds or a named fraction or multiple of it:
# a 3-server cluster on 2 shared cores forms its meta group in 2-5 s, and a
# stream group elects a leader in 2-10 s after losing one.
WAIT_S = float(os.environ.get("BERTH_JS_WAIT", "30"))
POLL_S = 0.1            # pause between two looks at a condition
KILL_WAIT_S = WAIT_S / 3  # a SIGKILLed server is gone well within this
JS_TOOL_SLACK_S = WAIT_S / 3  # js_tool's own bounds plus this


def find_nats_server():
    """The nats-server binary (NATS_SERVER overrides; Debian puts it in
    /usr/sbin, which a non-root PATH lacks), or None."""
    cand = os.environ.get("NATS_SERVER")
    if cand:
        return cand if os.access(cand, os.X_OK) else None
    found = shutil.which("nats-server")
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin"):
        p = os.path.join(d, "nats-server")
        if os.access(p, os.X_OK):
            return p
    return None


def js_tool_path(build_dir=None):
    return os.path.join(build_dir or BUILD_DIR, "tests", "js_tool")


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (held open together so they
    differ, then released for the servers to bind), as
    tests/integration/cluster.py does."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(pred, timeout, what, interval=POLL_S):
    """Polls pred() until it returns a true value (returned) or timeout
    seconds pass (AssertionError naming `what` and the last value or error)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = pred()
            if v:
                return v
            last = v
        except (OSError, ValueError, KeyError, http.client.HTTPException) as e:
            last = "%s: %s" % (type(e).__name__, e)
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last: %r)"
                                 % (timeout, what, last))
        time.sleep(interval)


def http_get_json(port, path, timeout=1.0):
    """(status, parsed JSON or None) of GET path on 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    try:
        return r.status, json.loads(body.decode())
    except ValueError:
        return r.status, None


def nats_request(url, subject, payload, timeout=WAIT_S / 3):
    """One request over the plain NATS protocol (no TLS, no auth), for the
    few JetStream API calls js_tool does not make (such as
    $JS.API.STREAM.MSG.DELETE.<stream>): returns the reply's payload bytes.
    Bounded by timeout; AssertionError when no reply comes."""
    host, port = url.replace("nats://", "").rsplit(":", 1)
    inbox = "_INBOX.natscluster.%d.%d" % (os.getpid(), time.monotonic_ns())
    body = payload.encode() if isinstance(payload, str) else payload
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        f = s.makefile("rb")
        if not f.readline().startswith(b"INFO "):
            raise AssertionError("%s: no INFO from the server" % url)
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n'
                  + b"SUB %s 1\r\n" % inbox.encode()
                  + b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), inbox.encode(), len(body), body))
        while time.monotonic() < deadline:
            line = f.readline()
            if not line:
                break
            if line.startswith(b"MSG "):
                n = int(line.split()[-1])
                return f.read(n + 2)[:n]
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise AssertionError("%s: %s" % (url, line.decode(errors="replace").strip()))
    raise AssertionError("no reply to %s from %s within %.1fs" % (subject, url, timeout))


class Terminated(BaseException):
    """SIGTERM or SIGHUP (ctest's timeout) arrived while a cluster ran."""


def _raise_terminated(signum, _frame):
    raise Terminated("signal %d" % signum)


def tail(path, lines=30):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)
    return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")


class NatsCluster:
    """n nats-server processes forming one JetStream cluster ("berth-test")
    on 127.0.0.1. Servers are numbered 0..n-1 and named s0..s{n-1}; each
    keeps its client, cluster and monitor ports and its store dir
    (base_dir/sN) across kill() and start(). Use as a context manager; the
    teardown SIGKILLs every server this object started, also on an
    exception or SIGTERM/SIGHUP (turned into Terminated unless the caller
    handles those signals itself). base_dir is created if missing and is the
    caller's: the caller removes it.

    nats_server: the binary (default: find_nats_server()); build_dir: where
    tests/js_tool is (default: $BERTH_BUILD_DIR)."""

    CLUSTER_NAME = "berth-test"

    def __init__(self, base_dir, n=3, build_dir=None, nats_server=None):
        self.base_dir = base_dir
        self.n = n
        self.js_tool = js_tool_path(build_dir)
        self.nats_server = nats_server or find_nats_server()
        ports = free_ports(3 * n)
        self.client_ports = ports[0:n]
        self.cluster_ports = ports[n:2 * n]
        self.monitor_ports = ports[2 * n:3 * n]
        self.procs = [None] * n  # i -> Popen now (or last) running
        self._all = []           # every Popen ever started, for the teardown
        self._starts = [0] * n   # how often server i was started (log names)
        self._old_handlers = {}  # signal -> handler to restore at teardown
        os.makedirs(base_dir, exist_ok=True)

    # --- context manager

    def __enter__(self):
        # A signal's default action would end Python without any teardown
        # and leave the servers (own sessions) running: turn SIGTERM and
        # SIGHUP into an exception, unless the test already handles them.
        self._old_handlers = {}
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                self._old_handlers[sig] = signal.signal(sig, _raise_terminated)
        atexit.register(self.stop_all)
        try:
            if not self.nats_server:
                raise AssertionError("nats-server is not installed")
            if not os.access(self.js_tool, os.X_OK):
                raise AssertionError("%s is not built (set BERTH_BUILD_DIR or build_dir)"
                                     % self.js_tool)
            for i in range(self.n):
                self.start(i, wait=False)
            self.wait_ready()
        except BaseException:
            self.dump_logs()
            self._teardown()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None:
                print("\n=== FAILURE: %s: %s" % (exc_type.__name__, exc), flush=True)
                self.dump_logs()
        finally:
            self._teardown()
        return False

    def _teardown(self):
        for sig in self._old_handlers:  # a second signal must not cut it short
            signal.signal(sig, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            for sig, h in self._old_handlers.items():
                signal.signal(sig, h)
            self._old_handlers = {}

    # --- addresses

    def name(self, i):
        return "s%d" % i

    def url(self, i):
        return "nats://127.0.0.1:%d" % self.client_ports[i]

    def urls(self):
        """Every server's client URL, as js_tool's --servers wants them."""
        return ",".join(self.url(i) for i in range(self.n))

    def store_dir(self, i):
        return os.path.join(self.base_dir, self.name(i))

    def log_path(self, i):
        return os.path.join(self.base_dir, "%s.log" % self.name(i))

    def index_of(self, name):
        """The index of server `name` ("s1" -> 1)."""
        for i in range(self.n):
            if self.name(i) == name:
                return i
        raise KeyError("no server named %r" % name)

    # --- processes

    def argv(self, i):
        routes = ",".join("nats://127.0.0.1:%d" % self.cluster_ports[k]
                          for k in range(self.n) if k != i)
        return [self.nats_server, "-a", "127.0.0.1", "-p", str(self.client_ports[i]),
                "-n", self.name(i), "-js", "-sd", self.store_dir(i),
                "--cluster_name", self.CLUSTER_NAME,
                "--cluster", "nats://127.0.0.1:%d" % self.cluster_ports[i],
                "--routes", routes, "-m", str(self.monitor_ports[i])]

    def running(self, i):
        p = self.procs[i]
        return p is not None and p.poll() is None

    def start(self, i, wait=True):
        """Starts server i on its ports with its store dir (again, after
        kill()); wait: until its monitor answers /healthz with 200, which in
        2.9 means its JetStream caught up with the meta group."""
        assert not self.running(i), "%s is already running" % self.name(i)
        os.makedirs(self.store_dir(i), exist_ok=True)
        log = self.log_path(i)
        if os.path.exists(log):  # keep earlier runs' logs for the failure dump
            os.rename(log, "%s.%d" % (log, self._starts[i]))
        self._starts[i] += 1
        with open(log, "wb") as out:
            p = subprocess.Popen(self.argv(i), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=self.base_dir,
                                 start_new_session=True)
        self.procs[i] = p
        self._all.append(p)
        if wait:
            self.wait_healthy(i)
        return p

    def kill(self, i):
        """SIGKILLs server i and waits until it is gone."""
        p = self.procs[i]
        assert p is not None, "%s was never started" % self.name(i)
        if p.poll() is None:
            p.kill()
        p.wait(KILL_WAIT_S)

    def stop_all(self):
        """SIGKILLs every server this object started and reaps it. Safe to
        call more than once."""
        for p in self._all:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self._all:
            try:
                p.wait(KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                print("natscluster: pid %d did not die" % p.pid, flush=True)

    # --- readiness

    def _alive_or_raise(self, i):
        if not self.running(i):
            p = self.procs[i]
            raise AssertionError("%s exited with status %s (log %s):\n%s"
                                 % (self.name(i), p.returncode if p else None,
                                    self.log_path(i), tail(self.log_path(i))))
        return True

    def healthz(self, i):
        """True when server i's monitor says healthy."""
        status, _ = http_get_json(self.monitor_ports[i], "/healthz")
        return status == 200

    def jsz(self, i):
        """Server i's /jsz, parsed."""
        status, body = http_get_json(self.monitor_ports[i], "/jsz")
        if status != 200 or body is None:
            raise ValueError("/jsz on %s: status %d" % (self.name(i), status))
        return body

    def meta_leader(self, i):
        """The meta leader's name as server i sees it ('' when none)."""
        return (self.jsz(i).get("meta_cluster") or {}).get("leader") or ""

    def wait_healthy(self, i, timeout=WAIT_S):
        wait_until(lambda: self._alive_or_raise(i) and self.healthz(i), timeout,
                   "%s /healthz" % self.name(i))

    def wait_ready(self, timeout=WAIT_S):
        """Waits until every running server is healthy and sees the same
        meta leader, that leader counts every other running server as a
        current replica of the meta group, and js_tool wait-ready gets
        JetStream answers. Returns the meta leader's name."""
        live = [i for i in range(self.n) if self.running(i)]
        for i in live:
            self.wait_healthy(i, timeout)

        def one_current_leader():
            leaders = {self.meta_leader(i) for i in live}
            if len(leaders) != 1 or "" in leaders:
                return False
            leader = leaders.pop()
            meta = self.jsz(self.index_of(leader)).get("meta_cluster") or {}
            current = {r.get("name") for r in meta.get("replicas") or () if r.get("current")}
            want = {self.name(i) for i in live} - {leader}
            return want <= current and leader
        leader = wait_until(one_current_leader, timeout,
                            "one meta leader with %s current"
                            % ",".join(self.name(i) for i in live))
        rc, _, err = self.js(["wait-ready", "--timeout", str(int(timeout * 1000))],
                             timeout=timeout)
        if rc != 0:
            raise AssertionError("js_tool wait-ready: rc %d: %s" % (rc, err.strip()))
        return leader

    def wait_stream_leader(self, stream, timeout=WAIT_S):
        """Waits until stream's leader answers; returns seconds waited."""
        t0 = time.monotonic()
        rc, _, err = self.js(["wait-ready", "--stream", stream,
                              "--timeout", str(int(timeout * 1000))], timeout=timeout)
        if rc != 0:
            raise AssertionError("no leader for stream %s: %s" % (stream, err.strip()))
        return time.monotonic() - t0

    # --- js_tool

    def js(self, args, timeout=WAIT_S, servers=None):
        """Runs js_tool SUBCOMMAND --servers URLS ARGS...: (rc, stdout,
        stderr). servers: other URLs (default urls()). The run is bounded by
        timeout plus a slack; running over is an AssertionError."""
        args = list(args)
        argv = [self.js_tool, args[0], "--servers", servers or self.urls()] + args[1:]
        try:
            r = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL,
                               timeout=timeout + JS_TOOL_SLACK_S)
        except subprocess.TimeoutExpired as e:
            raise AssertionError("js_tool %s ran over %.0fs" % (args[0], e.timeout)) from None
        return (r.returncode, r.stdout.decode("utf-8", "replace"),
                r.stderr.decode("utf-8", "replace"))

    def js_json(self, args, timeout=WAIT_S):
        """js() that must succeed and print one JSON line: returns it parsed."""
        rc, out, err = self.js(args, timeout)
        if rc != 0:
            raise AssertionError("js_tool %s: rc %d: %s" % (" ".join(args), rc, err.strip()))
        return json.loads(out)

    # --- diagnostics

    def dump_logs(self, lines=30):
        for i in range(self.n):
            print("----- last %d lines of %s -----" % (lines, self.log_path(i)))
            print(tail(self.log_path(i), lines))
        for p in self._all:
            print("process %d %s: %s" % (p.pid, " ".join(p.args[:8]),
                                        "running" if p.poll() is None else "exit %s" % p.returncode))
