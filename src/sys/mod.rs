//! The only place with `unsafe` code: one safe function per system call.
//!
//! Everything here takes borrowed fds and `&CStr` names and returns owned fds, plain structs
//! or `FsResult`. It knows nothing of layers, inodes or overlay rules. Name-relative calls
//! never follow a symlink (`AT_SYMLINK_NOFOLLOW`, `O_NOFOLLOW`) and take one path component
//! at a time, so a caller that starts from a layer's root fd cannot leave the layer.

mod dirent;
mod fdpass;
pub mod fusedev;
mod proc;
pub mod uring;
mod xattr;

pub use dirent::{RawDirEntry, read_dir_entries};
pub use fdpass::*;
pub use proc::*;
pub use xattr::*;

use crate::error::{Errno, FsResult};
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn cvt(ret: libc::c_int) -> FsResult<libc::c_int> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

fn cvt_long(ret: libc::c_long) -> FsResult<libc::c_long> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

fn cvt_isize(ret: isize) -> FsResult<usize> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

/// Retries a call while it fails with EINTR.
fn retry<T>(mut f: impl FnMut() -> FsResult<T>) -> FsResult<T> {
    loop {
        match f() {
            Err(e) if e == Errno::EINTR => continue,
            other => return other,
        }
    }
}

fn own(fd: libc::c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open-like syscall and nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The empty path used with `AT_EMPTY_PATH` to act on a dirfd itself.
pub const EMPTY: &CStr = c"";
/// The current directory, relative to a dirfd.
pub const DOT: &CStr = c".";

/// What `fstatat` tells about one object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// The birth time (seconds, nanoseconds), where the filesystem keeps one (ext4 with
    /// 256-byte inodes, xfs, btrfs, tmpfs); None elsewhere.
    pub btime: Option<(i64, i64)>,
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: i64,
    pub blksize: i64,
    pub blocks: i64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stat {
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }
    pub fn is_chr(&self) -> bool {
        self.file_type() == libc::S_IFCHR
    }
}

impl From<&libc::statx> for Stat {
    /// Device numbers are encoded as `stat(2)` gives them (`makedev`), so that a `Stat` made
    /// here compares with `st_dev`/`st_rdev` values from anywhere else.
    fn from(s: &libc::statx) -> Self {
        let time = |t: libc::statx_timestamp| (t.tv_sec, i64::from(t.tv_nsec));
        Stat {
            dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
            ino: s.stx_ino,
            mode: u32::from(s.stx_mode),
            nlink: u64::from(s.stx_nlink),
            uid: s.stx_uid,
            gid: s.stx_gid,
            rdev: libc::makedev(s.stx_rdev_major, s.stx_rdev_minor),
            size: s.stx_size as i64,
            blksize: i64::from(s.stx_blksize),
            blocks: s.stx_blocks as i64,
            atime: time(s.stx_atime),
            mtime: time(s.stx_mtime),
            ctime: time(s.stx_ctime),
            btime: (s.stx_mask & libc::STATX_BTIME != 0).then(|| time(s.stx_btime)),
        }
    }
}

/// The `DT_*` directory-entry type for a file mode.
pub fn dtype_of_mode(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        _ => libc::DT_UNKNOWN,
    }
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats the dirfd itself.
/// Made with statx, which gives the birth time in the same call (the generation part of an
/// object's identity, `inode::RealId`); as cheap as `newfstatat` (docs/reliability.md).
pub fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> FsResult<Stat> {
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let mask = libc::STATX_BASIC_STATS | libc::STATX_BTIME;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: valid fd and NUL-terminated name; `stx` is a properly sized out-buffer.
    cvt(unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags,
            mask,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded and filled the struct (zeroed first, so any field it left alone
    // is a valid zero).
    let stx = unsafe { stx.assume_init() };
    Ok(Stat::from(&stx))
}

/// `fstat` of an fd.
pub fn fstat(fd: BorrowedFd<'_>) -> FsResult<Stat> {
    fstatat(fd, EMPTY)
}

/// `openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)` for one path component.
/// `O_NOATIME` is dropped when the caller may not use it (not the file's owner).
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> FsResult<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let open = |flags| {
        retry(|| {
            // SAFETY: valid fd and NUL-terminated name.
            let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) };
            cvt(fd).map(own)
        })
    };
    match open(flags) {
        Err(e) if e == Errno::EPERM && flags & libc::O_NOATIME != 0 => {
            open(flags & !libc::O_NOATIME)
        }
        r => r,
    }
}

