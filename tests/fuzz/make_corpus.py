#!/usr/bin/env python3
"""make_corpus: writes the seed corpora under tests/fuzz/corpus/<target>/.
The seeds are committed; this script is how they were made (rerun it after
a protocol change). Each seed is small and valid or nearly valid input."""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
HDR = struct.Struct(">IBBHQ")
HELLO, PING, ECHO, SEND, INFO, BYE = 1, 2, 3, 4, 5, 6
WELCOME, PONG, ECHO_REPLY, ACK, INFO_REPLY, ERROR = 0x81, 0x82, 0x83, 0x84, 0x85, 0xFF


def frame(t, rid, payload=b"", version=1, flags=0, length=None):
    return HDR.pack(len(payload) if length is None else length, version, t, flags, rid) + payload


def hello(rid=1, name=b"fuzz", version=1, producer=b""):
    body = struct.pack(">HB", version, len(name)) + name
    if producer:
        body += struct.pack(">B", len(producer)) + producer
    return frame(HELLO, rid, body)


def send(rid, mid, data):
    return frame(SEND, rid, struct.pack(">Q", mid) + data)


def welcome(rid=1):
    nid = b"node1"
    return frame(WELCOME, rid, struct.pack(">HQIIB", 1, 7, 1 << 20, 300000, len(nid)) + nid)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frames():
    mp = struct.pack(">I", 1 << 20)
    seeds = {
        "hello": hello(),
        "hello_producer": hello(version=2, producer=b"0123456789abcdef"),
        "session": hello() + frame(PING, 2, b"abc") + frame(ECHO, 3, b"x" * 40) +
        send(4, 9, b"payload") + frame(INFO, 5) + frame(BYE, 6),
        "replies": welcome() + frame(PONG, 2) + frame(ACK, 3, struct.pack(">Q", 9) + b"\x11" * 32) +
        frame(ERROR, 4, struct.pack(">H", 5) + b"too large") + frame(INFO_REPLY, 5, b"{}"),
        "bad_version": frame(PING, 1, version=2),
        "bad_flags": frame(PING, 1, flags=1),
        "unknown_type": frame(0x42, 1),
        "too_large": frame(ECHO, 1, length=0xFFFFFFFF),
        "truncated": hello()[:10],
        "hello_trailing": frame(HELLO, 1, struct.pack(">HB", 1, 2) + b"abc"),
        "error_ctl": frame(ERROR, 1, struct.pack(">H", 1) + b"a\x00b\x1b[31m"),
    }
    for name, data in seeds.items():
        write("fuzz_frame", name, mp + data)
    write("fuzz_frame", "small_max", struct.pack(">I", 4) + frame(ECHO, 1, b"12345"))


def session():
    # control bytes: chunk size - 1, settings, clock step (ms)
    whole = hello() + frame(PING, 2, b"abc") + frame(ECHO, 3, b"e" * 100) + \
        send(4, 1, b"data") + frame(INFO, 5) + frame(BYE, 6)
    seeds = {
        "whole": bytes([255, 0, 0]) + whole,
        "bytewise": bytes([0, 0, 1]) + whole,
        "drain": bytes([15, 8, 0]) + hello() + frame(PING, 2) + frame(PING, 3)[:7],
        "not_ready": bytes([255, 0, 0]) + frame(PING, 1),
        "second_hello": bytes([255, 0, 0]) + hello() + hello(2),
        "too_large": bytes([255, 0, 0]) + hello() + frame(ECHO, 2, length=5000),
        "reply_sent": bytes([255, 0, 0]) + hello() + welcome(2),
        "idle": bytes([0, 16, 250]) + hello() + b"\x00" * 12,
        "backpressure": bytes([255, 4, 0]) + hello() + b"".join(
            frame(ECHO, i, b"z" * 1000) for i in range(2, 80)),
        "hello_v0": bytes([255, 0, 0]) + hello(version=0),
    }
    for name, data in seeds.items():
        write("fuzz_session", name, data)


