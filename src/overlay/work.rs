//! The work directory: prepared at mount (leftovers of a crash removed), probed for what the
//! upper's filesystem allows. Only the daemon's constructor comes here; the read-only one
//! never opens the workdir.

use super::Caps;
use crate::error::StartupError;
use crate::privilege::Privilege;
use crate::sys;
use crate::whiteout::Format;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Opens the work directory and its `work` subdirectory (as the kernel lays it out),
/// emptying the latter of anything a crashed mount left. The kernel makes `work` mode 0,
/// which only a daemon that overrides permission bits can use; an ordinary user's is
/// 0700 (only its owner, and root, may enter it), set again on one made mode 0 earlier.
/// `volatile`: the mount skips syncs; its mark is made (see `mark_volatile`).
pub fn prepare(
    w: &Path,
    top: OwnedFd,
    privilege: &Privilege,
    volatile: bool,
) -> Result<OwnedFd, StartupError> {
    let err = |e| StartupError::new(format!("workdir '{}': {e}", w.display()));
    let mode = if privilege.overrides_modes() {
        0o000
    } else {
        0o700
    };
    match sys::mkdirat(top.as_fd(), c"work", mode) {
        Ok(()) => {}
        Err(e) if e == crate::error::Errno::EEXIST => {
            if !privilege.overrides_modes() {
                sys::fchmodat(top.as_fd(), c"work", mode).map_err(|e| {
                    StartupError::new(format!(
                        "workdir '{}': cannot make its 'work' directory usable ({e}): it \
                         belongs to another user; remove it, or use another workdir",
                        w.display()
                    ))
                })?;
            }
        }
        Err(e) => return Err(err(e)),
    }
    let work = sys::open_dir_at(top.as_fd(), c"work").map_err(err)?;
    refuse_unclean_volatile(w, work.as_fd())?;
    empty_dir_keeping(work.as_fd(), Some(FORMAT_RECORD.to_bytes())).map_err(err)?;
    if volatile {
        mark_volatile(work.as_fd(), mode).map_err(err)?;
    }
    Ok(work)
}

/// The kernel's mark of a volatile mount: `work/incompat/volatile/dirty`. The kernel makes
/// it at every volatile mount and refuses any later mount while it is there (it cannot
/// tell a crash from a clean unmount). layover makes it too, and removes it when the mount
/// ends cleanly, after syncing the upper; a crash leaves it, and then layover and the
/// kernel both refuse the work directory.
const INCOMPAT: &std::ffi::CStr = c"incompat";
const VOLATILE: &std::ffi::CStr = c"volatile";
const DIRTY: &std::ffi::CStr = c"dirty";

/// Refuses a work directory that holds a volatile mount's mark.
fn refuse_unclean_volatile(w: &Path, work: BorrowedFd<'_>) -> Result<(), StartupError> {
    let Ok(incompat) = sys::open_dir_at(work, INCOMPAT) else {
        return Ok(());
    };
    if sys::fstatat(incompat.as_fd(), VOLATILE).is_err() {
        return Ok(());
    }
    Err(StartupError::new(format!(
        "workdir '{}': it holds work/incompat/volatile, left by a volatile mount of this \
         upper (the kernel's overlayfs or layover) that did not end cleanly: writes to the \
         upper may be lost, and the kernel refuses it too. Start again with an empty upper \
         and work directory or, if you know the upper is intact, remove '{}'",
        w.display(),
        w.join("work/incompat/volatile").display()
    )))
}

/// Makes the volatile mark (directories of `mode`, as `work` itself).
fn mark_volatile(work: BorrowedFd<'_>, mode: u32) -> crate::error::FsResult<()> {
    sys::mkdirat(work, INCOMPAT, mode)?;
    let incompat = sys::open_dir_at(work, INCOMPAT)?;
    sys::mkdirat(incompat.as_fd(), VOLATILE, mode)?;
    let volatile = sys::open_dir_at(incompat.as_fd(), VOLATILE)?;
    sys::mknodat(volatile.as_fd(), DIRTY, libc::S_IFREG, 0)
}

