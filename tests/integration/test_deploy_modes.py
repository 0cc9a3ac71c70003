"""deploy/gen-keys.sh and deploy/gen-certs.sh set their modes whatever the
umask: under umask 000 no directory they make is writable by group or
others (or a local user could add a key to the allowlist or replace
ca.pem), and every private key is the owner's only."""
import os
import shutil
import stat
import subprocess
import tempfile

import cluster


def test():
    base = tempfile.mkdtemp(prefix="berth-modes-")
    try:
        keys, certs = os.path.join(base, "keys"), os.path.join(base, "certs")
        for argv in (["bash", os.path.join(cluster.SOURCE_DIR, "deploy", "gen-keys.sh"),
                      "--berth", cluster.CLI_BIN, keys, "n1"],
                     ["bash", cluster.GEN_CERTS, certs]):
            r = subprocess.run(argv, capture_output=True, timeout=60,
                               preexec_fn=lambda: os.umask(0))
            assert r.returncode == 0, r.stderr.decode(errors="replace")
        bad = []
        for d in (keys, os.path.join(keys, "allow"), certs):
            if stat.S_IMODE(os.stat(d).st_mode) & 0o022:
                bad.append("%s is %o" % (d, stat.S_IMODE(os.stat(d).st_mode)))
        for k in ("keys/balancer.key", "keys/n1.key", "certs/ca.key", "certs/node.key"):
            mode = stat.S_IMODE(os.stat(os.path.join(base, k)).st_mode)
            if mode & 0o077:
                bad.append("%s is %o" % (k, mode))
        for p in ("keys/allow/n1.pub", "certs/ca.pem"):
            mode = stat.S_IMODE(os.stat(os.path.join(base, p)).st_mode)
            if mode & 0o022:
                bad.append("%s is %o" % (p, mode))
        assert not bad, "open to others under umask 000: %s" % ", ".join(bad)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    cluster.main(test)
