#!/usr/bin/env python3
"""Differential tester: layover against the kernel's overlayfs.

  run.py [--binary PATH] --seed S [--count N | --time SECONDS] --ops N [--jobs J]
  run.py --seeds 1-20,33 --ops 150
  run.py --replay FILE.json [FILE.json ...]
  run.py --concurrent SECONDS [--workers K] [--seed S]

Each seed makes a random layer stack and a random op sequence; both run on a kernel overlay
mount and a layover mount of identical copies, and every result is compared (see README.md).
A divergence is shrunk (delta debugging) and saved as a JSON reproducer that --replay runs;
copy it to tests/regressions/NAME.json to make it a regression test (tests/difftest.rs).

Exit status: 0 all agreed (known divergences allowed), 1 divergence/crash/hang, 2 tester
error or missing prerequisite.
"""

import argparse
import json
import multiprocessing
import os
import queue
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mounts  # noqa: E402
import report  # noqa: E402
from layers import gen_spec, has_stray_whiteouts  # noqa: E402
from session import TesterError, is_known, run_case  # noqa: E402
from shrink import Budget, shrink  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_KNOWN = os.path.join(HERE, "known.txt")
DEFAULT_OUT = os.path.join(tempfile.gettempdir(), "layover-difftest-repro")
RUN_MODE = os.path.join(REPO, "testkit", "scripts", "run-mode.sh")


def into_user_namespace(args):
    """--mode userns, started as root: runs this script again, with the same arguments, as
    root of a user namespace of the test user (testkit/scripts/run-mode.sh makes it, with a
    0666 /dev/fuse in a private mount namespace and the user's subordinate ids mapped).
    Returns its exit status; a missing prerequisite is status 2, as everywhere here."""
    if os.geteuid() != 0:
        print("difftest: PREREQUISITE MISSING: --mode userns starts as root (to bind a 0666 "
              "/dev/fuse in a private mount namespace and become the test user)", file=sys.stderr)
        return 2
    env = dict(os.environ, LAYOVER_TEST_MODE="userns", LAYOVER_DIFFTEST_IN_USERNS="1")
    # The system's python3: the test user may not reach root's own (a pyenv in /root).
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    argv = [RUN_MODE, python, os.path.abspath(__file__)] + sys.argv[1:]
    import subprocess
    try:
        r = subprocess.run(argv, env=env)
    except KeyboardInterrupt:
        return 130
    # run-mode.sh says PREREQUISITE MISSING itself and exits 1 then.
    return r.returncode if r.returncode >= 0 else 128 - r.returncode


def default_binary():
    for p in ("target/release/layover", "target/debug/layover"):
        full = os.path.join(REPO, p)
        if os.path.exists(full):
            return full
    return os.path.join(REPO, "target/release/layover")


def parse_seeds(spec):
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def load_known(paths):
    """[(glob, description)] from files of `GLOB  # description` lines."""
    known = []
    for p in paths:
        with open(p) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                pat, _, desc = line.partition("#")
                known.append((pat.strip(), desc.strip()))
    return known


def spec_for_seed(seed, opts):
    rng = random.Random("layers:%s" % seed)
    ux = {"auto": None, "on": True, "off": False}[opts.userxattr]
    if getattr(opts, "mode", "root") == "userns":
        ux = True  # an overlay mount in a user namespace has no other marker namespace
    spec = gen_spec(rng, userxattr=ux, aufs=opts.aufs_names,
                    stray_whiteouts=opts.stray_whiteouts)
    if getattr(opts, "layover_opts", None):
        spec["layover_opts"] = opts.layover_opts
    return spec


class Ctx:
    """What a worker needs, picklable (fork start method anyway)."""

    def __init__(self, args, scratch):
        self.impl = "kernel" if args.self_check else os.path.abspath(args.binary)
        self.timeout = args.timeout
        self.checkpoint = args.checkpoint
        self.uid_share = args.uid_share
        self.keep = args.keep
        self.cross = not args.no_cross
        self.scratch = scratch
        self.shrink = not args.no_shrink
        self.shrink_time = args.shrink_time
        self.out_dir = args.out
        self.known = load_known(args.known)
        self.userxattr = args.userxattr
        self.mode = args.mode
        self.aufs_names = args.aufs_names
        self.stray_whiteouts = args.stray_whiteouts
        self.layover_opts = [o for o in (args.layover_opts or "").split(",") if o]
        self.verbose = args.verbose
        self.trace = args.trace


