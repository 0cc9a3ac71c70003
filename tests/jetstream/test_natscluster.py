"""test_natscluster: the JetStream test infrastructure against a real
3-server cluster: js_tool create/info/bench/dump, de-duplication by
Nats-Msg-Id inside the window, a stream that survives losing its leader
(quorum of 2), refuses writes without quorum, and recovers once both lost
servers are back. Prints every bench's figures. Exits 77 (ctest SKIP) only
when nats-server is not installed."""

import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import natscluster as nc  # noqa: E402

SKIP = 77
STREAM = "T"
DUP_WINDOW_MS = 2000
SIZE = 256  # bytes per bench message, about one journal record
FIRST_COUNT = 1000
SMALL_COUNT = 100
PERF_COUNT = 10000
DELETED_SEQ = 5
CREATE_TIMEOUT_MS = int(nc.WAIT_S * 1000 / 2)
# The no-quorum bench must fail within its PubAck wait plus this.
NO_QUORUM_ACK_MS = int(nc.WAIT_S * 1000 / 10)
NO_QUORUM_SLACK_S = nc.WAIT_S / 10
# Seconds the whole test may run; ctest's timeout (600 s) is above it, so
# the teardown runs before ctest would kill us.
TEST_BUDGET_S = nc.WAIT_S * 15


class Terminated(BaseException):
    """SIGTERM (ctest's timeout), SIGINT or the test's own time budget."""


def _raise_terminated(signum, _frame):
    raise Terminated("signal %d" % signum)


def bench(c, label, count, prefix=None, subject="t.bench", timeout_ms=None, max_pending=None,
          send_asap=False):
    """Runs js_tool bench; prints and returns (rc, figures or None, stderr,
    wall seconds)."""
    args = ["bench", "--subject", subject, "--count", str(count), "--size", str(SIZE)]
    if prefix:
        args += ["--msg-id-prefix", prefix]
    if timeout_ms:
        args += ["--timeout", str(timeout_ms)]
    if max_pending:
        args += ["--max-pending", str(max_pending)]
    if send_asap:
        args += ["--send-asap"]
    t0 = time.monotonic()
    rc, out, err = c.js(args)
    wall = time.monotonic() - t0
    try:
        fig = json.loads(out) if out.strip() else None
    except ValueError:
        fig = None
    print("bench %-12s rc=%d wall=%.2fs %s%s" % (label, rc, wall, out.strip(),
                                                 (" stderr: " + err.strip()) if err.strip() else ""),
          flush=True)
    return rc, fig, err, wall


def expect_ok_bench(c, label, count, prefix=None, **kw):
    rc, fig, err, _ = bench(c, label, count, prefix, **kw)
    assert rc == 0 and fig is not None, "bench %s failed: rc %d: %s" % (label, rc, err.strip())
    assert fig["msgs"] == count and fig["errors"] == 0, "bench %s: %r" % (label, fig)
    return fig


def info(c):
    return c.js_json(["info", "--stream", STREAM])


def dump(c, *extra):
    rc, out, err = c.js(["dump", "--stream", STREAM] + list(extra))
    assert rc == 0, "dump: rc %d: %s" % (rc, err.strip())
    return [json.loads(line) for line in out.splitlines()]


def check_ids(lines, first_seq, prefix, count):
    """lines hold stream_seq first_seq.. with Nats-Msg-Id PREFIX-0..count-1."""
    assert len(lines) == count, "%d lines, want %d" % (len(lines), count)
    for k, m in enumerate(lines):
        want = "%s-%d" % (prefix, k)
        assert m["stream_seq"] == first_seq + k, "line %d: %r" % (k, m)
        assert m["headers"].get("Nats-Msg-Id") == want, "seq %d: headers %r, want id %s" % (
            m["stream_seq"], m["headers"], want)
        assert len(m["data_hex"]) == 2 * SIZE, "seq %d: %d hex digits" % (
            m["stream_seq"], len(m["data_hex"]))


