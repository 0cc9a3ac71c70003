"""Keys and allowlists open to others are warned about at start (and still
used): a node's TLS --key readable by group or others, a balancer's
--https-key, a balancer's --curve-allow directory and a node's
--feed-curve-allow writable by group or others, and a key file in such a
directory that others may rewrite. Each warning names the setting, the path
and the mode in octal; the same set-up with private modes logs none."""
import os
import re
import shutil

import cluster

WARN = "event=key_file_open"


def started_log(c, name, event="event=start"):
    """The log of process `name` once it logged its start line."""
    def log():
        c._alive_or_raise(name)
        with open(c.logs[name]) as f:
            text = f.read()
        return text if event in text else None
    return cluster.wait_until(log, 15, 0.05, "%s started" % name)


def warnings(text):
    return [ln for ln in text.splitlines() if WARN in ln]


def assert_warned(text, setting, path, mode):
    lines = [ln for ln in warnings(text) if "setting=%s " % setting in ln]
    assert lines, "no %s warning for %s:\n%s" % (setting, path, text)
    assert ('path="%s"' % path) in lines[0] and re.search(r"mode=0?%o\b" % mode, lines[0]), lines


def copy_mode(src, dst, mode):
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)
    return dst


def make_allow_dir(path, pubs, mode):
    os.makedirs(path)
    for pub in pubs:
        shutil.copyfile(pub, os.path.join(path, os.path.basename(pub)))
        os.chmod(os.path.join(path, os.path.basename(pub)), 0o644)
    os.chmod(path, mode)
    return path


def balancer(c, name, extra, env=None):
    http, hb = cluster.free_ports(2)
    argv = [cluster.BALANCER_BIN, "--http", "127.0.0.1:%d" % http, "--heartbeat-bind",
            "tcp://127.0.0.1:%d" % hb] + extra
    c.spawn(name, argv, env)
    return started_log(c, name)


def test():
    with cluster.Cluster(n=1, start_nodes=False) as c:
        node_pub = c.node_keys(c.node_id(1))[1]
        reader = cluster.keygen(os.path.join(c.dir, "reader"))

        # Private modes everywhere: no warning. The cluster's own balancer
        # runs with a 0755 allowlist directory and a 0600 key.
        os.chmod(c.allow_dir, 0o755)
        closed_key = copy_mode(c.key, os.path.join(c.dir, "closed.key"), 0o600)
        closed_feed = make_allow_dir(os.path.join(c.dir, "feed-closed"), [reader[1]], 0o755)
        text = balancer(c, "b-closed", ["--https-cert", c.cert, "--https-key", closed_key])
        assert not warnings(text), text
        feed = "tcp://127.0.0.1:%d" % cluster.free_ports(1)[0]
        c.start_node(1, ["--key", closed_key, "--feed", feed, "--feed-curve-allow", closed_feed])
        text = started_log(c, c.node_id(1))
        assert not warnings(text), text
        c.kill_node(1)
        print("0600 keys, 0755 allowlists: no warning")

        # Open modes: one warning each, and the programs still start.
        open_key = copy_mode(c.key, os.path.join(c.dir, "open.key"), 0o644)
        open_allow = make_allow_dir(os.path.join(c.dir, "allow-open"), [node_pub], 0o777)
        text = balancer(c, "b-open", ["--https-cert", c.cert, "--https-key", open_key],
                        env={"BERTH_CURVE_ALLOW": open_allow})
        assert_warned(text, "--https-key", open_key, 0o644)
        assert_warned(text, "--curve-allow", open_allow, 0o777)
        open_feed = make_allow_dir(os.path.join(c.dir, "feed-open"), [reader[1]], 0o777)
        c.start_node(1, ["--key", open_key, "--feed", feed, "--feed-curve-allow", open_feed])
        text = started_log(c, c.node_id(1))
        assert_warned(text, "--key", open_key, 0o644)
        assert_warned(text, "--feed-curve-allow", open_feed, 0o777)
        c.kill_node(1)

        # A closed directory holding a key file others may rewrite.
        rewritable = make_allow_dir(os.path.join(c.dir, "allow-file-open"), [node_pub], 0o755)
        pub = os.path.join(rewritable, os.path.basename(node_pub))
        os.chmod(pub, 0o666)
        text = balancer(c, "b-file-open", [], env={"BERTH_CURVE_ALLOW": rewritable})
        assert_warned(text, "--curve-allow", pub, 0o666)
        # A file of keys (not a directory) writable by group.
        listfile = copy_mode(node_pub, os.path.join(c.dir, "allow.list"), 0o664)
        text = balancer(c, "b-list-open", [], env={"BERTH_CURVE_ALLOW": listfile})
        assert_warned(text, "--curve-allow", listfile, 0o664)
        print("0644 keys, 0777 directories, a 0666 key file, a 0664 list: warned")


if __name__ == "__main__":
    cluster.main(test)
