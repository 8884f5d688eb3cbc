#!/usr/bin/env python3
"""Exhaustion at scale: layover against the kernel's overlayfs on the same layers.

Three workloads, each on layers built in a scratch directory of its own under /var/tmp
(removed at the end, whatever happens), each run on layover (the release binary) and on the
kernel's overlayfs with a fresh upper:

  bigdir  a lower directory of N entries (default 1,000,000): list it (`ls -f | wc -l`, and
          getdents through os.scandir), lstat every entry, create 1,000 new entries and remove
          1,000 lower ones through the mount (whiteouts), list again; the names must be exactly
          the expected ones, the same on both, and the kernel must read layover's upper alike.
  deep    a tree deeper than PATH_MAX (default 3,000 levels of a 10-character name, 33,000
          bytes of path), made with mkdirat relative to an fd: (1) through the mount, (2) as a
          lower, then a file written at the bottom through the mount (copy-up of every
          parent); then read back after drop_caches, `find` and `rm -rf` through the mount.
          Every step's outcome (ok or errno) is compared with the kernel's.
  walk    a lower of D directories x F files (default 1,000 x 1,000): `find` through the
          mount, drop_caches (echo 2), a second `find`, drop_caches again.

For layover the daemon's VmRSS, peak RSS (VmHWM, reset with clear_refs before each phase)
and open fds are sampled every 50 ms and read after each phase. Run as root:

    scripts/exhaustion.py [--only bigdir,deep,walk] [--entries N] [--depth D] [--dirs D --files F]

Prints a report (markdown tables) for docs/reliability.md; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Failed, daemon_pids, force_unmount, log, mounts_under, run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEEP_NAME = "d123456789"
CHANGED = 1000  # entries created and entries removed in the big directory

failures: list[str] = []
report: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        failures.append(what)
        log("FAILED: " + what)


def mknod_many(d: Path, names) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for n in names:
            os.mknod(n, 0o644 | stat.S_IFREG, dir_fd=fd)
    finally:
        os.close(fd)


def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
    time.sleep(2)


# ---------------------------------------------------------------- mounts and the daemon

class Daemon:
    """The layover daemon of a mount: samples its RSS and fds in a thread."""

    def __init__(self, pid: int):
        self.pid = pid
        self.max_fds = 0
        self.max_rss = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()

    def _sample(self):
        while not self._stop.wait(0.05):
            try:
                s = self.status()
            except (OSError, KeyError):
                return  # gone (a zombie has no VmRSS)
            self.max_fds = max(self.max_fds, s["fds"])
            self.max_rss = max(self.max_rss, s["rss"])

    def status(self) -> dict:
        st = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                st[k] = v.strip()
        mb = lambda k: int(st[k].split()[0]) / 1024
        return {"rss": mb("VmRSS"), "hwm": mb("VmHWM"), "fds": len(os.listdir(f"/proc/{self.pid}/fd"))}

    def reset_peak(self):
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5\n")
        self.max_fds, self.max_rss = 0, 0.0

    def phase(self) -> str:
        """The figures since the last reset, as a table cell."""
        s = self.status()
        return (f"RSS {s['rss']:.1f} MB, peak {s['hwm']:.1f} MB; fds {s['fds']} "
                f"(max sampled {max(self.max_fds, s['fds'])})")

    def stop(self):
        self._stop.set()


class Fs:
    def __init__(self, args, scratch: Path):
        self.args, self.scratch = args, scratch
        self.bin = str(Path(args.bin).resolve())

    def mount(self, fs: str, lowers: list[Path], tag: str, ro=False) -> tuple[Path, Daemon | None]:
        mnt = self.scratch / f"mnt-{tag}-{fs}"
        mnt.mkdir()
        opts = f"lowerdir={':'.join(map(str, lowers))}"
        if not ro:
            upper, work = self.scratch / f"upper-{tag}-{fs}", self.scratch / f"work-{tag}-{fs}"
            upper.mkdir()
            work.mkdir()
            opts += f",upperdir={upper},workdir={work}"
        os.sync()
        cmd = ([self.bin, "-o", opts, str(mnt)] if fs == "layover"
               else ["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)])
        run(cmd, timeout=120)
        if fs != "layover":
            return mnt, None
        for _ in range(200):
            pids = [p for p in daemon_pids(str(mnt)) if _comm(p) == Path(self.bin).name[:15]]
            if pids:
                return mnt, Daemon(max(pids))
            time.sleep(0.02)
        raise Failed("no layover daemon found for " + str(mnt))

    def unmount(self, mnt: Path, d: Daemon | None) -> float | None:
        """Unmounts; for layover returns the seconds from umount to the daemon's exit."""
        if d:
            d.stop()
        t0 = time.perf_counter()
        force_unmount(str(mnt))  # umount, then waits up to 5 s for the daemon to exit
        if not d:
            return None
        if os.path.exists(f"/proc/{d.pid}"):
            check(False, f"daemon {d.pid} alive 5 s after umount of {mnt}")
            return None
        return time.perf_counter() - t0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def timed(f, *a):
    t0 = time.perf_counter()
    r = f(*a)
    return time.perf_counter() - t0, r