def run(c):
    figures = {}

    # --- an R3 stream with a 2 s duplicate window
    # The reply waits for the new stream's raft group to elect a leader,
    # which on loaded shared cores can take longer than js_tool's default 5 s.
    rc, _, err = c.js(["create", "--stream", STREAM, "--subjects", "t.>", "--replicas", "3",
                       "--duplicates", str(DUP_WINDOW_MS), "--timeout", str(CREATE_TIMEOUT_MS)])
    assert rc == 0, "create: rc %d: %s" % (rc, err.strip())
    i0 = info(c)
    print("info after create: %s" % json.dumps(i0), flush=True)
    assert i0["replicas"] == 3 and i0["cluster_size"] == 3, i0
    assert i0["duplicate_window_ms"] == DUP_WINDOW_MS and i0["messages"] == 0, i0
    assert i0["leader"], i0
    # Creating it again with another config is refused, with the cause.
    rc, _, err = c.js(["create", "--stream", STREAM, "--subjects", "t.>", "--replicas", "1"])
    assert rc != 0 and "js_tool: create:" in err and err.count("\n") == 1, (rc, err)
    print("second create refused: %s" % err.strip(), flush=True)

    # --- 1000 messages, then the same ids again inside the window
    t_first = time.monotonic()
    figures["first"] = expect_ok_bench(c, "first", FIRST_COUNT, "first")
    assert figures["first"]["duplicates"] == 0, figures["first"]
    assert info(c)["messages"] == FIRST_COUNT
    figures["again"] = expect_ok_bench(c, "again", FIRST_COUNT, "first")
    span = time.monotonic() - t_first
    i1 = info(c)
    assert i1["messages"] == FIRST_COUNT and figures["again"]["duplicates"] == FIRST_COUNT, (
        "JetStream did not de-duplicate: %r, bench %r (the repeat ended %.2fs after the first"
        " bench began; window %d ms)" % (i1, figures["again"], span, DUP_WINDOW_MS))

    lines = dump(c)
    check_ids(lines, 1, "first", FIRST_COUNT)
    tail = dump(c, "--from", str(FIRST_COUNT - 9))
    assert [m["stream_seq"] for m in tail] == list(range(FIRST_COUNT - 9, FIRST_COUNT + 1)), tail

    # --- lose the stream leader: the other two elect one and take writes
    leader1 = c.index_of(i1["leader"])
    t_kill = time.monotonic()
    c.kill(leader1)
    election1 = c.wait_stream_leader(STREAM)
    i2 = info(c)
    print("killed leader %s; new stream leader %s after %.2fs" % (
        c.name(leader1), i2["leader"], time.monotonic() - t_kill), flush=True)
    assert i2["leader"] != c.name(leader1), i2
    figures["one-down"] = expect_ok_bench(c, "one-down", SMALL_COUNT, "one-down")
    assert info(c)["messages"] == FIRST_COUNT + SMALL_COUNT

    # --- lose the second leader: no quorum, publishes fail, boundedly
    leader2 = c.index_of(info(c)["leader"])
    c.kill(leader2)
    rc, fig, err, wall = bench(c, "no-quorum", SMALL_COUNT, "no-quorum",
                               timeout_ms=NO_QUORUM_ACK_MS)
    assert rc != 0, "bench without quorum succeeded: %r" % fig
    assert fig is None or fig["errors"] > 0, fig
    assert err.startswith("js_tool: bench:") and err.count("\n") == 1, err
    bound = NO_QUORUM_ACK_MS / 1000 + NO_QUORUM_SLACK_S
    assert wall <= bound, "the failing bench took %.2fs (bound %.2fs)" % (wall, bound)
    print("without quorum: rc=%d after %.2fs: %s" % (rc, wall, err.strip()), flush=True)

    # --- both back: same ports and store dirs; the stream takes writes again
    t_back = time.monotonic()
    c.start(leader1, wait=False)
    c.start(leader2, wait=False)
    c.wait_ready()
    election2 = c.wait_stream_leader(STREAM)
    print("restarted %s and %s; cluster ready and stream leader after %.2fs" % (
        c.name(leader1), c.name(leader2), time.monotonic() - t_back), flush=True)
    figures["restored"] = expect_ok_bench(c, "restored", SMALL_COUNT, "restored")
    total = FIRST_COUNT + 2 * SMALL_COUNT

    # Every replica catches up: all peers current, nothing of the failed bench.
    def caught_up():
        i = info(c)
        return i["messages"] == total and all(p["current"] for p in i["peers"]) and i
    i3 = nc.wait_until(caught_up, nc.WAIT_S, "every replica current with %d messages" % total)
    print("info after recovery: %s" % json.dumps(i3), flush=True)
    lines = dump(c)
    check_ids(lines[:FIRST_COUNT], 1, "first", FIRST_COUNT)
    check_ids(lines[FIRST_COUNT:FIRST_COUNT + SMALL_COUNT], FIRST_COUNT + 1, "one-down",
              SMALL_COUNT)
    check_ids(lines[FIRST_COUNT + SMALL_COUNT:], FIRST_COUNT + SMALL_COUNT + 1, "restored",
              SMALL_COUNT)

    # dump skips a deleted sequence (JetStream answers "no message found").
    reply = json.loads(nc.nats_request(c.url(leader1), "$JS.API.STREAM.MSG.DELETE." + STREAM,
                                       json.dumps({"seq": DELETED_SEQ})))
    assert reply.get("success") is True, reply
    lines = dump(c)
    seqs = [m["stream_seq"] for m in lines]
    assert seqs == [s for s in range(1, total + 1) if s != DELETED_SEQ], seqs[:10]
    total -= 1

    # --- larger runs for figures (no ids: the plain forwarder path): the
    # whole burst in flight, a window of 64, and one at a time, the last
    # also without libnats's 1 ms write batching
    for label, count, window, asap in (("perf", PERF_COUNT, None, False),
                                       ("perf-w64", PERF_COUNT, 64, False),
                                       ("perf-w1", PERF_COUNT // 5, 1, False),
                                       ("perf-w1-asap", PERF_COUNT // 5, 1, True)):
        figures[label] = expect_ok_bench(c, label, count, subject="t.perf", max_pending=window,
                                         send_asap=asap)
        total += count
    assert info(c)["messages"] == total

    rc, _, err = c.js(["delete", "--stream", STREAM])
    assert rc == 0, "delete: rc %d: %s" % (rc, err.strip())
    rc, _, err = c.js(["info", "--stream", STREAM])
    assert rc != 0 and "not found" in err.lower(), (rc, err)

    print("figures (R3 file storage, %d-byte messages, one publisher):" % SIZE)
    for label, f in figures.items():
        print("  %-12s %6d msgs  %9.0f msg/s  p50 %7.2f ms  p99 %7.2f ms" % (
            label, f["msgs"], f["rate"], f["p50_ms"], f["p99_ms"]))
    print("stream leader elections: %.2fs after losing the leader, %.2fs after the restart"
          % (election1, election2), flush=True)


def main():
    if not nc.find_nats_server():
        print("SKIP: nats-server is not installed (Debian: apt-get install nats-server)",
              flush=True)
        sys.exit(SKIP)
    name = os.path.basename(sys.argv[0])
    t0 = time.monotonic()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, _raise_terminated)
    signal.alarm(int(TEST_BUDGET_S))
    base = tempfile.mkdtemp(prefix="berth-js-")
    status = 1
    try:
        with nc.NatsCluster(base, n=3) as c:
            run(c)
        status = 0
    except Terminated as e:
        print("%s: TERMINATED (%s) after %.1fs" % (name, e, time.monotonic() - t0), flush=True)
    except BaseException:  # noqa: BLE001 - any failure is a test failure
        traceback.print_exc()
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if os.environ.get("BERTH_IT_KEEP"):
            print("kept %s (BERTH_IT_KEEP)" % base)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print("%s: %s after %.1fs" % (name, "passed" if status == 0 else "FAILED",
                                 time.monotonic() - t0), flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
