"""cluster: the integration tests' harness. Starts the real berth-balancer
and berth-node binaries on 127.0.0.1 in a temporary directory, speaks the
node protocol over TLS, runs the `berth` CLI, and always tears everything
down (processes, temp dir), also on failures, timeouts and SIGTERM.

Only the Python standard library; zmq (python3-zmq) is imported on demand
by the tests that need it (require_zmq)."""

import atexit
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import traceback

# ---------------------------------------------------------------- locations

SOURCE_DIR = os.environ.get("BERTH_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DIR = os.environ.get("BERTH_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
NODE_BIN = os.path.join(BUILD_DIR, "node", "berth-node")
BALANCER_BIN = os.path.join(BUILD_DIR, "balancer", "berth-balancer")
CLI_BIN = os.path.join(BUILD_DIR, "shared", "berth")
GEN_CERTS = os.path.join(SOURCE_DIR, "deploy", "gen-certs.sh")

# Seconds a test may run in all; ctest's own timeout is 180 s. Leaves time
# for the teardown to run before ctest kills us.
TEST_BUDGET_S = float(os.environ.get("BERTH_IT_BUDGET", "150"))


def require_zmq():
    """Returns the zmq module. When this interpreter lacks it (a pyenv or
    venv python found first on PATH), re-executes the test under Debian's
    /usr/bin/python3, which python3-zmq installs into."""
    try:
        import zmq  # noqa: PLC0415
        return zmq
    except ImportError:
        for cand in ("/usr/bin/python3", "/bin/python3"):
            if (os.access(cand, os.X_OK) and not os.environ.get("BERTH_IT_REEXEC")
                    and os.path.realpath(cand) != os.path.realpath(sys.executable)):
                os.environ["BERTH_IT_REEXEC"] = "1"
                sys.stdout.flush()
                sys.stderr.flush()
                os.execv(cand, [cand] + sys.argv)
        raise


def child_env(extra=None):
    """The environment for a started binary: ours without any BERTH_*
    variable (every BERTH_<FLAG> is a setting the binaries would read),
    plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env.update(extra or {})
    return env


# ---------------------------------------------------------------- node protocol

HEADER = struct.Struct(">IBBHQ")  # length, version, type, flags, request id
HEADER_SIZE = HEADER.size
VERSION = 1

HELLO, PING, ECHO, SEND, INFO, BYE = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
WELCOME, PONG, ECHO_REPLY, ACK, INFO_REPLY, ERROR = 0x81, 0x82, 0x83, 0x84, 0x85, 0xFF
TYPE_NAMES = {HELLO: "HELLO", PING: "PING", ECHO: "ECHO", SEND: "SEND", INFO: "INFO", BYE: "BYE",
              WELCOME: "WELCOME", PONG: "PONG", ECHO_REPLY: "ECHO_REPLY", ACK: "ACK",
              INFO_REPLY: "INFO_REPLY", ERROR: "ERROR"}

ERR_MALFORMED, ERR_UNKNOWN_TYPE, ERR_BAD_VERSION, ERR_NOT_READY, ERR_TOO_LARGE = 1, 2, 3, 4, 5
ERR_UNEXPECTED, ERR_SHUTTING_DOWN, ERR_TOO_MANY_IN_FLIGHT, ERR_TIMEOUT, ERR_INTERNAL = 6, 7, 8, 9, 10
ERR_UNAVAILABLE = 11


def encode_frame(ftype, request_id, payload=b"", version=VERSION, flags=0, length=None):
    """One frame: header + payload. length overrides the header's length
    field (to lie about it)."""
    if length is None:
        length = len(payload)
    return HEADER.pack(length, version, ftype, flags, request_id) + payload


def hello_body(name="itest", version=VERSION):
    n = name.encode()
    return struct.pack(">HB", version, len(n)) + n


def send_body(message_id, data):
    return struct.pack(">Q", message_id) + data


class Frame:
    def __init__(self, length, version, ftype, flags, request_id, payload):
        self.length, self.version, self.type = length, version, ftype
        self.flags, self.request_id, self.payload = flags, request_id, payload

    def __repr__(self):
        extra = ""
        if self.type == ERROR and len(self.payload) >= 2:
            code, text = self.error()
            extra = " code=%d text=%r" % (code, text)
        return "<%s rid=%d len=%d%s>" % (TYPE_NAMES.get(self.type, hex(self.type)),
                                          self.request_id, self.length, extra)

    def error(self):
        """(code, text) of an ERROR frame."""
        assert self.type == ERROR, "expected ERROR, got %r" % self
        (code,) = struct.unpack(">H", self.payload[:2])
        return code, self.payload[2:].decode("utf-8", "replace")

    def welcome(self):
        assert self.type == WELCOME, "expected WELCOME, got %r" % self
        p = self.payload
        version, session_id, max_payload, idle_ms, n = struct.unpack(">HQIIB", p[:19])
        return {"version": version, "session_id": session_id, "max_payload": max_payload,
                "idle_timeout_ms": idle_ms, "node_id": p[19:19 + n].decode()}

    def ack(self):
        """(message id, sha256 hex) of an ACK frame."""
        assert self.type == ACK, "expected ACK, got %r" % self
        (mid,) = struct.unpack(">Q", self.payload[:8])
        return mid, self.payload[8:40].hex()


def decode_frames(data):
    """Splits bytes into complete frames; returns (frames, rest)."""
    frames = []
    while len(data) >= HEADER_SIZE:
        length, version, ftype, flags, rid = HEADER.unpack_from(data)
        if len(data) < HEADER_SIZE + length:
            break
        frames.append(Frame(length, version, ftype, flags, rid,
                            data[HEADER_SIZE:HEADER_SIZE + length]))
        data = data[HEADER_SIZE + length:]
    return frames, data


class Closed(Exception):
    """The node closed the connection."""


class Session:
    """One TLS connection to a node, verified against the test CA with the
    host name check on 127.0.0.1."""

    def __init__(self, ca_file, addr, timeout=10.0):
        host, port = addr.rsplit(":", 1)
        host = host.strip("[]")
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.check_hostname = True
        raw = socket.create_connection((host, int(port)), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        self.buf = b""
        self.closed = False
        self.close_how = None

    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, ftype, request_id, payload=b"", **kw):
        self.send_raw(encode_frame(ftype, request_id, payload, **kw))

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete frame from the node in time (have %d bytes)"
                               % len(self.buf))
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            raise TimeoutError("no complete frame from the node in time (have %d bytes)"
                               % len(self.buf)) from None
        except (ssl.SSLError, ConnectionError) as e:
            # An unclean close (reset, EOF without close_notify) is a close too.
            self.closed, self.close_how = True, "%s: %s" % (type(e).__name__, e)
            raise Closed(self.close_how) from None
        if not chunk:
            self.closed, self.close_how = True, "eof"
            raise Closed("eof")
        self.buf += chunk

    def recv_frame(self, timeout=10.0):
        """The next frame; raises Closed on close, TimeoutError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= HEADER_SIZE:
                length, version, ftype, flags, rid = HEADER.unpack_from(self.buf)
                end = HEADER_SIZE + length
                if len(self.buf) >= end:
                    f = Frame(length, version, ftype, flags, rid, self.buf[HEADER_SIZE:end])
                    self.buf = self.buf[end:]
                    return f
            self._fill(deadline)

    def expect_close(self, timeout=10.0):
        """Reads until the node closes; returns the frames that came first.
        Raises TimeoutError if the connection stays open."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                frames.append(self.recv_frame(max(0.001, deadline - time.monotonic())))
            except Closed:
                return frames

    def request(self, ftype, request_id, payload=b"", timeout=10.0):
        self.send_frame(ftype, request_id, payload)
        f = self.recv_frame(timeout)
        assert f.request_id == request_id, "reply %r to request id %d" % (f, request_id)
        return f

    def hello(self, name="itest", request_id=1):
        f = self.request(HELLO, request_id, hello_body(name))
        return f.welcome()

    def ping(self, request_id, payload=b""):
        f = self.request(PING, request_id, payload)
        assert f.type == PONG, "PING %d answered by %r" % (request_id, f)
        return f

    def send_message(self, request_id, message_id, data):
        """SENDs data; checks the ACK's message id and sha256."""
        f = self.request(SEND, request_id, send_body(message_id, data))
        mid, digest = f.ack()
        assert mid == message_id, "ACK for message %d carries message id %d" % (message_id, mid)
        want = hashlib.sha256(data).hexdigest()
        assert digest == want, "ACK sha256 %s, want %s" % (digest, want)
        return f

    def info(self, request_id):
        f = self.request(INFO, request_id)
        assert f.type == INFO_REPLY, "INFO answered by %r" % f
        return json.loads(f.payload.decode())

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- helpers

def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (held open together so they
    differ, then released for the binaries to bind)."""
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


def wait_until(pred, timeout, interval=0.02, what="condition"):
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


def http_get(port, path, timeout=3.0, ca=None):
    """(status, body bytes, content-type) of GET path on 127.0.0.1:port;
    over HTTPS, verified against the CA file ca, when ca is given."""
    if ca:
        ctx = ssl.create_default_context(cafile=ca)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("Content-Type", "")
    finally:
        conn.close()


def http_request(port, method, path, headers=None, body=None, timeout=3.0):
    """(status, body bytes, headers dict with lower-case names) of any
    request on 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def parse_duration(text):
    """"250ms", "2s", "1m" or bare milliseconds -> seconds."""
    text = str(text).strip()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * scale
    return float(text) / 1000.0


def raw_connect(addr, timeout=5.0):
    """A plain TCP connection to host:port (no TLS)."""
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def wait_closed(sock, timeout):
    """Reads from a plain socket until the peer closes it (EOF or reset);
    returns the seconds that took. Raises TimeoutError if it stays open."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("connection still open after %.1fs" % timeout)
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - t0
        except (socket.timeout, TimeoutError):
            raise TimeoutError("connection still open after %.1fs" % timeout) from None
        except ConnectionError:
            return time.monotonic() - t0


def tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)
    return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")


class Terminated(BaseException):
    """SIGTERM (ctest's timeout) or the harness's own time budget."""


def _raise_terminated(signum, _frame):
    raise Terminated("signal %d" % signum)


# ---------------------------------------------------------------- the cluster

class Cluster:
    """A balancer and n nodes on 127.0.0.1 in a temp dir. Use as a context
    manager; nodes are numbered 1..n with ids node1..nodeN.

    interval: the balancer's --interval; balancer_args / node_args: extra
    flags (node_args may also be a dict {index: [flags]} for single nodes);
    start_nodes=False starts only the balancer; node_prefix: words put before
    the node binary (a wrapper such as valgrind); balancer_env: extra
    environment of the balancer (e.g. BERTH_ADMIN_TOKEN).

    The heartbeat channel is secure (CurveZMQ) unless plaintext=True: the
    set-up writes key pairs with the built `berth keygen` into DIR/keys (the
    balancer's, one per node, and a "tester" key for the tests' own
    DEALERs, see dealer()), and every balancer or node the cluster spawns
    gets its keys through the environment (BERTH_CURVE_SECRET,
    BERTH_CURVE_ALLOW, BERTH_BALANCER_KEY; plaintext:
    BERTH_HEARTBEAT_PLAINTEXT), so extra balancers a test spawns are wired
    too. A test's own env wins."""

    def __init__(self, n=3, interval="250ms", balancer_args=(), node_args=(), workers=2,
                 start_nodes=True, budget=TEST_BUDGET_S, node_prefix=(), balancer_env=None,
                 plaintext=False):
        self.plaintext = plaintext
        self.keys_dir = None
        self.n = n
        self.interval = interval
        self.interval_s = parse_duration(interval)
        self.balancer_args = list(balancer_args)
        self.balancer_env = dict(balancer_env or {})
        self.node_args = node_args
        self.workers = workers
        self.start_nodes = start_nodes
        self.budget = budget
        self.node_prefix = list(node_prefix)
        self.procs = {}        # name -> Popen now running (or last run)
        self._all = []         # every Popen ever started, for the teardown
        self.logs = {}         # name -> log path (latest)
        self.dir = None
        self._old_handlers = {}

    # --- context manager

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _raise_terminated)
        self._old_handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, _raise_terminated)
        signal.alarm(int(self.budget))
        atexit.register(self._kill_all)
        try:
            self._setup()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        # Nothing may interrupt the teardown now.
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            if exc_type is not None:
                print("\n=== FAILURE: %s: %s" % (exc_type.__name__, exc), flush=True)
                self.dump_logs()
            self._stop_all()
            if exc_type is None:
                self._check_sanitizer_reports()
        finally:
            if self.dir and not os.environ.get("BERTH_IT_KEEP"):
                shutil.rmtree(self.dir, ignore_errors=True)
            elif self.dir:
                print("kept %s (BERTH_IT_KEEP)" % self.dir)
            for sig, h in self._old_handlers.items():
                signal.signal(sig, h if h is not None else signal.SIG_DFL)
        return False

    # Under an ASan/UBSan build a report may not change an exit code the test
    # looks at, so every process log is searched once everything stopped.
    SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")

    def _check_sanitizer_reports(self):
        if not self.dir:
            return
        for name in sorted(os.listdir(self.dir)):
            if ".log" not in name:
                continue
            with open(os.path.join(self.dir, name), "rb") as f:
                text = f.read().decode(errors="replace")
            for marker in self.SANITIZER_MARKERS:
                if marker in text:
                    at = text.index(marker)
                    print("=== sanitizer report in %s:\n%s" % (name, text[max(0, at - 200):at + 3000]))
                    raise AssertionError("sanitizer report (%s) in %s" % (marker, name))

    def _setup(self):
        for b in (NODE_BIN, BALANCER_BIN):
            if not os.access(b, os.X_OK):
                raise AssertionError("%s is not built (BERTH_BUILD_DIR=%s)" % (b, BUILD_DIR))
        self.dir = tempfile.mkdtemp(prefix="berth-it-")
        self.certs = os.path.join(self.dir, "certs")
        r = subprocess.run(["bash", GEN_CERTS, self.certs], capture_output=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError("gen-certs.sh failed: %s" % r.stderr.decode(errors="replace"))
        self.ca = os.path.join(self.certs, "ca.pem")
        self.cert = os.path.join(self.certs, "node.pem")
        self.key = os.path.join(self.certs, "node.key")
        if not self.plaintext:
            self.keys_dir = os.path.join(self.dir, "keys")
            self.allow_dir = os.path.join(self.keys_dir, "allow")
            os.makedirs(self.allow_dir)
            self.balancer_key = keygen(os.path.join(self.keys_dir, "balancer"))
            for i in range(1, self.n + 1):
                self.node_keys(self.node_id(i))
            self.node_keys("tester")
        ports = free_ports(2 + self.n)
        self.http_port, self.hb_port = ports[0], ports[1]
        self.node_ports = {i + 1: ports[2 + i] for i in range(self.n)}
        self.hb_endpoint = "tcp://127.0.0.1:%d" % self.hb_port
        # A balancer given --https-cert serves HTTPS (the tests' CA signs it).
        self.https = "--https-cert" in self.balancer_args
        self.balancer_url = "%s://127.0.0.1:%d" % ("https" if self.https else "http",
                                                  self.http_port)
        self.start_balancer()
        if self.start_nodes:
            for i in range(1, self.n + 1):
                self.start_node(i)

    # --- processes

    # --- heartbeat keys

    def node_keys(self, name):
        """(secret file, public file) of the key pair of node `name`, made
        (and allowed: its .pub copied into the allowlist directory) on
        first use. Secure clusters only."""
        assert self.keys_dir, "a plaintext cluster has no keys"
        base = os.path.join(self.keys_dir, name)
        if not os.path.exists(base + ".key"):
            keygen(base)
            shutil.copyfile(base + ".pub", os.path.join(self.allow_dir, name + ".pub"))
        return base + ".key", base + ".pub"

    def security_env(self, argv, name):
        """The environment that puts a spawned balancer or node on the
        cluster's heartbeat security: {} for anything else."""
        binary = os.path.basename(next((a for a in argv if "berth-" in os.path.basename(a)), ""))
        if binary not in ("berth-balancer", "berth-node"):
            return {}
        if self.plaintext:
            return {"BERTH_HEARTBEAT_PLAINTEXT": "true"}
        if binary == "berth-balancer":
            return {"BERTH_CURVE_SECRET": self.balancer_key[0], "BERTH_CURVE_ALLOW": self.allow_dir}
        return {"BERTH_CURVE_SECRET": self.node_keys(name)[0],
                "BERTH_BALANCER_KEY": self.balancer_key[1]}

    def dealer(self, ctx, name="tester", endpoint=None):
        """A zmq DEALER connected to the balancer's heartbeat endpoint, with
        the CURVE keys of node `name` (allowed) in a secure cluster."""
        zmq = require_zmq()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if not self.plaintext:
            secret, public = self.node_keys(name)
            sock.curve_secretkey = read_key(secret)
            sock.curve_publickey = read_key(public)
            sock.curve_serverkey = read_key(self.balancer_key[1])
        sock.connect(endpoint or self.hb_endpoint)
        return sock

    def spawn(self, name, argv, env=None):
        """Starts argv in its own process group with output to NAME.log."""
        log = os.path.join(self.dir, "%s.log" % name)
        if os.path.exists(log):  # keep earlier runs' logs for the failure dump
            k = 1
            while os.path.exists("%s.%d" % (log, k)):
                k += 1
            os.rename(log, "%s.%d" % (log, k))
        with open(log, "wb") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=self.dir,
                                 env=child_env(dict(self.security_env(argv, name), **(env or {}))),
                                 start_new_session=True)
        p.argv = argv
        self.procs[name] = p
        self._all.append(p)
        self.logs[name] = log
        return p

    def balancer_argv(self):
        # "@CERTS@" in an argument stands for the cluster's certificate
        # directory, which exists only once the cluster is set up.
        return [BALANCER_BIN, "--http", "127.0.0.1:%d" % self.http_port,
                "--heartbeat-bind", self.hb_endpoint, "--interval", self.interval
                ] + [a.replace("@CERTS@", self.certs) for a in self.balancer_args]

    def start_balancer(self, wait=True, env=None):
        p = self.spawn("balancer", self.balancer_argv(), dict(self.balancer_env, **(env or {})))
        if wait:
            wait_until(lambda: self._alive_or_raise("balancer")
                       and http_get(self.http_port, "/healthz", 1.0,
                                    ca=self.ca if self.https else None)[0] == 200,
                       15, 0.02, "balancer /healthz")
        return p

    def node_id(self, i):
        return "node%d" % i

    def node_addr(self, i):
        return "127.0.0.1:%d" % self.node_ports[i]

    def node_argv(self, i, extra=()):
        args = self.node_prefix + [NODE_BIN, "--id", self.node_id(i), "--listen", self.node_addr(i),
                "--balancer", self.hb_endpoint, "--cert", self.cert, "--key", self.key,
                "--workers", str(self.workers)]
        if isinstance(self.node_args, dict):
            args += list(self.node_args.get(i, ()))
        else:
            args += list(self.node_args)
        return args + list(extra)

    def start_node(self, i, extra=(), env=None):
        return self.spawn(self.node_id(i), self.node_argv(i, extra), env)

    def _alive_or_raise(self, name):
        p = self.procs[name]
        rc = p.poll()
        if rc is not None:
            raise AssertionError("%s exited with status %d (log %s)" % (name, rc, self.logs[name]))
        return True

    def proc(self, name_or_index):
        if isinstance(name_or_index, int):
            name_or_index = self.node_id(name_or_index)
        return self.procs[name_or_index]

    def kill_node(self, i, sig=signal.SIGKILL):
        """Sends sig to node i; SIGKILL is also waited for."""
        p = self.proc(i)
        p.send_signal(sig)
        if sig == signal.SIGKILL:
            p.wait(10)
        return p

    def kill_balancer(self, sig=signal.SIGKILL):
        p = self.procs["balancer"]
        p.send_signal(sig)
        p.wait(10)
        return p

    def restart_balancer(self, sig=signal.SIGKILL, wait=True):
        """Stops the balancer with sig and starts a new one on the same ports."""
        self.kill_balancer(sig)
        return self.start_balancer(wait=wait)

    def _stop_all(self, bound=3.0):
        """SIGTERM to every process group still running, SIGKILL after bound."""
        live = [p for p in self._all if p.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + bound
        for p in live:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self._kill_all()

    def _kill_all(self):
        for p in self._all:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass

    def dump_logs(self, lines=40):
        if not self.dir:
            return
        for name in sorted(os.listdir(self.dir)):
            if ".log" not in name:
                continue
            print("----- last %d lines of %s -----" % (lines, name))
            print(tail(os.path.join(self.dir, name), lines))
        for p in self._all:
            print("process %d %s: %s" % (p.pid, " ".join(p.argv),
                                        "running" if p.poll() is None else "exit %d" % p.returncode))
        sys.stdout.flush()

    # --- balancer HTTP API

    def http_get_json(self, path, timeout=3.0):
        """(status, parsed JSON or None) of GET path on the balancer."""
        status, body, _ = http_get(self.http_port, path, timeout,
                                   ca=self.ca if self.https else None)
        try:
            return status, json.loads(body.decode())
        except ValueError:
            return status, None

    def admin(self, node_id, action, token=None, method="POST"):
        """(status, parsed JSON or None, headers) of METHOD
        /v1/nodes/<node_id>/<action>, with a bearer token when given."""
        headers = {"Authorization": "Bearer %s" % token} if token is not None else {}
        status, body, hdrs = http_request(self.http_port, method,
                                          "/v1/nodes/%s/%s" % (node_id, action), headers)
        try:
            return status, json.loads(body.decode()), hdrs
        except ValueError:
            return status, None, hdrs

    def health(self):
        status, h = self.http_get_json("/v1/health")
        assert status == 200 and isinstance(h, dict), "/v1/health: %s %r" % (status, h)
        return h

    def node_health(self, node_id, h=None):
        """The /v1/health entry of one node, or None."""
        h = h or self.health()
        for n in h.get("nodes", []):
            if n.get("id") == node_id:
                return n
        return None

    def node_state(self, node_id):
        n = self.node_health(node_id)
        return n.get("state") if n else None

    def healthy_ids(self, h=None):
        h = h or self.health()
        return sorted(n["id"] for n in h.get("nodes", []) if n.get("state") == "healthy")

    def pick(self, query=""):
        """(status, json) of /v1/pick."""
        return self.http_get_json("/v1/pick" + query)

    def wait_healthy(self, n=None, timeout=20.0):
        """Waits until counts.healthy == n (default: all nodes); returns the
        health JSON."""
        n = self.n if n is None else n

        def ok():
            h = self.health()
            return h if h["counts"]["healthy"] == n and len(self.healthy_ids(h)) == n else None
        return wait_until(ok, timeout, 0.02, "%d healthy nodes" % n)

    # --- clients

    def session(self, i, timeout=10.0):
        """A TLS Session to node i (no HELLO yet)."""
        return Session(self.ca, self.node_addr(i), timeout)

    def run_cli(self, args, input=None, timeout=60, env=None):
        """Runs the berth CLI; returns (rc, stdout str, stderr str)."""
        if not os.access(CLI_BIN, os.X_OK):
            raise AssertionError("%s is not built (BERTH_BUILD_DIR=%s)" % (CLI_BIN, BUILD_DIR))
        r = subprocess.run([CLI_BIN] + list(args), input=input, capture_output=True,
                           timeout=timeout, env=child_env(env), cwd=self.dir)
        return (r.returncode, r.stdout.decode("utf-8", "replace"),
                r.stderr.decode("utf-8", "replace"))


def keygen(base):
    """Runs `berth keygen --out base`; returns (base.key, base.pub)."""
    if not os.access(CLI_BIN, os.X_OK):
        raise AssertionError("%s is not built (BERTH_BUILD_DIR=%s)" % (CLI_BIN, BUILD_DIR))
    r = subprocess.run([CLI_BIN, "keygen", "--out", base], capture_output=True, timeout=20,
                       env=child_env())
    if r.returncode != 0:
        raise AssertionError("berth keygen --out %s failed: %s"
                             % (base, r.stderr.decode(errors="replace")))
    return base + ".key", base + ".pub"


def read_key(path):
    """The Z85 key (bytes) in a key file written by berth keygen."""
    with open(path, "rb") as f:
        lines = [ln.strip() for ln in f.read().splitlines()
                 if ln.strip() and not ln.startswith(b"#")]
    assert len(lines) == 1 and len(lines[0]) == 40, "%s: not a key file" % path
    return lines[0]


def run_bin(path, args, env=None, timeout=20, input=None):
    """Runs one binary to completion: (rc, stdout, stderr)."""
    r = subprocess.run([path] + list(args), capture_output=True, timeout=timeout,
                       env=child_env(env), input=input, start_new_session=True)
    return (r.returncode, r.stdout.decode("utf-8", "replace"),
            r.stderr.decode("utf-8", "replace"))


def main(test):
    """Runs test() and turns the outcome into the exit status (0 = pass)."""
    t0 = time.monotonic()
    name = os.path.basename(sys.argv[0])
    try:
        test()
    except Terminated as e:
        print("%s: TERMINATED (%s) after %.1fs" % (name, e, time.monotonic() - t0), flush=True)
        sys.exit(1)
    except BaseException:  # noqa: BLE001 - any failure is a test failure
        traceback.print_exc()
        print("%s: FAILED after %.1fs" % (name, time.monotonic() - t0), flush=True)
        sys.exit(1)
    print("%s: passed in %.1fs" % (name, time.monotonic() - t0), flush=True)
    sys.exit(0)
