"""Random operations, biased toward names that exist in the current merged tree.

The tree model is the kernel mount's own tree (a sorted walk after every operation that
changes names), so generation is deterministic for a seed: the kernel is deterministic and
listings are sorted. Each op is a JSON-able dict that executor.py knows how to run.
"""

from layers import DIR_MODES, FILE_MODES, LONG255, explicit_time, overlay_prefix

FRESH = ["n1", "n2", "n3", "new", "tmp", "sp ace2", "nl\nx", "\udcfe\udcfd", "L" * 256,
         LONG255[:-1] + "Z", "#x"]
OWNERS = [(0, 0), (1000, 1000), (1001, 1001), (-1, 1000), (1000, -1), (65534, 65534), (0, 1001)]
USERS = [(1000, 1000, [1000]), (1000, 1000, [1000, 1001]), (1001, 1001, [1001])]
# Executors run chrooted into a jail holding only the mount points (/mnt is the merged
# root), so absolute or climbing targets resolve inside the jail, never on the host.
SYMLINK_TARGETS = ["a", "../a", "b/c", "/mnt/a", "/mnt", "/nonexistent-difftest/x",
                   "nonexistent", "x" * 300, "sp ace", "."]
OPEN_FLAG_SETS = [
    ["WRONLY", "CREAT", "EXCL"], ["WRONLY", "CREAT", "TRUNC"], ["RDWR", "CREAT"],
    ["WRONLY", "APPEND"], ["WRONLY", "CREAT", "APPEND"], ["RDONLY"], ["RDWR"],
    ["WRONLY", "TRUNC"], ["RDONLY", "TRUNC"], ["RDONLY", "DIRECTORY"], ["RDONLY", "NOFOLLOW"],
    ["RDWR", "CREAT", "EXCL", "NOFOLLOW"], ["WRONLY", "CREAT", "DIRECTORY"],
]
FD_FLAG_SETS = [["RDONLY"]] * 5 + [["RDWR"]] * 3 + [["WRONLY", "APPEND"], ["WRONLY"],
                                                    ["RDWR", "CREAT"]]
WRITE_OFFS = [0, 0, 1, 100, 4095, 4096, 10000, 65536, 1 << 20, None, None]
WRITE_LENS = [1, 3, 10, 100, 4096, 5000, 70000]

OPS = [  # (name, weight)
    ("open", 10), ("write", 10), ("read", 5), ("truncate", 4), ("mkdir", 6), ("rmdir", 4),
    ("unlink", 6), ("rename", 10), ("link", 4), ("symlink", 3), ("mkfifo", 1), ("chmod", 4),
    ("chown", 3), ("utime", 3), ("setxattr", 4), ("removexattr", 2), ("getxattr", 2),
    ("listxattr", 2), ("listdir", 5), ("stat", 4), ("readlink", 1), ("access", 2),
    ("fsync", 2), ("stale", 3), ("fdopen", 3), ("fdread", 3), ("fdwrite", 2),
    ("fdtrunc", 1), ("fdstat", 1), ("fdfsync", 1), ("fdclose", 1),
]
# ops that may change names in the tree (the model is refreshed after them)
NAME_CHANGING = {"open", "mkdir", "rmdir", "unlink", "rename", "link", "symlink", "mkfifo",
                 "fdopen"}
SLOTS = 3
# concurrent mode's directory modes: searchable by all, most of them writable by all
OPEN_DIR_MODES = [0o777, 0o1777, 0o3777, 0o2777, 0o777, 0o755, 0o555, 0o711]


