"""The command-line surface: --help and --version, bad values (exit 2 and a
message naming the setting), BERTH_<FLAG> environment variables (flags win),
and a node without a certificate failing clearly."""
import os
import time

import cluster
from cluster import BALANCER_BIN, CLI_BIN, NODE_BIN, run_bin


def expect_usage_error(path, args, flag, env=None):
    rc, out, err = run_bin(path, args, env=env)
    name = os.path.basename(path)
    print("%s %s -> %d: %s" % (name, " ".join(args), rc, err.strip().splitlines()[:1]))
    assert rc == 2, "%s %s: exit %d, want 2 (stderr %r)" % (name, args, rc, err)
    assert flag in err, "%s %s: message does not name %r: %r" % (name, args, flag, err)


def test():
    for path in (NODE_BIN, BALANCER_BIN, CLI_BIN):
        name = os.path.basename(path)
        rc, out, err = run_bin(path, ["--help"])
        assert rc == 0, "%s --help exited %d: %s" % (name, rc, err)
        assert "--help" in out or "usage" in out.lower(), "%s --help: %r" % (name, out)
        rc, out, err = run_bin(path, ["--version"])
        assert rc == 0, "%s --version exited %d: %s" % (name, rc, err)
        assert any(ch.isdigit() for ch in out), "%s --version prints no version: %r" % (name, out)
        print("%s --version: %s" % (name, out.strip()))

    expect_usage_error(BALANCER_BIN, ["--interval", "banana"], "interval")
    expect_usage_error(BALANCER_BIN, ["--fall", "-3"], "fall")
    expect_usage_error(BALANCER_BIN, ["--policy", "nonsense"], "policy")
    expect_usage_error(BALANCER_BIN, ["--no-such-flag", "1"], "no-such-flag")
    expect_usage_error(BALANCER_BIN, [], "interval", env={"BERTH_INTERVAL": "soon"})
    expect_usage_error(NODE_BIN, ["--id", "n1", "--workers", "many"], "workers")
    expect_usage_error(NODE_BIN, ["--id", "n1", "--max-frame", "12parsecs"], "max-frame")
    expect_usage_error(CLI_BIN, ["ping", "--timeout", "forever"], "timeout")

    with cluster.Cluster(n=1, interval="250ms") as c:
        # A node without --cert fails fast and says why.
        t0 = time.monotonic()
        rc, out, err = run_bin(NODE_BIN, ["--id", "nocert", "--listen", "127.0.0.1:%d" % cluster.free_ports(1)[0],
                                          "--balancer", c.hb_endpoint, "--key", c.key])
        print("node without --cert -> %d in %.0f ms: %s" % (rc, (time.monotonic() - t0) * 1000,
                                                           err.strip()))
        assert rc != 0, "node without --cert exited 0"
        assert "cert" in err.lower(), "node without --cert: unclear message %r" % err
        # A certificate file that does not exist is named in the error.
        missing = os.path.join(c.dir, "missing.pem")
        rc, out, err = run_bin(NODE_BIN, ["--id", "nocert", "--listen", "127.0.0.1:%d" % cluster.free_ports(1)[0],
                                          "--balancer", c.hb_endpoint, "--cert", missing,
                                          "--key", c.key])
        print("node with a missing cert -> %d: %s" % (rc, err.strip()))
        assert rc != 0 and "missing.pem" in err, (rc, err)

        # The environment sets what no flag sets; a flag wins over it.
        c.kill_balancer()
        c.balancer_args = []
        argv = [a for a in c.balancer_argv()]
        i = argv.index("--interval")
        del argv[i:i + 2]
        c.spawn("balancer", argv, env={"BERTH_INTERVAL": "400ms", "BERTH_FALL": "4"})
        cluster.wait_until(lambda: c.http_get_json("/healthz")[0] == 200, 10, 0.05, "balancer up")
        h = c.health()
        print("BERTH_INTERVAL=400ms BERTH_FALL=4 -> interval_ms=%s fall=%s" % (h["interval_ms"],
                                                                               h["fall"]))
        assert h["interval_ms"] == 400 and h["fall"] == 4, h
        c.kill_balancer()
        c.spawn("balancer", argv + ["--interval", "300ms"], env={"BERTH_INTERVAL": "400ms"})
        cluster.wait_until(lambda: c.http_get_json("/healthz")[0] == 200, 10, 0.05, "balancer up")
        h = c.health()
        assert h["interval_ms"] == 300, "flag should win over BERTH_INTERVAL: %r" % h["interval_ms"]
        # The node adopts the balancer's interval and is healthy under it.
        c.wait_healthy(1)
        # An unknown HTTP path and a bad method get JSON errors.
        status, body = c.http_get_json("/v1/nope")
        assert status == 404 and body and "error" in body, (status, body)


if __name__ == "__main__":
    cluster.main(test)