def confirm_and_shrink(ctx, seed, spec, ops, out, log):
    """Replays the diverging prefix; if it reproduces, shrinks it. Returns (spec, ops, out,
    reproducible)."""
    sig = out.sig
    prefix = ops[: out.index + 1] if out.kind in ("op", "hang", "crash") and out.index is not None \
        else ops[: out.nops]
    again = run_case(ctx, spec, seed, prefix)
    if again.sig != sig:
        log("seed %s: %s did not reproduce on replay (got %s)" % (seed, sig, again.sig))
        return spec, ops, out, False
    if not ctx.shrink:
        return spec, prefix, again, True

    def fails(s, o):
        if has_stray_whiteouts(s) and not ctx.stray_whiteouts:
            return False  # another (known) class: do not slide into it
        return run_case(ctx, s, seed, o, want=sig).sig == sig

    budget = Budget(ctx.shrink_time, 400)
    spec2, ops2 = shrink(spec, prefix, fails, budget,
                         lambda m: log("seed %s shrink: %s" % (seed, m)) if ctx.verbose else None)
    final = run_case(ctx, spec2, seed, ops2)
    if final.sig != sig:  # should not happen; keep the unshrunk prefix then
        return spec, prefix, again, True
    return spec2, ops2, final, True


def run_seed(ctx, seed, nops, log):
    spec = spec_for_seed(seed, ctx)
    t0 = time.monotonic()
    out = run_case(ctx, spec, seed, None, nops)
    res = {"seed": seed, "ops": out.nops, "sig": out.sig, "crash": out.crash,
           "time": time.monotonic() - t0, "notes": len(out.notes),
           "errnos": {k: sorted(v) for k, v in out.errnos.items()}, "exit_s": out.exit_s}
    if out.sig is None:
        return res
    known = is_known(out.sig, ctx.known)
    res["known"] = known
    lines = ["DIVERGENCE seed=%s%s" % (seed, " (known: %s)" % known if known else "")]
    lines += report.describe(out)
    if known:
        res["text"] = "\n".join(lines)
        return res
    spec2, ops2, out2, repro = confirm_and_shrink(ctx, seed, spec, out.ops, out, log)
    res["reproducible"] = repro
    path = report.write_repro(ctx.out_dir, seed, spec2, ops2, out2)
    res["repro"] = path
    lines = ["DIVERGENCE seed=%s%s" % (seed, "" if repro else " (NOT reproducible on replay)")]
    lines += report.describe(out2)
    lines.append("  layers (%s):" % ("shrunk" if ctx.shrink and repro else "as generated"))
    lines += ["  " + l for l in report.fmt_spec(spec2)]
    lines.append("  ops (%d%s):" % (len(ops2), ", shrunk" if ctx.shrink and repro else ""))
    lines += ["    %d. %s" % (i, report.fmt_op(o)) for i, o in enumerate(ops2)]
    lines.append("  reproducer: %s" % path)
    lines.append("  replay:     python3 %s --replay %s" % (os.path.relpath(__file__), path))
    res["text"] = "\n".join(lines)
    return res


def _raise_interrupt(*_):
    raise KeyboardInterrupt()


def worker(ctx, tasks, results, nops):
    signal.signal(signal.SIGTERM, _raise_interrupt)

    def log(m):
        results.put({"log": m})
    try:
        while True:
            seed = tasks.get()
            if seed is None:
                return
            try:
                results.put(run_seed(ctx, seed, nops, log))
            except TesterError as e:
                results.put({"seed": seed, "ops": 0, "error": "tester error: %s" % e})
            except Exception:
                results.put({"seed": seed, "ops": 0, "error": traceback.format_exc()})
    except KeyboardInterrupt:
        pass
    finally:
        mounts.cleanup()


class Stats:
    def __init__(self):
        self.t0 = time.monotonic()
        self.ops = 0
        self.seeds = 0
        self.divergences = []
        self.known = []
        self.crashes = 0
        self.errors = []
        self.sigs = {}
        self.errnos = {}
        self.stopped = None
        self.exit_times = []     # seconds from umount to the daemon's exit, per seed

    def add(self, r):
        self.seeds += 1
        if r.get("exit_s") is not None:
            self.exit_times.append(r["exit_s"])
        self.ops += r.get("ops", 0)
        for op, errs in r.get("errnos", {}).items():
            self.errnos.setdefault(op, set()).update(errs)
        if r.get("error"):
            self.errors.append(r)
        elif r.get("sig"):
            if r.get("known"):
                self.known.append(r)
            else:
                self.divergences.append(r)
                self.sigs.setdefault(r["sig"], []).append(r["seed"])
            if r.get("crash"):
                self.crashes += 1

    def line(self, total):
        el = time.monotonic() - self.t0
        return ("[%5.0fs] seeds %d%s  ops %d (%.0f ops/s)  divergences %d  known %d  crashes %d"
                "  errors %d" % (el, self.seeds, "/%d" % total if total else "", self.ops,
                                 self.ops / el if el > 0 else 0, len(self.divergences),
                                 len(self.known), self.crashes, len(self.errors)))


