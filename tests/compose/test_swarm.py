#!/usr/bin/env python3
"""swarm: deploy/stack.yml on a one-machine Docker Swarm. The stack (two
balancers, three nodes, secrets, overlay network, journals on named volumes,
host-mode ports picked free) comes up healthy; host clients send through a
balancer's published port; then each node service is replaced in turn with
`docker service update --force` (stop-first, health-gated) while a client
sends at a steady rate. Required: 0 failed sends, an ACK for every line, and
every acknowledged message in the journal of the node that acknowledged it.
The longest pause between two ACKs is reported.

Skips (77) when the engine cannot run a swarm. The swarm is initialised only
if the engine was not in one, and left again only then; the stack, its
volumes, secrets, network and image are removed whatever happens."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compose  # noqa: E402
from compose import (BUILD_DIR, CLI, CONTAINER_UID, NODES, SOURCE_DIR, TestFailure,  # noqa: E402
                     TimeBound, check, free_ports, log, run, wait_until)

STACK_FILE = os.path.join(SOURCE_DIR, "deploy", "stack.yml")
SERVICES = ("balancer1", "balancer2") + NODES
VOLUMES = tuple("%s-journal" % n for n in NODES)
SECRETS = ("ca", "node_cert", "node_cert_key", "balancer_key", "balancer_pub", "curve_allow",
           "node1_key", "node2_key", "node3_key")
BOUND_S = 290
RATE = 100  # lines a second from the rolling-update client
SKIP = 77


class Skip(Exception):
    """The engine cannot run this test: the message says why."""


class Client:
    """`berth send` fed numbered lines at RATE a second (the feeder of
    tests/integration/test_chaos.py); each ACK is kept with its arrival time."""

    ACK_RE = re.compile(r"ack id=(\d+) bytes=\d+ sha256=\S+ node=(\S+) seq=(\d+)")

    def __init__(self, balancer_url, ca, tmp, name):
        self.name = name
        self.errpath = os.path.join(tmp, "%s.err" % name)
        with open(self.errpath, "wb") as errf:
            self.p = subprocess.Popen([CLI, "send", "--balancer", balancer_url, "--ca", ca,
                                       "--name", name, "--retries", "60", "--timeout", "2s"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf)
        self.stop = threading.Event()
        self.sent = 0
        self.acks = []  # (monotonic time, id, node, seq)
        self.t = threading.Thread(target=self._feed, daemon=True)
        self.r = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        self.r.start()

    def _feed(self):
        t0 = time.monotonic()
        try:
            while not self.stop.is_set():
                due = int((time.monotonic() - t0) * RATE)
                chunk = []
                while self.sent < due:
                    self.sent += 1
                    chunk.append("%s-%08d\n" % (self.name, self.sent))
                if chunk:
                    self.p.stdin.write("".join(chunk).encode())
                    self.p.stdin.flush()
                time.sleep(0.01)
        except (BrokenPipeError, ValueError):
            pass
        finally:
            try:
                self.p.stdin.close()
            except BrokenPipeError:
                pass

    def _read(self):
        for line in self.p.stdout:
            m = self.ACK_RE.match(line.decode(errors="replace"))
            if m:
                self.acks.append((time.monotonic(), int(m.group(1)), m.group(2), int(m.group(3))))

    def finish(self):
        self.stop.set()
        self.t.join(10)
        try:
            self.p.wait(120)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
        self.r.join(10)
        with open(self.errpath, "rb") as f:
            err = f.read().decode(errors="replace")
        return self.p.returncode, err

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


class Swarm:
    """One stack from deploy/stack.yml under a name of its own."""

    def __init__(self):
        self.name = "berthsw%dx%04x" % (os.getpid(), random.getrandbits(16))
        self.image = "%s:local" % self.name
        self.tmp = tempfile.mkdtemp(prefix="%s%d-" % (compose.TMP_PREFIX, os.getpid()))
        self.certs = os.path.join(self.tmp, "certs")
        self.ca = os.path.join(self.certs, "ca.pem")
        self.did_init = False
        self.image_built = False
        self.deployed = False
        ports = free_ports(5)
        self.http_ports = ports[:2]
        self.node_ports = dict(zip(NODES, ports[2:]))
        self.urls = ["http://127.0.0.1:%d" % p for p in self.http_ports]
        self.env = dict(os.environ)
        self.env.update({
            "BERTH_IMAGE": self.image,
            "BERTH_CERTS": self.certs,
            "BERTH_HTTP_PORT": str(ports[0]),
            "BERTH_HTTP2_PORT": str(ports[1]),
        })
        for i, n in enumerate(NODES, 1):
            self.env["BERTH_NODE%d_PORT" % i] = str(self.node_ports[n])
            self.env["BERTH_NODE%d_HOST" % i] = "127.0.0.1"

    # -- the swarm
    def join(self):
        p = run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"], timeout=20, check_rc=False)
        if p.returncode != 0:
            raise Skip("docker info failed: %s" % (p.stderr.strip() or p.stdout.strip()))
        state = p.stdout.strip()
        if state == "active":
            p = run(["docker", "info", "--format", "{{.Swarm.ControlAvailable}}"], timeout=20)
            if p.stdout.strip() != "true":
                raise Skip("this engine is a swarm worker, not a manager: cannot deploy a stack")
            log("engine already in a swarm: using it, leaving it as it is")
            return
        if state != "inactive":
            raise Skip("engine's swarm state is '%s' (neither inactive nor active)" % state)
        p = run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], timeout=60, check_rc=False)
        if p.returncode != 0:
            raise Skip("docker swarm init --advertise-addr 127.0.0.1 failed: %s" % p.stderr.strip())
        self.did_init = True
        log("docker swarm init --advertise-addr 127.0.0.1: done (left again at the end)")

    # -- certificates, keys, image
    def prepare(self):
        run(["bash", os.path.join(SOURCE_DIR, "deploy", "gen-certs.sh"), self.certs], timeout=60)
        keys = os.path.join(self.certs, "keys")
        run(["bash", os.path.join(SOURCE_DIR, "deploy", "gen-keys.sh"), "--berth", CLI, keys]
            + list(NODES), timeout=60)
        for key in [os.path.join(self.certs, "node.key")] + [
                os.path.join(keys, f) for f in os.listdir(keys) if f.endswith(".key")]:
            if os.geteuid() == 0:
                os.chown(key, CONTAINER_UID, CONTAINER_UID)
            else:
                os.chmod(key, 0o644)  # the client reads it to make the secret
        # The balancer's allowlist as one secret: a file of Z85 keys, one a line.
        allow = os.path.join(keys, "allow")
        with open(os.path.join(keys, "allow.list"), "w") as out:
            for f in sorted(os.listdir(allow)):
                if f.endswith(".pub"):
                    with open(os.path.join(allow, f)) as pub:
                        out.write("# %s\n%s\n" % (f[:-4], pub.read().strip()))
        p = run(["bash", os.path.join(SOURCE_DIR, "deploy", "offline-image.sh"), BUILD_DIR, self.image],
                timeout=300)
        self.image_built = True
        log(p.stdout.strip())

    # -- the stack
    def deploy(self):
        log("stack %s: balancers 127.0.0.1:%d, :%d; nodes %s" % (
            self.name, self.http_ports[0], self.http_ports[1],
            ", ".join("%s :%d" % np for np in self.node_ports.items())))
        self.deployed = True
        p = run(["docker", "stack", "deploy", "--compose-file", STACK_FILE, self.name],
                timeout=120, env=self.env)
        # An option swarm would drop ("Ignoring unsupported options") is a
        # stack file that says more than it does.
        ignored = [line for line in (p.stdout + p.stderr).splitlines() if "gnor" in line]
        check(not ignored, "docker stack deploy ignored part of deploy/stack.yml: %s" % ignored)

    def service_logs(self, svc):
        p = run(["docker", "service", "logs", "--raw", "%s_%s" % (self.name, svc)], timeout=60,
                check_rc=False)
        return p.stdout + p.stderr

    def service_tasks(self, svc):
        p = run(["docker", "service", "ps", "--no-trunc", "--format",
                 "{{.DesiredState}}|{{.CurrentState}}|{{.Error}}", "%s_%s" % (self.name, svc)],
                timeout=30, check_rc=False)
        return [line.split("|") for line in p.stdout.splitlines() if line]

    def containers(self, svc=None):
        label = "com.docker.stack.namespace=%s" % self.name
        cmd = ["docker", "ps", "-q", "--filter", "label=%s" % label]
        if svc:
            cmd += ["--filter", "label=com.docker.swarm.service.name=%s_%s" % (self.name, svc)]
        return run(cmd, timeout=30, check_rc=False).stdout.split()

    def healthy_containers(self):
        """Services whose one running container reports healthy."""
        ok = set()
        for svc in SERVICES:
            ids = self.containers(svc)
            if len(ids) != 1:
                continue
            p = run(["docker", "inspect", "--format", "{{.State.Health.Status}}", ids[0]],
                    timeout=30, check_rc=False)
            if p.stdout.strip() == "healthy":
                ok.add(svc)
        return ok

    def healthy_nodes(self, url):
        """Healthy count in a balancer's /v1/health, or None when it does not answer."""
        status, body = http_json(url + "/v1/health")
        if status != 200 or not isinstance(body, dict):
            return None
        return body.get("counts", {}).get("healthy")

    def wait_up(self, timeout=150):
        start = time.monotonic()
        while True:
            p = run(["docker", "stack", "services", self.name, "--format", "{{.Name}} {{.Replicas}}"],
                    timeout=30, check_rc=False)
            replicas = dict(line.split(None, 1) for line in p.stdout.splitlines() if line.strip())
            running = all(replicas.get("%s_%s" % (self.name, s), "").startswith("1/1") for s in SERVICES)
            healthy = self.healthy_containers() if running else set()
            counts = [self.healthy_nodes(u) for u in self.urls] if len(healthy) == len(SERVICES) else []
            if counts and all(c == len(NODES) for c in counts):
                log("stack up after %.1fs: every service 1/1 and healthy, both balancers see %d "
                    "healthy nodes" % (time.monotonic() - start, len(NODES)))
                return
            if time.monotonic() - start > timeout:
                tasks = {s: self.service_tasks(s)[:3] for s in SERVICES}
                raise TestFailure("stack not up within %ds: replicas %s, healthy %s, balancers "
                                  "count %s healthy nodes; tasks %s" % (
                                      timeout, replicas, sorted(healthy), counts, tasks))
            time.sleep(0.5)

    def dump(self):
        log("---- services / tasks / logs of stack %s ----" % self.name)
        print(run(["docker", "stack", "ps", "--no-trunc", self.name], timeout=30, check_rc=False).stdout)
        for svc in SERVICES:
            p = run(["docker", "service", "logs", "--no-task-ids", "--tail", "30",
                     "%s_%s" % (self.name, svc)], timeout=30, check_rc=False)
            print("-- %s\n%s%s" % (svc, p.stdout, p.stderr), flush=True)

    # -- teardown
    def leftovers(self):
        label = "label=com.docker.stack.namespace=%s" % self.name
        left = {}
        for kind, cmd in (
                ("service", ["docker", "service", "ls", "-q", "--filter", label]),
                ("container", ["docker", "ps", "-aq", "--filter", label]),
                ("network", ["docker", "network", "ls", "-q", "--filter", label]),
                ("secret", ["docker", "secret", "ls", "-q", "--filter", label]),
                ("volume", ["docker", "volume", "ls", "-q", "--filter", "name=%s_" % self.name])):
            p = run(cmd, timeout=30, check_rc=False)
            if p.returncode == 0 and p.stdout.split():
                left[kind] = p.stdout.split()
        return left

    def teardown(self):
        """Removes everything this test made; returns what could not be removed."""
        left = {}
        if self.deployed:
            run(["docker", "stack", "rm", self.name], timeout=60, check_rc=False)
            try:
                # Containers go first; networks and volumes only once they are gone.
                wait_until(lambda: not {k: v for k, v in self.leftovers().items()
                                        if k != "volume"}, 60, 0.5, "stack %s removed" % self.name)
            except TestFailure as e:
                log("%s: removing by hand" % e)
                found = self.leftovers()
                for cid in found.get("container", []):
                    run(["docker", "rm", "-f", "-v", cid], timeout=60, check_rc=False)
                for net in found.get("network", []):
                    run(["docker", "network", "rm", net], timeout=60, check_rc=False)
                for sec in found.get("secret", []):
                    run(["docker", "secret", "rm", sec], timeout=60, check_rc=False)
            # Named volumes are not removed by `stack rm`; a just-stopped
            # container may hold one for a moment.
            for vol in VOLUMES:
                name = "%s_%s" % (self.name, vol)
                wait_until(lambda name=name: run(["docker", "volume", "rm", "-f", name], timeout=60,
                                                 check_rc=False).returncode == 0 and not run(
                    ["docker", "volume", "ls", "-q", "--filter", "name=^%s$" % name], timeout=30,
                    check_rc=False).stdout.strip(), 30, 0.5, "volume %s removed" % name)
            left = self.leftovers()
        if self.image_built:
            run(["docker", "rmi", "-f", self.image], timeout=60, check_rc=False)
            if run(["docker", "image", "inspect", self.image], timeout=30, check_rc=False).returncode == 0:
                left["image"] = [self.image]
        if self.did_init:
            p = run(["docker", "swarm", "leave", "--force"], timeout=60, check_rc=False)
            if p.returncode != 0:
                left["swarm"] = [p.stderr.strip()]
            else:
                log("docker swarm leave --force: done (this test had initialised it)")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return left