class Gen:
    def __init__(self, rng, spec, uid_share=0.25, aufs=False, keep_open=False):
        self.rng = rng
        self.keep_open = keep_open  # concurrent mode (see g_chmod)
        self.uid_share = uid_share
        self.names = list(spec.get("names", [])) + FRESH + ([".wh.n1", ".wh..wh..opq"] if aufs else [])
        ns = overlay_prefix(spec.get("userxattr", False))
        self.xattr_names = ["user.a", "user.b", "user.new", "user.mime_type", "user.a",
                            "user.new", "user.overlay.x", "trusted.t1", ns + "opaque",
                            ns + "foo", "user.", "security.x"]
        self.open_slots = set()
        self.total = sum(w for _, w in OPS)

    # --- picking paths ---
    def existing(self, tree, pred=None):
        c = [p for p, t in tree if pred is None or pred(t)]
        return self.rng.choice(c) if c else None

    def fresh(self, tree):
        dirs = [""] + [p for p, t in tree if t == "d"]
        parent = self.rng.choice(dirs)
        name = self.rng.choice(self.names)
        return name if parent == "" else parent + "/" + name

    def path(self, tree, pred=None, p_existing=0.8):
        if self.rng.random() < p_existing:
            p = self.existing(tree, pred)
            if p is not None:
                return p
        return self.fresh(tree)

    def data(self):
        r = self.rng
        if r.random() < 0.1:
            return {"fill": 0, "len": r.choice(WRITE_LENS)}
        return {"seed": r.randrange(1 << 30), "len": r.choice(WRITE_LENS)}

    # --- one op ---
    def next(self, tree):
        r = self.rng
        x = r.uniform(0, self.total)
        for name, w in OPS:
            x -= w
            if x <= 0:
                break
        op = {"op": name}
        op.update(getattr(self, "g_" + name)(tree))
        if not name.startswith("fd") and r.random() < self.uid_share:
            op["uid"], op["gid"], op["groups"] = r.choice(USERS)
        if r.random() < 0.1:
            op["umask"] = r.choice([0, 0o002] if self.keep_open else [0, 0o002, 0o077, 0o777])
        return op

    def is_file(self, t):
        return t == "f"

    def g_open(self, tree):
        r = self.rng
        op = {"p": self.path(tree, p_existing=0.6), "flags": r.choice(OPEN_FLAG_SETS),
              "mode": r.choice(FILE_MODES)}
        if "RDONLY" not in op["flags"] and r.random() < 0.6:
            op["data"] = self.data()
            if r.random() < 0.5:
                op["off"] = r.choice(WRITE_OFFS)
        if "WRONLY" not in op["flags"] and r.random() < 0.5:
            op["rlen"] = r.choice([10, 5000, 1 << 20])
        return op

    def g_write(self, tree):
        return {"p": self.path(tree, self.is_file, 0.9), "off": self.rng.choice(WRITE_OFFS),
                "data": self.data()}

    def g_read(self, tree):
        r = self.rng
        return {"p": self.path(tree, self.is_file, 0.9), "off": r.choice([0, 0, 1, 4096, 70000]),
                "len": r.choice([1, 100, 5000, 1 << 20])}

    def g_truncate(self, tree):
        return {"p": self.path(tree, self.is_file, 0.9),
                "size": self.rng.choice([0, 1, 100, 4096, 5000, 1 << 20, 3 << 20])}

    def g_mkdir(self, tree):
        modes = OPEN_DIR_MODES if self.keep_open else DIR_MODES
        return {"p": self.path(tree, p_existing=0.25), "mode": self.rng.choice(modes)}

    def g_rmdir(self, tree):
        return {"p": self.path(tree, lambda t: t == "d", 0.9)}

    def g_unlink(self, tree):
        return {"p": self.path(tree, lambda t: t != "d", 0.9)}

    def g_rename(self, tree):
        r = self.rng
        src = self.path(tree, None, 0.9)
        if r.random() < 0.4:
            dst = self.path(tree, None, 1.0)
        else:
            dst = self.fresh(tree)
        flags = r.choice([[]] * 6 + [["NOREPLACE"]] * 2 + [["EXCHANGE"]] * 2)
        return {"p": src, "p2": dst, "flags": flags}

    def g_link(self, tree):
        return {"p": self.path(tree, lambda t: t != "d", 0.9), "p2": self.path(tree, None, 0.2)}

    def g_symlink(self, tree):
        return {"p": self.path(tree, None, 0.2), "target": self.rng.choice(SYMLINK_TARGETS)}

    def g_mkfifo(self, tree):
        return {"p": self.path(tree, None, 0.2), "mode": self.rng.choice([0o644, 0o600, 0o666])}

    def g_chmod(self, tree):
        modes = FILE_MODES + DIR_MODES + [0o7777, 0o4000 | 0o755, 0o2070]
        if not self.keep_open:
            return {"p": self.path(tree, None, 0.95), "mode": self.rng.choice(modes)}
        # concurrent mode: thousands of random chmods would soon close every directory (the
        # root too, through symlinks to "." or "/mnt") to the unprivileged ops; there
        # directories keep modes that let anyone in (a+rx on anything, since the tree model
        # lags behind the other workers' renames), and no chmod goes through a symlink
        p = self.path(tree, lambda t: t != "l", 0.95)
        mode = self.rng.choice(OPEN_DIR_MODES if (p, "d") in tree else modes)
        return {"p": p, "mode": mode | 0o555}

    def g_chown(self, tree):
        p = self.path(tree, None, 0.95)
        follow = self.rng.random() < 0.7 and not (self.keep_open and (p, "l") in tree)
        return {"p": p, "owner": list(self.rng.choice(OWNERS)), "follow": follow}

    def g_utime(self, tree):
        r = self.rng
        op = {"p": self.path(tree, None, 0.95), "follow": r.random() < 0.7}
        op["ns"] = None if r.random() < 0.2 else [explicit_time(r), explicit_time(r)]
        return op

    def g_setxattr(self, tree):
        r = self.rng
        return {"p": self.path(tree, None, 0.95), "name": r.choice(self.xattr_names),
                "value": r.randbytes(r.choice([0, 1, 10, 100, 3000])).hex(),
                "flag": r.choice([None, None, "CREATE", "REPLACE"])}

    def g_removexattr(self, tree):
        return {"p": self.path(tree, None, 0.95), "name": self.rng.choice(self.xattr_names)}

    def g_getxattr(self, tree):
        return {"p": self.path(tree, None, 0.95), "name": self.rng.choice(self.xattr_names)}

    def g_listxattr(self, tree):
        return {"p": self.path(tree, None, 0.95)}

    def g_listdir(self, tree):
        return {"p": self.path(tree, lambda t: t == "d", 0.9) if self.rng.random() < 0.85 else ""}

    def g_stat(self, tree):
        return {"p": self.path(tree, None, 0.9)}

    def g_readlink(self, tree):
        return {"p": self.path(tree, lambda t: t == "l", 0.9)}

    def g_access(self, tree):
        return {"p": self.path(tree, None, 0.9), "mode": self.rng.choice(["R", "W", "X", "RW", "F"])}

    def g_fsync(self, tree):
        return {"p": self.path(tree, None, 0.9), "write": self.rng.random() < 0.5}

    def g_stale(self, tree):
        return {"p": self.path(tree, self.is_file, 0.95), "off": self.rng.choice(WRITE_OFFS[:6]),
                "data": self.data()}

    def slot(self, want_open=True):
        r = self.rng
        if want_open and self.open_slots and r.random() < 0.9:
            return r.choice(sorted(self.open_slots))
        return r.randrange(SLOTS)

    def g_fdopen(self, tree):
        return {"slot": self.slot(False), "p": self.path(tree, self.is_file, 0.9),
                "flags": self.rng.choice(FD_FLAG_SETS)}

    def g_fdread(self, tree):
        r = self.rng
        return {"slot": self.slot(), "off": r.choice([0, 0, 10, 4096]),
                "len": r.choice([10, 5000, 1 << 20]), "post": False}

    def g_fdwrite(self, tree):
        return {"slot": self.slot(), "off": self.rng.choice(WRITE_OFFS), "data": self.data(),
                "post": False}

    def g_fdtrunc(self, tree):
        return {"slot": self.slot(), "size": self.rng.choice([0, 10, 5000]), "post": False}

    def g_fdstat(self, tree):
        return {"slot": self.slot(), "post": False}

    def g_fdfsync(self, tree):
        return {"slot": self.slot(), "post": False}

    def g_fdclose(self, tree):
        return {"slot": self.slot(), "post": False}

    def observe(self, op, kernel_result):
        """Keeps the model of open descriptor slots in step with the kernel's results."""
        name = op["op"]
        if name == "fdopen":
            if "ok" in kernel_result:
                self.open_slots.add(op["slot"])
            else:
                self.open_slots.discard(op["slot"])
        elif name == "fdclose":
            self.open_slots.discard(op["slot"])
