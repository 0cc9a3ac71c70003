"""A full disk for real: the journal on a 1 MiB tmpfs. SENDs that cannot be
stored get ERROR internal naming the cause (never an ACK), the node leaves
rotation with reason "journal: ... No space left on device", everything
acknowledged before is in the journal, and once the filesystem has room
again the node is healthy and stores SENDs. Needs mount(2) (root, not in
every container): skipped with the reason when mounting fails."""
import os
import subprocess
import sys

import cluster
import journal_file as tj  # the journal reader and node helpers


def test():
    with cluster.Cluster(n=1, start_nodes=False) as c:
        jdir = os.path.join(c.dir, "small")
        os.mkdir(jdir)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", jdir],
                           capture_output=True)
        if r.returncode != 0:
            print("SKIPPED: cannot mount a tmpfs here (%s)" % r.stderr.decode().strip())
            return
        try:
            run(c, jdir)
        finally:
            c._stop_all()
            subprocess.run(["umount", "-l", jdir], capture_output=True)


def run(c, jdir):
    c.start_node(1, extra=["--journal-dir", jdir, "--journal-segment-bytes", "256KiB"])
    c.wait_healthy(1)
    acked = {}
    refused = None
    data = b"z" * 16000
    with c.session(1) as s:
        s.hello("filler")
        for k in range(200):
            s.send_frame(cluster.SEND, 2 + k, cluster.send_body(k, data))
            f = s.recv_frame()
            if f.type == cluster.ERROR:
                refused = f.error()
                break
            assert f.type == cluster.ACK
            acked[k] = tj.ack_seq(f)
    assert refused is not None, "1 MiB took 200 x 16 kB"
    code, text = refused
    assert code == 10 and "No space left on device" in text, refused
    print("refused after %d ACKs: %r" % (len(acked), refused))

    def unhealthy():
        n = c.node_health("node1")
        return n if n and n.get("state") != "healthy" else None
    n = cluster.wait_until(unhealthy, 10, 0.05, "node1 out of rotation")
    print("balancer sees:", {k: n.get(k) for k in ("state", "reason")})
    assert "No space left on device" in str(n), n
    recs = {r["id"]: r for r in tj.read_journal(jdir)}
    for mid, seq in acked.items():
        assert mid in recs and recs[mid]["seq"] == seq and recs[mid]["data"] == data, mid

    # Room again: healthy within the probe period, and SENDs are stored.
    subprocess.run(["mount", "-o", "remount,size=8m", jdir], check=True)
    c.wait_healthy(1, timeout=15)
    more = tj.send_many(c, 1, 1000, 5)
    assert sorted(more.values()) == list(range(len(acked) + 1, len(acked) + 6)), more


if __name__ == "__main__":
    cluster.main(test)
