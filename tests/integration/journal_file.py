"""journal_file: the tests' reader of berth's journal segments (the record
format of docs/DESIGN.md, "Journal", with its CRC32C) and the node helpers
the durability tests share: wait until a node serves, send a batch of
pipelined SENDs and collect the seq of each ACK."""
import glob
import os
import struct

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
        magic, length, seq, mid, ts, nl, pl, cl, kind, prl = struct.unpack(
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
        producer = rec[HEADER + nl + pl + cl:HEADER + nl + pl + cl + prl].decode()
        body = rec[HEADER + nl + pl + cl + prl:-4]
        yield off, {"seq": seq, "id": mid, "ts": ts, "client": name, "peer": peer, "data": body,
                    "producer": producer}
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