def hb_msgs():
    boot = "0123456789abcdef"
    seeds = {
        "register": {"type": "register", "node": "node1", "boot": boot, "seq": 1,
                     "addr": "127.0.0.1:7001", "capacity": 100, "version": "0.1.0"},
        "register_v6": {"type": "register", "node": "n-2.x_y", "boot": boot, "seq": 0,
                        "addr": "[::1]:7443", "capacity": 1, "version": "1"},
        "heartbeat": {"type": "heartbeat", "node": "node1", "boot": boot, "seq": 2,
                      "sessions": 3, "accepted": 10, "msgs_per_sec": 12.5, "healthy": True,
                      "draining": False, "reason": "",
                      "workers": [{"ticks": 5, "hs_ok": 1, "hs_failed": 0},
                                  {"ticks": 6, "hs_ok": 2, "hs_failed": 1}]},
        "heartbeat_sick": {"type": "heartbeat", "node": "node1", "boot": boot, "seq": 9,
                           "sessions": 0, "accepted": 0, "msgs_per_sec": 0, "healthy": False,
                           "draining": True, "reason": "worker 1 stalled", "workers": []},
        "leave": {"type": "leave", "node": "node1", "boot": boot, "seq": 3},
        "ack": {"type": "ack", "node": "node1", "interval_ms": 250, "epoch": 7},
        "reregister": {"type": "reregister", "node": "node1", "interval_ms": 250, "epoch": 0},
    }
    for name, obj in seeds.items():
        write("fuzz_hb_msg", name, json.dumps(obj, separators=(",", ":")).encode())
    write("fuzz_hb_msg", "dup_keys", b'{"type":"leave","node":"a","node":"b","boot":"'
          + boot.encode() + b'","seq":1}')
    write("fuzz_hb_msg", "scalar", b'"register"')
    write("fuzz_hb_msg", "big_int", b'{"type":"ack","node":"x","interval_ms":1,'
          b'"epoch":18446744073709551615}')


def configs():
    seeds = {
        "flags": b"--name\0alpha\0--count\0007\0--verbose\0--interval=1.5s\0--max-frame\0" +
        b"64KiB\0--policy\0round-robin",
        "env": b"BERTH_COUNT=12\0--count=50\0pos1\0--\0--not-a-flag",
        "bad_bound": b"--count\0-3",
        "help": b"--help",
        "version": b"--version",
        "unknown": b"--nope=1",
        "missing_value": b"--name",
        "sizes": b"--huge\0009999999999999999999TiB\0--forever\0001.0000000000000000001h",
        "bool": b"--off=yes\0--verbose=maybe",
        "enum_empty": b"--level=",
    }
    for name, data in seeds.items():
        write("fuzz_config", name, data)


def queries():
    seeds = {
        "empty": b"",
        "key": b"key=user-42",
        "exclude": b"exclude=n1,n2",
        "exclude_all": b"exclude=n1,n2,node-3.x_y",
        "both": b"key=abc&exclude=n1&cachebust=1",
        "pct": b"key=%E2%9C%93%00x",
        "dup_key": b"key=a&key=b",
        "empty_key": b"key=",
        "bad_exclude": b"exclude=a%20b,,",
        "long_key": b"key=" + b"k" * 300,
        "many_exclude": b"exclude=" + b",".join(b"x%d" % i for i in range(40)),
    }
    for name, data in seeds.items():
        write("fuzz_pick_query", name, data)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def record(seq, mid, data, name=b"cli", peer=b"127.0.0.1:9", cert=b"", producer=b""):
    body = name + peer + cert + producer + data
    length = 40 + len(body) + 4
    h = struct.pack(">IIQQQBBHHH", 0x424A5231, length, seq, mid, 1700000000000, len(name),
                    len(peer), len(cert), 1 if cert else 0, len(producer))
    r = h + body
    return r + struct.pack(">I", crc32c(r))


def journal_records():
    write("fuzz_journal_record", "one", record(1, 10, b"payload"))
    write("fuzz_journal_record", "two", record(1, 10, b"a") + record(2, 20, b"bb"))
    write("fuzz_journal_record", "mtls", record(3, 30, b"x", cert=b"\x11" * 32 + b"CN=client"))
    write("fuzz_journal_record", "empty_data", record(4, 40, b""))
    write("fuzz_journal_record", "producer", record(5, 50, b"p", producer=b"0123456789abcdef"))
    write("fuzz_journal_record", "torn", record(1, 10, b"payload")[:-3])


def feed_msgs():
    seeds = {
        "subscribe": b"S" + struct.pack(">QI", 1, 1024),
        "subscribe_durable": b"S" + struct.pack(">QIB", 0, 64, 7) + b"archive",
        "credit": b"C" + struct.pack(">I", 512),
        "confirm": b"K" + struct.pack(">Q", 99),
        "bye": b"X",
        "welcome": b"W" + struct.pack(">B", 5) + b"node1" + struct.pack(">QQ", 1, 100),
        "error": b"E" + struct.pack(">B", 2) + b"not subscribed",
        "record": b"R" + record(1, 10, b"payload"),
    }
    for name, data in seeds.items():
        write("fuzz_feed_msg", name, data)


if __name__ == "__main__":
    journal_records()
    feed_msgs()
    frames()
    session()
    hb_msgs()
    configs()
    queries()
