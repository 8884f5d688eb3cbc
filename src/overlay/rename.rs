//! rename, as the kernel does it without redirect_dir: files are copied up first and leave a
//! whiteout where a lower still holds the old name; a directory that is merged or comes from
//! a lower gets EXDEV (so `mv` copies and deletes); an upper-only directory moves, and is
//! marked opaque when it lands in a merged directory.

use super::lookup::DirMarks;
use super::{Entry, Overlay, cname};
use crate::error::{Errno, FsResult};
use crate::inode::{Ino, Inode};
use crate::sys::{self, Stat};
use crate::whiteout;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// One rename: both names, and the objects at them (`rename` holds a lookup reference on
/// each for the duration).
struct Move<'a> {
    parent: &'a Arc<Inode>,
    name: &'a [u8],
    newparent: &'a Arc<Inode>,
    newname: &'a [u8],
    src: &'a Arc<Inode>,
    /// What the new name holds, with its attributes.
    dst: Option<&'a Entry>,
    exchange: bool,
}

impl Move<'_> {
    fn dst_inode(&self) -> Option<&Arc<Inode>> {
        self.dst.map(|d| &d.inode)
    }
}

/// Both names in the upper layer: each one's directory fd and name.
struct UpperNames {
    odir: Arc<OwnedFd>,
    ocn: CString,
    ndir: Arc<OwnedFd>,
    ncn: CString,
}

