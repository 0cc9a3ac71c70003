"""Mutual TLS on the node (--client-ca, or BERTH_CLIENT_CA): a client with a
certificate from the CA gets in and INFO, the logs and every journal record
name it (CN and SHA-256); no certificate, one from another CA or one without
clientAuth fails the handshake (counted, logged with the reason) while the
other sessions go on; a node without --client-ca asks for nothing."""
import glob
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess

import cluster
import journal_file as tj  # the journal reader and node helpers


def openssl(args, cwd):
    r = subprocess.run(["openssl"] + args, cwd=cwd, capture_output=True, timeout=30)
    assert r.returncode == 0, "openssl %s: %s" % (args[0], r.stderr.decode(errors="replace"))


def issue(d, name, cn, ca_pem, ca_key, eku="clientAuth"):
    """A P-256 key and a certificate for cn signed by ca_pem/ca_key, EKU eku;
    returns (cert, key) paths."""
    key, csr, ext, pem = (os.path.join(d, name + s) for s in (".key", ".csr", ".ext", ".pem"))
    openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key], d)
    openssl(["req", "-new", "-key", key, "-subj", "/O=berth test/CN=%s" % cn, "-out", csr], d)
    with open(ext, "w", encoding="ascii") as f:
        f.write("basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=%s\n" % eku)
    openssl(["x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-set_serial",
             "0x%s" % os.urandom(8).hex(), "-sha256", "-days", "2", "-extfile", ext, "-out", pem], d)
    return pem, key


