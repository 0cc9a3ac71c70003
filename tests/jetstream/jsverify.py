"""jsverify: what the JetStream tests check a stream against: reads every
message of a stream (js_tool dump) into the records berth's forwarder
made of them, and compares them with what clients saw acknowledged."""
import hashlib
import json


def stream_records(nats, stream):
    """Every message of stream: a list of dicts node, seq, id, client,
    producer, msg_id, sha256 (as the header says), data_sha256 (of the
    payload), subject, stream_seq."""
    rc, out, err = nats.js(["dump", "--stream", stream])
    assert rc == 0, "js_tool dump %s: %s" % (stream, err)
    recs = []
    for line in out.splitlines():
        m = json.loads(line)
        h = m.get("headers", {})
        data = bytes.fromhex(m.get("data_hex", ""))
        recs.append({"node": h.get("Berth-Node"), "seq": int(h.get("Berth-Seq", 0)),
                     "id": int(h.get("Berth-Message-Id", 0)), "client": h.get("Berth-Client"),
                     "producer": h.get("Berth-Producer"), "msg_id": h.get("Nats-Msg-Id"),
                     "sha256": h.get("Berth-Sha256"),
                     "data_sha256": hashlib.sha256(data).hexdigest(), "data": data,
                     "subject": m.get("subject"), "stream_seq": m.get("stream_seq")})
    return recs


def check_exactly_once(recs, acked):
    """acked: {(client, message id): sha256 hex}. Returns (missing, dups,
    bad): acknowledged messages not in the stream, messages stored more than
    once (by client and message id), and records whose payload does not
    match their own digest."""
    seen, digests = {}, {}
    bad = [r for r in recs if r["sha256"] != r["data_sha256"]]
    for r in recs:
        k = (r["client"], r["id"])
        seen[k] = seen.get(k, 0) + 1
        digests.setdefault(k, set()).add(r["sha256"])
    missing = [k for k, digest in acked.items() if digest not in digests.get(k, ())]
    dups = {k: n for k, n in seen.items() if n > 1}
    return missing, dups, bad


def per_node_seqs(recs):
    """{node: sorted list of journal seqs stored}."""
    out = {}
    for r in recs:
        out.setdefault(r["node"], []).append(r["seq"])
    return {n: sorted(s) for n, s in out.items()}