def http_json(url, timeout=2.0):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, None
    except (OSError, ValueError) as e:
        return None, str(e)


def journal_records(s, node):
    """Records of a node's journal, read from its volume on this machine
    (the engine runs here), or None when the volume's directory is not visible."""
    import journal_file as tj
    p = run(["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", "%s_%s-journal" % (s.name, node)],
            timeout=30, check_rc=False)
    d = os.path.join(p.stdout.strip(), "journal")
    if p.returncode != 0 or not os.path.isdir(d):
        return None
    return tj.read_journal(d)


def test(s):
    s.join()
    s.prepare()
    s.deploy()
    s.wait_up()
    balancers = ",".join(s.urls)

    # One-shot sends through each balancer's published port.
    for i, url in enumerate(s.urls):
        text = "".join("hello %d-%d\n" % (i, k) for k in range(20))
        p = run([CLI, "send", "--balancer", url, "--ca", s.ca, "--name", "hello%d" % i],
                timeout=30, check_rc=False, input_text=text)
        acks = Client.ACK_RE.findall(p.stdout)
        check(p.returncode == 0 and len(acks) == 20,
              "berth send via %s: exit %d, %d of 20 acknowledged: %s %s" % (
                  url, p.returncode, len(acks), p.stdout[-500:], p.stderr[-500:]))
        log("berth send via %s: 20 of 20 acknowledged (nodes %s)" % (
            url, ", ".join(sorted({a[1] for a in acks}))))

    # Rolling update of every node service while one client keeps sending.
    client = Client(balancers, s.ca, s.tmp, "swarm")
    t_start = time.monotonic()
    try:
        time.sleep(2)
        for node in NODES:
            t0 = time.monotonic()
            before = set(s.containers(node))
            # Waits (the CLI's default) until the service converged: the new
            # task running and healthy, then the monitor period.
            run(["docker", "service", "update", "--force", "--quiet", "%s_%s" % (s.name, node)],
                timeout=120)
            after = set(s.containers(node))
            check(after and not after & before, "%s: containers before %s, after %s: not replaced" % (
                node, before, after))
            wait_until(lambda: all(s.healthy_nodes(u) == len(NODES) for u in s.urls), 60, 0.25,
                       "%s back: both balancers see %d healthy nodes" % (node, len(NODES)))
            log("%s replaced in %.1fs (client: %d sent, %d acknowledged)" % (
                node, time.monotonic() - t0, client.sent, len(client.acks)))
        time.sleep(2)
    finally:
        rc, err = client.finish()
    check(rc == 0, "rolling-update client: exit %d: %s" % (rc, err[-1500:]))
    check(len(client.acks) == client.sent, "rolling-update client: %d lines sent, %d acknowledged" % (
        client.sent, len(client.acks)))
    check(client.sent > 0, "the client sent nothing")
    stall = max((b[0] - a[0] for a, b in zip(client.acks, client.acks[1:])), default=0.0)
    # Each replaced node left rotation by its drain (SIGTERM, LEAVE), not by
    # a dropped connection: stop_grace_period gave it the time.
    for b in ("balancer1", "balancer2"):
        text = s.service_logs(b)
        for node in NODES:
            check(re.search(r"event=node_state node_id=%s from=healthy to=draining" % node, text),
                  "%s never saw %s draining: it left rotation some other way" % (b, node))
    warnings = [line for svc in SERVICES for line in s.service_logs(svc).splitlines()
                if re.search(r"\blevel=(warn|error)\b", line)]
    if warnings:
        log("%d warning/error log lines, e.g.:\n  %s" % (len(warnings), "\n  ".join(warnings[:8])))

    # Every acknowledged message is in the journal of the node that acked it.
    journals = {n: journal_records(s, n) for n in NODES}
    if any(j is None for j in journals.values()):
        log("journal volumes not readable from here: checked the ACKs only")
        stored = "not checked"
    else:
        by_seq = {n: {r["seq"]: r for r in recs} for n, recs in journals.items()}
        lost = []
        for _, mid, node, seq in client.acks:
            r = by_seq.get(node, {}).get(seq)
            want = ("swarm-%08d" % mid).encode()
            if not r or r["id"] != mid or r["client"] != "swarm" or r["data"] != want:
                lost.append((mid, node, seq))
        check(not lost, "%d acknowledged messages not in the journal, e.g. %s" % (len(lost), lost[:5]))
        stored = "all %d in the journals" % len(client.acks)
    log("rolling update of %d node services in %.1fs: %d sent, %d acknowledged (%s), 0 failed sends, "
        "every node drained out of rotation first; longest pause between two ACKs %.2fs" % (
            len(NODES), time.monotonic() - t_start, client.sent, len(client.acks), stored, stall))