def drain(tasks):
    """Takes the seeds nobody has started off the queue; returns how many."""
    n = 0
    while True:
        try:
            s = tasks.get(timeout=0.05)
        except queue.Empty:
            return n
        if s is not None:
            n += 1


def run_seeds(args, ctx, seeds, time_budget):
    """Runs seeds over args.jobs worker processes and returns Stats. With seeds None, runs
    seeds from args.seed upward until time_budget seconds have passed (a seed that has
    started is finished)."""
    mp = multiprocessing.get_context("fork")
    tasks, results = mp.Queue(), mp.Queue()
    stats = Stats()
    deadline = stats.t0 + time_budget if seeds is None else None
    if seeds is None:
        next_seed = args.seed
        for _ in range(args.jobs):
            tasks.put(next_seed)
            next_seed += 1
        outstanding = args.jobs
    else:
        for s in seeds:
            tasks.put(s)
        for _ in range(args.jobs):
            tasks.put(None)
        outstanding = len(seeds)
    procs = [mp.Process(target=worker, args=(ctx, tasks, results, args.ops))
             for _ in range(args.jobs)]
    for p in procs:
        p.start()
    total = None if seeds is None else len(seeds)
    last = 0
    tty = sys.stderr.isatty()
    try:
        while outstanding > 0:
            try:
                r = results.get(timeout=0.5)
            except queue.Empty:
                r = None
                if not any(p.is_alive() for p in procs):
                    stats.errors.append({"seed": "?", "error": "all workers died"})
                    break
            if r is not None and "log" in r:
                print(r["log"], file=sys.stderr)
            elif r is not None:
                outstanding -= 1
                stats.add(r)
                if r.get("text") or r.get("error"):
                    if tty:
                        print(file=sys.stderr)
                    print(r.get("text") or "ERROR seed=%s: %s" % (r["seed"], r["error"]),
                          flush=True)
                elif args.verbose:
                    print("seed %s: %d ops, agree (%.1fs)" % (r["seed"], r["ops"], r["time"]),
                          file=sys.stderr)
                if args.stop_after and len(stats.divergences) >= args.stop_after:
                    stats.stopped = "stopped after %d divergences (--stop-after)" % len(
                        stats.divergences)
                if args.max_time and time.monotonic() - stats.t0 > args.max_time:
                    stats.stopped = "stopped at the time limit (--max-time %gs)" % args.max_time
                if stats.stopped:
                    outstanding -= drain(tasks)
                    deadline = None
                if deadline is not None:
                    if time.monotonic() < deadline:
                        tasks.put(next_seed)
                        next_seed += 1
                        outstanding += 1
                    elif outstanding == 0:
                        break
            now = time.monotonic()
            if now - last > (2 if tty else 15):
                last = now
                if tty:
                    print("\r" + stats.line(total), end="", file=sys.stderr, flush=True)
                else:
                    print(stats.line(total), file=sys.stderr, flush=True)
        for _ in procs:
            tasks.put(None)
        if stats.stopped and total:
            stats.stopped += "; %d of %d seeds not run" % (total - stats.seeds, total)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping workers and unmounting", file=sys.stderr)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=60)
        raise
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        print(("\r" if tty else "") + stats.line(total), file=sys.stderr)
    return stats


