"""Concurrent mode: several processes working on one merged tree at once.

Interleavings are not compared with the kernel. Instead the same workload (same worker
seeds, same layers) runs first on a kernel overlay mount, to learn which errnos each op type
can give there, and then on a layover mount, where the checks are:
  - no crash: the daemon lives, the mount stays, `stat MNT` answers (checked every second);
  - no hang: every op finishes within --timeout (a worker silent for longer is a hang);
  - no errno the kernel did not give for that op type under the same workload;
  - after unmount: the daemon exits, the workdir holds only an empty work/, the upper is
    consistent (whiteouts are 0/0 char devices or .wh. files, no device nodes, no leftover
    temporary names), and layover (remounted, fresh workdir) reads the layers exactly as
    `mount -t overlay` (fresh workdir) does.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import mounts
import report
from common import show_path
from layers import build_stack
from session import (EXECUTOR, Dead, ExecProc, Hang, drop_dino_snap, upper_problems,
                     workdir_problems)
from snapshot import compare

UID_SHARE = 0.25  # share of each worker's ops run as an unprivileged user (gen.USERS)

# Any op that resolves a path can meet these when other processes change the tree under it
# (a name vanishes, a directory becomes a file, a symlink appears in the path, a directory
# grows too deep, a mode changes), whether or not the kernel run happened to hit that
# interleaving. Everything else must have been seen on the kernel for that op type.
# Besides, an op type may give any errno the kernel gave for it in sequential runs
# (kernel_errnos.json, made by `run.py --self-check --learn-errnos`): which of them a
# concurrent run meets depends on the interleaving.
PATH_ERRNOS = {"ENOENT", "ENOTDIR", "ELOOP", "EACCES", "ENAMETOOLONG"}
KERNEL_ERRNOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_errnos.json")
FD_OPS = {"fdread", "fdwrite", "fdtrunc", "fdstat", "fdfsync", "fdclose"}


def stat_alive(path, timeout=5.0):
    """stat(path) in a child process, so that a hung mount cannot hang us."""
    pid = os.fork()
    if pid == 0:
        try:
            os.stat(path)
            os._exit(0)
        except BaseException:
            os._exit(1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status == 0
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    return False


class Phase:
    """W workers on one mount for `seconds`; collects errnos per op type."""

    def __init__(self, jail, mnt, spec_file, seed, workers, seconds, timeout, daemon_pid=None):
        self.jail, self.mnt = jail, mnt
        self.seed, self.workers, self.seconds, self.timeout = seed, workers, seconds, timeout
        self.spec_file = spec_file
        self.daemon_pid = daemon_pid
        self.errnos = {}       # op -> {errno: count}
        self.examples = {}     # (op, errno) -> op dict
        self.ops = 0
        self.ok = {False: 0, True: 0}   # successful ops: privileged, unprivileged
        self.unpriv = 0
        self.problems = []     # [(kind, text)]

    def run(self):
        # open every directory to everyone, root included (the workload keeps them so, see
        # gen.OPEN_DIR_MODES), so that the unprivileged share of the ops does real work
        # beside the root's; permission checks themselves are the sequential runs' business
        for dirpath, _, _ in os.walk(self.mnt):
            os.chmod(dirpath, 0o1777)
        procs = []
        for w in range(self.workers):
            root = "/" + os.path.relpath(self.mnt, self.jail)
            p = subprocess.Popen(
                [sys.executable, EXECUTOR, self.jail, root, "--loop", str(self.seed), str(w),
                 str(self.seconds), str(UID_SHARE), self.spec_file],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=self.jail,
                start_new_session=True)
            procs.append({"p": p, "buf": b"", "last": time.monotonic(), "cur": None,
                          "done": False, "w": w})
        end = time.monotonic() + self.seconds + self.timeout + 5
        next_stat = time.monotonic() + 1
        try:
            while any(not x["done"] for x in procs):
                fds = {x["p"].stdout.fileno(): x for x in procs if not x["done"]}
                r, _, _ = select.select(list(fds), [], [], 0.2)
                now = time.monotonic()
                for fd in r:
                    self.read(fds[fd])
                for x in procs:
                    if x["done"]:
                        continue
                    if now - x["last"] > self.timeout:
                        self.problems.append(("hang", "worker %d: no answer for %.0fs; op in "
                                              "flight: %s" % (x["w"], now - x["last"],
                                                              report.fmt_op(x["cur"])
                                                              if x["cur"] else "?")))
                        x["done"] = True
                        self.kill(x)
                if now >= next_stat:
                    next_stat = now + 1
                    if not self.alive():
                        break
                if now > end:
                    self.problems.append(("hang", "workers did not finish in time"))
                    break
        finally:
            for x in procs:
                self.kill(x)
        return self

    def alive(self):
        if self.daemon_pid is not None and not mounts.pid_alive(self.daemon_pid):
            self.problems.append(("crash", "the layover daemon died"))
            return False
        if not mounts.is_mounted(self.mnt):
            self.problems.append(("crash", "the mount disappeared"))
            return False
        if not stat_alive(self.mnt):
            self.problems.append(("hang", "stat(%s) did not answer" % self.mnt))
            return False
        return True

    def read(self, x):
        b = os.read(x["p"].stdout.fileno(), 1 << 16)
        if not b:
            if not x["done"]:
                x["done"] = True
                if x["p"].wait() != 0:
                    self.problems.append(("worker", "worker %d exited with status %s" % (
                        x["w"], x["p"].returncode)))
            return
        x["buf"] += b
        while len(x["buf"]) >= 4:
            n = int.from_bytes(x["buf"][:4], "little")
            if len(x["buf"]) < 4 + n:
                break
            msg = json.loads(x["buf"][4:4 + n])
            x["buf"] = x["buf"][4 + n:]
            x["last"] = time.monotonic()
            if "start" in msg:
                x["cur"] = msg["start"]
            elif "end" in msg:
                self.ops += 1
                self.unpriv += bool(msg.get("unpriv"))
                if msg["err"] == "ok":
                    self.ok[bool(msg.get("unpriv"))] += 1
                d = self.errnos.setdefault(msg["end"], {})
                d[msg["err"]] = d.get(msg["err"], 0) + 1
                self.examples.setdefault((msg["end"], msg["err"]), x["cur"])
                x["cur"] = None
            elif "done" in msg:
                if msg["closeall"]:
                    self.problems.append(("close", "worker %d: close at the end: %s" % (
                        x["w"], msg["closeall"])))

    def kill(self, x):
        p = x["p"]
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        p.stdout.close()


def snapshot_via(jail, mnt, timeout):
    exe = ExecProc(jail, mnt)
    try:
        return exe.call({"cmd": "snapshot"}, timeout)
    except (Hang, Dead) as e:
        return type(e).__name__
    finally:
        exe.kill()


def run(args, ctx):
    from run import spec_for_seed  # the same layers a sequential run of this seed uses
    seed, seconds = args.seed, args.concurrent
    kseconds = args.kernel_seconds if args.kernel_seconds is not None else seconds
    spec = spec_for_seed(seed, ctx)
    base = os.path.join(ctx.scratch, "conc-%s" % seed)
    os.makedirs(base)
    spec_file = os.path.join(base, "spec.json")
    with open(spec_file, "w") as f:
        json.dump(spec, f)
    failures = []
    t0 = time.monotonic()
    print("difftest concurrent: seed %s, %d workers (%d%% of ops unprivileged), %gs on the "
          "kernel, then %gs on %s" % (seed, args.workers, UID_SHARE * 100, kseconds, seconds,
                                      ctx.impl), file=sys.stderr)
    try:
        # 1. the kernel, for the errnos it gives under this workload
        kp = build_stack(spec, os.path.join(base, "k"))
        mounts.mount_kernel(kp["lowers"], kp["upper"], kp["work"], kp["mnt"], spec["userxattr"])
        kphase = Phase(kp["jail"], kp["mnt"], spec_file, seed, args.workers, kseconds,
                       ctx.timeout).run()
        mounts.umount(kp["mnt"])
        if kphase.problems:
            raise RuntimeError("kernel phase had problems: %s" % kphase.problems)
        # 2. layover, same workload
        lp = build_stack(spec, os.path.join(base, "o"))
        log = os.path.join(base, "o.log")
        if ctx.impl == "kernel":
            mounts.mount_kernel(lp["lowers"], lp["upper"], lp["work"], lp["mnt"], spec["userxattr"])
            pid = None
        else:
            pid = mounts.mount_layover(ctx.impl, lp["lowers"], lp["upper"], lp["work"], lp["mnt"],
                                       spec["userxattr"], log)
        lphase = Phase(lp["jail"], lp["mnt"], spec_file, seed, args.workers, seconds,
                       ctx.timeout, pid).run()
        for kind, text in lphase.problems:
            failures.append("%s: %s" % (kind, text))
        with open(KERNEL_ERRNOS) as f:
            table = json.load(f)
        for op, errs in sorted(lphase.errnos.items()):
            allowed = set(kphase.errnos.get(op, {})) | set(table.get(op, []))
            if op not in FD_OPS:
                allowed |= PATH_ERRNOS
            for e, n in sorted(errs.items()):
                if e not in allowed:
                    ex = lphase.examples.get((op, e))
                    failures.append("errno: %s gave %s %d times; the kernel never gives it "
                                    "for %s here (e.g. %s)" % (op, e, n, op,
                                                               report.fmt_op(ex) if ex else "?"))
        # 3. unmount, then the layers on disk
        crashed = any(k in ("crash", "hang") for k, _ in lphase.problems)
        prob = mounts.umount(lp["mnt"])
        if prob and not crashed:
            failures.append("umount: %s" % prob)
        if ctx.impl != "kernel" and not mounts.wait_daemon_exit(pid, 10):
            failures.append("umount: the daemon did not exit")
            mounts.kill_daemon(pid)
        if ctx.impl != "kernel":
            left = workdir_problems(lp["work"])
            if left:
                failures.append("workdir: left behind: %s" % [show_path(p) for p in left[:10]])
        probs = upper_problems(lp["upper"])
        failures += ["upper: %s" % p for p in probs[:10]]
        # 4. remount: layover and the kernel must read the same layers alike
        views = {}
        for tag, impl in (("x", ctx.impl), ("r", "kernel")):
            work = os.path.join(base, "o", "work-" + tag)
            mnt = os.path.join(lp["jail"], "mnt-" + tag)
            os.mkdir(work)
            os.mkdir(mnt)
            try:
                if impl == "kernel":
                    mounts.mount_kernel(lp["lowers"], lp["upper"], work, mnt, spec["userxattr"])
                else:
                    mounts.mount_layover(impl, lp["lowers"], lp["upper"], work, mnt,
                                         spec["userxattr"], log)
            except mounts.MountError as e:
                failures.append("remount with %s failed: %s" % (impl, e))
                continue
            views[impl] = snapshot_via(lp["jail"], mnt, ctx.timeout * 6)
            mounts.umount(mnt)
        if len(views) == 2:
            a, b = drop_dino_snap(views["kernel"]), views[ctx.impl]
            if ctx.impl == "kernel":
                drop_dino_snap(b)
            if isinstance(a, str) or isinstance(b, str):
                failures.append("remount: snapshot failed (kernel %s, layover %s)" % (
                    a if isinstance(a, str) else "ok", b if isinstance(b, str) else "ok"))
            else:
                diffs, _ = compare(a, b)
                for p, f, va, vb in diffs[:15]:
                    failures.append("remount: '%s' %s: kernel %s | layover %s" % (
                        show_path(p), f, report.fmt_value(va, 150), report.fmt_value(vb, 150)))
        el = time.monotonic() - t0
        print("\n=== difftest concurrent summary ===")
        print("seed %s: kernel %d ops, layover %d ops in %.1fs (%d workers); %d problems" % (
            seed, kphase.ops, lphase.ops, el, args.workers, len(failures)))
        for tag, ph in (("kernel", kphase), ("layover", lphase)):
            print("%s: %d ops succeeded as root, %d of %d unprivileged ops succeeded" % (
                tag, ph.ok[False], ph.ok[True], ph.unpriv))
        print("errnos per op (layover):")
        for op, errs in sorted(lphase.errnos.items()):
            print("  %-12s %s" % (op, " ".join("%s:%d" % kv for kv in sorted(errs.items()))))
        if failures:
            print("PROBLEMS:")
            for f in failures:
                print("  " + f)
            if pid is not None and os.path.exists(log):
                with open(log, "rb") as f:
                    tail = f.read()[-3000:].decode(errors="replace").strip()
                if tail:
                    print("daemon log tail:\n" + tail)
            print("rerun: python3 scripts/difftest/run.py --concurrent %g --workers %d --seed %s"
                  % (seconds, args.workers, seed))
        return 1 if failures else 0
    finally:
        mounts.cleanup()
        mounts.sweep(base)
        if not ctx.keep:
            shutil.rmtree(base, ignore_errors=True)
