"""With every balancer gone, a client goes on with its cached node list
until the list's TTL runs out, and says so: `berth send` fails over from a
killed node to another one from the cache and prints a notice naming it;
once the TTL is over it gives up with a message saying the list expired."""
import time

import cluster
from test_client_failover import Cli


def ids_acked(cli):
    with cli.lock:
        return {a[0] for a in cli.acks}


def test_runs_on_cache(c):
    cli = Cli(c, extra=["--cache-ttl", "60s"])
    try:
        cli.write(1, 20)
        cluster.wait_until(lambda: len(ids_acked(cli)) == 20, 10, 0.01, "first acks")
        c.kill_balancer()
        victim = cli.nodes_so_far()[-1]
        c.kill_node(int(victim[len("node"):]))
        cli.write(21, 20)
        rc = cli.finish(30)
        err = cli.err.decode("utf-8", "replace")
        print("berth send -> %d; stderr: %s" % (rc, err.strip()[:600]))
        assert rc == 0, "berth send exited %d: %s" % (rc, err)
        assert ids_acked(cli) >= set(range(1, 41)), "missing acks"
        assert "using the cached node list" in err, err
        after = {a[3] for a in cli.acks if a[0] > 20}
        assert victim not in after, "acked by the killed node %s" % victim
    finally:
        cli.kill()


def test_cache_expires(c):
    cli = Cli(c, extra=["--cache-ttl", "300ms", "--retries", "1"])
    try:
        cli.write(1, 5)
        cluster.wait_until(lambda: len(ids_acked(cli)) == 5, 10, 0.01, "first acks")
        c.kill_balancer()
        time.sleep(0.6)
        victim = cli.nodes_so_far()[-1]
        c.kill_node(int(victim[len("node"):]))
        cli.write(6, 5)
        rc = cli.finish(30)
        err = cli.err.decode("utf-8", "replace")
        print("berth send -> %d; stderr: %s" % (rc, err.strip()[:600]))
        assert rc == 1, "berth send exited %d: %s" % (rc, err)
        assert "the cached node list expired" in err, err
    finally:
        cli.kill()


def test():
    for t in (test_runs_on_cache, test_cache_expires):
        with cluster.Cluster(n=2) as c:
            c.wait_healthy()
            t(c)
            print("%s: ok" % t.__name__)


if __name__ == "__main__":
    cluster.main(test)
