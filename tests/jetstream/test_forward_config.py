"""berth-node --jetstream refuses to start on a bad configuration, with a
message that names the cause: NATS unreachable, the stream missing, too
few replicas for --ack-after replicated, wrong credentials, TLS that the
server does not speak, a duplicate window shorter than asked for. Real
nats-server processes on 127.0.0.1."""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import cluster  # noqa: E402
import natscluster  # noqa: E402

START_S = 20  # a refused start must be over well within this


def node_fails(c, extra, want):
    """Starts node 1 with extra flags; it must exit non-zero saying want."""
    p = c.start_node(1, extra)
    try:
        p.wait(START_S)
    except subprocess.TimeoutExpired:
        raise AssertionError("the node started with %r (wanted a refusal: %r)" % (extra, want))
    with open(c.logs[c.node_id(1)], "rb") as f:
        log = f.read().decode(errors="replace")
    assert p.returncode != 0, "exit 0 with %r" % extra
    assert want in log, "refusal for %r does not say %r:\n%s" % (extra, want, log[-1500:])
    print("refused: %s" % [l for l in log.splitlines() if "jetstream" in l][-1])


def test():
    if not natscluster.find_nats_server():
        print("SKIP: nats-server is not installed (Debian package nats-server)")
        sys.exit(77)
    base = tempfile.mkdtemp(prefix="berth-jscfg-")
    os.makedirs(os.path.join(base, "nats"))
    try:
        with cluster.Cluster(n=1, start_nodes=False) as c, \
                natscluster.NatsCluster(os.path.join(base, "nats"), n=3) as nats:
            url = nats.urls()
            dead = "nats://127.0.0.1:%d" % cluster.free_ports(1)[0]
            node_fails(c, ["--jetstream", dead], "cannot connect to %s" % dead)
            node_fails(c, ["--jetstream", url, "--jetstream-stream", "NOPE"],
                       "stream NOPE does not exist")
            rc, _, err = nats.js(["create", "--stream", "ONE", "--subjects", "berth.>",
                                  "--replicas", "1", "--duplicates", "120000"])
            assert rc == 0, err
            node_fails(c, ["--jetstream", url, "--jetstream-stream", "ONE", "--ack-after",
                           "replicated"], "has 1 replica(s); --ack-after replicated needs at least 3")
            node_fails(c, ["--jetstream", url, "--jetstream-stream", "ONE",
                           "--jetstream-duplicate-window", "10m"],
                       "drops duplicates within 120000 ms")
            node_fails(c, ["--jetstream", url, "--jetstream-stream", "ONE",
                           "--jetstream-subject-prefix", "other"], "does not take subject other.node1")
            node_fails(c, ["--jetstream", url, "--jetstream-stream", "ONE", "--jetstream-tls"],
                       "cannot connect to %s" % url)
            # The same stream with a replicated node allowed few replicas: it runs.
            p = c.start_node(1, ["--jetstream", url, "--jetstream-stream", "ONE", "--ack-after",
                                 "replicated", "--jetstream-allow-few-replicas"])
            c.wait_healthy(1)
            c.kill_node(1)
            assert p.returncode is not None

        # Credentials: a server that wants a user and password.
        with cluster.Cluster(n=1, start_nodes=False) as c:
            port = cluster.free_ports(1)[0]
            log = open(os.path.join(base, "auth.log"), "wb")
            srv = subprocess.Popen([natscluster.find_nats_server(), "-a", "127.0.0.1", "-p",
                                    str(port), "--user", "berth", "--pass", "right"],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                cluster.wait_until(lambda: _connects(port), 10, 0.05, "auth server up")
                node_fails(c, ["--jetstream", "nats://127.0.0.1:%d" % port, "--jetstream-user",
                               "berth", "--jetstream-password", "wrong"], "Authorization")
            finally:
                srv.kill()
                srv.wait(10)
                log.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _connects(port):
    try:
        cluster.raw_connect("127.0.0.1:%d" % port, 0.5).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    cluster.main(test)
