#!/usr/bin/python3
"""powerfs: a FUSE filesystem that forgets, on command, everything that was
not fsynced, as a power cut would (the LazyFS idea, small). It owns the
durability model the power-loss tests run the node against.

Model (the strictest POSIX allows):
  * a file's contents survive a crash as of its last fsync/fdatasync;
  * a directory's entries (created, renamed, deleted names) survive as of
    its last fsync; a file whose name was never made durable is gone;
  * "crash torn" also keeps a random prefix of what was appended to a file
    after its last fsync (a write the disk had partly done).

All state is in memory. A control socket (a Unix socket, one command a
connection, one JSON line back) drives it:
  crash [torn] [SEED]  cut the power: every operation fails with EIO until
                       the filesystem is mounted again, and the state falls
                       back to what was durable
  freeze / thaw        every operation blocks until thaw (fsfreeze)
  arm OP N [torn] [SEED]  crash right after the N-th OP from now is done (OP:
                       create, unlink, fsync, fsyncdir or write), before it
                       returns: the moment of a segment roll, a retention
                       delete, or one fsync of a burst
  capacity BYTES       writes past BYTES of file data fail with ENOSPC (0: none)
  stats                counters
  exit                 unmount for good
After a crash the caller unmounts (fusermount -u) once the processes using
it are gone; powerfs mounts the surviving state again at the same place
(stats' "mounts" counts up), as a machine comes back from a power cut.

  powerfs.py MOUNTPOINT CONTROL_SOCKET
"""
import errno
import json
import os
import random
import socket
import stat
import sys
import threading
import time

try:
    import fusepy as fuse
except ImportError:  # the name upstream's fusepy uses
    import fuse


class Inode:
    __slots__ = ("ino", "mode", "data", "entries", "mtime")

    def __init__(self, ino, mode):
        self.ino = ino
        self.mode = mode
        self.data = bytearray() if stat.S_ISREG(mode) else None
        self.entries = {} if stat.S_ISDIR(mode) else None   # name -> ino
        self.mtime = time.time()