def summary(stats, args):
    el = time.monotonic() - stats.t0
    print("\n=== difftest summary ===")
    print("seeds: %d   ops: %d   time: %.1fs   ops/s: %.0f   jobs: %d" % (
        stats.seeds, stats.ops, el, stats.ops / el if el else 0, args.jobs))
    print("divergences: %d (distinct signatures: %d)   known: %d   crashes: %d   errors: %d" % (
        len(stats.divergences), len(stats.sigs), len(stats.known), stats.crashes,
        len(stats.errors)))
    for sig, seeds in sorted(stats.sigs.items()):
        print("  %-50s seeds %s" % (sig, ",".join(map(str, seeds[:10]))))
    if stats.exit_times:
        ts = sorted(stats.exit_times)
        pick = lambda q: ts[min(len(ts) - 1, int(q * len(ts)))] * 1000
        print("daemon exit after umount (ms, %d seeds): median %.2f  p99 %.2f  max %.2f  "
              "over 10 ms: %d" % (len(ts), pick(0.5), pick(0.99), ts[-1] * 1000,
                                  sum(1 for t in ts if t > 0.01)))
    if stats.known:
        ks = {}
        for r in stats.known:
            ks.setdefault(r["known"], []).append(r["seed"])
        print("known divergences seen (not failures):")
        for k, seeds in sorted(ks.items()):
            print("  %-50s seeds %s" % (k, ",".join(map(str, seeds[:10]))))
    for r in stats.divergences:
        if r.get("repro"):
            print("  reproducer: %s" % r["repro"])
    if stats.stopped:
        print(stats.stopped)


