"""One differential case: a layer stack, built twice, the kernel's overlayfs mounted on one
copy and layover on the other, the same operations run on both, and every result compared.

run_case() returns an Outcome: None signature when the two agree everywhere, else the first
divergence (its signature, where it happened, both sides' values). The checks, in order:
  op        each op's result (value or errno) and the lstat of the paths it named
  merged    the whole merged tree, every `checkpoint` ops and at the end
  upper     the two upper directories on disk (normalised), every `checkpoint` ops and
            after unmount; layover's upper must be consistent
  close     closing the descriptors still held at the end
  umount    layover unmounts cleanly and its daemon exits
  workdir   layover's workdir holds nothing but an empty `work`
  remount   `mount -t overlay` of each side's layers (fresh workdirs) read the same
  cross     layover mounted on the kernel's layers reads as the kernel does
"""

import fnmatch
import json
import os
import random
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import mounts
from common import send_msg, short_bytes, show_path
from gen import NAME_CHANGING, Gen
from layers import build_stack, overlay_prefix
from report import fmt_op, fmt_value
from snapshot import compare, norm_stat, snapshot

HERE = os.path.dirname(os.path.abspath(__file__))
EXECUTOR = os.path.join(HERE, "executor.py")


def hard_linked(res, path):
    """Whether the kernel's post-op stat of path shows more than one link. Such a divergence
    is labelled ":hardlinked": the kernel can hold the names of a copied-up hard link as
    separate overlay inodes with stale attributes (see known.txt)."""
    st = (res.get("post") or {}).get(path)
    return isinstance(st, dict) and st.get("t") != "d" and st.get("nlink", 1) > 1


# Ops that open a read-only descriptor of their path "p" and read through it after the file
# may have been copied up ("open" with O_RDONLY|O_TRUNC: FUSE sends the truncation after the
# open); "fdopen" keeps it in a slot for "fdread"/"fdstat".
READER_OPS = ("stale", "open", "fdopen")


def read_only(op):
    return op["op"] == "stale" or "RDONLY" in op.get("flags", ())


def serves_lower_readers(opts, spec):
    """Whether layover serves a lower file opened read-only from the lower file (FUSE
    passthrough, its default as real root) and so keeps such a descriptor on the lower copy
    after a copy-up. Without passthrough (root of a user namespace, passthrough=0) or with
    strict_copy_up=1 the descriptor reads the copy, as on the kernel: no ":lower-reader"."""
    if getattr(opts, "mode", "root") == "userns":
        return False
    extra = dict(o.partition("=")[::2] for o in spec.get("layover_opts", ()))
    return (extra.get("passthrough", "1") not in ("0", "no", "off", "false")
            and extra.get("strict_copy_up", "0") not in ("1", "yes", "on", "true"))


def layer_at(root, rel, fn):
    """fn(dir_fd, last name) for root/rel in a layer on disk, or None when a component is
    missing. No component is followed if it is a symlink (a layer's symlinks may point
    anywhere on the host): a symlink on the way means the path names nothing in this layer."""
    try:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        parts = rel.split("/")
        for part in parts[:-1]:
            nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fn(fd, parts[-1])
    except OSError:
        return None
    finally:
        os.close(fd)


def layer_lstat(root, rel):
    """lstat of root/rel in a layer on disk, or None (see layer_at)."""
    return layer_at(root, rel, lambda d, n: os.stat(n, dir_fd=d, follow_symlinks=False))


def layer_pread(root, rel, length, offset):
    """short_bytes of what a pread of the regular file root/rel gives, or None."""
    def read(d, n):
        fd = os.open(n, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=d)
        try:
            return short_bytes(os.pread(fd, length, offset))
        finally:
            os.close(fd)
    return layer_at(root, rel, read)


class Hang(Exception):
    pass


class Dead(Exception):
    pass


class TesterError(Exception):
    """Something went wrong on the reference side or in the tester itself."""


