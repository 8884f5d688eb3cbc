"""Runs operations on one mount, on behalf of the orchestrator.

Started as `python3 executor.py JAIL ROOT` with framed JSON on stdin/stdout
(common.send_msg); it chroots into JAIL (a directory holding only mount points) and works
on ROOT inside it, so that no symlink can lead an op to the host's files. It is the only
process that touches the mount, so a hung FUSE request blocks this process and not the
orchestrator, which kills it (process group) after a deadline.

An op runs as root in this process, or, when it names a "uid", in a forked child that drops
to that uid/gid (setresgid/setresuid, supplementary groups from "groups") and reports its
result through a pipe. Descriptor slots ("fdopen" ... "fdclose") live in this process and
survive between ops. After every op, the paths it named and their parents are lstat-ed (as
root) and described, so a wrong mode or mtime is caught at the op that caused it.
"""

import ctypes
import json
import os
import random
import stat
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (data_bytes, errname, join, parent_of, recv_msg, send_msg,  # noqa: E402
                    short_bytes)
from snapshot import norm_stat, snapshot, walk_types, dtype_char  # noqa: E402

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_FLAGS = {"NOREPLACE": 1, "EXCHANGE": 2}
XATTR_FLAGS = {"CREATE": os.XATTR_CREATE, "REPLACE": os.XATTR_REPLACE}
OPEN_FLAGS = {"RDONLY": os.O_RDONLY, "WRONLY": os.O_WRONLY, "RDWR": os.O_RDWR,
              "CREAT": os.O_CREAT, "EXCL": os.O_EXCL, "TRUNC": os.O_TRUNC,
              "APPEND": os.O_APPEND, "DIRECTORY": os.O_DIRECTORY, "NOFOLLOW": os.O_NOFOLLOW}
ACCESS = {"R": os.R_OK, "W": os.W_OK, "X": os.X_OK, "F": os.F_OK}


class Step(Exception):
    """An OSError tagged with the step of a compound op where it happened."""

    def __init__(self, step, err):
        super().__init__(step)
        self.step = step
        self.errno = err.errno


def step(name, fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except OSError as e:
        raise Step(name, e) from None


def renameat2(src, dst, flags):
    r = _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst),
                        ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def open_flags(names):
    f = os.O_NONBLOCK | os.O_CLOEXEC  # never block on a fifo
    for n in names:
        f |= OPEN_FLAGS[n]
    return f


def fstat_desc(fd):
    # nlink stays: it is how an unlinked-but-open file shows (0). A difference in it alone
    # gets the signature op:X:value:nlink, which known.txt's hard-link class covers.
    return norm_stat(None, os.fstat(fd), None, content=False, xattrs=False)


def do_write(fd, op):
    data = data_bytes(op["data"])
    if op.get("off") is None:
        return os.write(fd, data)
    return os.pwrite(fd, data, op["off"])