def main():
    name = os.path.basename(sys.argv[0])

    def on_signal(signum, _frame):
        raise SystemExit("signal %d" % signum)

    def on_alarm(_signum, _frame):
        raise TimeBound("test ran past its bound of %ds" % BOUND_S)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))  # journal_file
    for path in (CLI, os.path.join(BUILD_DIR, "balancer", "berth-balancer"),
                 os.path.join(BUILD_DIR, "node", "berth-node")):
        if not os.access(path, os.X_OK):
            log("%s: %s is not built" % (name, path))
            sys.exit(1)
    rc = 1
    s = None
    t0 = time.monotonic()
    signal.alarm(BOUND_S)
    try:
        compose.docker_ready()
        if run(["docker", "swarm", "--help"], timeout=20, check_rc=False).returncode != 0:
            raise Skip("this docker client has no 'docker swarm'")
        s = Swarm()
        test(s)
        rc = 0
    except Skip as e:
        log("%s: SKIPPED: %s" % (name, e))
        rc = SKIP
    except BaseException as e:  # noqa: B036 - report anything, then tear down
        log("%s FAILED: %s" % (name, e))
        traceback.print_exc()
        if s is not None and s.deployed:
            try:
                s.dump()
            except BaseException as e2:  # noqa: B036
                log("could not dump logs: %s" % e2)
    finally:
        signal.alarm(0)
        if s is not None:
            try:
                left = s.teardown()
            except BaseException as e:  # noqa: B036
                left = {"teardown": [str(e)]}
            if left:
                log("teardown left %s behind" % left)
                rc = 1
    log("%s: %.1fs" % (name, time.monotonic() - t0))
    if rc == SKIP:
        sys.exit(SKIP)
    print("%s: %d passed, %d failed" % (name, 1 if rc == 0 else 0, 0 if rc == 0 else 1), flush=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
