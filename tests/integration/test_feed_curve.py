"""The journal feed is CURVE by default on a node with keys: a consumer key
in --feed-curve-allow reads records with `berth tail --curve-secret
--feed-key` (also from a feed bound to 0.0.0.0, allowed now without
--feed-insecure); a key not in the allowlist and a plaintext consumer get
nothing, and the plaintext one is told the node may require CURVE; a node
with keys and --feed but no --feed-curve-allow refuses to start naming it;
--feed-plaintext serves today's unauthenticated loopback feed."""
import os
import shutil
import signal
import subprocess

import cluster
import journal_file as tj  # the journal reader and node helpers

# tail's --timeout for the consumers that must get nothing: each period
# ends in "no answer ... asking again".
TAIL_TIMEOUT_S = 0.5
# How long such a consumer is watched: several subscription periods, and
# longer than the allowed consumer below needs for all of its records.
DENIED_WAIT_S = 6 * TAIL_TIMEOUT_S
RECORDS = 5


def parse_ids(out):
    ids = []
    for line in out.splitlines():
        for part in line.split(" "):
            if part.startswith("id="):
                ids.append(int(part[3:]))
    return ids


def tail_args(ep, extra=(), count=RECORDS, duration_s=20):
    return (["tail", "--feed", ep, "--from", "1", "--count", str(count),
             "--duration", "%dms" % int(duration_s * 1000),
             "--timeout", "%dms" % int(TAIL_TIMEOUT_S * 1000)] + list(extra))


def node_argv_without_log(c, extra):
    argv = c.node_argv(1, extra)
    return argv, c.security_env(argv, c.node_id(1))


def test():
    feed_port = cluster.free_ports(1)[0]
    with cluster.Cluster(n=1, start_nodes=False) as c:
        # The consumers' keys: "reader" is allowed on the feed, "stranger"
        # is a good key pair the node has never heard of.
        feed_allow = os.path.join(c.dir, "feed-allow")
        os.makedirs(feed_allow)
        os.chmod(feed_allow, 0o755)
        reader = cluster.keygen(os.path.join(c.dir, "reader"))
        shutil.copyfile(reader[1], os.path.join(feed_allow, "reader.pub"))
        stranger = cluster.keygen(os.path.join(c.dir, "stranger"))
        node_pub = c.node_keys(c.node_id(1))[1]

        # (c) keys and --feed without --feed-curve-allow: refused, by name.
        ep_any = "tcp://0.0.0.0:%d" % feed_port
        ep = "tcp://127.0.0.1:%d" % feed_port
        argv, env = node_argv_without_log(c, ["--feed", ep])
        rc, _, err = cluster.run_bin(argv[0], argv[1:], env=env, timeout=20)
        assert rc != 0 and "--feed-curve-allow" in err, (rc, err)
        argv, env = node_argv_without_log(c, ["--feed", ep, "--feed-plaintext",
                                              "--feed-curve-allow", feed_allow])
        rc, _, err = cluster.run_bin(argv[0], argv[1:], env=env, timeout=20)
        assert rc != 0 and "contradicts" in err, (rc, err)
        print("refused without --feed-curve-allow: %s" % err.strip().splitlines()[-1])

        # (a) CURVE, on a wildcard endpoint without --feed-insecure.
        c.start_node(1, ["--feed", ep_any, "--feed-curve-allow", feed_allow])
        c.wait_healthy(1)
        sent = tj.send_many(c, 1, 100, RECORDS, name="curve")
        with open(c.logs[c.node_id(1)]) as f:
            log = f.read()
        assert "security=curve" in log and "feed_insecure" not in log, log
        rc, out, err = c.run_cli(tail_args(ep, ["--curve-secret", reader[0],
                                                "--feed-key", node_pub]), timeout=30)
        assert rc == 0, err
        assert sorted(parse_ids(out)) == sorted(sent), out
        # The node's key as Z85 text works the same.
        rc, out, err = c.run_cli(tail_args(ep, ["--curve-secret", reader[0], "--feed-key",
                                                cluster.read_key(node_pub).decode()]),
                                 timeout=30)
        assert rc == 0 and sorted(parse_ids(out)) == sorted(sent), (rc, out, err)
        print("allowed consumer read %d records" % len(sent))

        # (b) a key off the allowlist, and a consumer without CURVE: nothing
        # within DENIED_WAIT_S, where the allowed one got everything.
        rc, out, err = c.run_cli(tail_args(ep, ["--curve-secret", stranger[0],
                                                "--feed-key", node_pub],
                                           count=1, duration_s=DENIED_WAIT_S), timeout=30)
        assert rc == 0 and out == "", (rc, out, err)
        assert "no answer to the subscription" in err and "--feed-curve-allow" in err, err
        stranger_pub = cluster.read_key(stranger[1]).decode()
        cluster.wait_until(lambda: stranger_pub in open(c.logs[c.node_id(1)]).read(), 5, 0.05,
                           "the node logging the refused key")
        rc, out, err = c.run_cli(tail_args(ep, count=1, duration_s=DENIED_WAIT_S), timeout=30)
        assert rc == 0 and out == "", (rc, out, err)
        assert "may require CURVE" in err and "--curve-secret" in err and "--feed-key" in err, err
        # The wrong server key: the handshake cannot succeed either.
        rc, out, err = c.run_cli(tail_args(ep, ["--curve-secret", reader[0],
                                                "--feed-key", stranger[1]],
                                           count=1, duration_s=DENIED_WAIT_S), timeout=30)
        assert rc == 0 and out == "", (rc, out, err)
        print("a stranger's key, a plaintext consumer and a wrong node key got nothing in %.1fs"
              % DENIED_WAIT_S)

        # (d) --feed-plaintext: today's feed, loopback only.
        c.kill_node(1, signal.SIGKILL)
        argv, env = node_argv_without_log(c, ["--feed", ep_any, "--feed-plaintext"])
        rc, _, err = cluster.run_bin(argv[0], argv[1:], env=env, timeout=20)
        assert rc != 0 and "--feed-insecure" in err, (rc, err)
        c.start_node(1, ["--feed", ep, "--feed-plaintext"])
        tj.wait_serving(c, 1)
        rc, out, err = c.run_cli(tail_args(ep), timeout=30)
        assert rc == 0 and sorted(parse_ids(out)) == sorted(sent), (rc, out, err)
        # A CURVE consumer gets nothing from a plaintext feed.
        p = subprocess.run([cluster.CLI_BIN] + tail_args(ep, ["--curve-secret", reader[0],
                                                              "--feed-key", node_pub],
                                                         count=1, duration_s=DENIED_WAIT_S),
                           capture_output=True, timeout=30, env=cluster.child_env(), cwd=c.dir)
        assert p.returncode == 0 and p.stdout == b"", (p.returncode, p.stdout, p.stderr)
        print("--feed-plaintext served %d records to a plaintext tail" % len(sent))

        # Usage: half of the CURVE pair is refused by name.
        rc, _, err = c.run_cli(["tail", "--feed", ep, "--curve-secret", reader[0]])
        assert rc == 2 and "--feed-key" in err, (rc, err)
        rc, _, err = c.run_cli(["tail", "--feed", ep, "--curve-secret", reader[0],
                                "--feed-key", "%s,%s" % (node_pub, node_pub)])
        assert rc == 2 and "--feed-key" in err, (rc, err)


if __name__ == "__main__":
    cluster.main(test)
