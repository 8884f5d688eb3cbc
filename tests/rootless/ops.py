#!/usr/bin/env python3
"""The rootless side-by-side tests' hands: builds the layers, runs one case's operations
in a merged view and prints what they gave, and prints a tree (merged view or upper) in a
form two mounts can be compared by. Runs as the ordinary user, or as root of a user
namespace without capabilities (then the user's own files show as uid 0: "me" either way).

    ops.py setup DIR            lower l/ (and empty u/ w/ m/) in DIR
    ops.py run CASE MERGED      CASE's operations, then the merged tree
    ops.py upper UPPER [WORK]   the upper on disk (overlay markers included), WORK's leftovers
    ops.py unmount MNT          fusermount3 -u (or umount, in a namespace), retried while
                                the kernel still finds the mount busy (EBUSY) for a moment
"""
import errno
import hashlib
import os
import stat
import subprocess
import sys
import time

# The kernel's own bookkeeping in an upper, which layover need not write.
BOOKKEEPING = {b"user.overlay.origin", b"user.overlay.impure", b"user.overlay.uuid",
               b"user.overlay.nlink", b"user.overlay.upper"}


def who(uid, mine):
    return "me" if uid == mine else str(uid)


def setup(d):
    os.mkdir(d)
    for sub in ("l", "u", "w", "m"):
        os.mkdir(os.path.join(d, sub))
    l = os.path.join(d, "l")
    files = {"a": b"hi\n", "f0000": b"secret\n", "r": b"rename me\n",
             "d/f": b"x\n", "d/e": b"y\n", "d0500/g": b"g\n"}
    for sub in ("d", "d0500", "empty", "d0000"):
        os.mkdir(os.path.join(l, sub), 0o755)
    for name, data in files.items():
        with open(os.path.join(l, name), "wb") as f:
            f.write(data)
        os.chmod(os.path.join(l, name), 0o644)
    os.setxattr(os.path.join(l, "a"), b"user.note", b"kept")
    os.symlink("a", os.path.join(l, "s"))
    os.setxattr(os.path.join(l, "f0000"), b"user.hidden", b"h")
    os.setxattr(os.path.join(l, "d0000"), b"user.hidden", b"d")
    os.chmod(os.path.join(l, "f0000"), 0o000)
    os.chmod(os.path.join(l, "d0500"), 0o500)
    os.chmod(os.path.join(l, "d0000"), 0o000)


def op(name, f):
    try:
        f()
        print(f"op {name}: ok")
    except OSError as e:
        print(f"op {name}: {errno.errorcode.get(e.errno, e.errno)}")


def append(path, data):
    with open(path, "ab") as f:
        f.write(data)