class PowerFS(fuse.Operations):
    use_ns = False
    lock = None      # POSIX locks and flock stay in the kernel (local)

    def __init__(self):
        self.mu = threading.Condition()
        self.inodes = {1: Inode(1, stat.S_IFDIR | 0o755)}
        self.next_ino = 2
        self.durable_data = {}        # ino -> bytes as of its last fsync
        self.durable_entries = {1: {}}  # ino -> {name: ino} as of its last fsync
        self.dead = False             # after a crash, until mounted again
        self.frozen = False
        self.capacity = 0
        self.armed = None             # (op, countdown, torn, seed) for arm
        self.stats = {"mounts": 0, "crashes": 0, "fsyncs": 0, "dir_fsyncs": 0, "writes": 0,
                      "bytes_lost": 0, "files_lost": 0, "torn_bytes_kept": 0, "armed_fired": 0}

    # ------------------------------------------------------------ helpers

    def _enter(self):
        """Every operation starts here, holding mu."""
        while self.frozen and not self.dead:
            self.mu.wait()
        if self.dead:
            raise fuse.FuseOSError(errno.EIO)

    def _lookup(self, path):
        node = self.inodes[1]
        for part in [p for p in path.split("/") if p]:
            if node.entries is None or part not in node.entries:
                raise fuse.FuseOSError(errno.ENOENT)
            node = self.inodes[node.entries[part]]
        return node

    def _parent(self, path):
        head, name = os.path.split(path.rstrip("/"))
        parent = self._lookup(head or "/")
        if parent.entries is None:
            raise fuse.FuseOSError(errno.ENOTDIR)
        return parent, name

    def _node(self, path, fh):
        if fh and fh in self.inodes:
            return self.inodes[fh]
        if path is None:
            raise fuse.FuseOSError(errno.EBADF)
        return self._lookup(path)

    def _used(self):
        return sum(len(n.data) for n in self.inodes.values() if n.data is not None)

    def _reachable(self):
        seen, todo = set(), [1]
        while todo:
            i = todo.pop()
            if i in seen or i not in self.inodes:
                continue
            seen.add(i)
            if self.inodes[i].entries is not None:
                todo.extend(self.inodes[i].entries.values())
        return seen

    def _done(self, op):
        """Called after op took effect: the armed crash fires here."""
        if self.armed and self.armed[0] == op:
            left = self.armed[1] - 1
            if left > 0:
                self.armed = (op, left) + self.armed[2:]
                return
            _, _, torn, seed = self.armed
            self.armed = None
            self.stats["armed_fired"] += 1
            self.crash(torn, seed)
            raise fuse.FuseOSError(errno.EIO)

    # ------------------------------------------------------------ control

    def crash(self, torn, seed):
        with self.mu:
            rng = random.Random(seed)
            survivors = {1: Inode(1, self.inodes[1].mode)}
            lost = kept = 0
            todo = [1]
            while todo:
                d = todo.pop()
                for name, ino in self.durable_entries.get(d, {}).items():
                    old = self.inodes.get(ino)
                    if old is None:
                        continue
                    n = Inode(ino, old.mode)
                    if n.data is not None:
                        n.data = bytearray(self.durable_data.get(ino, b""))
                        cur = old.data
                        if len(cur) > len(n.data) and cur.startswith(n.data):
                            extra = len(cur) - len(n.data)
                            if torn and extra:
                                k = rng.randrange(extra + 1)
                                n.data += cur[len(n.data):len(n.data) + k]
                                kept += k
                        lost += max(0, len(cur) - len(n.data))
                    else:
                        todo.append(ino)
                    survivors[ino] = n
            files_lost = sum(1 for i in self._reachable()
                             if i not in survivors and self.inodes[i].data is not None)
            for ino, n in survivors.items():
                if n.entries is not None:  # the durable names whose inode survived
                    n.entries = {k: v for k, v in self.durable_entries.get(ino, {}).items()
                                 if v in survivors}
            self.inodes = survivors
            self.durable_data = {i: bytes(n.data) for i, n in survivors.items()
                                 if n.data is not None}
            self.durable_entries = {i: dict(n.entries) for i, n in survivors.items()
                                    if n.entries is not None}
            self.dead = True
            self.frozen = False
            self.armed = None
            self.stats["crashes"] += 1
            self.stats["bytes_lost"] += lost
            self.stats["files_lost"] += files_lost
            self.stats["torn_bytes_kept"] += kept
            self.mu.notify_all()
            return {"bytes_lost": lost, "files_lost": files_lost, "torn_bytes_kept": kept}

    def command(self, line):
        words = line.split()
        if not words:
            return {"error": "empty command"}
        cmd, args = words[0], words[1:]
        if cmd == "crash":
            torn = "torn" in args
            seeds = [a for a in args if a != "torn"]
            return self.crash(torn, int(seeds[0]) if seeds else None)
        with self.mu:
            if cmd == "freeze":
                self.frozen = True
            elif cmd == "thaw":
                self.frozen = False
                self.mu.notify_all()
            elif cmd == "arm" and len(args) >= 2 and args[1].isdigit() and int(args[1]) > 0 and \
                    args[0] in ("create", "unlink", "fsync", "fsyncdir", "write"):
                rest = args[2:]
                seeds = [a for a in rest if a != "torn"]
                self.armed = (args[0], int(args[1]), "torn" in rest,
                              int(seeds[0]) if seeds else None)
            elif cmd == "capacity" and len(args) == 1 and args[0].isdigit():
                self.capacity = int(args[0])
            elif cmd == "stats":
                return dict(self.stats, used=self._used(), dead=self.dead, frozen=self.frozen)
            else:
                return {"error": "unknown command %r" % line}
            return {"ok": True}

    # ------------------------------------------------------------ FUSE

    def init(self, path):
        with self.mu:
            self.dead = False
            self.stats["mounts"] += 1

    def getattr(self, path, fh=None):
        with self.mu:
            self._enter()
            n = self._node(path, fh)
            size = len(n.data) if n.data is not None else 4096
            return {"st_mode": n.mode, "st_ino": n.ino, "st_nlink": 2 if n.entries is not None else 1,
                    "st_size": size, "st_blocks": (size + 511) // 512, "st_uid": os.getuid(),
                    "st_gid": os.getgid(), "st_atime": n.mtime, "st_mtime": n.mtime,
                    "st_ctime": n.mtime}

    def readdir(self, path, fh):
        with self.mu:
            self._enter()
            return [".", ".."] + list(self._node(path, fh).entries)

    def opendir(self, path):
        with self.mu:
            self._enter()
            n = self._lookup(path)
            if n.entries is None:
                raise fuse.FuseOSError(errno.ENOTDIR)
            return n.ino

    def releasedir(self, path, fh):
        return 0

    def fsyncdir(self, path, datasync, fh):
        with self.mu:
            self._enter()
            n = self._node(path, fh)
            self.durable_entries[n.ino] = dict(n.entries)
            self.stats["dir_fsyncs"] += 1
            self._done("fsyncdir")
            return 0

    def mkdir(self, path, mode):
        with self.mu:
            self._enter()
            parent, name = self._parent(path)
            if name in parent.entries:
                raise fuse.FuseOSError(errno.EEXIST)
            n = self._new(stat.S_IFDIR | (mode & 0o7777))
            self.durable_entries[n.ino] = {}
            parent.entries[name] = n.ino

    def _new(self, mode):
        n = Inode(self.next_ino, mode)
        self.next_ino += 1
        self.inodes[n.ino] = n
        return n

    def rmdir(self, path):
        with self.mu:
            self._enter()
            parent, name = self._parent(path)
            n = self._lookup(path)
            if n.entries is None:
                raise fuse.FuseOSError(errno.ENOTDIR)
            if n.entries:
                raise fuse.FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]

    def create(self, path, mode, fi=None):
        with self.mu:
            self._enter()
            parent, name = self._parent(path)
            if name in parent.entries:
                n = self.inodes[parent.entries[name]]
                if n.data is None:
                    raise fuse.FuseOSError(errno.EISDIR)
                n.data = bytearray()  # create() means O_CREAT; O_EXCL is checked by the kernel
                return n.ino
            n = self._new(stat.S_IFREG | (mode & 0o7777))
            parent.entries[name] = n.ino
            self._done("create")
            return n.ino

    def open(self, path, flags):
        with self.mu:
            self._enter()
            n = self._lookup(path)
            if flags & os.O_TRUNC and n.data is not None:
                n.data = bytearray()
            return n.ino

    def release(self, path, fh):
        return 0

    def flush(self, path, fh):
        return 0

    def read(self, path, size, offset, fh):
        with self.mu:
            self._enter()
            n = self._node(path, fh)
            return bytes(n.data[offset:offset + size])

    def write(self, path, data, offset, fh):
        with self.mu:
            self._enter()
            n = self._node(path, fh)
            grow = max(0, offset + len(data) - len(n.data))
            if self.capacity and grow and self._used() + grow > self.capacity:
                raise fuse.FuseOSError(errno.ENOSPC)
            if offset > len(n.data):
                n.data += bytes(offset - len(n.data))
            n.data[offset:offset + len(data)] = data
            n.mtime = time.time()
            self.stats["writes"] += 1
            self._done("write")
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mu:
            self._enter()
            n = self._node(path, fh)
            if length < len(n.data):
                del n.data[length:]
            else:
                n.data += bytes(length - len(n.data))
            n.mtime = time.time()

    def fsync(self, path, datasync, fh):
        with self.mu:
            self._enter()
            n = self._node(path, fh)
            self.durable_data[n.ino] = bytes(n.data)
            self.stats["fsyncs"] += 1
            self._done("fsync")
            return 0

    def unlink(self, path):
        with self.mu:
            self._enter()
            parent, name = self._parent(path)
            if name not in parent.entries:
                raise fuse.FuseOSError(errno.ENOENT)
            if self.inodes[parent.entries[name]].entries is not None:
                raise fuse.FuseOSError(errno.EISDIR)
            del parent.entries[name]
            self._done("unlink")

    def rename(self, old, new):
        with self.mu:
            self._enter()
            op, on = self._parent(old)
            np_, nn = self._parent(new)
            if on not in op.entries:
                raise fuse.FuseOSError(errno.ENOENT)
            np_.entries[nn] = op.entries.pop(on)

    def chmod(self, path, mode):
        with self.mu:
            self._enter()
            n = self._lookup(path)
            n.mode = stat.S_IFMT(n.mode) | (mode & 0o7777)

    def chown(self, path, uid, gid):
        return 0

    def utimens(self, path, times=None):
        with self.mu:
            self._enter()
            self._lookup(path).mtime = times[1] if times else time.time()

    def access(self, path, amode):
        with self.mu:
            self._enter()
            self._lookup(path)
            return 0

    def statfs(self, path):
        with self.mu:
            cap = self.capacity or (1 << 34)
            free = max(0, cap - self._used())
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": cap // 4096,
                    "f_bfree": free // 4096, "f_bavail": free // 4096, "f_namemax": 255}


