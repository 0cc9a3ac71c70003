"""side_by_side: runs berth and its peers (nginx, HAProxy, Redis Sentinel)
in one go on this machine, server pinned to one core and load generator to
the other, and writes a markdown table, the raw JSON and a gnuplot PNG to
bench/results/. Called by bench/run.sh; only the Python standard library.

Every throughput row also reports the server's own CPU time per request
(utime+stime from /proc/<pid>/stat before and after), which does not depend
on the load generator.

Two rows are not request rates: bulk transfer over one connection (bytes
per server CPU second, with `openssl speed -evp aes-128-gcm` as the crypto
bound) and memory per idle TLS connection at 10,000 of them (PSS and RSS
growth of the server's processes from /proc/<pid>/smaps_rollup; the
connections are opened by bench/idle_tls.py from this process)."""

import argparse
import atexit
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idle_tls  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("BERTH_BUILD_DIR") or os.path.join(ROOT, "build")
NODE = os.path.join(BUILD, "node", "berth-node")
BALANCER = os.path.join(BUILD, "balancer", "berth-balancer")
CLI = os.path.join(BUILD, "shared", "berth")
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROCS = []  # every Popen started, stopped at exit by pid
IDLE_CONNS = 10000  # idle TLS connections for the memory row
BULK_SIZE = 64 * 1024  # message size of the bulk row
BULK_FILE = 1 << 30  # nginx's file for the bulk row (1 GiB)


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def spawn(argv, name, work, cpu=None):
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    out = open(os.path.join(work, name + ".log"), "wb")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         cwd=work, start_new_session=True)
    p.name = name
    PROCS.append(p)
    return p


def stop(p, sig=signal.SIGTERM, bound=3.0):
    if p.poll() is not None:
        return
    try:
        os.kill(p.pid, sig)
    except ProcessLookupError:
        return
    try:
        p.wait(bound)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)


def stop_all():
    for p in PROCS:
        try:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
            stop(p)
        except Exception:  # noqa: BLE001 - teardown goes on
            pass


def wait_port(port, bound=10.0):
    end = time.monotonic() + bound
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nothing listens on port %d after %.0f s" % (port, bound))


