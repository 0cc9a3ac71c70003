"""powermount: the power-loss tests' handle on a powerfs mount: starts the
filesystem (tests/powerloss/powerfs.py) in its own process, sends it
commands, cuts the power and brings the mount back, and always unmounts.

A test calls skip_unless_fuse() first: where FUSE cannot be used it says why
and exits with SKIP (77), which ctest reports as skipped."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
POWERFS = os.path.join(HERE, "powerfs.py")
SKIP = 77
MOUNT_TIMEOUT_S = 15.0


def skip_unless_fuse():
    """Exits with SKIP, naming the reason, unless FUSE mounts can work here."""
    why = None
    if not os.path.exists("/dev/fuse"):
        why = "/dev/fuse does not exist"
    elif not os.access("/dev/fuse", os.R_OK | os.W_OK):
        why = "/dev/fuse is not readable and writable by this user"
    elif not shutil.which("fusermount") and not shutil.which("fusermount3"):
        why = "no fusermount (Debian package fuse3)"
    else:
        r = subprocess.run([sys.executable, "-c", "import fusepy"], capture_output=True)
        if r.returncode != 0:
            why = "python module fusepy is missing (Debian package python3-fusepy)"
    if why:
        print("SKIP: FUSE not usable here: %s" % why, flush=True)
        sys.exit(SKIP)


def _is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f if len(line.split()) > 1)


class PowerMount:
    """A powerfs mounted at DIR/mnt, controlled through DIR/powerfs.sock."""

    def __init__(self, base):
        self.base = base
        self.mnt = os.path.join(base, "mnt")
        self.sock = os.path.join(base, "powerfs.sock")
        self.log = os.path.join(base, "powerfs.log")
        self.proc = None

    def __enter__(self):
        os.makedirs(self.mnt, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, POWERFS, self.mnt, self.sock],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_mounts(1)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def command(self, line):
        """Sends one command; returns the decoded JSON answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.sock)
            s.sendall(line.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data.decode())

    def stats(self):
        return self.command("stats")

    def _wait_mounts(self, n):
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("powerfs exited (%d): %s" % (self.proc.returncode,
                                                                 self.tail_log()))
            try:
                if os.path.exists(self.sock) and _is_mounted(self.mnt) and \
                        self.stats()["mounts"] >= n and not self.stats()["dead"]:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        raise AssertionError("powerfs did not mount %s: %s" % (self.mnt, self.tail_log()))

    def crash(self, torn=False, seed=None):
        """Cuts the power: from now on every operation fails with EIO, and
        what was not durable is gone. Returns powerfs's account of it."""
        return self.command("crash%s%s" % (" torn" if torn else "",
                                           "" if seed is None else " %d" % seed))

    def remount(self):
        """After crash(), once nothing uses the mount: unmount, and wait
        until powerfs has mounted the surviving state again."""
        n = self.stats()["mounts"]
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while _is_mounted(self.mnt):
            r = subprocess.run(["fusermount", "-u", self.mnt], capture_output=True)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # a process that was killed may still hold it
        self._wait_mounts(n + 1)

    def tail_log(self, n=2000):
        try:
            with open(self.log, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def close(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.command("exit")
            except (OSError, ValueError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if _is_mounted(self.mnt):
            subprocess.run(["fusermount", "-u", "-z", self.mnt], capture_output=True)
