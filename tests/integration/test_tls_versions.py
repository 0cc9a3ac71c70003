"""A real node refuses clients that only speak TLS 1.0 or 1.1, and a
ClientHello offering nothing but weak (CBC, non-AEAD) suites, while TLS 1.2
and 1.3 clients are served, and so is a session opened before the refusals."""
import socket
import ssl
import warnings

import cluster

# Python marks TLS 1.0/1.1 deprecated; refusing them is what this test checks.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def handshake(c, i, version=None, ciphers=None):
    """The negotiated version, or None when the node refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(c.ca)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    host, port = c.node_addr(i).rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), 5) as s:
            with ctx.wrap_socket(s, server_hostname=host) as t:
                return t.version()
    except (ssl.SSLError, OSError) as e:
        print("  refused: %s" % e)
        return None


def test():
    with cluster.Cluster(n=1) as c:
        c.wait_healthy(1)
        with c.session(1) as s:
            s.hello()
            for name, version, ciphers, want in (
                    ("TLS 1.0 only", ssl.TLSVersion.TLSv1, "ALL:@SECLEVEL=0", None),
                    ("TLS 1.1 only", ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0", None),
                    ("TLS 1.2, CBC suites only", ssl.TLSVersion.TLSv1_2,
                     "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:@SECLEVEL=0", None),
                    ("TLS 1.2", ssl.TLSVersion.TLSv1_2, None, "TLSv1.2"),
                    ("TLS 1.3", ssl.TLSVersion.TLSv1_3, None, "TLSv1.3")):
                got = handshake(c, 1, version, ciphers)
                print("%-26s -> %s" % (name, got))
                assert got == want, "%s: negotiated %s, want %s" % (name, got, want)
            # The session opened first is still served.
            s.ping(2, b"after")
        h = c.node_health("node1")
        assert h["state"] == "healthy", h


if __name__ == "__main__":
    cluster.main(test)
