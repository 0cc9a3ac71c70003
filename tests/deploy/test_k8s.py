"""deploy/k8s: builds the Kustomize layout with `kubectl kustomize` (secrets
from a scratch copy filled by deploy/gen-certs.sh and deploy/gen-keys.sh),
parses the output (python3-yaml) and checks what a berth deployment needs:
node ids from the pod names, a journal volume per node, advertised
addresses clients can reach, every node heartbeating to every balancer,
berth's own probes, a grace period longer than the drain, PDBs, resources,
the security context, Secrets from the generator only, and the image
override. Then tries `kubectl apply --dry-run=client` and runs one node pod
with `podman kube play` against a real balancer on 127.0.0.1, saying
exactly why where either cannot run here. Nothing is pulled, no cluster is
contacted; everything it starts and writes is removed at the end."""
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import cluster  # noqa: E402

K8S_DIR = os.path.join(cluster.SOURCE_DIR, "deploy", "k8s")
NODE_LABELS = {"app.kubernetes.io/name": "berth", "app.kubernetes.io/component": "node"}
BAL_LABELS = {"app.kubernetes.io/name": "berth", "app.kubernetes.io/component": "balancer"}


def ok(what):
    print("checked: " + what, flush=True)


def run(argv, timeout=120, env=None, input=None):
    e = cluster.child_env(env)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e, input=input)
    return r.returncode, r.stdout, r.stderr


def duration_s(text):
    return cluster.parse_duration(text)


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container, name):
    e = env_of(container).get(name)
    assert e is not None and "value" in e, "%s: %s has no value" % (container["name"], name)
    return e["value"]


def settings_of(binary):
    """The BERTH_* variables a program reads, from its --help table."""
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10,
                       env=cluster.child_env())
    return set(re.findall(r"\bBERTH_[A-Z0-9_]+\b", r.stdout + r.stderr))


def by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return out


def fill_secrets(k8s, node_ids):
    sec = os.path.join(k8s, "secrets")
    # A documentation address stands for a machine IP the nodes advertise.
    rc, out, err = run(["bash", os.path.join(cluster.SOURCE_DIR, "deploy", "gen-certs.sh"),
                        sec, "192.0.2.10"], 60)
    assert rc == 0, err
    rc, out, err = run(["bash", os.path.join(cluster.SOURCE_DIR, "deploy", "gen-keys.sh"),
                        "--berth", cluster.CLI_BIN, os.path.join(sec, "keys")] + node_ids, 60)
    assert rc == 0, err
    return sec


def kustomize(kubectl, path):
    rc, out, err = run([kubectl, "kustomize", path], 120)
    assert rc == 0, "kubectl kustomize %s failed: %s" % (path, err)
    import yaml  # noqa: PLC0415
    return [d for d in yaml.safe_load_all(out) if d], out


def check_repo_has_no_secrets():
    # What is tracked, and what a `git add` would take (untracked, not ignored).
    rc, out, err = run(["git", "-C", cluster.SOURCE_DIR, "ls-files", "--cached", "--others",
                        "--exclude-standard", "--", "deploy/k8s"])
    if rc != 0:
        print("not checked: git ls-files (not a git checkout: %s)" % err.strip())
        return
    tracked = out.split()
    for f in tracked:
        assert not f.startswith("deploy/k8s/secrets/") or f.endswith("/.gitignore"), \
            "%s: secret material is tracked" % f
        with open(os.path.join(cluster.SOURCE_DIR, f), errors="replace") as fh:
            text = fh.read()
        assert "PRIVATE KEY" not in text and not re.search(r"^kind:\s*Secret", text, re.M), \
            "%s holds a key or a Secret manifest" % f
    probe = ["deploy/k8s/secrets/node.key", "deploy/k8s/secrets/keys/berth-node-0.key",
             "deploy/k8s/secrets/keys/balancer.key", "deploy/k8s/secrets/ca.key"]
    rc, out, err = run(["git", "-C", cluster.SOURCE_DIR, "check-ignore", "--no-index"] + probe)
    assert rc == 0 and len(out.split()) == len(probe), "not git-ignored: %s" % (
        set(probe) - set(out.split()))
    ok("no secret material in the repository: %d committable files under deploy/k8s, none a key, "
       "a certificate key or a Secret manifest; %s are git-ignored"
       % (len(tracked), ", ".join(probe)))


