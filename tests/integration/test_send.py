"""The berth CLI against a cluster of 3: send (line by line and --whole),
pick, ping and info, checked against what a user would see."""
import hashlib
import json
import re

import cluster

SHA = re.compile(r"\b[0-9a-f]{64}\b")


def find_value(obj, wanted):
    """True if any string value anywhere in obj is in wanted."""
    if isinstance(obj, dict):
        return any(find_value(v, wanted) for v in obj.values())
    if isinstance(obj, list):
        return any(find_value(v, wanted) for v in obj)
    return isinstance(obj, str) and obj in wanted


def test():
    with cluster.Cluster(n=3) as c:
        c.wait_healthy(3)
        ids = {c.node_id(i) for i in range(1, 4)}
        common = ["--ca", c.ca, "--balancer", c.balancer_url]

        lines = [b"hello", b"second line", b"  spaced\ttabs  ", b"\xc3\xa9t\xc3\xa9 utf-8", b"x" * 5000]
        stdin = b"".join(l + b"\n" for l in lines)
        rc, out, err = c.run_cli(["send"] + common, input=stdin)
        print("send: rc=%d\n%s%s" % (rc, out, err))
        assert rc == 0, "berth send exited %d: %s" % (rc, err)
        acks = [l for l in out.splitlines() if SHA.search(l)]
        assert len(acks) == len(lines), "want %d ack lines, got %d:\n%s" % (len(lines), len(acks), out)
        for line, ack in zip(lines, acks):
            want = hashlib.sha256(line).hexdigest()
            got = SHA.search(ack).group(0)
            assert got == want, "line %r: ack %r, want sha256 %s" % (line, ack, want)

        rc, out, err = c.run_cli(["send", "--whole"] + common, input=stdin)
        print("send --whole: rc=%d\n%s%s" % (rc, out, err))
        assert rc == 0, "berth send --whole exited %d: %s" % (rc, err)
        acks = [l for l in out.splitlines() if SHA.search(l)]
        assert len(acks) == 1, "--whole: want one ack line, got:\n%s" % out
        want = hashlib.sha256(stdin).hexdigest()
        assert SHA.search(acks[0]).group(0) == want, "--whole ack %r, want %s" % (acks[0], want)

        rc, out, err = c.run_cli(["pick", "--balancer", c.balancer_url])
        print("pick: rc=%d\n%s%s" % (rc, out, err))
        assert rc == 0, "berth pick exited %d: %s" % (rc, err)
        assert any(i in out for i in ids) or any(c.node_addr(i) in out for i in range(1, 4)), \
            "berth pick output names no node: %r" % out

        rc, out, err = c.run_cli(["ping", "--count", "3"] + common)
        print("ping: rc=%d\n%s%s" % (rc, out, err))
        assert rc == 0, "berth ping exited %d: %s" % (rc, err)
        assert out.strip(), "berth ping printed nothing"

        rc, out, err = c.run_cli(["info"] + common)
        print("info: rc=%d\n%s%s" % (rc, out, err))
        assert rc == 0, "berth info exited %d: %s" % (rc, err)
        start = out.find("{")
        assert start >= 0, "berth info printed no JSON: %r" % out
        info = json.loads(out[start:])
        assert find_value(info, ids), "berth info JSON names no node id: %r" % info

        # With no reachable balancer the CLI fails with a message, not a hang or crash.
        rc, out, err = c.run_cli(["ping", "--ca", c.ca, "--balancer", "http://127.0.0.1:1",
                                  "--timeout", "2s"], timeout=30)
        print("ping (no balancer): rc=%d %s" % (rc, err.strip()))
        assert rc not in (0, -6, -11) and rc > 0, "ping without a balancer exited %d" % rc
        assert err.strip(), "ping without a balancer printed no error"


if __name__ == "__main__":
    cluster.main(test)
