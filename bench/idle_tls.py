"""idle_tls: opens many TLS connections to one server and leaves them idle,
for the memory-per-idle-connection row of bench/side_by_side.py. Handshakes
run non-blocking from one thread, a bounded number at a time; with --hello
each connection also does berth's HELLO -> WELCOME, so a berth-node holds a
full session, not a half-open one. Only the Python standard library.

As a program: python3 bench/idle_tls.py HOST:PORT --ca CA --count N [--hello]
opens the connections, prints "open N", and holds them until stdin closes."""

import argparse
import resource
import selectors
import socket
import ssl
import struct
import sys
import time

HEADER = struct.Struct(">IBBHQ")  # length, version, type, flags, request id
HELLO, WELCOME = 0x01, 0x81


def raise_nofile(need):
    """Raises RLIMIT_NOFILE to the hard limit; False when that is under need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= need


def _hello_frame():
    name = b"idle"
    body = struct.pack(">HB", 1, len(name)) + name
    return HEADER.pack(len(body), 1, HELLO, 0, 1) + body


class _Conn:
    __slots__ = ("sock", "state", "out", "inbuf")

    def __init__(self, sock):
        self.sock = sock
        self.state = "connect"  # connect -> handshake -> (hello ->) done
        self.out = b""
        self.inbuf = b""


def open_idle(host, port, ca_file, count, hello=False, parallel=200, timeout=120.0):
    """Opens count TLS connections to host:port and returns the SSL sockets
    (the caller closes them). Raises RuntimeError naming the first failure
    when a connection cannot be completed or the whole takes over timeout."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.check_hostname = False  # the bench certificate names no host we dial
    sel = selectors.DefaultSelector()
    done, pending, started = [], set(), 0
    deadline = time.monotonic() + timeout
    hello_bytes = _hello_frame()

    def start_one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((host, port))
        if err not in (0, 115):  # EINPROGRESS
            s.close()
            raise RuntimeError("connect to %s:%d: errno %d" % (host, port, err))
        c = _Conn(s)
        pending.add(c)
        sel.register(s, selectors.EVENT_WRITE, c)

    def step(c):
        if c.state == "connect":
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise RuntimeError("connect to %s:%d: errno %d" % (host, port, err))
            sel.unregister(c.sock)
            c.sock = ctx.wrap_socket(c.sock, do_handshake_on_connect=False)
            c.state = "handshake"
            sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        if c.state == "handshake":
            try:
                c.sock.do_handshake()
            except ssl.SSLWantReadError:
                sel.modify(c.sock, selectors.EVENT_READ, c)
                return
            except ssl.SSLWantWriteError:
                sel.modify(c.sock, selectors.EVENT_WRITE, c)
                return
            if not hello:
                finish(c)
                return
            c.state, c.out = "hello", hello_bytes
        if c.state == "hello":
            while c.out:
                try:
                    n = c.sock.send(c.out)
                except (ssl.SSLWantWriteError, BlockingIOError):
                    sel.modify(c.sock, selectors.EVENT_WRITE, c)
                    return
                c.out = c.out[n:]
            c.state = "welcome"
            sel.modify(c.sock, selectors.EVENT_READ, c)
        if c.state == "welcome":
            while True:
                try:
                    data = c.sock.recv(4096)
                except (ssl.SSLWantReadError, BlockingIOError):
                    return
                if not data:
                    raise RuntimeError("%s:%d closed a connection before WELCOME" % (host, port))
                c.inbuf += data
                if len(c.inbuf) >= HEADER.size:
                    length, _, ftype, _, _ = HEADER.unpack_from(c.inbuf)
                    if ftype != WELCOME:
                        raise RuntimeError("HELLO answered with frame type 0x%02x" % ftype)
                    if len(c.inbuf) >= HEADER.size + length:
                        finish(c)
                        return

    def finish(c):
        sel.unregister(c.sock)
        pending.discard(c)
        done.append(c.sock)

    try:
        while len(done) < count:
            while started < count and len(pending) < parallel:
                start_one()
                started += 1
            if time.monotonic() > deadline:
                raise RuntimeError("only %d of %d connections open after %.0f s"
                                   % (len(done), count, timeout))
            for key, _ in sel.select(1.0):
                step(key.data)
    except BaseException:
        for c in pending:
            c.sock.close()
        for s in done:
            s.close()
        raise
    finally:
        sel.close()
    return done


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("addr", help="HOST:PORT")
    ap.add_argument("--ca", required=True, help="CA certificate of the server")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--hello", action="store_true", help="berth HELLO -> WELCOME on each")
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    if not raise_nofile(a.count + 64):
        sys.exit("idle_tls: RLIMIT_NOFILE hard limit is below %d" % (a.count + 64))
    socks = open_idle(host, int(port), a.ca, a.count, a.hello)
    print("open %d" % len(socks), flush=True)
    sys.stdin.read()
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
