#!/usr/bin/env python3
"""compose JetStream: docker-compose.yml with deploy/compose.jetstream.yml
layered on it brings up a 3-server NATS cluster from the same offline
image (Debian's nats-server inside), and the nodes forward what they
acknowledge into the stream BERTH: messages sent through the balancers are
read back from JetStream on the host with `berth tail --jetstream`, and
every node reports its forwarder healthy in /v1/health."""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compose  # noqa: E402
from compose import NODES, check, log, wait_until  # noqa: E402

JETSTREAM_FILE = os.path.join(compose.SOURCE_DIR, "deploy", "compose.jetstream.yml")
COUNT = 20


def test(c):
    c.up()
    interval, fall, _ = c.settings()
    # Every node forwards, and says so.
    def forwarding():
        status, h = c.http("/v1/health")
        if status != 200:
            return None
        fw = {n["id"]: (n.get("forward") or {}).get("healthy") for n in h.get("nodes", [])}
        return fw if all(fw.get(n) for n in NODES) else None
    wait_until(forwarding, 60, interval, "every node forwarding to JetStream")
    lines = "".join("js-%02d\n" % i for i in range(COUNT))
    ok, node, out = c.send(lines, timeout=60)
    check(ok, "berth send failed: %s" % out)
    p = c.berth("tail", "--jetstream", c.nats_url, "--count", str(COUNT), "--duration", "30s",
                timeout=60)
    check(p.returncode == 0, "berth tail --jetstream: %s" % p.stderr)
    got = [l for l in p.stdout.splitlines() if 'data="js-' in l]
    check(len(got) == COUNT, "%d of %d messages read back from JetStream:\n%s" % (
        len(got), COUNT, p.stdout[-2000:]))
    log("%d messages acknowledged by %s, all %d read back from the stream" % (COUNT, node, len(got)))


if __name__ == "__main__":
    compose.main(test, bound_s=420, extra_files=[JETSTREAM_FILE])
