"""Mounting and unmounting: the kernel's overlayfs (`mount -t overlay`) and layover.

Every mount made here is registered; `cleanup()` unmounts them all (umount, then aborting a
FUSE connection that does not answer, then umount -l), and `sweep(base)` unmounts whatever
is still mounted below a scratch directory. Callers wrap their work in try/finally.
"""

import os
import signal
import stat
import subprocess
import time

# The reference: the kernel's defaults on this machine, pinned so that a kernel built with
# other defaults still means the same (redirect_dir=off gives EXDEV for merged directories).
# With userxattr the kernel forces these off itself (and refuses redirect_dir=...).
KERNEL_OPTS = ["index=off", "redirect_dir=off", "metacopy=off"]

_mounted = []  # [(mnt, kind)]


class MountError(Exception):
    pass


def check_prerequisites():
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (euid is %d)" % os.geteuid())
    try:
        if not stat.S_ISCHR(os.stat("/dev/fuse").st_mode):
            problems.append("/dev/fuse is not a character device")
    except OSError as e:
        problems.append("/dev/fuse: %s" % e.strerror)
    for tool in ("mount", "umount"):
        if not any(os.access(os.path.join(d, tool), os.X_OK)
                   for d in os.environ.get("PATH", "/usr/bin:/bin").split(":") + ["/usr/bin", "/bin"]):
            problems.append("`%s` not found" % tool)
    try:
        with open("/proc/filesystems") as f:
            if "overlay" not in f.read():
                subprocess.run(["modprobe", "overlay"], capture_output=True)
    except OSError:
        pass
    return problems