impl Overlay {
    fn is_merged_dir(dir: &Inode) -> bool {
        dir.with_state(|s| s.layers.len()) > 1
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.check_writable()?;
        if flags & !(sys::RENAME_NOREPLACE | sys::RENAME_EXCHANGE) != 0
            || flags == sys::RENAME_NOREPLACE | sys::RENAME_EXCHANGE
        {
            return Err(Errno::EINVAL);
        }
        super::create::reject_reserved(newname)?;
        let exchange = flags & sys::RENAME_EXCHANGE != 0;
        let parent = self.inode(parent)?;
        let newparent = self.inode(newparent)?;
        let src = self.resolve(&parent, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.resolve(&newparent, newname)?;
        if dst.is_some() && flags & sys::RENAME_NOREPLACE != 0 {
            return Err(Errno::EEXIST);
        }
        if dst.is_none() && exchange {
            return Err(Errno::ENOENT);
        }
        let src = self.enter(&parent, name, src);
        let dst = dst.map(|d| self.enter(&newparent, newname, d));
        let result = self.rename_entries(&Move {
            parent: &parent,
            name,
            newparent: &newparent,
            newname,
            src: &src.inode,
            dst: dst.as_ref(),
            exchange,
        });
        self.forget(src.inode.ino, 1);
        if let Some(d) = dst {
            self.forget(d.inode.ino, 1);
        }
        if result.is_err() {
            // A failed rename may still have changed the directories in the upper (copy-ups,
            // an opaque mark, and ext4 updates a directory's times in a RENAME_WHITEOUT that
            // then fails with ENOTEMPTY), and FUSE keeps its cached attributes on an error.
            self.invalidate_attr(parent.ino);
            self.invalidate_attr(newparent.ino);
        }
        result
    }

    fn rename_entries(&self, m: &Move<'_>) -> FsResult<()> {
        if m.dst_inode().is_some_and(|d| Arc::ptr_eq(d, m.src)) {
            return Ok(()); // two names of one object: nothing to do
        }
        let replaced_merged_dir = self.rename_allowed(m)?;
        // Moving an object into a directory below itself is the kernel's (VFS) business;
        // it never reaches us.
        self.copy_up(m.src)?;
        self.copy_up(m.newparent)?;
        if m.exchange
            && let Some(d) = m.dst_inode()
        {
            self.copy_up(d)?;
        }
        let upper = self.layers.upper_idx()?;
        let at = UpperNames {
            odir: self.dir_fd(m.parent, upper)?,
            ocn: cname(m.name)?,
            ndir: self.dir_fd(m.newparent, upper)?,
            ncn: cname(m.newname)?,
        };
        self.opaque_if_landing(m.src, m.newparent, at.odir.as_fd(), &at.ocn)?;
        if m.exchange {
            self.rename_exchange(m, &at)
        } else {
            self.rename_replace(m, &at, replaced_merged_dir)
        }
    }

    /// The checks before anything is changed, in the kernel's order: type mismatches (the
    /// VFS's), then EXDEV for directories that cannot move, then emptiness of a directory
    /// being replaced. Returns whether a merged directory is being replaced.
    fn rename_allowed(&self, m: &Move<'_>) -> FsResult<bool> {
        let dst = m.dst_inode();
        if let Some(d) = dst
            && !m.exchange
        {
            match (m.src.is_dir(), d.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                _ => {}
            }
        }
        if m.src.is_dir() && !self.pure_upper(m.src) {
            return Err(Errno::EXDEV);
        }
        if m.exchange && dst.is_some_and(|d| d.is_dir() && !self.pure_upper(d)) {
            return Err(Errno::EXDEV);
        }
        // A directory being replaced must be empty in the merged view; one that lives only in
        // the upper is left for the real rename to judge (after the opaque marking, as the
        // kernel does).
        let replaced_merged_dir =
            dst.is_some_and(|d| !m.exchange && d.is_dir() && !self.pure_upper(d));
        if replaced_merged_dir
            && let Some(d) = dst
            && !self.merged_empty(d)?
        {
            return Err(Errno::ENOTEMPTY);
        }
        Ok(replaced_merged_dir)
    }

    /// A directory that lands in a merged directory is made opaque (`name` in `at` is it, in
    /// the upper), so that a lower directory of the same name can never show through it.
    fn opaque_if_landing(
        &self,
        dir: &Inode,
        into: &Inode,
        at: BorrowedFd<'_>,
        name: &CStr,
    ) -> FsResult<()> {
        if dir.is_dir()
            && Self::is_merged_dir(into)
            && self.dir_marks(at, name) == DirMarks::default()
        {
            self.set_opaque(at, name)?;
        }
        Ok(())
    }

    /// RENAME_EXCHANGE: both objects are in the upper now; they swap names.
    fn rename_exchange(&self, m: &Move<'_>, at: &UpperNames) -> FsResult<()> {
        if let Some(d) = m.dst_inode() {
            self.opaque_if_landing(d, m.parent, at.ndir.as_fd(), &at.ncn)?;
        }
        sys::renameat2(
            at.odir.as_fd(),
            &at.ocn,
            at.ndir.as_fd(),
            &at.ncn,
            sys::RENAME_EXCHANGE,
        )?;
        if let Some(d) = m.dst_inode() {
            self.name_moved(d, (m.newparent, m.newname), (m.parent, m.name));
        }
        self.name_moved(m.src, (m.parent, m.name), (m.newparent, m.newname));
        Ok(())
    }

    /// A rename that moves the source to the new name, replacing what is there (or a
    /// whiteout), and leaves a whiteout behind where a lower still holds the old name.
    fn rename_replace(
        &self,
        m: &Move<'_>,
        at: &UpperNames,
        replaced_merged_dir: bool,
    ) -> FsResult<()> {
        if let Some(d) = m.dst_inode() {
            self.refresh_open_handles(d);
        }
        // What the upper holds at the new name: a whiteout or an object to replace.
        let target = match sys::fstatat(at.ndir.as_fd(), &at.ncn) {
            Ok(st) => Some(st),
            Err(e) if e == Errno::ENOENT => None,
            Err(e) => return Err(e),
        };
        if let Some(t) = &target
            && t.is_dir()
            && replaced_merged_dir
        {
            // Merged-empty: only whiteouts are left in it; they go first.
            let _ = self.open_doomed_dir(at.ndir.as_fd(), &at.ncn); // it goes: no mode to put back
            let sub = sys::open_dir_at(at.ndir.as_fd(), &at.ncn)?;
            super::work::empty_dir(sub.as_fd())?;
        }
        let whiteout = self.lower_positive(m.parent, m.name)?;
        self.move_in_upper(m, at, target.as_ref(), whiteout)?;
        let _ = Self::remove_aufs_whiteout(at.ndir.as_fd(), m.newname); // usually absent
        if let Some(t) = target {
            self.upper_name_gone(&t);
        }
        if let Some(d) = m.dst {
            if d.inode.is_dir() {
                self.invalidate_dir(d.inode.ino);
            }
            self.name_removed(&d.inode, m.newparent.ino, m.newname, Some(d.attr));
        }
        self.name_moved(m.src, (m.parent, m.name), (m.newparent, m.newname));
        Ok(())
    }

    /// The real rename in the upper. `target`: what the upper holds at the new name;
    /// `whiteout`: the old name needs a whiteout (a lower holds it).
    fn move_in_upper(
        &self,
        m: &Move<'_>,
        at: &UpperNames,
        target: Option<&Stat>,
        whiteout: bool,
    ) -> FsResult<()> {
        let (odir, ndir) = (at.odir.as_fd(), at.ndir.as_fd());
        if m.src.is_dir() && target.is_some_and(whiteout::is_whiteout_dev) {
            // A directory cannot replace the whiteout (a non-directory): exchange them, as the
            // kernel does, so the name is never uncovered; the whiteout, now at the old name,
            // stays there if a lower still holds that name and goes otherwise.
            sys::renameat2(odir, &at.ocn, ndir, &at.ncn, sys::RENAME_EXCHANGE)?;
            if !whiteout {
                sys::unlinkat(odir, &at.ocn, false)?;
            }
            return Ok(());
        }
        let mut flags = if target.is_none() {
            sys::RENAME_NOREPLACE
        } else {
            0
        };
        if whiteout && self.caps.rename_whiteout {
            flags |= sys::RENAME_WHITEOUT;
        }
        sys::renameat2(odir, &at.ocn, ndir, &at.ncn, flags)?;
        if whiteout && !self.caps.rename_whiteout {
            self.make_whiteout(odir, &at.ocn, m.name)?;
        }
        Ok(())
    }
}
