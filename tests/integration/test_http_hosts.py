"""--http-allowed-hosts against DNS rebinding: a request whose Host is not
in the list gets 421 with a JSON error (counted in /metrics), one whose
Host is (any case) is answered; a request without Host is refused too."""
import http.client
import json
import socket

import cluster


def get(port, host):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.putrequest("GET", "/v1/nodes", skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read()
    finally:
        conn.close()


def test():
    with cluster.Cluster(n=0, start_nodes=False, plaintext=True) as c:
        c.kill_balancer()
        c.procs["balancer"].wait(5)
        c.balancer_args += ["--http-allowed-hosts", "balancer.internal:%d,127.0.0.1:%d"
                            % (c.http_port, c.http_port)]
        c.start_balancer()
        st, ctype, body = get(c.http_port, "evil.example:%d" % c.http_port)
        print("foreign Host -> %d %s" % (st, body))
        assert st == 421 and ctype == "application/json", (st, ctype)
        assert json.loads(body)["error"] == "host_not_allowed"
        st, _, _ = get(c.http_port, "BALANCER.internal:%d" % c.http_port)
        assert st == 200, st
        s = socket.create_connection(("127.0.0.1", c.http_port), timeout=3)
        s.sendall(b"GET /v1/nodes HTTP/1.0\r\n\r\n")
        data = s.recv(4096)
        s.close()
        assert data.startswith(b"HTTP/1.0 421") or data.startswith(b"HTTP/1.1 421"), data[:40]
        st, text, _ = cluster.http_get(c.http_port, "/metrics")  # Host 127.0.0.1:port
        assert st == 200
        line = [l for l in text.decode().splitlines() if l.startswith("berth_http_host_refused_total")]
        assert line and int(line[0].split()[-1]) >= 2, line


if __name__ == "__main__":
    cluster.main(test)
