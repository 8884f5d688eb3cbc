//! setattr: chmod, chown, truncate, utimens — on the upper copy, copying up first.

use super::Overlay;
use crate::error::{Errno, FsResult};
use crate::sys::{self, Stat, TimeSpec};
use std::os::fd::AsFd;

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
    pub fh: Option<u64>,
}

impl Overlay {
    pub fn setattr(&self, ino: u64, a: SetAttr) -> FsResult<Stat> {
        self.check_writable()?;
        let inode = self.inode(ino)?;
        self.copy_up(&inode)?;
        let (dir, name, _) = self.locate(&inode)?;
        let dir = dir.as_fd();
        if let Some(size) = a.size {
            if inode.is_dir() {
                return Err(Errno::EISDIR);
            }
            // Through the caller's open file when there is one (ftruncate), else by name.
            let fd = match a.fh.filter(|fh| self.handles.file(*fh).is_some()) {
                Some(fh) => self.handle_fd(fh)?.1,
                None => std::sync::Arc::new(sys::openat(dir, &name, libc::O_WRONLY, 0)?),
            };
            sys::ftruncate(fd.as_fd(), size)?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            sys::fchownat(
                dir,
                &name,
                a.uid.unwrap_or(u32::MAX),
                a.gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(mode) = a.mode {
            if inode.kind == libc::S_IFLNK {
                return Err(Errno::EOPNOTSUPP);
            }
            sys::fchmodat(dir, &name, mode & 0o7777)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            sys::utimensat(
                dir,
                &name,
                a.atime.unwrap_or(TimeSpec::Omit),
                a.mtime.unwrap_or(TimeSpec::Omit),
            )?;
        }
        let st = sys::fstatat(dir, &name)?;
        Ok(self.present_attr(&inode, st))
    }
}
