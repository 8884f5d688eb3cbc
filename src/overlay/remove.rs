//! unlink and rmdir. A name that a lower layer still holds is replaced by a whiteout
//! (atomically with RENAME_WHITEOUT where the upper allows it); a directory is moved into
//! the work directory first and emptied there, so its whiteouts go with it.

use super::{Overlay, cname};
use crate::error::{Errno, FsResult};
use crate::inode::{Ino, Inode};
use crate::sys;
use crate::whiteout;
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

impl Overlay {
    /// Does a lower layer of directory `parent` hold `name` (as the merged view would see it
    /// if the upper held nothing there)?
    pub(super) fn lower_positive(&self, parent: &Arc<Inode>, name: &[u8]) -> FsResult<bool> {
        let cn = cname(name)?;
        let players: Vec<crate::inode::Presence> = parent.with_state(|s| s.layers.to_vec());
        for p in players.iter() {
            if self.layers.is_upper(p.layer) {
                continue;
            }
            let dirfd = self.dir_fd(parent, p.layer)?;
            match sys::fstatat(dirfd.as_fd(), &cn) {
                // As the kernel's ovl_lower_positive: an xattr whiteout counts as a whiteout
                // here whether or not its directory is marked as holding them (lookup honours
                // it only in a marked one).
                Ok(st) => return Ok(!self.is_whiteout(dirfd.as_fd(), &cn, &st, true)),
                Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => {
                    if Self::has_aufs_whiteout(dirfd.as_fd(), name) {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Makes a whiteout for `name` in the upper directory `udir` (nothing is there now).
    pub(super) fn make_whiteout(
        &self,
        udir: BorrowedFd<'_>,
        cn: &CStr,
        name: &[u8],
    ) -> FsResult<()> {
        if self.caps.whiteout_dev {
            return self.link_whiteout(udir, cn);
        }
        let wh = whiteout::aufs_whiteout_for(name).ok_or(Errno::ENAMETOOLONG)?;
        let fd = sys::openat(
            udir,
            &cname(&wh)?,
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            0,
        )?;
        drop(fd);
        Ok(())
    }

    /// A 0/0 whiteout as a hard link to one shared whiteout in the work directory, as the
    /// kernel does: linking costs less than allocating an inode per whiteout. Falls back to
    /// mknod (and a fresh shared whiteout) when the link fails (EMLINK and the like).
    fn link_whiteout(&self, udir: BorrowedFd<'_>, cn: &CStr) -> FsResult<()> {
        let work = self.work_fd()?;
        if sys::linkat(work, super::SHARED_WHITEOUT, udir, cn).is_ok() {
            return Ok(());
        }
        sys::mknodat(udir, cn, libc::S_IFCHR, 0)?;
        // Replace the shared whiteout for next time (it may be missing or full of links).
        let _ = sys::unlinkat(work, super::SHARED_WHITEOUT, false); // absent is fine
        let _ = sys::linkat(udir, cn, work, super::SHARED_WHITEOUT); // next time mknod again
        Ok(())
    }

    /// Moves upper `cn` out of the way into the work directory, leaving a whiteout when
    /// `whiteout`; then deletes what was moved (a directory with its contents).
    pub(super) fn remove_upper(
        &self,
        udir: BorrowedFd<'_>,
        cn: &CStr,
        name: &[u8],
        is_dir: bool,
        whiteout: bool,
    ) -> FsResult<()> {
        if !whiteout && !is_dir {
            return sys::unlinkat(udir, cn, false);
        }
        let lent = if is_dir {
            self.open_doomed_dir(udir, cn)
        } else {
            None
        };
        let r = self.move_away_upper(udir, cn, name, is_dir, whiteout);
        if r.is_err()
            && let Some(mode) = lent
        {
            let _ = sys::fchmodat(udir, cn, mode); // put back, if it is still there
        }
        r
    }

    /// An ordinary user's daemon, without CAP_DAC_OVERRIDE, can neither move a directory of
    /// its own that lacks owner write permission to another parent nor empty it; one about
    /// to go (rmdir, or replaced by a rename) is given u+rwx first. Returns the mode it had.
    pub(super) fn open_doomed_dir(&self, dir: BorrowedFd<'_>, cn: &CStr) -> Option<u32> {
        if self.privileges.overrides_modes {
            return None;
        }
        let st = sys::fstatat(dir, cn).ok()?;
        if !st.is_dir() || st.uid != self.privileges.ids.uid || st.mode & 0o700 == 0o700 {
            return None;
        }
        let mode = st.mode & 0o7777;
        sys::fchmodat(dir, cn, mode | 0o700).ok().map(|()| mode)
    }

    fn move_away_upper(
        &self,
        udir: BorrowedFd<'_>,
        cn: &CStr,
        name: &[u8],
        is_dir: bool,
        whiteout: bool,
    ) -> FsResult<()> {
        let work = self.work_fd()?;
        let tmp = self.temp_name();
        if whiteout && self.caps.rename_whiteout {
            sys::renameat2(udir, cn, work, &tmp, sys::RENAME_WHITEOUT)?;
        } else {
            sys::renameat2(udir, cn, work, &tmp, sys::RENAME_NOREPLACE)?;
            if whiteout && let Err(e) = self.make_whiteout(udir, cn, name) {
                // Put it back rather than let the lower name reappear.
                let _ = sys::renameat2(work, &tmp, udir, cn, sys::RENAME_NOREPLACE);
                return Err(e);
            }
        }
        if is_dir {
            let sub = sys::open_dir_at(work, &tmp)?;
            super::work::empty_dir(sub.as_fd())?;
        }
        sys::unlinkat(work, &tmp, is_dir)
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &[u8], dir: bool) -> FsResult<()> {
        self.check_writable()?;
        let parent = self.inode(parent)?;
        let found = self.resolve(&parent, name)?.ok_or(Errno::ENOENT)?;
        match (dir, found.stat.is_dir()) {
            (false, true) => return Err(Errno::EISDIR),
            (true, false) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        let entry = self.enter(&parent, name, found);
        let result = self.remove_entry(&parent, name, &entry.inode, entry.attr);
        self.forget(entry.inode.ino, 1);
        result
    }

    fn remove_entry(
        &self,
        parent: &Arc<Inode>,
        name: &[u8],
        inode: &Arc<Inode>,
        attr: crate::sys::Stat,
    ) -> FsResult<()> {
        let is_dir = inode.is_dir();
        if is_dir && !self.merged_empty(inode)? {
            return Err(Errno::ENOTEMPTY);
        }
        self.copy_up(parent)?;
        self.refresh_open_handles(inode);
        let upper = self.layers.upper_idx()?;
        let udir = self.dir_fd(parent, upper)?;
        let cn = cname(name)?;
        let st = inode.state();
        let in_upper = st.top().is_some_and(|t| t.layer == upper);
        if in_upper {
            let whiteout = self.lower_positive(parent, name)?;
            let real = sys::fstatat(udir.as_fd(), &cn)?;
            self.remove_upper(udir.as_fd(), &cn, name, is_dir, whiteout)?;
            self.upper_name_gone(&real);
        } else {
            self.make_whiteout(udir.as_fd(), &cn, name)?;
        }
        if is_dir {
            self.invalidate_dir(inode.ino);
        }
        self.name_removed(inode, parent.ino, name, Some(attr));
        Ok(())
    }
}