def mountinfo():
    """[(mount point, fstype, 'major:minor')] from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            mp = parts[4].encode().decode("unicode_escape")  # \040 etc.
            out.append((mp, parts[sep + 1], parts[2]))
    return out


def is_mounted(mnt):
    return any(mp == mnt for mp, _, _ in mountinfo())


def fstype_of(mnt):
    t = None
    for mp, fst, _ in mountinfo():
        if mp == mnt:
            t = fst
    return t


def _run(cmd, timeout=30):
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=timeout)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace").strip()
    except subprocess.TimeoutExpired:
        return -1, "timeout after %ss: %s" % (timeout, " ".join(cmd))


def overlay_opts(lowers, upper, work, userxattr):
    o = "lowerdir=" + ":".join(lowers)
    if upper:
        o += ",upperdir=%s,workdir=%s" % (upper, work)
    if userxattr:
        o += ",userxattr"
    return o


def mount_kernel(lowers, upper, work, mnt, userxattr):
    opts = overlay_opts(lowers, upper, work, userxattr)
    if not userxattr:
        opts += "," + ",".join(KERNEL_OPTS)
    rc, out = _run(["mount", "-t", "overlay", "overlay", "-o", opts, mnt])
    if rc != 0:
        raise MountError("mount -t overlay -o %s %s: %s" % (opts, mnt, out))
    _mounted.append((mnt, "overlay"))


def mount_layover(binary, lowers, upper, work, mnt, userxattr, log_path, extra=()):
    """Mounts layover (extra: more -o options); returns the daemon's pid (or None if it
    cannot be found)."""
    opts = ",".join([overlay_opts(lowers, upper, work, userxattr)] + list(extra))
    env = dict(os.environ, RUST_BACKTRACE="1")
    with open(log_path, "ab") as log:
        try:
            r = subprocess.run([binary, "-o", opts, mnt], stdin=subprocess.DEVNULL,
                               stdout=log, stderr=log, env=env, timeout=30)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = -1
    if rc != 0 or not is_mounted(mnt):
        if is_mounted(mnt):
            _mounted.append((mnt, "fuse"))
        with open(log_path, "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
        raise MountError("%s -o %s %s: exit %s\n%s" % (binary, opts, mnt, rc, tail))
    _mounted.append((mnt, "fuse"))
    return find_daemon(binary, mnt)


def find_daemon(binary, mnt):
    """The pid of the daemon serving mnt: the process whose arguments name mnt (the mount
    point is unique to this run), preferring the binary itself over a wrapper around it."""
    want = os.path.realpath(binary)
    found = []
    for pid in sorted(os.listdir("/proc"), key=lambda p: (len(p), p)):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            exe = os.path.realpath("/proc/%s/exe" % pid)
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mnt) in args:
            found.append((exe != want, int(pid)))
    return min(found)[1] if found else None


def pid_alive(pid):
    if pid is None:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def abort_fuse(mnt):
    """Aborts the FUSE connection behind mnt (unblocks every request); no syscall on mnt."""
    for mp, fst, dev in mountinfo():
        if mp == mnt and fst.startswith("fuse"):
            minor = dev.split(":")[1]
            try:
                with open("/sys/fs/fuse/connections/%s/abort" % minor, "w") as f:
                    f.write("1")
            except OSError:
                pass


def umount(mnt, timeout=30):
    """Unmounts; returns '' or a description of what went wrong (then it was forced)."""
    problem = ""
    if is_mounted(mnt):
        rc, out = _run(["umount", mnt], timeout=timeout)
        if rc != 0:
            problem = "umount %s: %s" % (mnt, out)
            abort_fuse(mnt)
            _run(["umount", mnt], timeout=10)
            if is_mounted(mnt):
                _run(["umount", "-l", mnt], timeout=10)
    for i, (m, _) in enumerate(_mounted):
        if m == mnt:
            del _mounted[i]
            break
    return problem


def wait_daemon_exit(pid, timeout=10):
    if pid is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.01)
    return False


def daemon_exit_time(pid, timeout=10):
    """Seconds until pid is gone (polled every millisecond), or None if it outlives timeout."""
    if pid is None:
        return 0.0
    t0 = time.monotonic()
    while True:
        if not pid_alive(pid):
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            return None
        time.sleep(0.001)


def _read(path, limit=4096):
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace").strip()
    except OSError as e:
        return "(%s)" % (e.strerror or e)


def thread_dump(pid):
    """What each thread of pid is doing, for a daemon that does not exit: per thread its
    name, state, wait channel, the syscall it is in (/proc/PID/task/TID/syscall: number and
    arguments) and its kernel stack (root only). Taken before the daemon is killed."""
    lines = []
    if pid is None:
        return lines
    status = _read("/proc/%d/status" % pid)
    keep = ("State", "Threads", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "VmRSS")
    lines += [l for l in status.splitlines() if l.split(":")[0] in keep]
    try:
        tids = sorted(os.listdir("/proc/%d/task" % pid), key=int)
    except OSError as e:
        return lines + ["tasks: %s" % e]
    for tid in tids:
        t = "/proc/%d/task/%s/" % (pid, tid)
        stat = _read(t + "stat")
        state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
        lines.append("tid %s comm=%s state=%s wchan=%s syscall=%s" % (
            tid, _read(t + "comm"), state, _read(t + "wchan"), _read(t + "syscall")))
        lines += ["    " + l for l in _read(t + "stack", 16384).splitlines()]
    return lines


def private_mount_namespace():
    """Moves this process (and what it starts later) into a mount namespace of its own with
    private propagation. Every mount the tester makes is then invisible to other processes:
    one that unshares its mount namespace meanwhile (a container, `unshare -m`, another test
    suite) cannot keep a copy of a layover mount, which would keep its FUSE connection and
    its daemon alive after our umount (a false `umount:daemon-lingers`). Mounts still
    present when the tester exits go with the namespace. Call before starting any thread.
    Returns '' or why it could not."""
    import ctypes
    CLONE_NEWNS = 0x00020000
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        return "unshare(CLONE_NEWNS): %s" % os.strerror(ctypes.get_errno())
    rc, out = _run(["mount", "--make-rprivate", "/"], timeout=30)
    return "" if rc == 0 else "mount --make-rprivate /: %s" % out


def device_of(mnt):
    """The 'major:minor' of the filesystem mounted at mnt (for FUSE, its connection)."""
    dev = None
    for mp, _, d in mountinfo():
        if mp == mnt:
            dev = d
    return dev


def mount_holders(dev):
    """Where a filesystem is still mounted after our umount: one line per other mount
    namespace that holds a copy of it (a process that unshared its mount namespace while it
    was mounted keeps the FUSE connection, and so the daemon, alive until that namespace
    goes), and whether the connection still exists."""
    if dev is None:
        return []
    lines = []
    minor = dev.split(":")[-1]
    if os.path.exists("/sys/fs/fuse/connections/%s" % minor):
        lines.append("FUSE connection %s still exists (its superblock is still referenced)" % dev)
    seen = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            ns = os.readlink("/proc/%s/ns/mnt" % pid)
            if ns in seen:
                continue
            with open("/proc/%s/mountinfo" % pid) as f:
                mps = [l.split()[4] for l in f if l.split()[2] == dev]
        except (OSError, IndexError):
            continue
        seen[ns] = True
        if mps:
            lines.append("still mounted in %s (pid %s %s) at %s" % (
                ns, pid, _read("/proc/%s/comm" % pid), ", ".join(mps[:3])))
    return lines


def kill_daemon(pid):
    if pid is not None and pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def cleanup():
    while _mounted:
        mnt, _ = _mounted[-1]
        umount(mnt, timeout=15)


def sweep(base):
    """Unmounts everything mounted at or below base (deepest first)."""
    base = os.path.realpath(base)
    for _ in range(3):
        mps = sorted({mp for mp, _, _ in mountinfo()
                      if mp == base or mp.startswith(base + "/")}, key=len, reverse=True)
        if not mps:
            return
        for mp in mps:
            rc, _ = _run(["umount", mp], timeout=15)
            if rc != 0:
                abort_fuse(mp)
                _run(["umount", "-l", mp], timeout=10)