def serve_control(fs, path, stop):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                line += chunk
            text = line.decode(errors="replace").strip()
            if text == "exit":
                stop.set()
                conn.sendall(b'{"ok": true}\n')
                return
            conn.sendall((json.dumps(fs.command(text)) + "\n").encode())


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: powerfs.py MOUNTPOINT CONTROL_SOCKET")
    mnt, ctl = sys.argv[1], sys.argv[2]
    fs = PowerFS()
    stop = threading.Event()

    def control():
        serve_control(fs, ctl, stop)
        with fs.mu:  # wake anything frozen, then leave the mount
            fs.frozen = False
            fs.mu.notify_all()
        os.system("fusermount -u -z %s >/dev/null 2>&1" % mnt)

    threading.Thread(target=control, daemon=True).start()
    # No attribute, entry or page caching in the kernel: after a remount it
    # must see only what survived. big_writes: journal records in one request.
    while not stop.is_set():
        fuse.FUSE(fs, mnt, foreground=True, nothreads=False, hard_remove=True, big_writes=True,
                  attr_timeout=0, entry_timeout=0, negative_timeout=0, fsname="powerfs")
        if not stop.is_set():
            with fs.mu:
                if not fs.dead:
                    break  # unmounted from outside without a crash: we are done


if __name__ == "__main__":
    main()
