//! setattr: chmod, chown, truncate, utimens — on the upper copy, copying up first. An
//! object that lost its name (unlinked while open) is changed through its open file.

use super::Overlay;
use crate::error::{Errno, FsResult};
use crate::handle::Fh;
use crate::inode::Ino;
use crate::sys::{self, Stat, TimeSpec};
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// The attribute changes of one setattr request.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
    /// The open file the change came through, if any (ftruncate).
    pub fh: Option<Fh>,
    /// A ctime came along (no call can set one; it is not applied). FUSE sends one only for
    /// times its writeback cache keeps itself.
    pub ctime: bool,
    /// The caller keeps the object's times itself and takes none from the answer (FUSE's
    /// writeback cache, for regular files): a truncate to the size the file has must not
    /// change them on disk, or the upper would hold an mtime the view never shows.
    pub times_kept: bool,
}

impl SetAttr {
    /// The mtime of a flush of the times a writeback cache keeps: an mtime and a ctime,
    /// nothing else.
    fn flushed_mtime(&self) -> Option<(i64, i64)> {
        match (
            self.mode, self.uid, self.gid, self.size, self.atime, self.mtime,
        ) {
            (None, None, None, None, None, Some(TimeSpec::Set(s, ns))) if self.ctime => {
                Some((s, ns))
            }
            _ => None,
        }
    }
}

/// What the changes are applied to: a name in a directory, or an open file.
enum Target {
    Name(Arc<OwnedFd>, CString),
    File(Arc<OwnedFd>),
}

impl Target {
    /// (fd, name) for the `*at` calls: the open file itself is (fd, "").
    fn at(&self) -> (BorrowedFd<'_>, &std::ffi::CStr) {
        match self {
            Target::Name(dir, name) => (dir.as_fd(), name),
            Target::File(fd) => (fd.as_fd(), sys::EMPTY),
        }
    }
}

impl Overlay {
    pub fn setattr(&self, ino: Ino, a: SetAttr) -> FsResult<Stat> {
        self.check_writable()?;
        // FUSE's writeback cache keeps a file's times itself, and after it changed one
        // locally (the ctime of an unlink or a link, the mtime of a write) it sends them as a
        // setattr of mtime and ctime. One that restates the mtime the object has changes
        // nothing, so it copies nothing up: the kernel's overlay leaves the other names of an
        // unlinked lower hard link in the lower layer, and an open lower file whose name is
        // gone cannot be copied up (ENOENT, which the kernel would keep and give to the next
        // fsync or close of that file). A utimensat(2) that restates the mtime alone looks
        // the same there, and is not copied up either; the view is the same.
        if let Some(mtime) = a.flushed_mtime()
            && let Ok(st) = self.getattr(ino, a.fh)
            && st.mtime == mtime
        {
            return Ok(st);
        }
        let inode = self.inode(ino)?;
        let target = if inode.is_detached() {
            self.copy_up_or_upper(&inode)?; // only checks: a nameless object is not copied
            Target::File(self.any_open_fd(&inode).ok_or(Errno::ENOENT)?)
        } else {
            if a.size == Some(0) {
                // The data would be thrown away at once (truncate to 0, open with O_TRUNC):
                // the kernel copies such a file up without it, and so do we.
                self.copy_up_truncated(&inode)?;
            } else {
                self.copy_up(&inode)?;
            }
            let (dir, name, _) = self.locate(&inode)?;
            Target::Name(dir, name)
        };
        if let Some(size) = a.size {
            if inode.is_dir() {
                return Err(Errno::EISDIR);
            }
            // Through the caller's open file when there is one (ftruncate), else by name.
            let fd = match (&target, a.fh.filter(|fh| self.handles.file(*fh).is_some())) {
                (_, Some(fh)) => self.handle_fd(fh)?.1,
                (Target::File(fd), None) => Arc::clone(fd),
                (Target::Name(dir, name), None) => {
                    Arc::new(sys::openat(dir.as_fd(), name, libc::O_WRONLY, 0)?)
                }
            };
            // A truncate to the size the file has changes nothing but, on some filesystems
            // (ext4), the times. Where the caller keeps the times itself, the one it keeps
            // would then differ from the upper's for good (until a remount shows the
            // upper's): skipped, so the view and the upper agree (POSIX's rule: the times
            // change only with the size).
            if !(a.times_kept && u64::try_from(sys::fstat(fd.as_fd())?.size) == Ok(size)) {
                sys::ftruncate(fd.as_fd(), size)?;
            }
        }
        let (dir, name) = target.at();
        let ids = (
            a.uid.map(|u| self.ids.uid_to_host(u)).transpose()?,
            a.gid.map(|g| self.ids.gid_to_host(g)).transpose()?,
        );
        if a.mode.is_some() && inode.kind == libc::S_IFLNK {
            return Err(Errno::EOPNOTSUPP);
        }
        if let Some(x) = self.owner_xattr(inode.kind) {
            if ids.0.is_some() || ids.1.is_some() || a.mode.is_some() {
                self.setattr_in_xattr(x, (dir, name), ids, a.mode)?;
            }
        } else {
            self.setattr_on_inode(&target, ids, a.mode)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            sys::utimensat(
                dir,
                name,
                a.atime.unwrap_or(TimeSpec::Omit),
                a.mtime.unwrap_or(TimeSpec::Omit),
            )?;
        }
        let st = sys::fstatat(dir, name)?;
        Ok(self.present_attr(&inode, st))
    }

    /// chown (ids on disk; None leaves one as it is) and chmod of the inode itself.
    fn setattr_on_inode(
        &self,
        target: &Target,
        (uid, gid): (Option<u32>, Option<u32>),
        mode: Option<u32>,
    ) -> FsResult<()> {
        let (dir, name) = target.at();
        if uid.is_some() || gid.is_some() {
            // -1 leaves that id as it is.
            sys::fchownat(dir, name, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))?;
        }
        if let Some(mode) = mode {
            match target {
                Target::File(fd) => sys::fchmod(fd.as_fd(), mode & 0o7777)?,
                Target::Name(..) => sys::fchmodat(dir, name, mode & 0o7777)?,
            }
        }
        Ok(())
    }
}