def table(title: str, head: list[str], rows: list[list]) -> None:
    report.append(f"\n#### {title}\n")
    report.append("| " + " | ".join(head) + " |")
    report.append("|" + "---|" * len(head))
    for r in rows:
        report.append("| " + " | ".join(str(c) for c in r) + " |")


# ---------------------------------------------------------------- bigdir

def ls_count(d: Path) -> int:
    out = subprocess.run(f"ls -f {d} | wc -l", shell=True, check=True, capture_output=True, text=True)
    return int(out.stdout)


def scandir_names(d: Path) -> set[str]:
    with os.scandir(d) as it:
        return {e.name for e in it}


def lstat_all(d: Path, names) -> int:
    """lstat of every name by its directory's fd; returns the number that failed."""
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    bad = 0
    try:
        for n in names:
            try:
                os.lstat(n, dir_fd=fd)
            except OSError:
                bad += 1
    finally:
        os.close(fd)
    return bad


def upper_census(d: Path) -> tuple[int, int]:
    """(whiteouts, regular files) in an upper directory."""
    wh = reg = 0
    with os.scandir(d) as it:
        for e in it:
            st = e.stat(follow_symlinks=False)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                wh += 1
            elif stat.S_ISREG(st.st_mode):
                reg += 1
    return wh, reg