class Executor:
    def __init__(self, root):
        self.root = root
        self.fds = {}

    def path(self, rel):
        return join(self.root, rel)

    # each returns a JSON-able value or raises OSError/Step
    def op_open(self, op):
        fd = step("open", os.open, self.path(op["p"]), open_flags(op["flags"]),
                  op.get("mode", 0o644))
        out = {}
        try:
            out["fstat"] = step("fstat", fstat_desc, fd)
            if "data" in op:
                out["w"] = step("write", do_write, fd, op)
            if "rlen" in op:
                out["r"] = short_bytes(step("read", os.pread, fd, op["rlen"], 0))
        finally:
            step("close", os.close, fd)
        return out

    def op_write(self, op):
        flags = os.O_WRONLY | os.O_NONBLOCK | (os.O_APPEND if op.get("off") is None else 0)
        fd = step("open", os.open, self.path(op["p"]), flags)
        try:
            return step("write", do_write, fd, op)
        finally:
            step("close", os.close, fd)

    def op_read(self, op):
        fd = step("open", os.open, self.path(op["p"]), os.O_RDONLY | os.O_NONBLOCK)
        try:
            return short_bytes(step("read", os.pread, fd, op["len"], op["off"]))
        finally:
            step("close", os.close, fd)

    def op_truncate(self, op):
        os.truncate(self.path(op["p"]), op["size"])

    def op_mkdir(self, op):
        os.mkdir(self.path(op["p"]), op["mode"])

    def op_rmdir(self, op):
        os.rmdir(self.path(op["p"]))

    def op_unlink(self, op):
        os.unlink(self.path(op["p"]))

    def op_rename(self, op):
        flags = 0
        for f in op.get("flags", []):
            flags |= RENAME_FLAGS[f]
        if flags:
            renameat2(self.path(op["p"]), self.path(op["p2"]), flags)
        else:
            os.rename(self.path(op["p"]), self.path(op["p2"]))

    def op_link(self, op):
        os.link(self.path(op["p"]), self.path(op["p2"]), follow_symlinks=False)

    def op_symlink(self, op):
        os.symlink(op["target"], self.path(op["p"]))

    def op_mkfifo(self, op):
        os.mkfifo(self.path(op["p"]), op["mode"])

    def op_chmod(self, op):
        os.chmod(self.path(op["p"]), op["mode"])

    def op_chown(self, op):
        os.chown(self.path(op["p"]), op["owner"][0], op["owner"][1],
                 follow_symlinks=op.get("follow", True))

    def op_utime(self, op):
        if op.get("ns") is None:
            os.utime(self.path(op["p"]), follow_symlinks=op.get("follow", True))
        else:
            os.utime(self.path(op["p"]), ns=tuple(op["ns"]),
                     follow_symlinks=op.get("follow", True))

    def op_setxattr(self, op):
        flags = XATTR_FLAGS.get(op.get("flag"), 0)
        os.setxattr(self.path(op["p"]), op["name"], bytes.fromhex(op["value"]), flags,
                    follow_symlinks=False)

    def op_removexattr(self, op):
        os.removexattr(self.path(op["p"]), op["name"], follow_symlinks=False)

    def op_getxattr(self, op):
        return os.getxattr(self.path(op["p"]), op["name"], follow_symlinks=False).hex()

    def op_listxattr(self, op):
        return sorted(os.listxattr(self.path(op["p"]), follow_symlinks=False))

    def op_listdir(self, op):
        full = self.path(op["p"])
        out = []
        with os.scandir(full) as it:
            for ent in it:
                item = [ent.name, dtype_char(ent)]
                try:
                    if ent.inode() != os.lstat(full + "/" + ent.name).st_ino:
                        item.append("d_ino!=st_ino")
                except OSError as e:
                    item.append("lstat:" + errname(e.errno))
                out.append(item)
        out.sort()
        return out

    def op_stat(self, op):
        full = self.path(op["p"])
        out = {"lstat": norm_stat(full, os.lstat(full), None, content=False)}
        try:
            out["stat"] = norm_stat(full, os.stat(full), None, content=False)
        except OSError as e:
            out["stat"] = "err:" + errname(e.errno)
        return out

    def op_readlink(self, op):
        return os.readlink(self.path(op["p"]))

    def op_access(self, op):
        m = 0
        for c in op["mode"]:
            m |= ACCESS[c]
        return os.access(self.path(op["p"]), m, effective_ids=False)

    def op_fsync(self, op):
        flags = os.O_NONBLOCK | (os.O_WRONLY if op.get("write") else os.O_RDONLY)
        fd = step("open", os.open, self.path(op["p"]), flags)
        try:
            step("fsync", os.fsync, fd)
        finally:
            step("close", os.close, fd)

    def op_stale(self, op):
        """Read through a descriptor opened before the file was written (copied up) through
        another descriptor."""
        full = self.path(op["p"])
        fd1 = step("open-ro", os.open, full, os.O_RDONLY | os.O_NONBLOCK)
        try:
            before = short_bytes(step("read-1", os.pread, fd1, 1 << 20, 0))
            fd2 = step("open-wr", os.open, full, os.O_WRONLY | os.O_NONBLOCK)
            try:
                w = step("write", do_write, fd2, op)
            finally:
                step("close-wr", os.close, fd2)
            after = short_bytes(step("read-2", os.pread, fd1, 1 << 20, 0))
            fst = step("fstat", fstat_desc, fd1)
        finally:
            step("close-ro", os.close, fd1)
        return {"before": before, "w": w, "after": after, "fstat": fst}

    # --- descriptor slots ---
    def slot(self, op):
        fd = self.fds.get(op["slot"])
        if fd is None:
            raise OSError(9, "no such slot")
        return fd

    def op_fdopen(self, op):
        old = self.fds.pop(op["slot"], None)
        if old is not None:
            os.close(old)
        fd = os.open(self.path(op["p"]), open_flags(op["flags"]), 0o644)
        self.fds[op["slot"]] = fd
        return fstat_desc(fd)

    def op_fdread(self, op):
        return short_bytes(os.pread(self.slot(op), op["len"], op["off"]))

    def op_fdwrite(self, op):
        return do_write(self.slot(op), op)

    def op_fdtrunc(self, op):
        os.ftruncate(self.slot(op), op["size"])

    def op_fdstat(self, op):
        return fstat_desc(self.slot(op))

    def op_fdfsync(self, op):
        os.fsync(self.slot(op))

    def op_fdclose(self, op):
        fd = self.slot(op)
        del self.fds[op["slot"]]
        os.close(fd)

    def closeall(self):
        errs = {}
        for s, fd in sorted(self.fds.items()):
            try:
                os.close(fd)
            except OSError as e:
                errs[str(s)] = errname(e.errno)
        self.fds.clear()
        return errs

    def resolve(self, rel):
        """The path, relative to the root, of the regular file that rel names when followed
        (symlinks anywhere in it, absolute ones resolving inside the jail), or None when it
        names no regular file inside the mount. Lets the orchestrator find the layer file
        behind a path reached through symlinks (session.py's labels)."""
        full = os.path.realpath(self.path(rel))
        if not full.startswith(self.root + "/"):
            return None
        try:
            if not stat.S_ISREG(os.lstat(full).st_mode):
                return None
        except OSError:
            return None
        return full[len(self.root) + 1:]

    # --- running ---
    def same_file(self, op):
        """Whether a rename's two names are one file here (then POSIX makes it a no-op that
        needs no permission, and the VFS never asks the file system)."""
        try:
            a, b = os.lstat(self.path(op["p"])), os.lstat(self.path(op["p2"]))
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def run_here(self, op):
        fn = getattr(self, "op_" + op["op"])
        same = op["op"] == "rename" and self.same_file(op)
        old = os.umask(op.get("umask", 0o022))
        try:
            res = {"ok": fn(op)}
        except Step as e:
            res = {"err": errname(e.errno), "at": e.step}
        except OSError as e:
            res = {"err": errname(e.errno)}
        finally:
            os.umask(old)
        if same:
            res["same_file"] = True
        return res

    def run_as(self, op):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(r)
                os.setgroups(op.get("groups", []))
                os.setresgid(op["gid"], op["gid"], op["gid"])
                os.setresuid(op["uid"], op["uid"], op["uid"])
                res = self.run_here(op)
                data = json.dumps(res).encode()
                while data:
                    data = data[os.write(w, data):]
            except BaseException:  # report the failure and never return into the loop
                code = 3
            finally:
                os._exit(code)
        os.close(w)
        chunks = []
        while True:
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if status != 0 or not chunks:
            return {"err": "CHILD-FAILED", "status": status}
        return json.loads(b"".join(chunks))

    def post(self, op):
        paths = set()
        for k in ("p", "p2"):
            if k in op and isinstance(op[k], str):
                paths.add(op[k])
                paths.add(parent_of(op[k]))
        out = {}
        for p in sorted(paths):
            full = self.path(p)
            try:
                out[p] = norm_stat(full, os.lstat(full), None, content=True)
            except OSError as e:
                out[p] = "err:" + errname(e.errno)
        return out

    def run(self, op):
        if "uid" in op and not op["op"].startswith("fd"):
            res = self.run_as(op)
        else:
            res = self.run_here(op)
        if op.get("post", True):
            res["post"] = self.post(op)
        return res