/// Syncs the upper's filesystem (`upper`: its root), then removes the volatile mark.
pub fn unmark_volatile(work: BorrowedFd<'_>, upper: BorrowedFd<'_>) -> crate::error::FsResult<()> {
    let root = sys::openat(upper, sys::DOT, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    sys::syncfs(root.as_fd())?;
    let incompat = sys::open_dir_at(work, INCOMPAT)?;
    let volatile = sys::open_dir_at(incompat.as_fd(), VOLATILE)?;
    sys::unlinkat(volatile.as_fd(), DIRTY, false)?;
    sys::unlinkat(incompat.as_fd(), VOLATILE, true)?;
    sys::unlinkat(work, INCOMPAT, true)
}

/// Removes everything inside a directory (not following symlinks).
pub fn empty_dir(dir: BorrowedFd<'_>) -> crate::error::FsResult<()> {
    empty_dir_keeping(dir, None)
}

/// Removes everything inside a directory but the entry `keep`.
fn empty_dir_keeping(dir: BorrowedFd<'_>, keep: Option<&[u8]>) -> crate::error::FsResult<()> {
    let rd = sys::openat(dir, sys::DOT, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for e in sys::read_dir_entries(rd.as_fd())? {
        if e.name == b"." || e.name == b".." || Some(&*e.name) == keep {
            continue;
        }
        let name = super::cname(&e.name)?;
        let st = sys::fstatat(dir, &name)?;
        if st.is_dir() {
            let sub = sys::open_dir_at(dir, &name)?;
            empty_dir(sub.as_fd())?;
            sys::unlinkat(dir, &name, true)?;
        } else {
            sys::unlinkat(dir, &name, false)?;
        }
    }
    Ok(())
}

/// Where a mount that writes `.wh.` files notes it, so that later mounts keep that
/// format even where 0/0 devices could be made: one upper never mixes formats by
/// accident. (The kernel's format needs no note: it is what the probe picks anyway, and
/// a clean unmount leaves `work/` empty then, as the kernel's does.) It lives in `work/`
/// (kept when that is emptied at mount) so that a failed first start, which removes
/// `work/`, leaves nothing behind.
const FORMAT_RECORD: &std::ffi::CStr = crate::whiteout::FORMAT_NOTE;

fn recorded_format(work: BorrowedFd<'_>) -> Option<Format> {
    let fd = sys::openat(work, FORMAT_RECORD, libc::O_RDONLY, 0).ok()?;
    let mut v = Vec::new();
    sys::read_all(fd.as_fd(), &mut v).ok()?;
    Format::parse(v.trim_ascii())
}

fn record_format(work: BorrowedFd<'_>, f: Format) -> Result<(), StartupError> {
    if f == Format::Chardev {
        let _ = sys::unlinkat(work, FORMAT_RECORD, false); // usually absent
        return Ok(());
    }
    let tmp = c"#layover-whiteout-format.new";
    let write = || -> crate::error::FsResult<()> {
        let flags = libc::O_CREAT | libc::O_TRUNC | libc::O_WRONLY;
        let fd = sys::openat(work, tmp, flags, 0o600)?;
        sys::write_all(fd.as_fd(), format!("{}\n", f.name()).as_bytes());
        sys::renameat2(work, tmp, work, FORMAT_RECORD, 0)
    };
    write().map_err(|e| StartupError::new(format!("workdir: cannot note the whiteout format: {e}")))
}

/// Without a note, the upper's root tells what it was written with: `.wh.` names (an
/// OCI layer, an older rootless mount) or 0/0 devices. (Read without touching its atime,
/// which the kernel's mount leaves alone.)
fn format_in_upper_root(upper: BorrowedFd<'_>) -> Option<Format> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOATIME;
    let rd = sys::openat(upper, sys::DOT, flags, 0).ok()?;
    let entries = sys::read_dir_entries(rd.as_fd()).ok()?;
    if entries
        .iter()
        .any(|e| crate::whiteout::aufs_hidden_name(&e.name).is_some())
    {
        return Some(Format::File);
    }
    entries
        .iter()
        .filter(|e| e.d_type == libc::DT_CHR || e.d_type == libc::DT_UNKNOWN)
        .filter_map(|e| super::cname(&e.name).ok())
        .any(|n| sys::fstatat(upper, &n).is_ok_and(|st| crate::whiteout::is_whiteout_dev(&st)))
        .then_some(Format::Chardev)
}

/// What the upper's filesystem lets us do, tried in the work directory, and the whiteout
/// format: `forced` by the option, else the one this upper was written with, else 0/0
/// devices where they can be made (Linux >= 5.8 lets an ordinary user make them), else
/// `.wh.` files.
pub fn probe(
    work: BorrowedFd<'_>,
    upper: BorrowedFd<'_>,
    forced: Option<Format>,
) -> Result<Caps, StartupError> {
    let name = c"#layover-probe";
    let can_mknod = sys::mknodat(work, name, libc::S_IFCHR, 0).is_ok();
    let _ = sys::unlinkat(work, name, false); // only cleans up the probe
    let recorded = recorded_format(work);
    let found = recorded.or_else(|| format_in_upper_root(upper));
    let format = match Format::choose(forced, found, can_mknod) {
        Ok((f, mixing)) => {
            if let Some(was) = mixing {
                log::warn!(
                    "this upper holds {} whiteouts; whiteout={} writes the other format too",
                    was.name(),
                    f.name()
                );
            }
            f
        }
        Err(why) => return Err(StartupError::new(why)),
    };
    record_format(work, format)?;
    let a = c"#layover-probe-a";
    let rename_whiteout = format == Format::Chardev
        && sys::mknodat(work, a, libc::S_IFREG | 0o600, 0).is_ok()
        && sys::renameat2(work, a, work, name, sys::RENAME_WHITEOUT).is_ok();
    let _ = sys::unlinkat(work, a, false); // probe cleanup: the whiteout left at `a`
    let _ = sys::unlinkat(work, name, false); // probe cleanup: the renamed file
    Ok(Caps {
        whiteout_dev: format == Format::Chardev,
        rename_whiteout,
    })
}