def cpu_ticks(pid):
    """utime+stime of pid and all its children processes, in ticks."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
            for t in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, t)) as f:
                    todo += [int(x) for x in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def run(argv, cpu=None, timeout=120):
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    r = subprocess.run(argv, capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("%s exited %d: %s" % (" ".join(argv), r.returncode,
                                                  r.stderr.decode(errors="replace")[-800:]))
    return r.stdout.decode(errors="replace")


def measured(server_pid, fn):
    """Runs fn() and returns (its result, server CPU seconds used meanwhile)."""
    t0 = cpu_ticks(server_pid)
    res = fn()
    t1 = cpu_ticks(server_pid)
    return res, (t1 - t0) / CLK_TCK


def berth_bench(addr, ca, cpu, args):
    out = run([CLI, "bench", "--node", addr, "--ca", ca, "--json"] + args, cpu=cpu,
              timeout=300)
    return json.loads(out)


def wrk(url, cpu, duration, conns=64):
    out = run(["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--latency", url], cpu=cpu,
              timeout=duration + 60)
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    reqs = int(m.group(1))
    secs = float(m.group(2)) * (60 if m.group(3) == "m" else 1)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errs = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat["p" + pct] = float(val) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
    return {"requests": reqs, "elapsed_s": secs, "rate": rate, "latency_us": lat,
            "errors": (errs.group(1) if errs else "") + (" non2xx=%s" % non2xx.group(1) if non2xx else "")}


def openssl_bound(cpu):
    out = run(["openssl", "speed", "-seconds", "3", "ecdsap256", "ecdhx25519"], cpu=cpu,
              timeout=120)
    m = re.search(r"256 bits ecdsa \(nistp256\)\s+[\d.]+s\s+[\d.]+s\s+([\d.]+)\s+([\d.]+)", out)
    sign = float(m.group(1))
    x = float(re.search(r"253 bits ecdh \(X25519\)\s+[\d.]+s\s+([\d.]+)", out).group(1))
    # A TLS 1.3 server: one ECDSA signature, one X25519 key generation and one derivation.
    return {"ecdsa_p256_sign_per_s": sign, "x25519_per_s": x,
            "handshakes_per_s": 1.0 / (1.0 / sign + 2.0 / x)}


def aes_gcm_bound(cpu):
    """AES-128-GCM bytes/s of one core at 16 KiB records (a TLS record's size)."""
    out = run(["openssl", "speed", "-seconds", "2", "-bytes", "16384", "-evp", "aes-128-gcm"],
              cpu=cpu, timeout=120)
    m = re.search(r"^aes-128-gcm\s+([\d.]+)k\s*$", out, re.M | re.I)
    return float(m.group(1)) * 1000.0


def pids_of(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, t)) as f:
                    todo += [int(x) for x in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def memory_kb(pid):
    """{"pss": kB, "rss": kB} of pid and its descendants (smaps_rollup)."""
    tot = {"pss": 0, "rss": 0}
    for p in pids_of(pid):
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    k = line.split(":")[0]
                    if k in ("Pss", "Rss"):
                        tot[k.lower()] += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return tot


def idle_memory(pid, port, ca, count, hello):
    """Memory growth of server pid for count idle TLS connections to port:
    {"before", "after", "per_conn_pss_b", "per_conn_rss_b", "open_s"}."""
    before = memory_kb(pid)
    t0 = time.monotonic()
    socks = idle_tls.open_idle("127.0.0.1", port, ca, count, hello=hello)
    took = time.monotonic() - t0
    try:
        time.sleep(1.0)  # let the server settle (lazy frees, timers)
        after = memory_kb(pid)
    finally:
        for sk in socks:
            sk.close()
    return {"before": before, "after": after, "open_s": took, "connections": count,
            "per_conn_pss_b": (after["pss"] - before["pss"]) * 1024.0 / count,
            "per_conn_rss_b": (after["rss"] - before["rss"]) * 1024.0 / count}


def curl_bulk(url, cpu):
    """Downloads url once over HTTPS: {"bytes", "elapsed_s", "rate"} (bytes/s)."""
    out = run(["curl", "-skf", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
              cpu=cpu, timeout=300)
    size, secs = out.split()
    if int(size) != BULK_FILE:
        raise RuntimeError("curl %s: %s bytes, not %d" % (url, size, BULK_FILE))
    return {"bytes": int(size), "elapsed_s": float(secs), "rate": int(size) / float(secs)}


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {work}/ngx-body;
    proxy_temp_path {work}/ngx-proxy;
    fastcgi_temp_path {work}/ngx-fcgi;
    uwsgi_temp_path {work}/ngx-uwsgi;
    scgi_temp_path {work}/ngx-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "{body}"; }}
        location = /big {{ alias {work}/big.bin; default_type application/octet-stream; }}
    }}
}}
"""


def http_json(port, path, timeout=1.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        c.close()


def haproxy_status(sock_path, backend, server):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(1.0)
    try:
        s.connect(sock_path)
        s.sendall(b"show stat\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    lines = data.decode(errors="replace").splitlines()
    head = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        f = line.split(",")
        if len(f) >= len(head) and f[0] == backend and f[1] == server:
            return f[head.index("status")]
    return "?"


def sentinel_flags(port):
    s = socket.create_connection(("127.0.0.1", port), 1.0)
    try:
        s.sendall(b"*3\r\n$8\r\nSENTINEL\r\n$6\r\nmaster\r\n$8\r\nmymaster\r\n")
        data = b""
        end = time.monotonic() + 1.0
        while b"flags" not in data or not data.endswith(b"\r\n") or data.count(b"\r\n") < 12:
            if time.monotonic() > end:
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    parts = data.split(b"\r\n")
    for i, p in enumerate(parts):
        if p == b"flags" and i + 2 < len(parts):
            return parts[i + 2].decode()
    return ""


def watch(name, pred, t0, bound, results):
    """Polls pred() every 2 ms from t0 until true or bound seconds; stores ms."""
    end = t0 + bound
    while time.monotonic() < end:
        try:
            if pred():
                results[name] = (time.monotonic() - t0) * 1000.0
                return
        except Exception:  # noqa: BLE001 - a refused poll is "not yet"
            pass
        time.sleep(0.002)
    results[name] = None


def detect_all(watchers, bound):
    """Starts one thread per (name, pred) at the same instant; returns {name: ms or None}."""
    results = {}
    t0 = time.monotonic()
    ths = [threading.Thread(target=watch, args=(n, p, t0, bound, results)) for n, p in watchers]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return results, t0


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=int, default=5, help="seconds per throughput run")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--trials", type=int, default=3, help="kill -9 trials per detection row")
    ap.add_argument("--skip-slow", action="store_true",
                    help="leave out the rows at the peers' defaults (Sentinel: 30 s)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    for b in (NODE, BALANCER, CLI):
        if not os.access(b, os.X_OK):
            sys.exit("bench: %s is not built (BERTH_BUILD_DIR=%s)" % (b, BUILD))

    # 10,000 idle connections are opened from this process, and the servers
    # started from it inherit the limit.
    if not idle_tls.raise_nofile(IDLE_CONNS + 1024):
        sys.exit("bench: RLIMIT_NOFILE hard limit below %d (raise it: ulimit -Hn)"
                 % (IDLE_CONNS + 1024))
    work = tempfile.mkdtemp(prefix="berth-bench-")
    atexit.register(shutil.rmtree, work, True)
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    S, L, D = a.server_cpu, a.load_cpu, a.duration

    certs = os.path.join(work, "certs")
    run(["bash", os.path.join(ROOT, "deploy", "gen-certs.sh"), certs])
    ca, cert, key = (os.path.join(certs, n) for n in ("ca.pem", "node.pem", "node.key"))
    (http_port, hb_port, node_port, ngx_port, hap_eq_port, hap_def_port, redis_port,
     sent_eq_port, sent_def_port, node2_port, bulk_port, idle_port, ngx_idle_port) = free_ports(13)
    load_before = os.getloadavg()
    rows, raw = [], {}

    log("openssl speed bound on cpu %d" % S)
    bound = openssl_bound(S)
    raw["openssl_bound"] = bound

    # Heartbeats in plaintext: CURVE costs the heartbeat path, not what is
    # measured here, and the bench has no keys to hand out.
    bal = spawn([BALANCER, "--http", "127.0.0.1:%d" % http_port, "--heartbeat-bind",
                 "tcp://127.0.0.1:%d" % hb_port, "--interval", "250ms", "--fall", "3",
                 "--heartbeat-plaintext", "--http-per-ip-limit", "0", "--log-level", "warn"], "balancer", work, cpu=S)
    wait_port(http_port)
    node = spawn([NODE, "--id", "bench1", "--listen", "127.0.0.1:%d" % node_port, "--balancer",
                  "tcp://127.0.0.1:%d" % hb_port, "--cert", cert, "--key", key, "--workers", "1",
                  "--heartbeat-plaintext", "--log-level", "warn"], "node", work, cpu=S)
    wait_port(node_port)
    body = "x" * 64
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(work=work, port=ngx_port, cert=cert, key=key, body=body))
    ngx = spawn(["nginx", "-c", os.path.join(work, "nginx.conf"), "-p", work, "-e",
                 os.path.join(work, "nginx-error.log")], "nginx", work, cpu=S)
    wait_port(ngx_port)
    addr = "127.0.0.1:%d" % node_port

    # 1. round trips over 64 persistent connections, 64-byte payloads.
    log("round trips: berth-node ECHO, %d s" % D)
    b, bcpu = measured(node.pid, lambda: berth_bench(addr, ca, L, [
        "--mode", "echo", "--connections", "64", "--size", "64", "--duration", "%ds" % D]))
    log("round trips: nginx + wrk, %d s" % D)
    n, ncpu = measured(ngx.pid, lambda: wrk("https://127.0.0.1:%d/" % ngx_port, L, D))
    raw["rtt"] = {"berth": b, "berth_server_cpu_s": bcpu, "nginx": n, "nginx_server_cpu_s": ncpu}
    rows.append(("round trips/s, 64 keep-alive TLS connections, 64 B", "berth-node ECHO",
                 b["rate"], bcpu / max(b["requests"], 1), b["latency_us"].get("p99"),
                 "nginx return 200 (wrk)", n["rate"], ncpu / max(n["requests"], 1),
                 n["latency_us"].get("p99"), "1.5"))

    # 2. full TLS 1.3 handshakes, the same load generator against both.
    for exch_b, exch_n, label in (("none", "none", "handshake only"),
                                  ("hello", "http", "handshake + HELLO / GET")):
        log("handshakes (%s): berth-node, %d s" % (label, D))
        hb, hbcpu = measured(node.pid, lambda: berth_bench(addr, ca, L, [
            "--mode", "handshake", "--exchange", exch_b, "--connections", "16",
            "--duration", "%ds" % D]))
        log("handshakes (%s): nginx, %d s" % (label, D))
        hn, hncpu = measured(ngx.pid, lambda: berth_bench("127.0.0.1:%d" % ngx_port, ca, L, [
            "--mode", "handshake", "--exchange", exch_n, "--connections", "16",
            "--duration", "%ds" % D]))
        raw["handshake_" + exch_b] = {"berth": hb, "berth_server_cpu_s": hbcpu, "nginx": hn,
                                      "nginx_server_cpu_s": hncpu}
        rows.append(("full TLS 1.3 handshakes/s (%s)" % label, "berth-node", hb["rate"],
                      hbcpu / max(hb["requests"], 1), hb["latency_us"].get("p99"),
                      "nginx", hn["rate"], hncpu / max(hn["requests"], 1),
                      hn["latency_us"].get("p99"), "1.2"))

    # 3. bulk transfer on one connection: 64 KiB SENDs, 16 in flight, every
    # ACK checked (journal off: the transport, not the disk), against nginx
    # sending a 1 GiB file over HTTPS to curl. Bytes per server CPU second.
    log("bulk: openssl speed aes-128-gcm on cpu %d" % S)
    raw["aes_gcm_bytes_per_s"] = aes_gcm_bound(S)
    bulk_node = spawn([NODE, "--id", "bulk1", "--listen", "127.0.0.1:%d" % bulk_port, "--balancer",
                       "tcp://127.0.0.1:%d" % hb_port, "--cert", cert, "--key", key,
                       "--workers", "1", "--journal", "off", "--heartbeat-plaintext",
                       "--log-level", "warn"], "bulk-node", work, cpu=S)
    wait_port(bulk_port)
    log("bulk: berth-node SEND %d B x 16 in flight, 1 connection, %d s" % (BULK_SIZE, D))
    bb, bbcpu = measured(bulk_node.pid, lambda: berth_bench("127.0.0.1:%d" % bulk_port, ca, L, [
        "--mode", "send", "--connections", "1", "--pipeline", "16", "--size", str(BULK_SIZE),
        "--duration", "%ds" % D]))
    stop(bulk_node)
    with open(os.path.join(work, "big.bin"), "wb") as f:
        f.truncate(BULK_FILE)  # sparse: read from the page cache, never the disk
    # nginx's worker runs as another user when started as root: it must be
    # able to reach the file (mkdtemp made the directory 0700)
    os.chmod(work, 0o711)
    os.chmod(os.path.join(work, "big.bin"), 0o644)
    log("bulk: nginx 1 GiB file over HTTPS to curl")
    nb, nbcpu = measured(ngx.pid, lambda: curl_bulk("https://127.0.0.1:%d/big" % ngx_port, L))
    os.unlink(os.path.join(work, "big.bin"))
    raw["bulk"] = {"berth": bb, "berth_server_cpu_s": bbcpu, "nginx": nb,
                   "nginx_server_cpu_s": nbcpu}

    # 6. memory per idle TLS connection, 10,000 of them, fresh servers.
    idle_node = spawn([NODE, "--id", "idle1", "--listen", "127.0.0.1:%d" % idle_port, "--balancer",
                       "tcp://127.0.0.1:%d" % hb_port, "--cert", cert, "--key", key,
                       "--workers", "1", "--journal", "off", "--max-connections", "20000",
                       "--max-connections-per-addr", "0", "--max-handshakes-per-addr", "0",
                       "--heartbeat-plaintext", "--log-level", "warn"], "idle-node", work, cpu=S)
    wait_port(idle_port)
    time.sleep(0.5)
    log("idle memory: %d connections to berth-node (TLS + HELLO)" % IDLE_CONNS)
    im_b = idle_memory(idle_node.pid, idle_port, ca, IDLE_CONNS, hello=True)
    stop(idle_node)
    with open(os.path.join(work, "nginx-idle.conf"), "w") as f:
        f.write(NGINX_CONF.format(work=work, port=ngx_idle_port, cert=cert, key=key, body=body)
                .replace(work + "/nginx.pid", work + "/nginx-idle.pid"))
    ngx_idle = spawn(["nginx", "-c", os.path.join(work, "nginx-idle.conf"), "-p", work, "-e",
                      os.path.join(work, "nginx-idle-error.log")], "nginx-idle", work, cpu=S)
    wait_port(ngx_idle_port)
    time.sleep(0.5)
    log("idle memory: %d connections to nginx (TLS handshake)" % IDLE_CONNS)
    im_n = idle_memory(ngx_idle.pid, ngx_idle_port, ca, IDLE_CONNS, hello=False)
    stop(ngx_idle)
    raw["idle_memory"] = {"berth": im_b, "nginx": im_n}

    # 4. lookups: GET /v1/pick (wrk, keep-alive) vs SENTINEL get-master-addr-by-name.
    redis = spawn(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no",
                   "--bind", "127.0.0.1"], "redis", work, cpu=L)
    wait_port(redis_port)
    sentinels = {}
    for name, port, down_ms in (("sentinel-eq", sent_eq_port, 750),
                                ("sentinel-def", sent_def_port, 30000)):
        if name == "sentinel-def" and a.skip_slow:
            continue
        conf = os.path.join(work, name + ".conf")
        with open(conf, "w") as f:
            f.write("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %d 1\n"
                    "sentinel down-after-milliseconds mymaster %d\n" % (port, work, redis_port,
                                                                         down_ms))
        sentinels[name] = spawn(["redis-sentinel", conf], name, work, cpu=S)
        wait_port(port)
    end = time.monotonic() + 15
    while time.monotonic() < end:
        try:
            if http_json(http_port, "/v1/pick")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    log("lookups: balancer /v1/pick + wrk, %d s" % D)
    lk, lkcpu = measured(bal.pid, lambda: wrk("http://127.0.0.1:%d/v1/pick" % http_port, L, D))
    log("lookups: Sentinel + redis-benchmark")
    sp = sentinels["sentinel-eq"]

    def redis_bench():
        out = run(["redis-benchmark", "-p", str(sent_eq_port), "-c", "64", "-n", "300000", "-q",
                   "SENTINEL", "get-master-addr-by-name", "mymaster"], cpu=L, timeout=300)
        rate = float(re.findall(r"([\d.]+) requests per second", out)[-1])
        return {"rate": rate, "requests": 300000, "raw": out.strip().splitlines()[-1]}
    rs, rscpu = measured(sp.pid, redis_bench)
    raw["lookups"] = {"berth": lk, "berth_server_cpu_s": lkcpu, "sentinel": rs,
                      "sentinel_server_cpu_s": rscpu}
    rows.append(("lookups/s, 64 keep-alive connections", "balancer GET /v1/pick (wrk)", lk["rate"],
                 lkcpu / max(lk["requests"], 1), lk["latency_us"].get("p99"),
                 "Sentinel get-master-addr-by-name (redis-benchmark)", rs["rate"],
                 rscpu / rs["requests"], None, "2"))

    # 5. failure detection: one node watched by the balancer and by HAProxy.
    hap_sock = {}
    haps = {}
    for name, port, check in (("haproxy-eq", hap_eq_port, "check inter 250ms fall 3 rise 2"),
                              ("haproxy-def", hap_def_port, "check")):
        sock = os.path.join(work, name + ".sock")
        conf = os.path.join(work, name + ".cfg")
        with open(conf, "w") as f:
            f.write("global\n    stats socket %s mode 600 level admin\n"
                    "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n"
                    "    timeout server 5s\n"
                    "listen bk\n    bind 127.0.0.1:%d\n    server s1 127.0.0.1:%d %s\n"
                    % (sock, port, node2_port, check))
        haps[name] = spawn(["haproxy", "-db", "-f", conf], name, work)
        hap_sock[name] = sock
        wait_port(port)

    detect = {"kill": [], "stop": []}
    for trial in range(a.trials):
        for how in ("kill", "stop"):
            n2 = spawn([NODE, "--id", "victim", "--listen", "127.0.0.1:%d" % node2_port,
                        "--balancer", "tcp://127.0.0.1:%d" % hb_port, "--cert", cert, "--key", key,
                        "--workers", "1", "--heartbeat-plaintext", "--log-level", "warn"],
                       "victim", work)
            end = time.monotonic() + 20
            while time.monotonic() < end:
                ids = [x["id"] for x in http_json(http_port, "/v1/nodes")[1]["nodes"]]
                ups = [haproxy_status(hap_sock[h], "bk", "s1") for h in haps]
                if "victim" in ids and all(u.startswith("UP") for u in ups):
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError("victim node never became healthy everywhere")
            time.sleep(0.3)
            watchers = [("berth", lambda: "victim" not in [
                x["id"] for x in http_json(http_port, "/v1/nodes", 0.5)[1]["nodes"]])]
            for h in haps:
                watchers.append((h, lambda h=h: haproxy_status(hap_sock[h], "bk", "s1")
                                 .startswith("DOWN")))
            os.kill(n2.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
            res, _ = detect_all(watchers, 10.0)
            log("%s trial %d: %s" % (how, trial + 1, res))
            detect[how].append(res)
            os.kill(n2.pid, signal.SIGCONT)
            stop(n2, signal.SIGKILL)
            time.sleep(0.2)

    sent_res = []
    log("Sentinel: kill -9 of the monitored redis-server")
    watchers = [(n, lambda p=p: "s_down" in sentinel_flags(p))
                for n, p in (("sentinel-eq", sent_eq_port), ("sentinel-def", sent_def_port))
                if n in sentinels]
    os.kill(redis.pid, signal.SIGKILL)
    res, _ = detect_all(watchers, 45.0)
    sent_res.append(res)
    log("sentinel: %s" % res)
    raw["detect"] = detect
    raw["sentinel_detect"] = sent_res
    load_after = os.getloadavg()

    # --- report
    def med(vals):
        v = [x for x in vals if x is not None]
        return statistics.median(v) if v else None

    def fmt_ms(v):
        return "not detected in 10 s" if v is None else "%.0f ms" % v

    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    os.makedirs(a.out, exist_ok=True)
    cpu_model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {
        "berth": run([CLI, "--version"]).strip(),
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True).stderr.decode().strip(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True).stdout.decode().splitlines()[0],
        "haproxy": run(["haproxy", "-v"]).splitlines()[0],
        "redis": run(["redis-server", "--version"]).strip(),
        "openssl": run(["openssl", "version"]).strip(),
    }
    md = ["# berth side by side, %s" % now.strftime("%Y-%m-%d %H:%M UTC"), "",
          "Machine: %s, %d CPUs, %s %s. Server pinned to CPU %d, load generator to CPU %d. "
          "Load average before %.2f, after %.2f (the machine is shared with other jobs)." % (
              cpu_model, os.cpu_count(), platform.system(), platform.release(), S, L,
              load_before[0], load_after[0]),
          "", "Versions: " + "; ".join("%s: %s" % kv for kv in versions.items()), "",
          "Command: `bench/run.sh --duration %d --trials %d%s`" % (D, a.trials,
                                                                  " --skip-slow" if a.skip_slow else ""),
          "", "## Throughput (server CPU per request from /proc/<pid>/stat)", "",
          "| what | berth | rate | server CPU/req | p99 | peer | rate | server CPU/req | p99 | "
          "ratio (rate) | ratio (per server CPU s) | target |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    chart = []
    for (what, bn, br, bc, bp, pn, pr, pc, pp, target), short in zip(
            rows, ("round trips", "handshakes", "handshakes+HELLO/GET", "lookups")):
        r_rate = br / pr if pr else 0
        r_cpu = (pc / bc) if bc and pc else 0
        md.append("| %s | %s | %.0f/s | %.1f µs | %s | %s | %.0f/s | %.1f µs | %s | %.2f× | %.2f× | ≥ %s× |" % (
            what, bn, br, bc * 1e6, ("%.0f µs" % bp) if bp else "-", pn, pr, pc * 1e6,
            ("%.0f µs" % pp) if pp else "-", r_rate, r_cpu, target))
        chart.append((short, r_rate, r_cpu))
    md += ["", "Handshake bound from `openssl speed -seconds 3 ecdsap256 ecdhx25519` on the server "
           "CPU: %.0f signs/s, %.0f X25519/s → %.0f handshakes/s (1 sign + 2 X25519)." % (
               bound["ecdsa_p256_sign_per_s"], bound["x25519_per_s"], bound["handshakes_per_s"])]
    for key_, label in (("handshake_none", "handshake only"), ("handshake_hello", "with HELLO / GET")):
        h = raw[key_]
        bps = h["berth"]["requests"] / h["berth_server_cpu_s"] if h["berth_server_cpu_s"] else 0
        nps = h["nginx"]["requests"] / h["nginx_server_cpu_s"] if h["nginx_server_cpu_s"] else 0
        md.append("- %s: berth-node %.0f handshakes per server CPU second (%.0f %% of the bound), "
                  "nginx %.0f (%.0f %%)." % (label, bps, 100 * bps / bound["handshakes_per_s"], nps,
                                            100 * nps / bound["handshakes_per_s"]))
    bk, ib, inx = raw["bulk"], raw["idle_memory"]["berth"], raw["idle_memory"]["nginx"]
    b_rate, n_rate = bk["berth"]["bytes"] / bk["berth"]["elapsed_s"], bk["nginx"]["rate"]
    b_cpu = bk["berth"]["bytes"] / bk["berth_server_cpu_s"] if bk["berth_server_cpu_s"] else 0
    n_cpu = bk["nginx"]["bytes"] / bk["nginx_server_cpu_s"] if bk["nginx_server_cpu_s"] else 0
    aes = raw["aes_gcm_bytes_per_s"]
    mem_ratio = inx["per_conn_pss_b"] / ib["per_conn_pss_b"] if ib["per_conn_pss_b"] > 0 else 0
    md += ["", "## Bulk transfer and idle connections", "",
           "| what | berth | peer | ratio | target |", "|---|---|---|---|---|",
           "| bulk, one TLS connection, 64 KiB messages | berth-node SEND (16 in flight, every "
           "ACK checked, journal off): %.0f MB/s, %.0f MB per server CPU s | nginx, 1 GiB file "
           "over HTTPS (curl): %.0f MB/s, %.0f MB per server CPU s | %.2f× per server CPU s "
           "(%.2f× rate) | ≥ 1.0× |" % (b_rate / 1e6, b_cpu / 1e6, n_rate / 1e6, n_cpu / 1e6,
                                        b_cpu / n_cpu if n_cpu else 0,
                                        b_rate / n_rate if n_rate else 0),
           "| memory per idle TLS connection, %d open | berth-node (TLS + HELLO): %.1f KiB PSS, "
           "%.1f KiB RSS | nginx (TLS handshake done): %.1f KiB PSS, %.1f KiB RSS | nginx / berth "
           "%.2f× | ≥ 1.0× (no more than nginx) |" % (
               IDLE_CONNS, ib["per_conn_pss_b"] / 1024, ib["per_conn_rss_b"] / 1024,
               inx["per_conn_pss_b"] / 1024, inx["per_conn_rss_b"] / 1024, mem_ratio), "",
           "Crypto bound: `openssl speed -evp aes-128-gcm -bytes 16384` on the server CPU: %.0f MB/s "
           "(encrypt one way); berth-node reached %.0f %% of it per server CPU second, nginx %.0f %%."
           % (aes / 1e6, 100 * b_cpu / aes, 100 * n_cpu / aes),
           "Memory: growth of PSS (RSS) of the server's processes from `/proc/<pid>/smaps_rollup` "
           "between before and 1 s after the %d connections were open (opened %.1f s / %.1f s)."
           % (IDLE_CONNS, ib["open_s"], inx["open_s"])]
    chart.append(("bulk", b_rate / n_rate if n_rate else 0, b_cpu / n_cpu if n_cpu else 0))
    chart.append(("idle memory", mem_ratio, mem_ratio))
    md += ["", "## Failure detection (kill -9 and SIGSTOP of one node, %d trials, median)" % a.trials,
           "", "Time from the signal until the node is out of rotation (berth: gone from "
           "`/v1/nodes`; HAProxy: server DOWN in `show stat`; Sentinel: `s_down` flag), each "
           "polled every 2 ms.", "",
           "| event | berth (interval 250 ms, fall 3) | HAProxy inter 250ms fall 3 | HAProxy defaults (inter 2s fall 3) |",
           "|---|---|---|---|"]
    for how, label in (("kill", "kill -9 of the node"), ("stop", "SIGSTOP (hung node)")):
        vals = {k: med([r.get(k) for r in detect[how]]) for k in ("berth", "haproxy-eq", "haproxy-def")}
        md.append("| %s | %s | %s | %s |" % (label, fmt_ms(vals["berth"]), fmt_ms(vals["haproxy-eq"]),
                                             fmt_ms(vals["haproxy-def"])))
        chart.append(("detect_" + how, None, None))
    sr = sent_res[0]
    md += ["", "Redis Sentinel, kill -9 of the monitored redis-server: down-after 750 ms → %s; "
           "defaults (down-after 30 s) → %s." % (
               fmt_ms(sr.get("sentinel-eq")),
               "skipped (--skip-slow)" if "sentinel-def" not in sr else
               ("%.0f ms" % sr["sentinel-def"] if sr["sentinel-def"] else "not detected in 45 s")),
           "", "Raw numbers: `%s.json`; chart: `%s.png`." % (stamp, stamp), ""]
    md_path = os.path.join(a.out, stamp + ".md")
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    raw.update({"date": now.isoformat(), "versions": versions, "cpu": cpu_model,
                "load_before": load_before, "load_after": load_after})
    with open(os.path.join(a.out, stamp + ".json"), "w") as f:
        json.dump(raw, f, indent=1)

    dat = os.path.join(work, "chart.dat")
    with open(dat, "w") as f:
        for name, r_rate, r_cpu in chart:
            if r_rate is not None:
                f.write("\"%s\" %.3f %.3f\n" % (name, r_rate, r_cpu))  # names have spaces
    png = os.path.join(a.out, stamp + ".png")
    gp = ("set terminal pngcairo size 900,500; set output '%s';"
          "set title 'berth / peer (higher is better)'; set style data histograms;"
          "set style fill solid 0.8 border -1; set boxwidth 0.9; set yrange [0:*];"
          "set xtics noenhanced rotate by -25; set grid ytics; set key top left opaque box;"
          "plot '%s' using 2:xtic(1) title 'rate ratio', '' using 3 title 'per server CPU second ratio',"
          " 1 with lines lc rgb 'black' dt 2 notitle" % (png, dat))
    run(["gnuplot", "-e", gp])
    print("\n".join(md))
    log("wrote %s, .json, .png" % md_path)


if __name__ == "__main__":
    main()
