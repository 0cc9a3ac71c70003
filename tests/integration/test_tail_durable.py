"""Retention never deletes what a configured consumer has not confirmed:
with --journal-consumers archive and a small --journal-retain-bytes, a node
keeps every record, and once over the limit refuses SENDs (ERROR, never an
ACK) and leaves rotation naming the consumer. `berth tail --durable archive`
reads and confirms; the node then deletes, takes SENDs again and returns to
rotation, and a later `--durable archive` run goes on after the last record
confirmed. A name the node does not know is refused."""
import os

import cluster
import journal_file as tj  # the journal reader and node helpers

RETAIN = 16 * 1024


def test():
    feed = cluster.free_ports(1)[0]
    ep = "tcp://127.0.0.1:%d" % feed
    with cluster.Cluster(n=1, node_args=["--feed", ep, "--feed-plaintext",
                                         "--journal-consumers", "archive,audit",
                                         "--journal-segment-bytes", "4KiB",
                                         "--journal-retain-bytes", str(RETAIN)]) as c:
        c.wait_healthy(1)
        jdir = os.path.join(c.dir, "journal-node1")
        acked = {}
        refused = None
        data = b"r" * 200
        with c.session(1) as s:
            s.hello("durable")
            for mid in range(1, 2001):  # bounded: ~10x the limit
                f = s.request(cluster.SEND, mid + 1, cluster.send_body(mid, data))
                if f.type == cluster.ERROR:
                    refused = f.error()
                    break
                acked[mid] = tj.ack_seq(f)
        assert refused, "the node stored %d records past its limit without a consumer" % len(acked)
        assert refused[0] == cluster.ERR_INTERNAL and "consumer" in refused[1], refused
        recs = tj.read_journal(jdir)
        assert [r["seq"] for r in recs] == sorted(acked.values()), "a held record was deleted"
        n = cluster.wait_until(lambda: (c.node_health("node1") or {}).get("state") != "healthy"
                               and c.node_health("node1"), 10, c.interval_s / 5, "node1 out")
        assert "consumer a" in n["reason"], n
        print("held: %d records kept, SEND refused (%s), out of rotation (%s)"
              % (len(recs), refused[1], n["reason"]))

        # archive reads and confirms everything; audit still holds.
        out = os.path.join(c.dir, "archive.out")
        rc, _, err = c.run_cli(["tail", "--feed", ep, "--durable", "archive", "--from", "1",
                                "--count", str(len(acked)), "--out", out, "--duration", "20s"],
                               timeout=40)
        assert rc == 0, err
        got = [r["seq"] for off, r in tj.parse_segment(out) if off != "bad"]
        assert got == sorted(acked.values()), "tail --durable did not get every record"
        assert open(os.path.join(jdir, "archive.consumer")).read() == "%d\n" % max(got)

        # audit too: now the oldest segments may go.
        rc, _, err = c.run_cli(["tail", "--feed", ep, "--durable", "audit", "--from", "1",
                                "--count", str(len(acked)), "--duration", "20s"], timeout=40)
        assert rc == 0, err
        c.wait_healthy(1, timeout=10)
        more = tj.send_many(c, 1, 5000, 3, name="after")
        assert sorted(more.values()) == [max(got) + 1, max(got) + 2, max(got) + 3], more
        first = tj.read_journal(jdir)[0]["seq"]
        assert first > 1, "nothing was deleted after both consumers confirmed"
        print("confirmed: retention deleted up to seq %d, SENDs stored again" % (first - 1))

        # --from 0 with --durable goes on after the last confirmed record.
        rc, outp, err = c.run_cli(["tail", "--feed", ep, "--durable", "archive", "--count", "3",
                                   "--duration", "20s"], timeout=40)
        assert rc == 0, err
        seqs = [int(x.split("=")[1]) for x in outp.split() if x.startswith("seq=")]
        assert seqs == sorted(more.values()), outp

        rc, _, err = c.run_cli(["tail", "--feed", ep, "--durable", "nobody", "--count", "1",
                                "--duration", "10s"], timeout=30)
        assert rc != 0 and "not configured" in err, (rc, err)


if __name__ == "__main__":
    cluster.main(test)