def do_replay(args, ctx):
    bad = 0
    for path in args.replay:
        doc = report.load_repro(path)
        out = run_case(ctx, doc["spec"], doc.get("seed", "replay"), doc["ops"])
        name = os.path.basename(path)
        if out.sig is None:
            print("replay %s: agree (%d ops)" % (name, out.nops))
            continue
        known = is_known(out.sig, ctx.known)
        print("replay %s: DIVERGENCE%s" % (name, " (known: %s)" % known if known else ""))
        for l in report.describe(out):
            print(l)
        print("  ops:")
        for i, o in enumerate(doc["ops"]):
            print("    %d. %s" % (i, report.fmt_op(o)))
        if not known:
            bad += 1
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=default_binary(), help="layover binary (default: %(default)s)")
    ap.add_argument("--self-check", action="store_true",
                    help="compare the kernel with itself (validates the tester's fairness)")
    ap.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    ap.add_argument("--count", type=int, default=None, help="number of seeds from --seed")
    ap.add_argument("--seeds", help="explicit seeds: 1-20,33")
    ap.add_argument("--time", type=float, default=None,
                    help="keep running new seeds until this many seconds have passed")
    ap.add_argument("--ops", type=int, default=200, help="ops per seed (default 200)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel seeds (default 1)")
    ap.add_argument("--stop-after", type=int, default=0, metavar="K",
                    help="start no new seed after K (unknown) divergences")
    ap.add_argument("--max-time", type=float, default=0, metavar="SECONDS",
                    help="start no new seed after SECONDS (a bound for CI; default none)")
    ap.add_argument("--checkpoint", type=int, default=50,
                    help="compare the whole merged tree every N ops (0: only at the end)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-op deadline, seconds")
    ap.add_argument("--uid-share", type=float, default=0.25,
                    help="share of ops run as an unprivileged uid (default 0.25)")
    ap.add_argument("--userxattr", choices=["auto", "on", "off"], default="auto",
                    help="mount with userxattr: auto = 20%% of seeds")
    ap.add_argument("--aufs-names", action="store_true",
                    help="also use .wh.* names (in layers and ops); the kernel gives them no "
                         "meaning, layover reads them as AUFS/OCI whiteouts (known divergence)")
    ap.add_argument("--stray-whiteouts", action="store_true",
                    help="also put whiteouts in directories that merge with nothing below "
                         "(the kernel lists them as stray entries; known divergence)")
    ap.add_argument("--layover-opts", metavar="OPTS",
                    help="more -o options for layover's mounts (e.g. passthrough=0: the "
                         "writeback cache, as without root); kept in reproducers")
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--shrink-time", type=float, default=180.0,
                    help="time budget per divergence for shrinking (default 180s)")
    ap.add_argument("--no-cross", action="store_true",
                    help="skip mounting layover on the kernel's layers at the end")
    ap.add_argument("--known", action="append", default=[],
                    help="file of known divergence signatures (GLOB  # why), reported but "
                         "not failures; may repeat. scripts/difftest/known.txt is the "
                         "project's list")
    ap.add_argument("--out", default=DEFAULT_OUT,
                    help="where reproducers are written (default: %(default)s)")
    ap.add_argument("--scratch", default=tempfile.gettempdir(),
                    help="where layers and mounts are made (must support trusted xattrs)")
    ap.add_argument("--keep", action="store_true", help="keep scratch directories")
    ap.add_argument("--replay", nargs="+", metavar="FILE", help="replay reproducer files")
    ap.add_argument("--concurrent", type=float, metavar="SECONDS",
                    help="concurrent mode: several processes on one tree for SECONDS")
    ap.add_argument("--workers", type=int, default=4, help="processes in concurrent mode")
    ap.add_argument("--kernel-seconds", type=float, metavar="SECONDS",
                    help="concurrent mode: how long the kernel phase (which learns the errnos "
                         "the workload gives) runs; default the same as --concurrent. The "
                         "kernel does several times as many ops per second as layover")
    ap.add_argument("--learn-errnos", metavar="FILE",
                    help="write the errnos the kernel gave per op type (use with --self-check;"
                         " scripts/difftest/kernel_errnos.json is what --concurrent allows)")
    ap.add_argument("--mode", choices=["root", "userns"], default="root",
                    help="root: both mounts by real root (default); userns: the whole run as "
                         "root of a user namespace of the test user ($LAYOVER_TEST_USER, "
                         "podtest) with its subordinate ids mapped: layover opens /dev/fuse "
                         "itself (a 0666 node bound over it in a private mount namespace), the "
                         "reference is the kernel's overlayfs mounted there (userxattr); "
                         "started as root, through testkit/scripts/run-mode.sh")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--trace", action="store_true",
                    help="print every op and the kernel's result (use with --jobs 1)")
    args = ap.parse_args()
    if args.mode == "userns" and not os.environ.get("LAYOVER_DIFFTEST_IN_USERNS"):
        return into_user_namespace(args)
    if args.mode == "userns":
        import layers
        layers.UNPRIVILEGED = True
        if args.out == DEFAULT_OUT:
            args.out = DEFAULT_OUT + "-userns"

    problems = mounts.check_prerequisites()
    if not args.self_check and not os.path.exists(args.binary):
        problems.append("binary %s does not exist (cargo build --release)" % args.binary)
    if problems:
        for p in problems:
            print("difftest: PREREQUISITE MISSING: %s" % p, file=sys.stderr)
        return 2
    for k in args.known:
        if not os.path.exists(k):
            print("difftest: no such known-list file %s" % k, file=sys.stderr)
            return 2

    why = mounts.private_mount_namespace()
    if why:
        print("difftest: warning: running in the shared mount namespace (%s); a process "
              "that unshares its namespace during the run can hold a mount and keep its "
              "daemon alive" % why, file=sys.stderr)
    os.makedirs(args.scratch, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="layover-difftest.", dir=args.scratch)
    os.chmod(scratch, 0o755)
    ctx = Ctx(args, scratch)
    if not args.self_check:
        # test a private copy: a rebuild of target/ during a long run must not change (or
        # remove) the binary under test halfway
        private = os.path.join(scratch, "layover-under-test")
        shutil.copy2(args.binary, private)
        ctx.impl = private
    old_int = signal.getsignal(signal.SIGINT)
    # also when started in the background, where SIGINT comes in ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if args.replay:
            return do_replay(args, ctx)
        if args.concurrent:
            import concurrent_mode
            return concurrent_mode.run(args, ctx)
        if args.seeds:
            seeds, budget = parse_seeds(args.seeds), None
        elif args.time and args.count is None:
            seeds, budget = None, args.time
        else:
            seeds, budget = list(range(args.seed, args.seed + (args.count or 1))), None
        print("difftest: %s vs kernel overlayfs; %s seeds, %d ops each, %d jobs; scratch %s" % (
            "kernel (self-check)" if args.self_check else args.binary,
            "%d" % len(seeds) if seeds is not None else "time-boxed (%gs)" % budget,
            args.ops, args.jobs, scratch), file=sys.stderr)
        stats = run_seeds(args, ctx, seeds, budget)
        summary(stats, args)
        if args.learn_errnos:
            with open(args.learn_errnos, "w") as f:
                json.dump({op: sorted(e) for op, e in sorted(stats.errnos.items())}, f,
                          indent=1, sort_keys=True)
                f.write("\n")
            print("kernel errnos per op type written to %s" % args.learn_errnos)
        if stats.errors:
            for r in stats.errors[:5]:
                print("ERROR seed=%s: %s" % (r["seed"], r["error"]))
            return 2
        return 1 if stats.divergences else 0
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGINT, old_int)
        mounts.cleanup()
        mounts.sweep(scratch)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())  # main() unmounts everything on its way out, also on errors
    except BrokenPipeError:  # output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