def loop(ex, args):
    """Concurrent mode: random ops on the tree until a deadline, reporting each op before it
    starts and its errno after, as framed messages on stdout."""
    from gen import NAME_CHANGING, Gen  # loaded before the chroot
    seed, wid, seconds, uid_share, spec = args
    # every worker is root; a share of its ops runs as an unprivileged user in a child (as
    # in sequential runs), so that no worker is left spinning on EACCES once the root
    # workers have closed a directory to others
    gen = Gen(random.Random("conc:%s:%d" % (seed, wid)), spec, uid_share, False, True)
    deadline = time.monotonic() + seconds
    tree = walk_types(ex.root)
    n = 0
    while time.monotonic() < deadline:
        op = gen.next(tree)
        op["post"] = False
        send_msg(1, {"start": op})
        res = ex.run(op)
        gen.observe(op, res)
        send_msg(1, {"end": op["op"], "err": res.get("err", "ok"), "unpriv": "uid" in op})
        n += 1
        if op["op"] in NAME_CHANGING or n % 20 == 0:
            tree = walk_types(ex.root)
    send_msg(1, {"closeall": ex.closeall(), "done": n})


def main():
    jail, root = sys.argv[1], sys.argv[2]
    loop_args = None
    if len(sys.argv) > 3 and sys.argv[3] == "--loop":
        with open(sys.argv[8]) as f:
            spec = json.load(f)
        loop_args = (sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7]),
                     spec)
        __import__("gen")  # loop() needs it after the chroot, when imports fail
    os.chroot(jail)
    os.chdir("/")
    ex = Executor(root)
    os.umask(0o022)
    if loop_args:
        loop(ex, loop_args)
        return
    while True:
        try:
            msg = recv_msg(0)
        except EOFError:
            return
        cmd = msg["cmd"]
        if cmd == "op":
            out = ex.run(msg["op"])
        elif cmd == "walk":
            out = walk_types(root)
        elif cmd == "snapshot":
            out = snapshot(root, None, content=True)
        elif cmd == "closeall":
            out = ex.closeall()
        elif cmd == "resolve":
            out = ex.resolve(msg["p"])
        elif cmd == "stat-root":
            st = os.stat(root)
            out = stat.S_ISDIR(st.st_mode)
        elif cmd == "exit":
            ex.closeall()
            send_msg(1, None)
            return
        else:
            out = {"error": "unknown command %r" % cmd}
        send_msg(1, out)


if __name__ == "__main__":
    main()
