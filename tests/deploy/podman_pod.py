"""test_k8s.py's podman part: one node pod, made from the rendered
StatefulSet's pod template, run by `podman kube play` (rootful, a scratch
store under the test's temp dir, the image berth:local assembled there from
this build's binaries: nothing is pulled) against a real CURVE balancer on
127.0.0.1. It checks what only a running container shows: the image runs as
uid 10001 on a read-only root with no capabilities, the environment from
the manifest is a valid node configuration, the pod's id (BERTH_ID from
metadata.name) and its own CURVE key get it admitted, the exec probe command
succeeds inside the container, the journal lands on the volume, and a stop
drains (LEAVE, drain_done). Says exactly why when podman cannot run here."""
import base64
import copy
import json
import os
import shutil
import signal
import subprocess
import time

import cluster

POD = "berth-node-0"
CTR = POD + "-node"   # podman names a kube container <pod>-<container>


def say(what):
    print("checked: podman: " + what, flush=True)


def skip(why):
    print("not checked: podman kube play of a node pod: " + why, flush=True)


def libraries(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=20).stdout
    libs = []
    for ln in out.splitlines():
        f = ln.split()
        if len(f) >= 3 and f[1] == "=>" and f[2].startswith("/"):
            libs.append(f[2])
        elif f and f[0].startswith("/"):
            libs.append(f[0])
    return libs


def assemble_image(ctx):
    """An image like deploy/offline-image.sh's: the three programs, the
    libraries they load, user 10001."""
    root = os.path.join(ctx, "rootfs")
    os.makedirs(os.path.join(root, "usr", "local", "bin"))
    os.makedirs(os.path.join(root, "etc"))
    for b in (cluster.NODE_BIN, cluster.BALANCER_BIN, cluster.CLI_BIN):
        shutil.copy(b, os.path.join(root, "usr", "local", "bin"))
        for lib in libraries(b):
            dest = root + lib
            if not os.path.exists(dest):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copy(os.path.realpath(lib), dest)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0::/:/nonexistent\nberth:x:10001:10001::/nonexistent:/nonexistent\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\nberth:x:10001:\n")
    os.makedirs(os.path.join(root, "var", "lib", "berth"))
    os.chown(os.path.join(root, "var", "lib", "berth"), 10001, 10001)
    with open(os.path.join(ctx, "Containerfile"), "w") as f:
        f.write("FROM scratch\nCOPY rootfs/ /\nUSER 10001:10001\n")


def pod_from_template(node_ss, secrets, files_dir, journal_dir, node_port, hb_port):
    """The rendered template as a Pod, with the rewrites podman and this
    machine need (returned as text lines, printed by the caller)."""
    t = copy.deepcopy(node_ss["spec"]["template"])
    spec = t["spec"]
    rewrites = []
    spec["hostNetwork"] = True
    rewrites.append("hostNetwork: true (the balancer is a process on this machine's 127.0.0.1)")
    c = spec["containers"][0]
    old_port = [p for p in c["ports"] if p["name"] == "tls"][0]["containerPort"]
    del c["ports"]   # podman turns any containerPort into a mapping, refused with hostNetwork
    for e in c["env"]:
        if e["name"] == "HOST_IP":
            e.pop("valueFrom")
            e["value"] = "127.0.0.1"
            rewrites.append("HOST_IP=127.0.0.1 (podman has no status.hostIP)")
        elif e["name"] == "BERTH_LISTEN":
            e["value"] = "127.0.0.1:%d" % node_port
        elif e["name"] == "BERTH_ADVERTISE":
            # Kubernetes expands $(HOST_IP) (defined earlier in the list);
            # podman 4.3 passes it on as it is.
            e["value"] = e["value"].replace("$(HOST_IP)", "127.0.0.1").replace(
                ":%d" % old_port, ":%d" % node_port)
            rewrites.append("BERTH_ADVERTISE=%s: $(HOST_IP) expanded here as Kubernetes "
                            "would (podman 4.3 does not expand $(VAR))" % e["value"])
        elif e["name"] == "BERTH_BALANCER":
            e["value"] = "tcp://127.0.0.1:%d" % hb_port
    rewrites.append("port %d -> %d, ports: dropped (host network), BERTH_LISTEN 127.0.0.1:%d, BERTH_BALANCER "
                    "tcp://127.0.0.1:%d (free ports on a shared machine)"
                    % (old_port, node_port, node_port, hb_port))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = c[probe]["exec"]["command"]
        c[probe]["exec"]["command"] = [a.replace("127.0.0.1:%d" % old_port,
                                                 "127.0.0.1:%d" % node_port) for a in cmd]
    vols = {v["name"]: v for v in spec["volumes"]}
    new_vols, new_mounts = [], []
    for i, m in enumerate(c["volumeMounts"]):
        if m["name"] == "journal":
            new_vols.append({"name": "journal", "hostPath": {"path": journal_dir,
                                                             "type": "Directory"}})
            new_mounts.append({"name": "journal", "mountPath": m["mountPath"]})
            continue
        s = secrets[vols[m["name"]]["secret"]["secretName"]]
        key = m.get("subPath") or m["subPathExpr"].replace("$(BERTH_ID)", POD)
        path = os.path.join(files_dir, "%d-%s" % (i, key))
        with open(path, "wb") as f:
            f.write(base64.b64decode(s["data"][key]))
        os.chown(path, 10001, 10001)
        os.chmod(path, 0o400)
        new_vols.append({"name": "f%d" % i, "hostPath": {"path": path, "type": "File"}})
        new_mounts.append({"name": "f%d" % i, "mountPath": m["mountPath"], "readOnly": True})
    spec["volumes"], c["volumeMounts"] = new_vols, new_mounts
    rewrites.append("volumes: the PVC template -> a hostPath directory; each Secret subPath "
                    "(and subPathExpr $(BERTH_ID).key -> %s.key, which podman lacks) -> a "
                    "hostPath file holding that Secret's data, uid 10001 mode 0400 (Kubernetes "
                    "gives root:10001 0440 through fsGroup)" % POD)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": POD, "labels": t["metadata"]["labels"]}, "spec": spec}
    return pod, rewrites, c


