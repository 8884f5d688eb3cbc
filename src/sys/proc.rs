//! Process-level calls used at startup and shutdown: fork, setsid, pipes, signals, mount(2).

use super::{cvt, own, retry};
use crate::error::{Errno, FsResult};
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

pub enum Fork {
    Parent,
    Child,
}

/// `fork()`. Only called while the process has a single thread.
pub fn fork() -> FsResult<Fork> {
    // SAFETY: called before any thread is spawned, so the child is a consistent copy.
    let pid = unsafe { libc::fork() };
    match pid {
        p if p < 0 => Err(Errno::last()),
        0 => Ok(Fork::Child),
        _ => Ok(Fork::Parent),
    }
}

pub fn setsid() {
    // SAFETY: cannot corrupt memory; failure (already a leader) is harmless.
    unsafe { libc::setsid() };
}

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> FsResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a writable array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((own(fds[0]), own(fds[1])))
}

/// Reads until EOF or `buf` is full.
pub fn read_all(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> FsResult<()> {
    let mut chunk = [0u8; 4096];
    loop {
        let n = retry(|| {
            // SAFETY: valid fd and a writable buffer of the given length.
            let r = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            if r < 0 {
                Err(Errno::last())
            } else {
                Ok(r as usize)
            }
        })?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Points stdin, stdout and stderr at /dev/null (a daemon's stdio after it detaches).
pub fn redirect_stdio_to_null() {
    let Ok(null) = super::open_path(c"/dev/null", libc::O_RDWR) else {
        return;
    };
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        unsafe { libc::dup2(null.as_raw_fd(), target) };
    }
}

/// `mount(2)`.
pub fn mount(source: &CStr, target: &CStr, fstype: &CStr, flags: u64, data: &CStr) -> FsResult<()> {
    // SAFETY: NUL-terminated strings.
    cvt(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
}

/// `umount2(target, MNT_DETACH)` when `lazy`, else a plain unmount.
pub fn umount(target: &CStr, lazy: bool) -> FsResult<()> {
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// Blocks the given signals in this thread (and in threads spawned after), so that one
/// thread can take them with `wait_signal`.
pub fn block_signals(signals: &[i32]) {
    // SAFETY: sigset manipulation on a local, then pthread_sigmask with valid pointers.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for one of the (blocked) signals and returns it.
pub fn wait_signal(signals: &[i32]) -> i32 {
    // SAFETY: sigset manipulation on a local, then sigwait with valid pointers.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        let mut sig: libc::c_int = 0;
        loop {
            if libc::sigwait(&set, &mut sig) == 0 {
                return sig;
            }
        }
    }
}

/// Ends the process at once, without running destructors or atexit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

const CAP_SYS_ADMIN: u32 = 21;

/// Opens /dev/fuse for a new connection.
pub fn open_fuse_device() -> FsResult<OwnedFd> {
    super::open_path(c"/dev/fuse", libc::O_RDWR)
}

/// Whether process `pid` has CAP_SYS_ADMIN in effect (false if it is gone).
pub fn pid_has_cap_sys_admin(pid: u32) -> bool {
    status_has_cap_sys_admin(&format!("/proc/{pid}/status"))
}

fn status_has_cap_sys_admin(path: &str) -> bool {
    let Ok(status) = std::fs::read_to_string(path) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Raises the soft limit on open files to the hard limit; returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: valid pointer to a local rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// Writes all of `buf` to a pipe or file.
pub fn write_all(fd: BorrowedFd<'_>, buf: &[u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: valid fd and a readable buffer of the given length.
        let r = unsafe {
            libc::write(
                fd.as_raw_fd(),
                buf[done..].as_ptr().cast(),
                buf.len() - done,
            )
        };
        if r <= 0 {
            if r < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            return;
        }
        done += r as usize;
    }
}

/// Makes every thread allocate from one malloc arena. glibc gives each thread its own, and
/// the inode table's entries are made by whichever worker answered the lookup: spread over
/// a dozen arenas they keep 40 % more memory resident (20 MB against 14 MB after the
/// benchmark's 51,000-entry walk). Allocation is not contended enough here for the single
/// arena's lock to show.
pub fn use_one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before threads start.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Returns freed heap memory to the kernel (glibc's malloc_trim).
pub fn malloc_trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// Whether `fd` reports an error or hang-up now (for /dev/fuse: the connection is gone).
pub fn has_error(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd; timeout 0 never sleeps.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
}

/// Blocks until the mount table changes (poll of /proc/self/mountinfo gives POLLPRI then).
/// A /dev/fuse fd is not polled for this: a poller of /dev/fuse is woken by every request.
pub fn wait_mount_change(mountinfo: BorrowedFd<'_>) -> FsResult<()> {
    let mut pfd = libc::pollfd {
        fd: mountinfo.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 {
            return Ok(());
        }
        if r < 0 && Errno::last() != Errno::EINTR {
            return Err(Errno::last());
        }
    }
}

/// Changes the working directory to /, so that the daemon pins no filesystem by its cwd.
pub fn chdir_root() {
    // SAFETY: NUL-terminated path.
    unsafe { libc::chdir(c"/".as_ptr()) };
}

/// Closes every fd from `first` up (close_range), e.g. to let go of the layers at once.
pub fn close_fds_from(first: u32) {
    // SAFETY: closing fds; the caller exits right after, so no owner uses them again.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

/// Gives the calling thread real-time priority (SCHED_FIFO 1) where permitted, so that it
/// runs the moment it is woken. Returns whether it worked.
pub fn make_thread_realtime() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// A detached, private copy of the mount at `path` (open_tree OPEN_TREE_CLONE), with the
/// same attributes: the daemon's access through it does not keep the original mount point
/// busy. Needs CAP_SYS_ADMIN (Linux 5.2+).
pub fn clone_mount(path: &CStr) -> FsResult<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: NUL-terminated path; flags as documented for open_tree(2).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    Ok(own(fd as libc::c_int))
}

/// The id of the mount that `path` is on (statx STATX_MNT_ID), following no final symlink.
pub fn mount_id(path: &CStr) -> FsResult<u64> {
    const STATX_MNT_ID: u32 = 0x1000;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: NUL-terminated path and a properly sized out-buffer.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: statx succeeded and filled the struct (zeroed first).
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & STATX_MNT_ID == 0 {
        return Err(Errno::ENOSYS);
    }
    Ok(stx.stx_mnt_id)
}

/// A detached, private copy of the mount at `path` (open_tree OPEN_TREE_CLONE), made
/// read-only and noatime (mount_setattr): access through it never changes the layer's atimes,
/// and it does not keep the original mount point busy. Needs CAP_SYS_ADMIN (Linux 5.12+).
pub fn clone_mount_readonly(path: &CStr) -> FsResult<OwnedFd> {
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOATIME: u64 = 0x10;
    const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let fd = clone_mount(path)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME,
        attr_clr: MOUNT_ATTR_ATIME_MASK,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, `attr` of the given size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(fd)
}

/// The major and minor parts of a device number.
pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

/// Moves `fd` to the number `to` and closes every other fd from 3 up: for a process that is
/// to hold nothing but this one (and stdio). `to` must be 3 or more. On failure `fd` is kept
/// where it was (still closing the others).
pub fn keep_only(fd: OwnedFd, to: i32) -> OwnedFd {
    let raw = fd.as_raw_fd();
    let fd = if raw == to {
        fd
    } else {
        // SAFETY: dup2 of a valid fd onto `to`, replacing whatever `to` was (which the caller
        // means to close anyway); the new fd is owned by the returned OwnedFd alone.
        match unsafe { libc::dup2(raw, to) } {
            r if r == to => {
                drop(fd);
                own(to)
            }
            _ => fd,
        }
    };
    let keep = fd.as_raw_fd() as u32;
    // SAFETY: closing fds that nothing in this (single-threaded, about to exec) process
    // uses any more: every fd from 3 up except `keep`.
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0);
    }
    fd
}

/// Takes ownership of fd `n`, inherited from the process that started this one (which
/// promised it is open and ours alone); None if it is not open.
pub fn inherited_fd(n: i32) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only asks whether `n` is open.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return None;
    }
    Some(own(n))
}
