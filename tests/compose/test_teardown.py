#!/usr/bin/env python3
"""compose teardown: `down -v` leaves no container, network or volume behind
also when a test fails, and when a test is stopped by SIGTERM. Runs the
harness in a child process that fails on purpose (or is sent SIGTERM) with its
cluster up, then looks for what is left. A child killed outright (SIGKILL, as
a ctest timeout may do) cannot clean up: the next run's harness removes what
it left, which is checked too."""
import os
import re
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compose  # noqa: E402
from compose import check, log  # noqa: E402

CHILD_BOUND_S = 240


def child(mode):
    def failing_test(c):
        c.up()
        print("CHILD-UP %s %s" % (c.project, c.tmp), flush=True)
        if mode == "fail":
            raise compose.TestFailure("deliberate failure with the cluster up")
        time.sleep(CHILD_BOUND_S)  # until the parent's SIGTERM

    compose.main(failing_test, bound_s=CHILD_BOUND_S)


def run_child(mode):
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", mode],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, project, tmp = [], None, None
    deadline = time.monotonic() + CHILD_BOUND_S + 60
    try:
        for line in p.stdout:
            out.append(line)
            m = re.match(r"CHILD-UP (\S+) (\S+)", line)
            if m:
                project, tmp = m.group(1), m.group(2)
                if mode == "sigterm":
                    p.send_signal(signal.SIGTERM)
                elif mode == "sigkill":
                    p.send_signal(signal.SIGKILL)
            if time.monotonic() > deadline:
                p.kill()
                break
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    text = "".join(out)
    check(project, "the child never brought its cluster up:\n%s" % text)
    if mode == "sigkill":
        check(rc == -signal.SIGKILL, "child (sigkill) exited %s:\n%s" % (rc, text))
        check(compose.project_objects(project), "a SIGKILLed child left nothing: the check proves nothing")
        compose.reap_stale_projects()
    else:
        check(rc == 1, "child (%s) exited %s, want 1:\n%s" % (mode, rc, text))
    left = compose.project_objects(project)
    check(not left, "after a %s, %s is left: %s\n%s" % (mode, project, left, text))
    check("compose down -v left" not in text, "the child had to remove leftovers by hand:\n%s" % text)
    images = compose.run(["docker", "images", "-q", "%s:local" % project]).stdout.strip()
    check(not images, "image %s:local is left" % project)
    check(not os.path.exists(tmp), "%s is left" % tmp)
    log("%s: child exited %d, nothing of %s left" % (mode, rc, project))


def test(_cluster):
    run_child("fail")
    run_child("sigterm")
    run_child("sigkill")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return
    # The parent brings up no cluster of its own: its Cluster is never used.
    compose.main(test, bound_s=580, bring_up=False)


if __name__ == "__main__":
    main()