/// An `O_PATH` fd on directory `name` in `dir` (what `*at` calls below it start from).
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> FsResult<OwnedFd> {
    openat(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// An `O_PATH` fd on the directory at an absolute path (startup only, as `open_path`).
pub fn open_dir(path: &CStr) -> FsResult<OwnedFd> {
    open_path(path, libc::O_PATH | libc::O_DIRECTORY)
}

/// Opens an absolute or cwd-relative path as the daemon (startup only, never on the request
/// path: that always goes through a layer's root fd).
pub fn open_path(path: &CStr, flags: i32) -> FsResult<OwnedFd> {
    retry(|| {
        // SAFETY: NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
        cvt(fd).map(own)
    })
}

pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> FsResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid fd, NUL-terminated name, buffer of the given length.
    let n = cvt_isize(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> FsResult<()> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> FsResult<()> {
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> FsResult<()> {
    // SAFETY: NUL-terminated strings and a valid fd.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `linkat` without following a symlink at the source.
pub fn linkat(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
) -> FsResult<()> {
    // SAFETY: valid fds and NUL-terminated names.
    cvt(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// Gives the file open at `fd` (an `O_TMPFILE` one, say) the name `newname` in `newdir`:
/// `linkat(fd, "", newdir, newname, AT_EMPTY_PATH)`. The kernel allows it to a caller with
/// CAP_DAC_READ_SEARCH or, since Linux 6.10, one whose credentials opened the file; others
/// get ENOENT (`link_open_file_by_proc` then).
pub fn link_open_file(fd: BorrowedFd<'_>, newdir: BorrowedFd<'_>, newname: &CStr) -> FsResult<()> {
    // SAFETY: valid fds and NUL-terminated names.
    cvt(unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// `link_open_file` through the fd's magic link, `/proc/self/fd/N`, followed
/// (`AT_SYMLINK_FOLLOW`): it resolves to the open file itself, never to a path. Needs no
/// capability, only /proc.
pub fn link_open_file_by_proc(
    fd: BorrowedFd<'_>,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
) -> FsResult<()> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| Errno::EINVAL)?;
    // SAFETY: NUL-terminated path and name, a valid fd.
    cvt(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            path.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, rmdir: bool) -> FsResult<()> {
    let flags = if rmdir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;
pub const RENAME_WHITEOUT: u32 = libc::RENAME_WHITEOUT;

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> FsResult<()> {
    // SAFETY: valid fds and NUL-terminated names.
    cvt(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `fchownat(.., AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves an id unchanged. Empty name: the fd.
pub fn fchownat(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> FsResult<()> {
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: valid fd and NUL-terminated name.
    cvt(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, flags) }).map(drop)
}

/// chmod without following a symlink (`fchmodat2(AT_SYMLINK_NOFOLLOW)`).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> FsResult<()> {
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: valid fd and NUL-terminated name.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            mode,
            flags,
        )
    };
    match cvt_long(ret) {
        Err(e) if e == Errno::ENOSYS => {
            // Before Linux 6.6: the name is never a symlink here (callers check the type).
            // SAFETY: valid fd and NUL-terminated name.
            cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
        }
        other => other.map(drop),
    }
}

/// `fchmod` on an fd opened for real (not O_PATH).
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> FsResult<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// A timestamp for `utimensat`: a value, "now", or "leave alone".
#[derive(Clone, Copy, Debug)]
pub enum TimeSpec {
    Set(i64, i64),
    Now,
    Omit,
}

impl TimeSpec {
    fn raw(self) -> libc::timespec {
        match self {
            TimeSpec::Set(sec, nsec) => libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            },
            TimeSpec::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            TimeSpec::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        }
    }
}

/// `utimensat(.., AT_SYMLINK_NOFOLLOW)`; an empty name acts on the fd itself (`futimens`).
pub fn utimensat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: TimeSpec,
    mtime: TimeSpec,
) -> FsResult<()> {
    let times = [atime.raw(), mtime.raw()];
    if name.is_empty() {
        // SAFETY: valid fd and an array of two timespecs.
        return cvt(unsafe { libc::futimens(dir.as_raw_fd(), times.as_ptr()) }).map(drop);
    }
    // SAFETY: valid fd, NUL-terminated name, an array of two timespecs.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> FsResult<()> {
    // SAFETY: valid fd.
    retry(|| cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }).map(drop))
}

/// `syncfs(2)`: writes out the whole filesystem that `fd` is on.
pub fn syncfs(fd: BorrowedFd<'_>) -> FsResult<()> {
    // SAFETY: valid fd.
    cvt(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> FsResult<()> {
    retry(|| {
        // SAFETY: valid fd.
        let ret = unsafe {
            if datasync {
                libc::fdatasync(fd.as_raw_fd())
            } else {
                libc::fsync(fd.as_raw_fd())
            }
        };
        cvt(ret).map(drop)
    })
}

/// Starts writeback of the dirty pages in [offset, offset + len) without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): a later fsync then has less left to wait for.
pub fn start_writeback(fd: BorrowedFd<'_>, offset: u64, len: u64) -> FsResult<()> {
    retry(|| {
        // SAFETY: valid fd; the range is only a hint of which pages to write.
        cvt(unsafe {
            libc::sync_file_range(
                fd.as_raw_fd(),
                offset as i64,
                len as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        })
        .map(drop)
    })
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> FsResult<usize> {
    retry(|| {
        // SAFETY: valid fd and a writable buffer of the given length.
        cvt_isize(unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as i64,
            )
        })
    })
}

/// Fills `buf` from `offset`, looping until it is full or the file ends; returns how many
/// bytes were read.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> FsResult<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        let n = pread(fd, &mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> FsResult<usize> {
    retry(|| {
        // SAFETY: valid fd and a readable buffer of the given length.
        cvt_isize(unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                offset as i64,
            )
        })
    })
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> FsResult<i64> {
    // SAFETY: valid fd.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> FsResult<()> {
    retry(|| {
        // SAFETY: valid fd.
        cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset as i64, len as i64) }).map(drop)
    })
}

/// `ioctl(dst, FICLONE, src)`: share all of src's extents with dst.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> FsResult<()> {
    // SAFETY: valid fds; FICLONE takes the source fd as its integer argument.
    cvt(unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) }).map(drop)
}

/// `copy_file_range` between explicit offsets; returns bytes copied (0 at EOF).
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: usize,
) -> FsResult<usize> {
    let mut so = src_off as i64;
    let mut d_o = dst_off as i64;
    retry(|| {
        // SAFETY: valid fds and pointers to local offsets.
        cvt_isize(unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut so, dst.as_raw_fd(), &mut d_o, len, 0)
        })
    })
}

/// What `fstatfs` reports.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Whether the filesystem mounted at `path` answers: `statfs(2)`, which no cache answers in
/// its place (a FUSE mount asks its daemon every time: ENOTCONN once the daemon is gone).
pub fn statfs_answers(path: &CStr) -> FsResult<()> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: NUL-terminated path and a properly sized out-buffer.
    cvt(unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) }).map(drop)
}

pub fn fstatfs(fd: BorrowedFd<'_>) -> FsResult<StatFs> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid fd and a properly sized out-buffer.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    Ok(StatFs {
        blocks: st.f_blocks,
        bfree: st.f_bfree,
        bavail: st.f_bavail,
        files: st.f_files,
        ffree: st.f_ffree,
        bsize: st.f_bsize as u32,
        namelen: st.f_namelen as u32,
        frsize: st.f_frsize as u32,
    })
}

/// The process umask: set it and return the previous one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) }
}

/// `faccessat(AT_FDCWD, path, mode, AT_EACCESS)`: may the effective ids do `mode`
/// (`libc::W_OK | libc::X_OK` ...) on `path`?
pub fn access(path: &CStr, mode: i32) -> FsResult<()> {
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), mode, libc::AT_EACCESS) }).map(drop)
}

pub fn geteuid() -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::getegid() }
}

/// Makes a device number from major and minor.
pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// Whether `uid`'s supplementary groups, as listed in /proc/PID/status, contain `gid`.
pub fn pid_in_group(pid: u32, gid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse::<u32>() == Ok(gid)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    /// `fstatat` is made with statx: every field must read as stat(2) gives it (device
    /// numbers encoded alike, so that a 0/0 whiteout, st_dev and d_ino keep their meaning),
    /// and the birth time must be the filesystem's.
    #[test]
    fn statx_reads_as_stat() {
        let root = open_path(c"/", libc::O_PATH | libc::O_DIRECTORY).unwrap();
        for (name, path) in [
            (c"", "/"),
            (c"dev", "/dev"),
            (c"proc", "/proc"),
            (c"tmp", "/tmp"),
        ] {
            let st = fstatat(root.as_fd(), name).unwrap();
            let md = std::fs::symlink_metadata(path).unwrap();
            let want = (
                md.dev(),
                md.ino(),
                md.mode(),
                md.nlink(),
                md.uid(),
                md.gid(),
            );
            assert_eq!(
                (st.dev, st.ino, st.mode, st.nlink, st.uid, st.gid),
                want,
                "{path}"
            );
            assert_eq!(
                (st.rdev, st.size, st.blocks),
                (md.rdev(), md.size() as i64, md.blocks() as i64)
            );
            assert_eq!(st.mtime, (md.mtime(), md.mtime_nsec()), "{path}");
        }
        let dev = open_path(c"/dev", libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let null = fstatat(dev.as_fd(), c"null").unwrap();
        let md = std::fs::symlink_metadata("/dev/null").unwrap();
        assert!(null.is_chr());
        assert_eq!((null.rdev, null.dev), (md.rdev(), md.dev()));
        // A symlink is not followed.
        let proc = open_path(c"/proc", libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let me = fstatat(proc.as_fd(), c"self").unwrap();
        assert_eq!(me.file_type(), libc::S_IFLNK);
        // The birth time is the one std reads (also with statx), where there is one.
        for (name, path) in [(c"tmp", "/tmp"), (c"", "/")] {
            let st = fstatat(root.as_fd(), name).unwrap();
            let born = std::fs::symlink_metadata(path).unwrap().created().ok();
            let born = born.map(|t| {
                let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
                (d.as_secs() as i64, i64::from(d.subsec_nanos()))
            });
            assert_eq!(st.btime, born, "{path}");
        }
    }

    #[test]
    fn dtype_follows_the_file_type() {
        let types = [
            (libc::S_IFDIR, libc::DT_DIR),
            (libc::S_IFREG, libc::DT_REG),
            (libc::S_IFLNK, libc::DT_LNK),
            (libc::S_IFCHR, libc::DT_CHR),
            (libc::S_IFBLK, libc::DT_BLK),
            (libc::S_IFIFO, libc::DT_FIFO),
            (libc::S_IFSOCK, libc::DT_SOCK),
        ];
        for fmt in 0..16u32 {
            let kind = fmt << 12;
            let want = types
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(libc::DT_UNKNOWN, |(_, d)| *d);
            for perm in [0, 0o777, 0o7777] {
                assert_eq!(dtype_of_mode(kind | perm), want, "{kind:o} {perm:o}");
            }
        }
    }
}
