"""powerfs on its own: after a power cut, file contents are as of their last
fsync, directory entries as of their directory's last fsync; a torn crash
keeps only a prefix of unsynced appends; operations fail with EIO between
the cut and the remount; freeze blocks, capacity gives ENOSPC, flock works.
The power-loss test of the node rests on exactly these properties."""
import errno
import fcntl
import os
import shutil
import sys
import tempfile
import threading
import time

import powermount

# How long a frozen write must stay blocked to count as blocked; the
# freeze is released right after, so this bounds the test, not the product.
FREEZE_PROBE_S = 0.3


def write(path, data, sync=True, mode="ab"):
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test():
    base = tempfile.mkdtemp(prefix="berth-powerfs-")
    try:
        with powermount.PowerMount(base) as m:
            d = m.mnt
            a, b, c, e, f = (os.path.join(d, x) for x in "abcef")
            write(a, b"one")
            write(c, b"keep")
            write(e, b"moved")
            fsync_dir(d)
            write(a, b"two", sync=False)          # unsynced append: lost
            write(b, b"new")                      # data synced, name never: lost
            os.unlink(c)                          # delete not made durable: comes back
            os.rename(e, f)                       # rename not made durable: undone
            os.mkdir(os.path.join(d, "sub"))      # never made durable: gone
            assert read(a) == b"onetwo"
            m.crash()
            try:
                os.stat(a)
                raise AssertionError("stat after the power cut worked")
            except OSError as ex:
                assert ex.errno == errno.EIO, ex
            m.remount()
            assert sorted(os.listdir(d)) == ["a", "c", "e"], os.listdir(d)
            assert read(a) == b"one", read(a)
            assert read(c) == b"keep"
            assert read(e) == b"moved"

            # Made durable properly: survives.
            write(b, b"bee")
            fsync_dir(d)
            write(a, b"three")
            os.unlink(c)
            fsync_dir(d)
            m.crash()
            m.remount()
            assert sorted(os.listdir(d)) == ["a", "b", "e"], os.listdir(d)
            assert read(a) == b"onethree" and read(b) == b"bee"

            # Torn: some prefix of the unsynced append survives, never more.
            tail = bytes(range(256)) * 8
            kept = set()
            for seed in range(6):
                write(a, tail, sync=False)
                got = m.crash(torn=True, seed=seed)
                m.remount()
                data = read(a)
                assert data.startswith(b"onethree"), data[:16]
                extra = data[len(b"onethree"):]
                assert tail.startswith(extra), "torn tail is not a prefix of what was written"
                assert got["torn_bytes_kept"] == len(extra)
                kept.add(len(extra))
                with open(a, "r+b") as fh:   # back to the durable state for the next round
                    fh.truncate(len(b"onethree"))
                    os.fsync(fh.fileno())
            assert len(kept) > 1, "torn crashes always kept the same length: %r" % kept

            # Armed: the power goes right after the 2nd create, which fails.
            m.command("arm create 2")
            write(os.path.join(d, "x1"), b"1")
            try:
                write(os.path.join(d, "x2"), b"2")
                raise AssertionError("the armed create returned success")
            except OSError as ex:
                assert ex.errno == errno.EIO, ex
            assert m.stats()["dead"] and m.stats()["armed_fired"] == 1
            m.remount()
            assert "x1" not in os.listdir(d) and "x2" not in os.listdir(d)

            # Freeze: a write waits for thaw.
            done = threading.Event()

            def frozen_write():
                write(b, b"x")
                done.set()

            m.command("freeze")
            t = threading.Thread(target=frozen_write, daemon=True)
            t.start()
            assert not done.wait(FREEZE_PROBE_S), "a write went through a frozen filesystem"
            m.command("thaw")
            assert done.wait(10), "the write did not finish after thaw"

            # Capacity: ENOSPC past it.
            used = m.stats()["used"]
            m.command("capacity %d" % (used + 1000))
            try:
                write(os.path.join(d, "big"), b"z" * 5000)
                raise AssertionError("a write past the capacity worked")
            except OSError as ex:
                assert ex.errno == errno.ENOSPC, ex
            m.command("capacity 0")

            # flock is honoured between two opens (the node's journal lock).
            f1 = os.open(a, os.O_RDONLY)
            f2 = os.open(a, os.O_RDONLY)
            try:
                fcntl.flock(f1, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    fcntl.flock(f2, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    raise AssertionError("a second exclusive flock was granted")
                except BlockingIOError:
                    pass
            finally:
                os.close(f1)
                os.close(f2)
            print("powerfs: %r" % m.stats())
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    powermount.skip_unless_fuse()
    t0 = time.monotonic()
    test()
    print("test_powerfs: passed in %.1fs" % (time.monotonic() - t0))
    sys.exit(0)