def make_ca(d, name):
    key, pem = os.path.join(d, name + ".key"), os.path.join(d, name + ".pem")
    openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key], d)
    openssl(["req", "-new", "-x509", "-key", key, "-sha256", "-days", "2", "-subj",
             "/CN=%s" % name, "-addext", "basicConstraints=critical,CA:true",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", pem], d)
    return pem, key


def cert_sha256(pem):
    with open(pem, encoding="ascii") as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).digest()


class CertSession(cluster.Session):
    """cluster.Session presenting a client certificate (or none)."""

    def __init__(self, ca_file, addr, cert=None, key=None, timeout=10.0):  # noqa: D401
        host, port = addr.rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=ca_file)
        if cert:
            ctx.load_cert_chain(cert, key)
        raw = socket.create_connection((host, int(port)), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        self.buf = b""
        self.closed = False
        self.close_how = None


def journal_records(d):
    """(record dict, ident_kind, cert bytes) for every record of a journal dir."""
    out = []
    for path in sorted(glob.glob(os.path.join(d, "*.seg"))):
        with open(path, "rb") as f:
            data = f.read()
        off = 0
        while off + tj.HEADER <= len(data):
            magic, length, seq, mid, _ts, nl, pl, cl, kind, prl = struct.unpack(
                ">IIQQQBBHHH", data[off:off + tj.HEADER])
            assert magic == tj.MAGIC, "bad magic at %s:%d" % (path, off)
            rec = data[off:off + length]
            assert tj.crc32c(rec[:-4]) == struct.unpack(">I", rec[-4:])[0], "bad CRC"
            cert = rec[tj.HEADER + nl + pl:tj.HEADER + nl + pl + cl]
            body = rec[tj.HEADER + nl + pl + cl + prl:-4]
            out.append(({"seq": seq, "id": mid, "client": rec[tj.HEADER:tj.HEADER + nl].decode(),
                         "data": body}, kind, cert))
            off += length
    return out


def hs_failed(c, node_id):
    """Failed handshakes node_id reported in its last heartbeat (/healthz)."""
    return sum(w["hs_failed"] for w in c.node_health(node_id)["workers"])


def test():
    with cluster.Cluster(n=3, start_nodes=False) as c:
        d = c.dir
        ca_key = os.path.join(c.certs, "ca.key")
        assert os.path.exists(ca_key), "gen-certs.sh left no CA key in %s" % c.certs
        alice, alice_key = issue(d, "alice", "alice", c.ca, ca_key)
        other_ca, other_ca_key = make_ca(d, "other-ca")
        mallory, mallory_key = issue(d, "mallory", "mallory", other_ca, other_ca_key)
        server_only, server_only_key = issue(d, "srv", "srv", c.ca, ca_key, eku="serverAuth")

        # node1 by flag, node2 by environment; node3 without mutual TLS.
        c.start_node(1, ["--client-ca", c.ca, "--log-level", "debug"])
        c.start_node(2, ["--log-level", "debug"], env={"BERTH_CLIENT_CA": c.ca})
        c.start_node(3)
        c.wait_healthy(3)

        want_sha = cert_sha256(alice)
        for i in (1, 2):
            addr = c.node_addr(i)
            base = ["--node", addr, "--ca", c.ca, "--retries", "0", "--timeout", "3s"]
            rc, out, err = c.run_cli(["ping"] + base + ["--cert", alice, "--key", alice_key])
            assert rc == 0 and "pong from node%d" % i in out, (rc, out, err)
            rc, out, err = c.run_cli(["info"] + base + ["--cert", alice, "--key", alice_key])
            assert rc == 0, err
            info = json.loads(out)
            assert info["session"]["client_cert"] == "alice", info["session"]
            assert info["session"]["client_cert_sha256"] == want_sha.hex(), info["session"]

            # A session held open across the refusals below keeps being served.
            held = CertSession(c.ca, addr, alice, alice_key)
            held.hello("held")
            held.ping(2)

            before = hs_failed(c, c.node_id(i))
            rc, out, err = c.run_cli(["ping"] + base)
            assert rc != 0 and "certificate required" in err, (rc, out, err)
            print("node%d, no client certificate: %s" % (i, err.strip()))
            rc, out, err = c.run_cli(["ping"] + base + ["--cert", mallory, "--key", mallory_key])
            assert rc != 0 and "unknown ca" in err, (rc, out, err)
            print("node%d, another CA's certificate: %s" % (i, err.strip()))
            rc, out, err = c.run_cli(["ping"] + base + ["--cert", server_only,
                                                        "--key", server_only_key])
            assert rc != 0 and "unsupported certificate" in err, (rc, out, err)
            # Python's client too: no certificate, no session.
            try:
                s = CertSession(c.ca, addr)
                s.hello("anonymous")
            except (ssl.SSLError, ConnectionError, cluster.Closed) as e:
                print("node%d, python client without certificate: %s" % (i, e))
            else:
                s.close()
                raise AssertionError("a session without a client certificate got a WELCOME")
            s.close()

            held.ping(3, b"still here")
            assert held.info(4)["session"]["client_cert"] == "alice"
            held.close()
            cluster.wait_until(lambda: hs_failed(c, c.node_id(i)) >= before + 4, 5, 0.1,
                               "node%d counting the failed handshakes" % i)
            with open(c.logs[c.node_id(i)], encoding="utf-8", errors="replace") as f:
                log = f.read()
            fails = [ln for ln in log.splitlines() if "event=handshake_failed" in ln]
            assert len(fails) >= 4 and all("error=" in ln for ln in fails), fails[-4:]
            assert "certificate" in "".join(fails), fails[-4:]
            opens = [ln for ln in log.splitlines() if "event=session_open" in ln]
            assert any('client_cert="alice"' in ln for ln in opens), opens[-3:]

        # berth send: every record carries the certificate's digest and CN.
        lines = "".join("mtls message %d\n" % k for k in range(20)).encode()
        rc, out, err = c.run_cli(["send", "--node", c.node_addr(1), "--ca", c.ca, "--cert", alice,
                                  "--key", alice_key, "--name", "sender"], input=lines)
        assert rc == 0, err
        acks = [ln for ln in out.splitlines() if ln.startswith("ack ")]
        assert len(acks) == 20 and all(" seq=" in a and " seq=0" not in a for a in acks), out
        recs = [r for r in journal_records(os.path.join(d, "journal-node1"))
                if r[0]["client"] == "sender"]
        assert len(recs) == 20, len(recs)
        for rec, kind, cert in recs:
            assert kind == 1, "identity kind %d, want 1 (certificate)" % kind
            assert cert[:32] == want_sha and cert[32:] == b"alice", cert
        assert sorted(r[0]["data"] for r in recs) == sorted(lines.splitlines())
        print("20 SENDs journaled with identity alice (%s...)" % want_sha.hex()[:16])

        # Without --client-ca nothing is asked for and nothing is recorded.
        with c.session(3) as s:
            s.hello("plain")
            info = s.info(2)
            assert info["session"]["client_cert"] is None, info["session"]
            s.send_message(3, 77, b"plain")
        rc, out, err = c.run_cli(["send", "--node", c.node_addr(3), "--ca", c.ca, "--cert", alice,
                                  "--key", alice_key, "--name", "plain-cli"], input=b"x\n")
        assert rc == 0, err
        plain = journal_records(os.path.join(d, "journal-node3"))
        assert len(plain) == 2 and all(k == 0 and cert == b"" for _, k, cert in plain), plain

        # A --client-ca that cannot be used stops the node at start, naming it.
        for bad in (os.path.join(d, "missing.pem"), alice_key):
            argv = c.node_argv(1, ["--client-ca", bad, "--listen", "127.0.0.1:0",
                                   "--heartbeat-plaintext"])
            rc, out, err = cluster.run_bin(argv[0], argv[1:])
            assert rc == 2 and "--client-ca" in err and bad in err, (rc, err)
            print("unusable --client-ca refused: %s" % err.strip().splitlines()[-1])

if __name__ == "__main__":
    cluster.main(test)