def check_manifests(docs, sec, node_ids):
    k = by_kind(docs)
    node_ss, bal_ss = k["StatefulSet"]["berth-node"], k["StatefulSet"]["berth-balancer"]
    node_t, bal_t = node_ss["spec"]["template"]["spec"], bal_ss["spec"]["template"]["spec"]
    node_c, bal_c = node_t["containers"][0], bal_t["containers"][0]
    services = k["Service"]

    # --- node ids, journal volume
    e = env_of(node_c)["BERTH_ID"]
    assert e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name", e
    assert ["berth-node-%d" % i for i in range(node_ss["spec"]["replicas"])] == node_ids
    ok("node StatefulSet: BERTH_ID from metadata.name (downward API): ids %s" % ", ".join(node_ids))
    vct = {t["metadata"]["name"]: t for t in node_ss["spec"]["volumeClaimTemplates"]}
    assert "journal" in vct and vct["journal"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert vct["journal"]["spec"]["resources"]["requests"]["storage"]
    mounts = {m["mountPath"]: m for m in node_c["volumeMounts"]}
    assert mounts["/var/lib/berth"]["name"] == "journal"
    jdir = env_value(node_c, "BERTH_JOURNAL_DIR")
    assert jdir.startswith("/var/lib/berth/"), jdir
    ok("journal: volumeClaimTemplate 'journal' (ReadWriteOnce, %s) mounted at /var/lib/berth, "
       "BERTH_JOURNAL_DIR=%s" % (vct["journal"]["spec"]["resources"]["requests"]["storage"], jdir))

    # --- reachable address per pod
    assert services[node_ss["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    port = {p["name"]: p for p in node_c["ports"]}["tls"]
    listen = env_value(node_c, "BERTH_LISTEN")
    assert listen.endswith(":%d" % port["containerPort"]), (listen, port)
    assert port.get("hostPort") == port["containerPort"], port
    names = [x["name"] for x in node_c["env"]]
    host_ip = env_of(node_c)["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"]
    adv = env_value(node_c, "BERTH_ADVERTISE")
    assert host_ip == "status.hostIP" and adv == "$(HOST_IP):%d" % port["hostPort"], (host_ip, adv)
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert names.index("HOST_IP") < names.index("BERTH_ADVERTISE")
    ok("address: headless Service %s; hostPort %d = containerPort = BERTH_LISTEN's port; "
       "BERTH_ADVERTISE=%s with HOST_IP from status.hostIP, defined before it"
       % (node_ss["spec"]["serviceName"], port["hostPort"], adv))

    # --- every node heartbeats to every balancer
    hb_svc = services[bal_ss["spec"]["serviceName"]]
    assert hb_svc["spec"]["clusterIP"] == "None" and hb_svc["spec"].get("publishNotReadyAddresses")
    assert hb_svc["spec"]["selector"] == BAL_LABELS == bal_ss["spec"]["template"]["metadata"]["labels"]
    bports = {p["name"]: p for p in bal_c["ports"]}
    hb_port = {p["name"]: p for p in hb_svc["spec"]["ports"]}["heartbeat"]
    bind = env_value(bal_c, "BERTH_HEARTBEAT_BIND")
    assert bind.endswith(":%d" % bports["heartbeat"]["containerPort"]) and \
        hb_port["targetPort"] == "heartbeat"
    want = {"tcp://%s-%d.%s:%d" % (bal_ss["metadata"]["name"], i, hb_svc["metadata"]["name"],
                                   hb_port["port"]) for i in range(bal_ss["spec"]["replicas"])}
    got = [x.strip() for x in env_value(node_c, "BERTH_BALANCER").split(",")]
    assert set(got) == want and len(got) == len(want) <= 8, (got, want)
    assert bal_ss["spec"]["replicas"] == 2
    ok("every node heartbeats to every balancer: BERTH_BALANCER=%s = each of the %d balancer "
       "StatefulSet pods by its name in headless Service %s (publishNotReadyAddresses, port %d)"
       % (",".join(got), bal_ss["spec"]["replicas"], hb_svc["metadata"]["name"], hb_port["port"]))
    http_svc = services["berth-balancer"]
    hp = http_svc["spec"]["ports"][0]
    assert hp["port"] == 8080 and hp["targetPort"] == "http" and bports["http"]["containerPort"] == 8080
    assert env_value(bal_c, "BERTH_HTTP").endswith(":8080")
    assert http_svc["spec"]["selector"] == BAL_LABELS
    ok("balancer HTTP: Service berth-balancer port 8080 -> container port http 8080 = BERTH_HTTP")

    # --- probes
    ca_mount = mounts.get("/certs/ca.pem")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = node_c[kind]["exec"]["command"]
        assert cmd[:2] == ["berth", "ping"], cmd
        assert cmd[cmd.index("--node") + 1] == "127.0.0.1:%d" % port["containerPort"], cmd
        ca = cmd[cmd.index("--ca") + 1]
        assert ca in mounts and ca_mount["subPath"] == "ca.pem", (ca, mounts.keys())
        assert node_c[kind]["timeoutSeconds"] > duration_s(cmd[cmd.index("--timeout") + 1])
    for kind in ("readinessProbe", "livenessProbe"):
        g = bal_c[kind]["httpGet"]
        assert g["path"] == "/healthz" and g["port"] == "http", g
    ok("probes: node startup/readiness/liveness exec %s (timeoutSeconds above --timeout); "
       "balancer readiness/liveness HTTP GET /healthz on port http"
       % " ".join(node_c["readinessProbe"]["exec"]["command"]))

    # --- drain fits the grace period
    grace = node_t["terminationGracePeriodSeconds"]
    pre = node_c["lifecycle"]["preStop"]
    pre_s = pre["sleep"]["seconds"] if "sleep" in pre else 0
    drain = duration_s(env_value(node_c, "BERTH_DRAIN_TIMEOUT"))
    assert grace > pre_s + drain + 2, (grace, pre_s, drain)
    ok("drain: terminationGracePeriodSeconds %d > preStop %ds + BERTH_DRAIN_TIMEOUT %gs "
       "(+2 s to exit)" % (grace, pre_s, drain))

    # --- PDBs
    pdbs = k["PodDisruptionBudget"]
    for ss in (node_ss, bal_ss):
        match = [p for p in pdbs.values()
                 if p["spec"]["selector"]["matchLabels"] == ss["spec"]["template"]["metadata"]["labels"]]
        assert len(match) == 1, ss["metadata"]["name"]
        spec = match[0]["spec"]
        assert spec.get("maxUnavailable", 0) >= 1 and spec["maxUnavailable"] < ss["spec"]["replicas"]
    ok("PodDisruptionBudgets: one per StatefulSet (nodes, balancers), maxUnavailable 1 "
       "of %d and %d" % (node_ss["spec"]["replicas"], bal_ss["spec"]["replicas"]))

    # --- resources, security, environment hygiene
    for t, c in ((node_t, node_c), (bal_t, bal_c)):
        r = c["resources"]
        assert {"cpu", "memory"} <= set(r["requests"]) and {"cpu", "memory"} <= set(r["limits"])
        psc, csc = t["securityContext"], c["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001
        assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"]["drop"] == ["ALL"] and "add" not in csc["capabilities"]
        assert t["enableServiceLinks"] is False
        assert c["image"] == "berth:local"
    ok("resources: requests and limits (cpu, memory) on both; securityContext runAsNonRoot, "
       "runAsUser 10001, readOnlyRootFilesystem, allowPrivilegeEscalation false, drop ALL; "
       "enableServiceLinks false (no BERTH_*_PORT service variables); image berth:local")
    if os.access(cluster.NODE_BIN, os.X_OK) and os.access(cluster.BALANCER_BIN, os.X_OK):
        for c, b in ((node_c, cluster.NODE_BIN), (bal_c, cluster.BALANCER_BIN)):
            known = settings_of(b)
            set_here = {n for n in env_of(c) if n.startswith("BERTH_")}
            assert known and set_here <= known, "not settings of %s: %s" % (
                os.path.basename(b), set_here - known)
        ok("every BERTH_* variable in the manifests is a setting of its program (--help)")
    else:
        print("not checked: BERTH_* names against --help (binaries not built in %s)"
              % cluster.BUILD_DIR)

    # --- secrets: from the generator, each mounted file present, paths used exist
    secrets = k["Secret"]
    for t, c in ((node_t, node_c), (bal_t, bal_c)):
        vols = {v["name"]: v for v in t["volumes"]}
        for m in c["volumeMounts"]:
            v = vols.get(m["name"])
            if not v or "secret" not in v:
                continue
            s = secrets[v["secret"]["secretName"]]
            subs = [m["subPath"]] if "subPath" in m else [
                m["subPathExpr"].replace("$(BERTH_ID)", i) for i in node_ids]
            for sub in subs:
                assert sub in s["data"], "%s: no %s in Secret %s" % (c["name"], sub,
                                                                     s["metadata"]["name"])
        paths = [m["mountPath"] for m in c["volumeMounts"]]
        for name in ("BERTH_CERT", "BERTH_KEY", "BERTH_CURVE_SECRET", "BERTH_BALANCER_KEY",
                     "BERTH_CURVE_ALLOW"):
            if name in env_of(c):
                p = env_value(c, name)
                assert any(x == p or x.startswith(p.rstrip("/") + "/") for x in paths), (name, p)
    allow = env_value(bal_c, "BERTH_CURVE_ALLOW")
    allowed = sorted(os.path.basename(m["mountPath"]) for m in bal_c["volumeMounts"]
                     if os.path.dirname(m["mountPath"]) == allow)
    assert allowed == sorted(i + ".pub" for i in node_ids), allowed
    assert all("subPath" in m for m in bal_c["volumeMounts"]
               if os.path.dirname(m["mountPath"]) == allow)
    node_key = [m for m in node_c["volumeMounts"] if m["mountPath"] ==
                env_value(node_c, "BERTH_CURVE_SECRET")][0]
    assert node_key["subPathExpr"] == "$(BERTH_ID).key", node_key
    files = {}
    for root, _, names in os.walk(sec):
        for n in names:
            with open(os.path.join(root, n), "rb") as f:
                files[os.path.relpath(os.path.join(root, n), sec)] = f.read()
    for s in secrets.values():
        assert re.fullmatch(r"berth-[a-z-]+-[a-z0-9]{10}", s["metadata"]["name"]), \
            "Secret %s is not a generated one" % s["metadata"]["name"]
        for key, b64 in s["data"].items():
            data = base64.b64decode(b64)
            assert data in files.values(), "%s/%s is not a scratch file" % (s["metadata"]["name"], key)
            assert not key.startswith("ca.key") and data != files.get("ca.key")
    ok("Secrets: %d, all from secretGenerator (hashed names), every value one of the files "
       "gen-certs.sh/gen-keys.sh wrote in the scratch copy, ca.key in none; each mounted "
       "subPath exists in its Secret; each node sees only its own CURVE key (subPathExpr "
       "$(BERTH_ID).key); allowlist %s = one file mount per node id (%s)"
       % (len(secrets), allow, ", ".join(allowed)))
    return node_ss, secrets


def check_image_override(kubectl, scratch):
    over = os.path.join(scratch, "overlay")
    os.makedirs(over)
    with open(os.path.join(over, "kustomization.yaml"), "w") as f:
        f.write("resources:\n  - ../k8s\nimages:\n  - name: berth\n"
                "    newName: registry.example/berth\n    newTag: \"9.9\"\n")
    docs, _ = kustomize(kubectl, over)
    images = {c["image"] for d in docs if d["kind"] == "StatefulSet"
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example/berth:9.9"}, images
    ok("image override: an overlay's images: entry turns every container into %s" % images.pop())


def try_apply(kubectl, scratch, text):
    # A kubeconfig naming a local port nothing listens on: no cluster is
    # contacted, and no one else's process on 127.0.0.1 is asked either.
    port = cluster.free_ports(1)[0]
    kc = os.path.join(scratch, "kubeconfig")
    with open(kc, "w") as f:
        f.write("apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n"
                "    server: http://127.0.0.1:%d\ncontexts:\n- name: none\n  context:\n"
                "    cluster: none\ncurrent-context: none\n" % port)
    rc, out, err = run([kubectl, "--kubeconfig", kc, "apply", "--dry-run=client",
                        "--validate=false", "-f", "-"], 60, input=text)
    if rc == 0:
        lines = [ln for ln in out.splitlines() if "(dry run)" in ln]
        assert lines, out
        ok("kubectl apply --dry-run=client --validate=false: %d objects" % len(lines))
    else:
        first = (err.strip().splitlines() or ["?"])[-1]
        print("not checked: kubectl apply --dry-run=client --validate=false: this kubectl "
              "needs a server's API discovery even for a client dry run, and there is no "
              "cluster here (it said: %s)" % first)


def test():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("SKIP: kubectl not found (Debian package kubernetes-client)")
        sys.exit(77)
    try:
        import yaml  # noqa: F401, PLC0415
    except ImportError:
        print("SKIP: python3-yaml is missing (deploy/install-deps.sh installs it)")
        sys.exit(77)
    if not os.access(cluster.CLI_BIN, os.X_OK):
        raise AssertionError("%s is not built: gen-keys.sh needs it" % cluster.CLI_BIN)
    rc, out, _ = run([kubectl, "version", "--client"], 30)
    print("kubectl: %s" % " ".join(out.split()))

    check_repo_has_no_secrets()
    scratch = tempfile.mkdtemp(prefix="berth-k8s-")
    try:
        k8s = os.path.join(scratch, "k8s")
        # Never the operator's filled secrets/: only the committed layout.
        shutil.copytree(K8S_DIR, k8s, ignore=lambda d, names: [
            n for n in names if os.path.basename(d) == "secrets" and n != ".gitignore"])
        import yaml  # noqa: PLC0415
        with open(os.path.join(k8s, "node.yaml")) as f:
            src = [d for d in yaml.safe_load_all(f) if d]
        replicas = [d for d in src if d["kind"] == "StatefulSet"][0]["spec"]["replicas"]
        node_ids = ["berth-node-%d" % i for i in range(replicas)]
        sec = fill_secrets(k8s, node_ids)
        docs, text = kustomize(kubectl, k8s)
        print("kubectl kustomize: %d objects: %s" % (len(docs), ", ".join(
            "%s/%s" % (d["kind"], d["metadata"]["name"]) for d in docs)))
        assert all(d["metadata"].get("namespace") == "berth" for d in docs
                   if d["kind"] != "Namespace")
        node_ss, secrets = check_manifests(docs, sec, node_ids)
        check_image_override(kubectl, scratch)
        try_apply(kubectl, scratch, text)
        import podman_pod  # noqa: PLC0415
        podman_pod.run(node_ss, secrets, sec, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, HERE)  # podman_pod.py beside this file
    cluster.main(test)