def bigdir(fsx: Fs, n: int) -> None:
    lower = fsx.scratch / "bigdir-lower"
    big = lower / "big"
    big.mkdir(parents=True)
    names = [f"f{i:07d}" for i in range(n)]
    secs, _ = timed(mknod_many, big, names)
    log(f"bigdir: {n} lower entries made in {secs:.1f} s")
    removed = names[:: max(n // CHANGED, 1)][:CHANGED]
    added = [f"n{i:04d}" for i in range(CHANGED)]
    expected = (set(names) - set(removed)) | set(added)
    ls_count(big)  # the lower's dentries and pages warm for both
    rows, seen = [], {}
    for fs in ("layover", "kernel"):
        mnt, d = fsx.mount(fs, [lower], "bigdir")
        mbig = mnt / "big"
        t_ls, c = timed(ls_count, mbig)
        check(c == n + 2, f"bigdir {fs}: ls -f counted {c}, want {n + 2}")
        t_sd, got = timed(scandir_names, mbig)
        check(got == set(names), f"bigdir {fs}: getdents gave {len(got)} names, want the {n} lower ones")
        del got
        t_st, bad = timed(lstat_all, mbig, names)
        check(bad == 0, f"bigdir {fs}: {bad} lstat failures")
        during = d.phase() if d else "—"
        if d:
            d.reset_peak()
        fd = os.open(mbig, os.O_RDONLY | os.O_DIRECTORY)
        t_cr, _ = timed(lambda: [os.mknod(a, 0o644 | stat.S_IFREG, dir_fd=fd) for a in added])
        t_rm, _ = timed(lambda: [os.unlink(r, dir_fd=fd) for r in removed])
        os.close(fd)
        t_ls2, c2 = timed(ls_count, mbig)
        check(c2 == n + 2, f"bigdir {fs}: ls -f after the changes counted {c2}, want {n + 2}")
        t_sd2, got = timed(scandir_names, mbig)
        check(got == expected, f"bigdir {fs}: after the changes {len(got ^ expected)} names differ")
        seen[fs] = got
        after = d.phase() if d else "—"
        exit_s = fsx.unmount(mnt, d)
        wh, reg = upper_census(fsx.scratch / f"upper-bigdir-{fs}" / "big")
        check((wh, reg) == (CHANGED, CHANGED), f"bigdir {fs}: upper holds {wh} whiteouts, {reg} files")
        rows.append([fs, f"{t_ls:.2f}", f"{t_sd:.2f}", f"{t_st:.1f}", f"{t_cr:.2f} / {t_rm:.2f}",
                     f"{t_ls2:.2f} / {t_sd2:.2f}", f"{wh} / {reg}", during, after,
                     "—" if exit_s is None else f"{exit_s * 1000:.1f} ms"])
    check(seen["layover"] == seen["kernel"], "bigdir: layover and the kernel list different names")
    # The kernel reads layover's upper (as a lower above the original) alike.
    mnt, _ = fsx.mount("kernel", [fsx.scratch / "upper-bigdir-layover", lower], "bigdir-check", ro=True)
    got = scandir_names(mnt / "big")
    check(got == expected, f"bigdir: the kernel reading layover's upper sees {len(got ^ expected)} names differ")
    fsx.unmount(mnt, None)
    table(f"A directory of {n:,} lower entries",
          ["fs", "`ls -f \\| wc -l` s", "getdents (os.scandir) s", f"lstat of {n:,} s",
           f"create {CHANGED:,} / remove {CHANGED:,} s", "list again: ls / getdents s",
           "upper: whiteouts / files", "daemon after listing + lstat", "daemon after the changes",
           "umount to daemon exit"], rows)
    report.append(f"\nNames after the changes: {len(expected):,} on both, identical; the kernel "
                  f"reading layover's upper: {'identical' if got == expected else 'DIFFERENT'}.")


# ---------------------------------------------------------------- deep

def outcome(f) -> str:
    try:
        r = f()
        return "ok" if r is None else r
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def make_chain(top: Path, depth: int, bottom: bytes | None = None) -> None:
    """mkdirat `depth` levels below top, one fd at a time; writes `bottom`/file if given."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(DEEP_NAME, dir_fd=fd)
            nfd = os.open(DEEP_NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        if bottom is not None:
            write_at(fd, bottom)
    finally:
        os.close(fd)


def write_at(fd: int, data: bytes) -> None:
    f = os.open("file", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
    try:
        os.write(f, data)
        os.fsync(f)
    finally:
        os.close(f)


def descend(top: Path, depth: int) -> int:
    """An fd of the directory `depth` levels below top (the caller closes it)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(depth):
        try:
            nfd = os.open(DEEP_NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        except OSError as e:
            os.close(fd)
            raise OSError(e.errno, f"level {i + 1}: {e.strerror}") from None
        os.close(fd)
        fd = nfd
    return fd


def read_bottom(top: Path, depth: int) -> str:
    fd = descend(top, depth)
    try:
        f = os.open("file", os.O_RDONLY, dir_fd=fd)
        data = os.read(f, 100)
        os.close(f)
        return "ok" if data == b"bottom\n" else f"read {data!r}"
    finally:
        os.close(fd)


def write_bottom(top: Path, depth: int) -> None:
    fd = descend(top, depth)
    try:
        write_at(fd, b"bottom\n")
    finally:
        os.close(fd)


def levels(top: Path) -> int:
    """How many DEEP_NAME levels there are below top (walked by fds)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    n = 0
    while True:
        try:
            nfd = os.open(DEEP_NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        except FileNotFoundError:
            os.close(fd)
            return n
        os.close(fd)
        fd, n = nfd, n + 1


def find_count(d: Path) -> str:
    p = subprocess.run(["find", str(d)], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        return f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1][:80]}"
    return str(len(p.stdout.splitlines()))


def rm_rf(d: Path) -> str:
    p = subprocess.run(["rm", "-rf", str(d)], capture_output=True, text=True, timeout=600)
    return "ok" if p.returncode == 0 else f"exit {p.returncode}: {p.stderr.strip()[:80]}"


def deep(fsx: Fs, depth: int) -> None:
    lower = fsx.scratch / f"deep{depth}-lower"
    lower.mkdir()
    make_chain(lower, depth, b"bottom\n")
    log(f"deep: {depth} levels in the lower ({depth * (len(DEEP_NAME) + 1):,} bytes of path)")
    results: dict[str, dict[str, str]] = {}
    for fs in ("layover", "kernel"):
        r = results.setdefault(fs, {})
        mnt, d = fsx.mount(fs, [lower], f"deep{depth}")
        upper = fsx.scratch / f"upper-deep{depth}-{fs}"
        times = []

        def step(name, f, timed_step=False):
            t0 = time.perf_counter()
            r[name] = outcome(f)
            if timed_step:
                times.append(f"{time.perf_counter() - t0:.2f}")
            if d and not os.path.exists(f"/proc/{d.pid}"):
                r[name] += " (the daemon died)"
                raise Failed(f"deep {depth}: the layover daemon died in: {name}")

        try:
            (mnt / "new").mkdir()
            step("mkdir chain through the mount", lambda: make_chain(mnt / "new", depth, b"bottom\n"), True)
            r["levels in the upper"] = str(levels(upper / "new"))
            step("read lower bottom file", lambda: read_bottom(mnt, depth))
            step("write at the bottom of the lower chain (copy-up of every parent)",
                 lambda: write_bottom(mnt, depth), True)
            r["levels copied up"] = str(levels(upper))
            drop_caches()
            step("read both bottoms after drop_caches", lambda: "ok" if read_bottom(
                mnt, depth) == read_bottom(mnt / "new", depth) == "ok" else "wrong data")
            step("find (entries)", lambda: find_count(mnt))
            r["daemon"] = d.phase() if d else "—"
            step("rm -rf through the mount", lambda: rm_rf(mnt / DEEP_NAME), True)
            step("rm -rf (new) through the mount", lambda: rm_rf(mnt / "new"))
            r["left after rm -rf"] = str(len(os.listdir(mnt)))
            r["times: mkdir chain / copy-up write / rm -rf"] = " / ".join(times) + " s"
        except Failed as e:
            check(False, str(e))
        fsx.unmount(mnt, d)
    rows = []
    for k in results["kernel"]:
        a, b = results["layover"].get(k, "not reached"), results["kernel"][k]
        rows.append([k, a, b])
        if k not in ("daemon", "times: mkdir chain / copy-up write / rm -rf"):
            check(a == b, f"deep {depth}: {k}: layover {a}, kernel {b}")
    table(f"A tree {depth:,} levels deep ({depth * (len(DEEP_NAME) + 1):,} bytes of path)",
          ["step", "layover", "kernel"], rows)


# ---------------------------------------------------------------- walk

def find_walk(d: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    p = subprocess.Popen(["find", str(d), "-printf", "%s\n"], stdout=subprocess.PIPE)
    n = sum(1 for _ in p.stdout)
    p.wait()
    if p.returncode != 0:
        raise Failed(f"find {d}: exit {p.returncode}")
    return time.perf_counter() - t0, n


def walk(fsx: Fs, dirs: int, files: int) -> None:
    lower = fsx.scratch / "walk-lower"
    lower.mkdir()
    t0 = time.perf_counter()
    for i in range(dirs):
        sub = lower / f"d{i:04d}"
        sub.mkdir()
        mknod_many(sub, (f"f{j:04d}" for j in range(files)))
    log(f"walk: {dirs * files:,} lower files made in {time.perf_counter() - t0:.1f} s")
    want = dirs * files + dirs + 1
    rows = []
    for fs in ("layover", "kernel"):
        mnt, d = fsx.mount(fs, [lower], "walk")
        base = d.phase() if d else "—"
        cells = [fs, base]
        for p in (1, 2):
            if d:
                d.reset_peak()
            secs, n = find_walk(mnt)
            check(n == want, f"walk {fs} pass {p}: find saw {n}, want {want}")
            cells += [f"{secs:.1f}", d.phase() if d else "—"]
            drop_caches()
            cells.append(d.phase() if d else "—")
        exit_s = fsx.unmount(mnt, d)
        cells.append("—" if exit_s is None else f"{exit_s * 1000:.1f} ms")
        rows.append(cells)
    table(f"A walk of {dirs * files:,} files ({dirs:,} directories of {files:,})",
          ["fs", "daemon after mount", "1st find s", "daemon after it", "after drop_caches",
           "2nd find s", "daemon after it", "after drop_caches", "umount to daemon exit"], rows)


# ---------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="bigdir,deep,walk")
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--depth", default="3000", help="comma-separated depths")
    ap.add_argument("--dirs", type=int, default=1000)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--bin", default=str(REPO / "target/release/layover"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("exhaustion.py needs root (mounts, drop_caches)")
    if os.environ.get("LAYOVER_EXHAUST_NS") != "1":
        # A mount namespace of its own, private: a namespace another process makes while a
        # mount of ours exists (podman, unshare -m) would hold a copy of it, and its daemon
        # would serve that copy after our umount (docs/reliability.md, "Exit after umount").
        os.environ["LAYOVER_EXHAUST_NS"] = "1"
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private",
                              sys.executable, *sys.argv])
    scratch = Path(f"/var/tmp/layover-exhaust-{os.getpid()}")
    scratch.mkdir()
    fsx = Fs(args, scratch)
    load0 = os.getloadavg()
    try:
        for w in args.only.split(","):
            t0 = time.perf_counter()
            if w == "bigdir":
                bigdir(fsx, args.entries)
            elif w == "deep":
                for depth in args.depth.split(","):
                    deep(fsx, int(depth))
            elif w == "walk":
                walk(fsx, args.dirs, args.files)
            else:
                sys.exit(f"unknown workload {w}")
            log(f"{w}: done in {time.perf_counter() - t0:.0f} s")
    except Failed as e:
        check(False, str(e))
    finally:
        for mp in mounts_under(str(scratch)):
            force_unmount(mp)
        if not mounts_under(str(scratch)):
            subprocess.run(["rm", "-rf", str(scratch)], check=False)
    load1 = os.getloadavg()
    print(f"\nbinary {args.bin}; load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end")
    print("\n".join(report))
    if failures:
        print("\nFAILED:\n" + "\n".join("- " + f for f in failures))
        sys.exit(1)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