class ExecProc:
    """An executor.py process working on one root, with deadlines on every answer."""

    def __init__(self, jail, mnt):
        root = "/" + os.path.relpath(mnt, jail)
        self.p = subprocess.Popen([sys.executable, EXECUTOR, jail, root], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, cwd=jail, start_new_session=True)
        self.buf = b""

    def send(self, msg):
        send_msg(self.p.stdin.fileno(), msg)

    def recv(self, deadline):
        fd = self.p.stdout.fileno()
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "little")
                if len(self.buf) >= 4 + n:
                    msg = json.loads(self.buf[4:4 + n])
                    self.buf = self.buf[4 + n:]
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise Hang()
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            b = os.read(fd, 1 << 20)
            if not b:
                raise Dead()
            self.buf += b

    def call(self, msg, timeout):
        self.send(msg)
        return self.recv(time.monotonic() + timeout)

    def kill(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.p.stdin, self.p.stdout):
            try:
                f.close()
            except OSError:
                pass

    def close(self, timeout=10):
        try:
            self.call({"cmd": "exit"}, timeout)
            self.p.wait(timeout=timeout)
        except (Hang, Dead, OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class Side:
    """One copy of the layers and its mount: impl is "kernel" or a layover binary path."""

    def __init__(self, name, impl, base, spec):
        self.name, self.impl, self.base, self.spec = name, impl, base, spec
        self.paths = None
        self.pid = None
        self.exe = None
        self.log = os.path.join(base + ".log")

    def setup(self):
        self.paths = build_stack(self.spec, self.base)
        os.chmod(self.base, 0o755)
        self.mount(self.paths["lowers"], self.paths["upper"], self.paths["work"],
                   self.paths["mnt"])
        self.exe = ExecProc(self.paths["jail"], self.paths["mnt"])

    def mount(self, lowers, upper, work, mnt, impl=None):
        impl = impl or self.impl
        if impl == "kernel":
            mounts.mount_kernel(lowers, upper, work, mnt, self.spec["userxattr"])
            return None
        pid = mounts.mount_layover(impl, lowers, upper, work, mnt, self.spec["userxattr"],
                                   self.log, self.spec.get("layover_opts", ()))
        if mnt == (self.paths or {}).get("mnt"):
            self.pid = pid
        return pid

    def alive(self):
        return mounts.pid_alive(self.pid) and mounts.is_mounted(self.paths["mnt"])

    def log_tail(self, n=3000):
        try:
            with open(self.log, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""


class Outcome:
    def __init__(self):
        self.sig = None          # divergence signature, None when all agreed
        self.kind = None
        self.index = None        # op index for op divergences / checkpoint position
        self.detail = {}
        self.ops = []            # the ops that ran (the whole list for generated cases)
        self.notes = []
        self.nops = 0
        self.crash = False
        self.errnos = {}         # op type -> the errnos the kernel gave (and "ok")
        self.exit_s = None       # seconds from layover's umount to its daemon's exit

    def diverge(self, kind, sig, index=None, **detail):
        if self.sig is None:
            self.kind, self.sig, self.index, self.detail = kind, sig, index, detail
        return self


# d_ino == st_ino is an invariant layover must keep (docs: readdir's d_ino is what stat()
# reports). The kernel does not always keep it after copy-up (its d_ino for entries of impure
# directories depends on what is cached), so a kernel view's d_ino remarks are dropped and
# only layover's count.
DINO_MARK = "d_ino!=st_ino"


def drop_dino_result(r):
    if isinstance(r.get("ok"), list):
        r["ok"] = [[x for x in item if x != DINO_MARK] if isinstance(item, list) else item
                   for item in r["ok"]]
    return r


def drop_dino_snap(snap):
    if isinstance(snap, dict):
        for d in snap.values():
            d.pop("d_ino_differs", None)
    return snap


def strip_post(r):
    return {k: v for k, v in r.items() if k != "post"}


def differing_fields(x, y, key="value"):
    """The names of the leaf fields in which two JSON values differ."""
    if x == y:
        return set()
    if isinstance(x, dict) and isinstance(y, dict):
        out = set()
        for k in set(x) | set(y):
            if k not in x or k not in y:
                out.add(k)
            else:
                out |= differing_fields(x[k], y[k], k)
        return out
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        out = set()
        for u, v in zip(x, y):
            out |= differing_fields(u, v, key)
        return out
    return {key}


def op_signature(op, rk, rl):
    name = op["op"]
    a, b = strip_post(rk), strip_post(rl)
    if a != b:
        if "err" in a or "err" in b:
            return "op:%s:%s->%s" % (name, a.get("err", "ok"), b.get("err", "ok"))
        return "op:%s:value:%s" % (name, ",".join(sorted(differing_fields(a, b))[:4]))
    fields = set()
    pk, pl = rk.get("post", {}), rl.get("post", {})
    for p in set(pk) | set(pl):
        x, y = pk.get(p), pl.get(p)
        if x == y:
            continue
        if not isinstance(x, dict) or not isinstance(y, dict):
            fields.add("exists")
            continue
        fields.update(f for f in set(x) | set(y) if x.get(f) != y.get(f))
    return "op:%s:post:%s" % (name, ",".join(sorted(fields)))


def sgid_kept_without_group_exec(rk, rl):
    """Whether every difference between the two answers is a mode that keeps a set-group-id
    bit without group execute permission where the kernel's lost it: FUSE's rule for
    clearing it at a truncate or write by a caller without CAP_FSETID (only with group
    execute, the VFS's rule before Linux 6.2), where the kernel's overlay also clears it for a
    caller outside the file's group (documented in docs/semantics.md; ":sgid-no-gx")."""
    found = []

    def walk(x, y):
        if x == y:
            return True
        if isinstance(x, dict) and isinstance(y, dict):
            if set(x) != set(y):
                return False
            for k in x:
                if k == "mode" and x[k] != y[k]:
                    try:
                        mk, ml = int(x[k], 8), int(y[k], 8)
                    except (TypeError, ValueError):
                        return False
                    if ml != mk | 0o2000 or mk & 0o2000 or ml & 0o010:
                        return False
                    found.append(k)
                elif not walk(x[k], y[k]):
                    return False
            return True
        return False

    return walk(rk, rl) and bool(found)


def tree_signature(kind, diffs):
    return "%s:%s" % (kind, ",".join(sorted({d[1] for d in diffs})[:4]))


def workdir_problems(work):
    """Anything in a workdir after unmount but an empty `work` directory (and the kernel's
    `index` dir, empty, should it ever be there)."""
    out = []
    for dp, dns, fns in os.walk(work):
        rel = os.path.relpath(dp, work)
        for n in sorted(dns + fns):
            r = n if rel == "." else rel + "/" + n
            if r in ("work", "index"):
                continue
            out.append(r)
    return out


def upper_problems(upper):
    """Consistency of an upper written by layover: whiteouts are 0/0 char devices or
    `.wh.` files, no other device nodes, no leftover temporary names."""
    out = []
    for dp, dns, fns in os.walk(upper):
        for n in dns + fns:
            full = os.path.join(dp, n)
            rel = os.path.relpath(full, upper)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev != 0:
                out.append("%s: char device %d/%d" % (show_path(rel), os.major(st.st_rdev),
                                                       os.minor(st.st_rdev)))
            if stat.S_ISBLK(st.st_mode):
                out.append("%s: block device" % show_path(rel))
            if n.startswith("#layover") or n.startswith(".layover"):
                out.append("%s: temporary name left behind" % show_path(rel))
    return out


class Case:
    """Runs one case (generated from a seed, or replayed from an op list)."""

    def __init__(self, opts, spec, seed, scratch):
        self.opts = opts
        self.spec = spec
        self.seed = seed
        self.base = tempfile.mkdtemp(prefix="s%s-" % seed, dir=scratch)
        os.chmod(self.base, 0o755)
        self.K = Side("kernel", "kernel", os.path.join(self.base, "k"), spec)
        self.L = Side("layover", opts.impl, os.path.join(self.base, "o"), spec)
        self.extra = []
        # slot -> what its descriptor was opened on (see lower_reader, lower_twin_reader)
        self.lower_slots = {}
        self.serves_lower_readers = serves_lower_readers(opts, spec)

    def lower_file(self, path):
        """The lower file that the kernel side's path names when followed through symlinks
        ({"layer", "rel", "st": its norm_stat without content}), or None when it names no
        regular file of a lower layer that the upper does not hold (yet). A read-only
        descriptor of such a file is one layover serves from the lower file (the shared page
        cache, its default as root), which keeps reading the lower copy after a copy-up,
        where the kernel (>= 4.19) reads the copy."""
        if not isinstance(path, str):
            return None
        rel = self.K.exe.call({"cmd": "resolve", "p": path}, 60)
        if not isinstance(rel, str) or layer_lstat(self.K.paths["upper"], rel) is not None:
            return None
        for low in self.K.paths["lowers"]:
            st = layer_lstat(low, rel)
            if st is not None:
                if not stat.S_ISREG(st.st_mode):
                    return None
                return {"layer": low, "rel": rel,
                        "st": norm_stat(None, st, None, content=False, xattrs=False)}
        return None

    def lower_reader(self, op, lower_before):
        """Whether a divergence of op is the documented class ":lower-reader" (known.txt): a
        read through a descriptor opened read-only on a lower file, before its copy-up."""
        if not self.serves_lower_readers:
            return False
        if op["op"] in ("fdread", "fdstat"):
            return op.get("slot") in self.lower_slots
        if lower_before is None:
            return False
        # an open reads through its new descriptor at once: only O_TRUNC copies the file up
        # after the open and before that read
        return op["op"] == "stale" or op["op"] == "open" and "TRUNC" in op.get("flags", ())

    def lower_twin_reader(self, op, rk):
        """Whether a divergence of op is an fstat or a read through a descriptor opened
        read-only on one name of a lower hard link, where the kernel's descriptor still shows
        or reads that lower file as it is on disk (with index=off the kernel broke the link
        when another name was copied up) and layover's the file its names still share
        (docs/semantics.md, "Hard links"; labelled ":hardlinked", known.txt)."""
        low = self.lower_slots.get(op.get("slot"))
        if low is None or low["st"]["nlink"] < 2 or "ok" not in rk:
            return False
        if op["op"] == "fdstat":
            return rk["ok"] == low["st"]
        if op["op"] == "fdread":
            return rk["ok"] == layer_pread(low["layer"], low["rel"], op["len"], op["off"])
        return False

    def both(self, msg, timeout):
        """Sends msg to both executors and returns both answers (the kernel's first)."""
        self.K.exe.send(msg)
        self.L.exe.send(msg)
        deadline = time.monotonic() + timeout
        try:
            rk = self.K.exe.recv(deadline + 30)
        except (Hang, Dead) as e:
            raise TesterError("kernel side %s on %r" % (type(e).__name__, msg)) from None
        try:
            rl = self.L.exe.recv(deadline)
        except Hang:
            return rk, Hang
        except Dead:
            return rk, Dead
        return rk, rl

    def crashed(self, out):
        if not self.L.alive():
            out.crash = True
            return True
        return False

    def fail_side(self, out, kind, index, op, what):
        """layover's executor hung or died: decide between hang and crash."""
        self.L.exe.kill()
        if self.crashed(out):
            return out.diverge("crash", "crash", index, op=op, log=self.L.log_tail())
        mounts.abort_fuse(self.L.paths["mnt"])
        return out.diverge(kind, "%s:%s" % (kind, op.get("op") if op else what), index, op=op,
                           log=self.L.log_tail())

    def run(self, ops=None, nops=0, want=None):
        """want: the signature being looked for (shrinking); checks that cannot produce it
        are skipped."""
        out = Outcome()
        self.want_kind = want.split(":")[0] if want else None
        try:
            self._run(out, ops, nops)
        finally:
            self.teardown()
        return out

    def _run(self, out, ops, nops):
        opts = self.opts
        try:
            self.K.setup()
        except mounts.MountError as e:
            raise TesterError("kernel mount failed: %s" % e) from None
        try:
            self.L.setup()
        except mounts.MountError as e:
            return out.diverge("mount", "mount", None, error=str(e))
        gen = None
        total = len(ops) if ops is not None else nops
        if ops is None:
            gen = Gen(random.Random("ops:%s" % self.seed), self.spec, opts.uid_share,
                      opts.aufs_names)
        tree = self.K.exe.call({"cmd": "walk"}, 60) if gen else None
        for i in range(total):
            op = ops[i] if ops is not None else gen.next(tree)
            out.ops.append(op)
            out.nops = i + 1
            lower_before = None
            if op["op"] in READER_OPS and read_only(op):
                lower_before = self.lower_file(op.get("p"))
            rk, rl = self.both({"cmd": "op", "op": op}, opts.timeout)
            if op["op"] in ("fdopen", "fdclose"):
                self.lower_slots.pop(op.get("slot"), None)
            if op["op"] == "fdopen" and lower_before is not None and "ok" in rk:
                self.lower_slots[op["slot"]] = lower_before
            if rl in (Hang, Dead):
                return self.fail_side(out, "hang" if rl is Hang else "crash", i, op, "op")
            if op["op"] == "listdir":
                drop_dino_result(rk)
                if self.L.impl == "kernel":
                    drop_dino_result(rl)
            # which names are one file is compared in the trees (fairly); here it only
            # labels the signature
            same_file = rk.pop("same_file", False) | rl.pop("same_file", False)
            if gen:
                gen.observe(op, rk)
            out.errnos.setdefault(op["op"], set()).add(rk.get("err", "ok"))
            if opts.trace:
                print("  %4d %-60s %s" % (i, fmt_op(op)[:60], fmt_value(strip_post(rk), 100)),
                      file=sys.stderr)
            if rk != rl:
                if rl.get("err") == "ENOTCONN" or self.crashed(out):
                    out.crash = True
                    return out.diverge("crash", "crash", i, op=op, kernel=rk, layover=rl,
                                       log=self.L.log_tail())
                sig = op_signature(op, rk, rl) + (":same-file" if same_file else "")
                if (isinstance(op.get("p"), str) and hard_linked(rk, op["p"])
                        or self.lower_twin_reader(op, rk)):
                    sig += ":hardlinked"
                if self.lower_reader(op, lower_before):
                    sig += ":lower-reader"
                if sgid_kept_without_group_exec(rk, rl):
                    sig += ":sgid-no-gx"
                return out.diverge("op", sig, i, op=op, kernel=rk, layover=rl)
            if gen and op["op"] in NAME_CHANGING:
                tree = self.K.exe.call({"cmd": "walk"}, 60)
            if opts.checkpoint and (i + 1) % opts.checkpoint == 0 and i + 1 < total:
                if self.checkpoint(out, i):
                    return out
        if self.want_kind == "op":
            return out
        # the end: descriptors, the merged tree, then the layers on disk
        ck, cl = self.both({"cmd": "closeall"}, opts.timeout)
        if cl in (Hang, Dead):
            return self.fail_side(out, "hang", out.nops, None, "close")
        if ck != cl:
            return out.diverge("close", "close", out.nops, kernel=ck, layover=cl)
        if self.checkpoint(out, out.nops, uppers=False) or self.want_kind in ("merged", "close"):
            return out
        return self.final_checks(out)

    def checkpoint(self, out, index, uppers=True):
        """The merged trees, then (unless the final checks will) the uppers. True when a
        divergence was recorded."""
        sk, sl = self.both({"cmd": "snapshot"}, self.opts.timeout * 6)
        if sl in (Hang, Dead):
            self.fail_side(out, "hang", index, None, "snapshot")
            return True
        drop_dino_snap(sk)
        if self.L.impl == "kernel":
            drop_dino_snap(sl)
        diffs, notes = compare(sk, sl)
        out.notes += [["merged"] + n for n in notes]
        if diffs:
            out.diverge("merged", tree_signature("merged", diffs), index, diffs=diffs)
            return True
        if self.crashed(out):
            out.diverge("crash", "crash", index, log=self.L.log_tail())
            return True
        if uppers and self.want_kind in (None, "upper"):
            return self.compare_uppers(out, index) is not None
        return False

    def compare_uppers(self, out, index):
        """The two uppers on disk (also while mounted: layover writes through, no writeback
        cache), and the consistency of layover's. Returns out on a divergence, else None."""
        ns = overlay_prefix(self.spec["userxattr"])
        uk = snapshot(self.K.paths["upper"], ns)
        ul = snapshot(self.L.paths["upper"], ns)
        diffs, notes = compare(uk, ul)
        # An opaque marker on a directory that no lower holds changes nothing (the kernel
        # sets one in some renames regardless): a note, not a divergence.
        moot = [d for d in diffs if d[1] == "opaque" and not any(
            os.path.lexists(os.path.join(low, d[0])) for low in self.K.paths["lowers"])]
        diffs = [d for d in diffs if d not in moot]
        out.notes += [["upper"] + n for n in notes + moot]
        if diffs:
            return out.diverge("upper", tree_signature("upper", diffs), index, diffs=diffs)
        probs = upper_problems(self.L.paths["upper"])
        if probs:
            return out.diverge("upper", "upper:consistency", index, problems=probs[:20])
        return None

    def final_checks(self, out):
        K, L = self.K, self.L
        K.exe.close()
        L.exe.close()
        prob = mounts.umount(K.paths["mnt"])
        if prob:
            raise TesterError(prob)
        dev = mounts.device_of(L.paths["mnt"])
        prob = mounts.umount(L.paths["mnt"])
        if prob:
            return out.diverge("umount", "umount", out.nops, error=prob, log=L.log_tail())
        out.exit_s = mounts.daemon_exit_time(L.pid, 10)
        if out.exit_s is None:
            # Dump the threads while the daemon still lingers: where each one is blocked is
            # what tells a stuck worker from a missed exit; the holders tell a mount that is
            # still live in another mount namespace (every worker then waits in
            # fuse_dev_do_read, serving it, as it should).
            threads = mounts.mount_holders(dev) + mounts.thread_dump(L.pid)
            mounts.kill_daemon(L.pid)
            return out.diverge("umount", "umount:daemon-lingers", out.nops, threads=threads,
                               log=L.log_tail())
        if L.impl != "kernel":
            left = workdir_problems(L.paths["work"])
            if left:
                return out.diverge("workdir", "workdir", out.nops,
                                   leftovers=[show_path(p) for p in left[:20]])
        if self.compare_uppers(out, out.nops):
            return out
        # remount both sides' layers with the kernel, and the kernel's with layover
        rk = self.remount(K, "kernel", "r")
        rl = self.remount(L, "kernel", "r")
        if rk in (Hang, Dead) or rl in (Hang, Dead):
            raise TesterError("a kernel remount did not answer")
        drop_dino_snap(rk)
        drop_dino_snap(rl)
        diffs, notes = compare(rk, rl)
        if diffs:
            return out.diverge("remount", tree_signature("remount", diffs), out.nops,
                               diffs=diffs)
        if self.opts.impl != "kernel" and self.opts.cross:
            try:
                rx = self.remount(K, self.opts.impl, "x")
            except mounts.MountError as e:
                return out.diverge("cross", "cross:mount", out.nops, error=str(e))
            if rx in (Hang, Dead):
                return out.diverge("cross", "cross:hang", out.nops)
            diffs, notes = compare(rk, rx)
            if diffs:
                return out.diverge("cross", tree_signature("cross", diffs), out.nops,
                                   diffs=diffs)
        return out

    def remount(self, side, impl, tag):
        """Mounts side's lowers+upper again with impl (fresh workdir), returns a snapshot."""
        work = side.base + "/work-" + tag
        mnt = side.paths["jail"] + "/mnt-" + tag
        os.mkdir(work)
        os.mkdir(mnt)
        try:
            side.mount(side.paths["lowers"], side.paths["upper"], work, mnt, impl)
        except mounts.MountError as e:
            if impl == "kernel":
                raise TesterError("kernel remount failed: %s" % e) from None
            raise
        exe = ExecProc(side.paths["jail"], mnt)
        self.extra.append(exe)
        try:
            snap = exe.call({"cmd": "snapshot"}, self.opts.timeout * 6)
        except (Hang, Dead) as e:
            exe.kill()
            mounts.abort_fuse(mnt)
            snap = Hang if isinstance(e, Hang) else Dead
        exe.close()
        mounts.umount(mnt)
        return snap

    def teardown(self):
        for s in (self.K, self.L):
            if s.exe is not None:
                s.exe.kill()
        for e in self.extra:
            e.kill()
        mounts.cleanup()
        mounts.sweep(self.base)
        if self.L.pid:
            if not mounts.wait_daemon_exit(self.L.pid, 5):
                mounts.kill_daemon(self.L.pid)
        if not self.opts.keep:
            shutil.rmtree(self.base, ignore_errors=True)
            for s in (self.K, self.L):
                try:
                    os.unlink(s.log)
                except OSError:
                    pass


def is_known(sig, known):
    for pat, _ in known:
        if fnmatch.fnmatchcase(sig, pat):
            return pat
    return None


def run_case(opts, spec, seed, ops=None, nops=0, want=None):
    return Case(opts, spec, seed, opts.scratch).run(ops, nops, want)

