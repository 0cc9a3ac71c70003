"""Durable delivery on one node: every ACK carries the journal seq of a
record that is on disk; kill -9 and restart keeps every acknowledged record
and continues the sequence; a torn tail is cut at start, a corrupt record in
the middle makes the node refuse to start naming the file and byte offset.
Also the journal reader other tests import (read_journal)."""
import glob
import os
import signal
import struct
import subprocess
import time

import cluster

MAGIC = 0x424A5231
HEADER = 40


def _crc32c_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _crc32c_table()


def crc32c(data, crc=0):
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ _T[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def parse_segment(path, check_crc=True):
    """Yields (offset, record dict) for each whole record of one segment;
    stops at the first bad or cut one (returned as ('bad', offset))."""
    with open(path, "rb") as f:
        data = f.read()
    off = 0
    while off < len(data):
        if len(data) - off < HEADER + 4:
            yield "bad", off
            return
        magic, length, seq, mid, ts, nl, pl, cl, kind, _r = struct.unpack(
            ">IIQQQBBHHH", data[off:off + HEADER])
        if magic != MAGIC or length < HEADER + 4 or off + length > len(data):
            yield "bad", off
            return
        rec = data[off:off + length]
        if check_crc and crc32c(rec[:-4]) != struct.unpack(">I", rec[-4:])[0]:
            yield "bad", off
            return
        name = rec[HEADER:HEADER + nl].decode("utf-8", "replace")
        peer = rec[HEADER + nl:HEADER + nl + pl].decode()
        body = rec[HEADER + nl + pl + cl:-4]
        yield off, {"seq": seq, "id": mid, "ts": ts, "client": name, "peer": peer, "data": body}
        off += length


def read_journal(d, check_crc=True):
    """Every whole record of a journal directory, in seq order."""
    out = []
    for path in sorted(glob.glob(os.path.join(d, "*.seg"))):
        for off, rec in parse_segment(path, check_crc):
            if off == "bad":
                break
            out.append(rec)
    return out


def ack_seq(frame):
    assert len(frame.payload) >= 48, "ACK without seq: %r" % frame
    return struct.unpack(">Q", frame.payload[40:48])[0]


def wait_serving(c, i, timeout=15):
    """Waits until node i (just restarted) accepts connections."""
    def ok():
        c._alive_or_raise(c.node_id(i))
        try:
            cluster.raw_connect(c.node_addr(i), 0.5).close()
            return True
        except OSError:
            return False
    cluster.wait_until(ok, timeout, 0.05, "node%d serving" % i)


def send_many(c, i, first_mid, n, name="jtest"):
    """n SENDs on one session, pipelined in windows of 50; returns {mid: seq}."""
    seqs = {}
    with c.session(i) as s:
        s.hello(name)
        rid = 2
        mid = first_mid
        left = n
        while left:
            k = min(50, left)
            for j in range(k):
                s.send_frame(cluster.SEND, rid + j, cluster.send_body(mid + j, b"msg-%d" % (mid + j)))
            for j in range(k):
                f = s.recv_frame()
                assert f.type == cluster.ACK and f.request_id == rid + j, "got %r" % f
                m, _ = f.ack()
                assert m == mid + j
                seqs[m] = ack_seq(f)
            rid += k
            mid += k
            left -= k
    return seqs


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