def write_new(path, data):
    with open(path, "xb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        print(f"read {path} gave {f.read()!r}")


def case_ops(case):
    """Each case's operations, relative to the merged root (the current directory)."""
    if case == "read":
        op("read a", lambda: read("a"))
        op("read d/f", lambda: read("d/f"))
        op("read f0000", lambda: read("f0000"))
    elif case == "append":
        op("append a", lambda: append("a", b"more\n"))
    elif case == "copyup_0000":
        op("chmod f0000 0640", lambda: os.chmod("f0000", 0o640))
        op("read f0000", lambda: read("f0000"))
    elif case == "copyup_0500":
        op("append d0500/g", lambda: append("d0500/g", b"more\n"))
        op("create in d0500", lambda: write_new("d0500/new", b"n\n"))
        op("chmod d0500 0700", lambda: os.chmod("d0500", 0o700))
        op("create in d0500", lambda: write_new("d0500/new", b"n\n"))
    elif case == "unlink":
        op("unlink d/f", lambda: os.unlink("d/f"))
        op("unlink a", lambda: os.unlink("a"))
    elif case == "rmdir":
        op("rmdir empty", lambda: os.rmdir("empty"))
        op("rmdir d", lambda: os.rmdir("d"))
        op("unlink d/f", lambda: os.unlink("d/f"))
        op("unlink d/e", lambda: os.unlink("d/e"))
        op("chmod d 0500", lambda: os.chmod("d", 0o500))
        op("rmdir d (0500, whiteouts inside)", lambda: os.rmdir("d"))
        op("mkdir x", lambda: os.mkdir("x"))
        op("unlink d0500/g", lambda: os.unlink("d0500/g"))
        op("chmod d0500 0700", lambda: os.chmod("d0500", 0o700))
        op("unlink d0500/g", lambda: os.unlink("d0500/g"))
        op("chmod d0500 0500", lambda: os.chmod("d0500", 0o500))
        op("rename x over d0500 (0500, a whiteout inside)", lambda: os.rename("x", "d0500"))
    elif case == "mkdir_opaque":
        op("unlink d/f", lambda: os.unlink("d/f"))
        op("unlink d/e", lambda: os.unlink("d/e"))
        op("rmdir d", lambda: os.rmdir("d"))
        op("mkdir d", lambda: os.mkdir("d", 0o755))
        op("create d/new", lambda: write_new("d/new", b"new\n"))
        op("rmdir empty", lambda: os.rmdir("empty"))
        op("mkdir empty 0500", lambda: os.mkdir("empty", 0o500))
        op("mkdir u0500 0500", lambda: os.mkdir("u0500", 0o500))
        op("rename u0500 into d", lambda: os.rename("u0500", "d/u0500"))
        op("rename d/u0500 into the merged root", lambda: os.rename("d/u0500", "u0500b"))
        op("mkdir top0500 0500", lambda: os.mkdir("top0500", 0o500))
        op("rename top0500 in the merged root", lambda: os.rename("top0500", "top0500b"))
    elif case == "rename":
        op("rename r r2", lambda: os.rename("r", "r2"))
        op("rename d/e e2", lambda: os.rename("d/e", "e2"))
    elif case == "chown":
        op("chown a to own ids", lambda: os.chown("a", os.getuid(), os.getgid()))
        op("chown a to 1234", lambda: os.chown("a", 1234, -1))
        op("chgrp a to 1234", lambda: os.chown("a", -1, 1234))
    elif case == "misc":
        op("truncating open of a", lambda: os.close(os.open("a", os.O_WRONLY | os.O_TRUNC)))
        op("link r r.link", lambda: os.link("r", "r.link"))
        op("symlink", lambda: os.symlink("target", "d/sl"))
        op("mkfifo", lambda: os.mkfifo("d/fifo", 0o640))
        op("mknod char 1/3", lambda: os.mknod("d/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3)))
        op("setxattr user on a lower file", lambda: os.setxattr("d/e", "user.x", b"1"))
        op("setxattr user on a lower dir", lambda: os.setxattr("d", "user.y", b"2"))
        op("setxattr trusted", lambda: os.setxattr("r", "trusted.x", b"1"))
        op("setxattr user.overlay", lambda: os.setxattr("r", "user.overlay.opaque", b"y"))
        op("utime f0000", lambda: os.utime("f0000", (1000000000, 1000000000)))
        op("chmod d0000 0755", lambda: os.chmod("d0000", 0o755))
        op("create in d0000", lambda: write_new("d0000/n", b"n\n"))
        op("mkdir in d0500", lambda: os.mkdir("d0500/x"))
        op("rename lower dir", lambda: os.rename("d", "d2"))
        op("unlink in d0500", lambda: os.unlink("d0500/g"))
    else:
        sys.exit(f"unknown case {case}")


def xattrs(p, upper):
    try:
        names = sorted(os.listxattr(p, follow_symlinks=False))
    except OSError as e:
        return [f"listxattr:{errno.errorcode.get(e.errno)}"]
    out = []
    for n in names:
        b = n.encode()
        if upper and b in BOOKKEEPING:
            continue
        if upper and b.startswith(b"user.overlay."):
            try:
                v = os.getxattr(p, n, follow_symlinks=False)
            except OSError as e:
                v = errno.errorcode.get(e.errno, "?").encode()
            out.append(f"{n}={v.decode(errors='replace')}")
        else:
            out.append(n)
    return out


def tree(root, upper):
    uid, gid = os.getuid(), os.getgid()
    lines = []

    def visit(rel):
        p = os.path.join(root, rel) if rel else root
        st = os.lstat(p)
        m = st.st_mode
        perm = stat.S_IMODE(m)
        desc = f"{rel or '.'}: {oct(perm)} {who(st.st_uid, uid)}:{who(st.st_gid, gid)}"
        children = []
        if stat.S_ISDIR(m):
            desc = "dir " + desc
            # In a merged view, descend only where the mode lets the owner in: a capable
            # namespace root must not see more than the ordinary user. An upper is always
            # read by the ordinary user, outside any namespace.
            if (os.access(p, os.R_OK | os.X_OK) if upper else perm & 0o500 == 0o500):
                try:
                    children = sorted(os.listdir(p))
                except OSError as e:
                    desc += f" (listing: {errno.errorcode.get(e.errno)})"
            else:
                desc += " (not listed)"
        elif stat.S_ISREG(m):
            desc = f"file {desc} size={st.st_size} nlink={st.st_nlink}"
            if (os.access(p, os.R_OK) if upper else perm & 0o400):
                with open(p, "rb") as f:
                    desc += " sha=" + hashlib.sha256(f.read()).hexdigest()[:12]
        elif stat.S_ISLNK(m):
            desc = f"symlink {desc} -> {os.readlink(p)}"
        elif stat.S_ISCHR(m):
            desc = f"chardev {desc} {os.major(st.st_rdev)}/{os.minor(st.st_rdev)}"
        else:
            desc = f"other {desc}"
        x = xattrs(p, upper) if not stat.S_ISLNK(m) else []
        if x:
            desc += " xattrs[" + ",".join(x) + "]"
        lines.append(desc)
        for c in children:
            visit(os.path.join(rel, c) if rel else c)

    visit("")
    return lines


def main():
    cmd = sys.argv[1]
    if cmd == "setup":
        setup(sys.argv[2])
    elif cmd == "run":
        os.chdir(sys.argv[3])
        case_ops(sys.argv[2])
        for line in tree(".", False):
            print("merged " + line)
    elif cmd == "unmount":
        tool = ["umount"] if os.getuid() == 0 else ["fusermount3", "-u"]
        for _ in range(50):
            r = subprocess.run(tool + [sys.argv[2]], capture_output=True, text=True)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        sys.exit(f"cannot unmount {sys.argv[2]}: {r.stderr.strip()}")
    elif cmd == "upper":
        for line in tree(sys.argv[2], True):
            print("upper " + line)
        if len(sys.argv) > 3:
            left = sorted(n for n in os.listdir(sys.argv[3]) if n != "#layover-whiteout")
            print(f"work leftovers: {left}")
    else:
        sys.exit(f"unknown command {cmd}")


main()
