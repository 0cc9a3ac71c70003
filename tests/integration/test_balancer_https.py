"""The balancer's HTTP API over TLS (--https-cert/--https-key, GnuTLS
through libmicrohttpd): lookups, health and the dashboard answer over
HTTPS verified against the cluster's CA; `berth send` discovers a node
through an https:// balancer; plain HTTP, TLS 1.1 and a client that does not
trust the CA are refused; a missing key file stops the balancer with a
message naming it."""
import json
import socket
import ssl
import subprocess

import warnings

import cluster
from cluster import BALANCER_BIN

# Python marks TLS 1.1 deprecated; refusing it is what this test checks.
warnings.filterwarnings("ignore", category=DeprecationWarning)

HTTPS = ["--https-cert", "@CERTS@/node.pem", "--https-key", "@CERTS@/node.key"]


def test():
    with cluster.Cluster(n=2, balancer_args=HTTPS) as c:
        c.wait_healthy(2)
        assert c.balancer_url.startswith("https://"), c.balancer_url

        status, body, ctype = cluster.http_get(c.http_port, "/v1/pick", ca=c.ca)
        pick = json.loads(body)
        assert status == 200 and pick["id"] in ("node1", "node2"), (status, body)
        assert len(pick.get("cert_sha256", "")) == 64, pick
        status, body, ctype = cluster.http_get(c.http_port, "/", ca=c.ca)
        assert status == 200 and ctype.startswith("text/html"), (status, ctype)

        # The CLI and libberth: discovery over HTTPS with the same --ca.
        rc, out, err = c.run_cli(["send", "--ca", c.ca, "--balancer", c.balancer_url],
                                 input=b"over https\n")
        print("berth send via https:", out.strip(), err.strip())
        assert rc == 0 and out.startswith("ack id=1 "), (rc, out, err)
        rc, out, err = c.run_cli(["pick", "--ca", c.ca, "--balancer", c.balancer_url])
        assert rc == 0, err

        # A client without the CA is refused, and says why.
        rc, out, err = c.run_cli(["pick", "--balancer", c.balancer_url])
        print("pick without the CA:", err.strip())
        assert rc != 0 and "certificate" in err.lower(), err

        # Plain HTTP on the TLS port gets no HTTP answer.
        try:
            st = cluster.http_get(c.http_port, "/healthz", 2.0)[0]
        except (OSError, Exception) as e:  # noqa: BLE001 - any failure is the point
            st = type(e).__name__
        assert st != 200, "plain HTTP answered on the HTTPS port"

        # TLS 1.1 is refused; TLS 1.2 works.
        for version, ok in ((ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True)):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(c.ca)
            ctx.minimum_version = ctx.maximum_version = version
            if version == ssl.TLSVersion.TLSv1_1:
                ctx.set_ciphers("ALL:@SECLEVEL=0")
            try:
                with socket.create_connection(("127.0.0.1", c.http_port), 3) as s:
                    with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
                        got = t.version()
            except (ssl.SSLError, OSError) as e:
                got = None
                print("%s: refused (%s)" % (version.name, e))
            assert (got is not None) == ok, (version, got)

    # A key file that does not exist: the balancer says which and stops.
    with cluster.Cluster(n=0, start_nodes=False, plaintext=True) as c:
        p = subprocess.run([BALANCER_BIN, "--http", "127.0.0.1:0", "--heartbeat-plaintext",
                            "--heartbeat-bind", "tcp://127.0.0.1:0",
                            "--https-cert", c.cert, "--https-key", c.certs + "/missing.key"],
                           capture_output=True, timeout=10, env=cluster.child_env())
        err = p.stderr.decode()
        print("missing key:", err.strip())
        assert p.returncode != 0 and "missing.key" in err, (p.returncode, err)
        p = subprocess.run([BALANCER_BIN, "--http", "127.0.0.1:0", "--heartbeat-plaintext",
                            "--heartbeat-bind", "tcp://127.0.0.1:0", "--https-cert", c.cert],
                           capture_output=True, timeout=10, env=cluster.child_env())
        assert p.returncode != 0 and "--https-key" in p.stderr.decode(), p.stderr


if __name__ == "__main__":
    cluster.main(test)