def run(node_ss, secrets, sec, scratch):
    podman = shutil.which("podman")
    if not podman:
        return skip("podman is not installed (Debian package podman)")
    for b in (cluster.NODE_BIN, cluster.BALANCER_BIN, cluster.CLI_BIN):
        if not os.access(b, os.X_OK):
            return skip("%s is not built, so no image berth:local can be assembled" % b)
    if os.geteuid() != 0:
        return skip("not root: rootless podman needs subuid ranges this test does not set up")
    if not shutil.which("catatonit"):
        return skip("catatonit is missing: podman 4 builds the pod's infra (pause) image from "
                    "it, and would otherwise pull one (no network here)")
    pdir = os.path.join(scratch, "podman")
    os.makedirs(pdir)
    conf = os.path.join(pdir, "containers.conf")
    with open(conf, "w") as f:
        # podman's default nofile ulimit (1048576) is above this container's
        # hard limit, and without CAP_SYS_RESOURCE runc cannot raise it.
        f.write("[containers]\ndefault_ulimits = []\n")
    base = [podman, "--root", os.path.join(pdir, "root"), "--runroot", os.path.join(pdir, "run"),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
    env = cluster.child_env({"CONTAINERS_CONF": conf, "TMPDIR": pdir})
    print("podman: scratch store %s (vfs: no overlay inside this container; cgroupfs; the "
          "default ulimits off: no CAP_SYS_RESOURCE here)" % pdir, flush=True)

    def pm(args, timeout=120):
        r = subprocess.run(base + args, capture_output=True, text=True, timeout=timeout, env=env)
        return r.returncode, r.stdout, r.stderr

    balancer = None
    try:
        ctx = os.path.join(pdir, "image")
        assemble_image(ctx)
        rc, out, err = pm(["build", "-q", "-t", "berth:local", ctx], 300)
        if rc != 0:
            return skip("podman build of the local image failed here: %s" % err.strip()[-300:])
        rc, out, err = pm(["run", "--rm", "--network", "none", "berth:local", "berth", "--version"], 60)
        if rc != 0:
            return skip("podman cannot run a container in this environment: %s"
                        % err.strip()[-300:])
        print("podman: image berth:local assembled from %s's binaries (nothing pulled); a plain "
              "`podman run` works: %s" % (cluster.BUILD_DIR, out.strip()), flush=True)

        http_port, hb_port, node_port = cluster.free_ports(3)
        allow = os.path.join(pdir, "allow")
        os.makedirs(allow)
        shutil.copy(os.path.join(sec, "keys", "allow", POD + ".pub"), allow)
        blog = open(os.path.join(pdir, "balancer.log"), "wb")
        balancer = subprocess.Popen(
            [cluster.BALANCER_BIN, "--http", "127.0.0.1:%d" % http_port, "--heartbeat-bind",
             "tcp://127.0.0.1:%d" % hb_port, "--curve-secret",
             os.path.join(sec, "keys", "balancer.key"), "--curve-allow", allow],
            stdout=blog, stderr=subprocess.STDOUT, start_new_session=True,
            env=cluster.child_env())
        blog.close()
        cluster.wait_until(lambda: cluster.http_get(http_port, "/healthz", 1.0)[0] == 200,
                           15, 0.05, "balancer /healthz")

        files = os.path.join(pdir, "files")
        journal = os.path.join(pdir, "journal")
        os.makedirs(files)
        os.makedirs(journal)
        os.chown(journal, 10001, 10001)
        os.chmod(journal, 0o700)
        pod, rewrites, c = pod_from_template(node_ss, secrets, files, journal, node_port, hb_port)
        for r in rewrites:
            print("podman: rewrite: " + r, flush=True)
        ypath = os.path.join(pdir, "pod.yaml")
        with open(ypath, "w") as f:
            json.dump(pod, f)   # JSON is YAML
        rc, out, err = pm(["kube", "play", ypath], 180)
        assert rc == 0, "podman kube play failed: %s %s" % (out, err)
        say("kube play started pod %s from the StatefulSet's template" % POD)

        def registered():
            _, body, _ = cluster.http_get(http_port, "/v1/health", 2.0)
            for n in json.loads(body).get("nodes", []):
                if n["id"] == POD and n["state"] == "healthy":
                    return n
            return None
        try:
            n = cluster.wait_until(registered, 25, 0.2, "%s healthy on the balancer" % POD)
        except AssertionError:
            _, logs, lerr = pm(["logs", CTR], 30)
            print("--- container log:\n%s%s" % (logs, lerr))
            raise
        assert n["addr"] == "127.0.0.1:%d" % node_port, n["addr"]
        say("%s healthy on a CURVE balancer that allows only %s.pub: BERTH_ID came from "
            "metadata.name and the pod's own key was picked; advertised %s" % (POD, POD, n["addr"]))

        cmd = c["readinessProbe"]["exec"]["command"]
        rc, out, err = pm(["exec", CTR] + cmd, 30)
        assert rc == 0 and "pong from %s" % POD in out, (rc, out, err)
        say("the readiness probe's command inside the container: %s -> %s"
            % (" ".join(cmd), out.strip()))

        rc, out, err = pm(["inspect", CTR], 30)
        assert rc == 0, err
        info = json.loads(out)[0]
        user = info["Config"]["User"]
        caps = info.get("EffectiveCaps") or []
        assert user.split(":")[0] == "10001", user
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert not caps, caps
        say("container user %s, read-only root filesystem, effective capabilities %s"
            % (user, caps or "none"))
        r = subprocess.run([cluster.CLI_BIN, "send", "--node", n["addr"], "--ca",
                            os.path.join(sec, "ca.pem")], input=b"hello\n", capture_output=True,
                           timeout=30, env=cluster.child_env())
        assert r.returncode == 0 and b"seq=1" in r.stdout, (r.stdout, r.stderr)
        say("a SEND from the host to the pod: %s" % r.stdout.decode().strip())
        jfiles = []
        for root, _, names in os.walk(journal):
            jfiles += [os.path.relpath(os.path.join(root, x), journal) for x in names]
        assert jfiles, "nothing written on the journal volume"
        assert any(f.endswith(".seg") for f in jfiles), jfiles
        say("the acknowledged message's journal is on the volume: %s" % ", ".join(sorted(jfiles)))

        grace = node_ss["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        t0 = time.monotonic()
        rc, out, err = pm(["pod", "stop", "-t", str(grace), POD], grace + 30)
        took = time.monotonic() - t0
        assert rc == 0, err
        _, logs, lerr = pm(["logs", CTR], 30)
        text = logs + lerr
        assert "event=drain_start" in text and "event=drain_done" in text, text[-2000:]
        say("pod stop (SIGTERM, grace %ds): drain_start and drain_done in the node's log, "
            "stopped in %.1fs" % (grace, took))

        def left():
            _, body, _ = cluster.http_get(http_port, "/v1/health", 2.0)
            states = [x["state"] for x in json.loads(body).get("nodes", []) if x["id"] == POD]
            return states and states[0] in ("draining", "down")
        cluster.wait_until(left, 5, 0.05, "%s out of rotation after the stop" % POD)
        say("the balancer took %s out of rotation on its LEAVE" % POD)
    finally:
        if balancer:
            balancer.send_signal(signal.SIGTERM)
            try:
                balancer.wait(5)
            except subprocess.TimeoutExpired:
                balancer.kill()
                balancer.wait(5)
        try:
            pm(["pod", "rm", "-f", "-t", "0", POD], 60)
            pm(["rm", "-a", "-f", "-t", "0"], 60)
        except (OSError, subprocess.TimeoutExpired) as e:
            print("podman cleanup: %s" % e)
        # conmon processes of this store, if any are left: ours, by pid.
        r = subprocess.run(["pgrep", "-f", os.path.join(pdir, "run")], capture_output=True,
                           text=True)
        for pid in r.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["umount", "-R", "-l", os.path.join(pdir, "root")],
                       capture_output=True)
