"""berth tail against two nodes' feeds: replay from seq 1 on both, live
records as they are stored, raw records to a file (--out), a replay from a
later seq, resubscription after a node restart, `berth tail | head` ending
quietly when its reader goes, a node refusing a feed other hosts can reach,
and usage errors."""
import os
import signal
import subprocess
import time

import cluster
import journal_file as tj  # the journal reader and node helpers


def parse_lines(out):
    recs = []
    for line in out.splitlines():
        fields = {}
        for part in line.split(" "):
            if "=" in part:
                k, v = part.split("=", 1)
                fields[k] = v.strip('"')
        recs.append(fields)
    return recs


def test():
    feeds = cluster.free_ports(2)
    # The plaintext feed (these nodes have CURVE keys; test_feed_curve.py
    # covers the CURVE one).
    node_args = {i: ["--feed", "tcp://127.0.0.1:%d" % feeds[i - 1], "--feed-plaintext"]
                 for i in (1, 2)}
    with cluster.Cluster(n=2, node_args=node_args) as c:
        c.wait_healthy(2)
        ep = ["tcp://127.0.0.1:%d" % p for p in feeds]
        a1 = tj.send_many(c, 1, 100, 40, name="tailer")
        a2 = tj.send_many(c, 2, 500, 30, name="tailer")

        # Replay everything from both nodes.
        rc, out, err = c.run_cli(["tail", "--feed", ",".join(ep), "--from", "1", "--count", "70",
                                  "--duration", "20s"], timeout=30)
        assert rc == 0, err
        recs = parse_lines(out)
        assert len(recs) == 70, out
        got = {(r["node"], int(r["id"])): int(r["seq"]) for r in recs}
        for mid, seq in a1.items():
            assert got.get(("node1", mid)) == seq, "node1 message %d seq %d missing: %s" % (mid, seq, out[:500])
        for mid, seq in a2.items():
            assert got.get(("node2", mid)) == seq
        r0 = [r for r in recs if r["node"] == "node1" and r["id"] == "100"][0]
        assert r0["client"] == "tailer" and r0["data"] == "msg-100" and r0["bytes"] == "7", r0
        assert r0["peer"].startswith("127.0.0.1:"), r0
        print("replayed 70 records from 2 nodes")

        # From a later seq.
        rc, out, err = c.run_cli(["tail", "--feed", ep[0], "--from", "31", "--count", "10",
                                  "--duration", "10s"], timeout=30)
        assert rc == 0, err
        assert [int(r["seq"]) for r in parse_lines(out)] == list(range(31, 41)), out

        # Live: a tail started first sees what is sent afterwards.
        outfile = os.path.join(c.dir, "tail.out")
        p = subprocess.Popen([cluster.CLI_BIN, "tail", "--feed", ep[1], "--count", "25",
                              "--duration", "20s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=c.dir, env=cluster.child_env())
        try:
            time.sleep(0.5)
            live = tj.send_many(c, 2, 7000, 25, name="live")
            out, err = p.communicate(timeout=25)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, err
        lrecs = parse_lines(out.decode())
        assert sorted(int(r["id"]) for r in lrecs) == sorted(live), out
        assert [int(r["seq"]) for r in lrecs] == sorted(live.values())

        # Raw records to a file, checked with the journal format's own CRC.
        rc, out, err = c.run_cli(["tail", "--feed", ep[0], "--from", "1", "--count", "40",
                                  "--out", outfile, "--duration", "10s"], timeout=30)
        assert rc == 0 and out == "", (rc, out, err)
        raw = list(tj.parse_segment(outfile))
        assert len(raw) == 40 and all(off != "bad" for off, _ in raw), raw[-1]
        assert [r["seq"] for _, r in raw] == list(range(1, 41))

        # A node restart: the tail subscribes again after the last seq seen.
        p = subprocess.Popen([cluster.CLI_BIN, "tail", "--feed", ep[0], "--from", "1",
                              "--count", "45", "--duration", "25s"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=c.dir, env=cluster.child_env())
        try:
            time.sleep(0.5)
            c.kill_node(1, signal.SIGKILL)
            c.start_node(1)
            tj.wait_serving(c, 1)
            tj.send_many(c, 1, 8000, 5, name="after")
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, err
        seqs = [int(r["seq"]) for r in parse_lines(out.decode())]
        assert seqs == list(range(1, 46)), seqs

        # `berth tail | head -1`: once the reader is gone, the next records
        # end the tail quietly (EPIPE, status 0), not a tail running forever.
        r, w = os.pipe()
        p = subprocess.Popen([cluster.CLI_BIN, "tail", "--feed", ep[0], "--from", "1"],
                             stdout=w, stderr=subprocess.PIPE, cwd=c.dir, env=cluster.child_env())
        os.close(w)
        try:
            assert os.read(r, 40).startswith(b"seq=1 "), "no first record"
            os.close(r)
            r = None
            deadline = time.monotonic() + 10
            mid = 9000
            while p.poll() is None and time.monotonic() < deadline:
                tj.send_many(c, 1, mid, 20, name="piped")  # more output into the closed pipe
                mid += 20
                time.sleep(0.3)
            assert p.poll() is not None, "berth tail still running after its reader went away"
            err = p.stderr.read().decode()
            assert p.returncode == 0 and err.count("\n") <= 1, (p.returncode, err)
        finally:
            if r is not None:
                os.close(r)
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stderr.close()
        print("berth tail | head: tail exited 0")

        # A plaintext feed other hosts can reach has no authentication: the
        # node refuses it unless --feed-insecure is given.
        argv = c.node_argv(1)
        argv[argv.index("--id") + 1] = "openfeed"
        argv[argv.index("--listen") + 1] = "127.0.0.1:%d" % cluster.free_ports(1)[0]
        argv += ["--journal-dir", os.path.join(c.dir, "journal-openfeed"),
                 "--feed", "tcp://0.0.0.0:%d" % cluster.free_ports(1)[0]]
        rc, out, err = cluster.run_bin(argv[0], argv[1:], env=c.security_env(argv, "openfeed"),
                                       timeout=20)
        assert rc != 0 and "--feed-insecure" in err and "0.0.0.0" in err, (rc, err)

        # Usage errors name the problem.
        rc, out, err = c.run_cli(["tail"])
        assert rc == 2 and "--feed is required" in err, (rc, err)
        rc, out, err = c.run_cli(["tail", "--feed", "nonsense://x"])
        assert rc == 2 and "nonsense://x" in err, (rc, err)
        rc, out, err = c.run_cli(["tail", "--feed", ep[0], "--bogus"])
        assert rc == 2 and "bogus" in err, (rc, err)


if __name__ == "__main__":
    cluster.main(test)
