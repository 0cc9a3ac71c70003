"""Durable delivery on one node: every ACK carries the journal seq of a
record that is on disk; kill -9 and restart keeps every acknowledged record
and continues the sequence; a torn tail is cut at start, a corrupt record in
the middle makes the node refuse to start naming the file and byte offset."""
import glob
import os
import signal
import struct
import subprocess
import time

import cluster
from journal_file import HEADER, MAGIC, ack_seq, parse_segment, read_journal, send_many, wait_serving

def test():
    with cluster.Cluster(n=1, interval="250ms") as c:
        c.wait_healthy(1)
        jdir = os.path.join(c.dir, "journal-node1")
        acked = send_many(c, 1, 1000, 300)
        assert sorted(acked.values()) == list(range(1, 301)), "seqs not 1..300 in order"
        # Replies in request order: a PING behind SENDs waits for them.
        with c.session(1) as s:
            s.hello()
            s.send_frame(cluster.SEND, 2, cluster.send_body(5000, b"x"))
            s.send_frame(cluster.PING, 3, b"p")
            a, p = s.recv_frame(), s.recv_frame()
            assert a.type == cluster.ACK and ack_seq(a) == 301 and p.type == cluster.PONG, (a, p)
        # The CLI prints the seq.
        rc, out, err = c.run_cli(["send", "--node", c.node_addr(1), "--ca", c.ca, "--name", "cli"],
                                 input=b"one\ntwo\n")
        assert rc == 0, err
        assert "seq=302" in out and "seq=303" in out, out

        # kill -9: every acknowledged record is in the journal; seq continues.
        c.kill_node(1, signal.SIGKILL)
        recs = read_journal(jdir)
        by_id = {r["id"]: r for r in recs}
        for mid, seq in acked.items():
            assert mid in by_id and by_id[mid]["seq"] == seq, "ACKed %d (seq %d) missing" % (mid, seq)
            assert by_id[mid]["data"] == b"msg-%d" % mid
            assert by_id[mid]["client"] == "jtest" and by_id[mid]["peer"].startswith("127.0.0.1:")
        assert [r["seq"] for r in recs] == list(range(1, 304)), "journal seqs not 1..303"
        c.start_node(1)
        wait_serving(c, 1)
        more = send_many(c, 1, 9000, 10)
        assert sorted(more.values()) == list(range(304, 314)), more

        # A torn tail (half a record after a crash) is cut; seq continues.
        c.kill_node(1, signal.SIGKILL)
        seg = sorted(glob.glob(os.path.join(jdir, "*.seg")))[-1]
        size = os.path.getsize(seg)
        with open(seg, "ab") as f:
            f.write(struct.pack(">II", MAGIC, 200) + b"\x00" * 30)
        c.start_node(1)
        wait_serving(c, 1)
        assert os.path.getsize(seg) == size, "torn tail not cut"
        with open(c.logs["node1"], "rb") as f:
            assert b"journal_torn_tail" in f.read()
        assert send_many(c, 1, 9100, 1) == {9100: 314}

        # A corrupt record in the middle: the node refuses to start.
        c.kill_node(1, signal.SIGKILL)
        offs = [off for off, _ in parse_segment(seg)]
        victim = offs[len(offs) // 2]
        with open(seg, "r+b") as f:
            f.seek(victim + HEADER + 2)
            b = f.read(1)
            f.seek(victim + HEADER + 2)
            f.write(bytes([b[0] ^ 0xFF]))
        p = c.start_node(1)
        rc = p.wait(15)
        with open(c.logs["node1"], "rb") as f:
            log = f.read().decode(errors="replace")
        assert rc != 0, "node started on a corrupt journal"
        want = "%s at byte %d" % (os.path.basename(seg), victim)
        assert want in log, "refusal does not name %r: %s" % (want, log[-500:])
        print("refused:", [l for l in log.splitlines() if "corrupt" in l][0])
        # --journal-recover=truncate starts, cutting the segment there.
        c.start_node(1, extra=["--journal-recover", "truncate"])
        wait_serving(c, 1)
        with open(c.logs["node1"], "rb") as f:
            assert b"journal_truncated" in f.read()


if __name__ == "__main__":
    cluster.main(test)
