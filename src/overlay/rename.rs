//! rename, as the kernel does it without redirect_dir: files are copied up first and leave a
//! whiteout where a lower still holds the old name; a directory that is merged or comes from
//! a lower gets EXDEV (so `mv` copies and deletes); an upper-only directory moves, and is
//! marked opaque when it lands in a merged directory.

use super::{Overlay, cname};
use crate::error::{Errno, FsResult};
use crate::inode::Inode;
use crate::sys;
use crate::whiteout::{self, Opacity};
use std::os::fd::AsFd;
use std::sync::Arc;

impl Overlay {
    fn is_merged_dir(dir: &Inode) -> bool {
        dir.with_state(|s| s.layers.len()) > 1
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
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
        let result = self.rename_entries(
            &parent,
            name,
            &src.inode,
            &newparent,
            newname,
            dst.as_ref().map(|d| (&d.inode, d.attr)),
            exchange,
        );
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

    #[allow(clippy::too_many_arguments)]
    fn rename_entries(
        &self,
        parent: &Arc<Inode>,
        name: &[u8],
        src: &Arc<Inode>,
        newparent: &Arc<Inode>,
        newname: &[u8],
        dst: Option<(&Arc<Inode>, crate::sys::Stat)>,
        exchange: bool,
    ) -> FsResult<()> {
        let dst_attr = dst.map(|(_, a)| a);
        let dst = dst.map(|(d, _)| d);
        if let Some(d) = dst
            && Arc::ptr_eq(d, src)
        {
            return Ok(()); // two names of one object: nothing to do
        }
        // In the kernel's order: type mismatches (the VFS's), then EXDEV for directories
        // that cannot move, then emptiness of a directory being replaced.
        if let Some(d) = dst
            && !exchange
        {
            match (src.is_dir(), d.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                _ => {}
            }
        }
        if src.is_dir() && !self.pure_upper(src) {
            return Err(Errno::EXDEV);
        }
        if exchange && dst.is_some_and(|d| d.is_dir() && !self.pure_upper(d)) {
            return Err(Errno::EXDEV);
        }
        // A directory being replaced must be empty in the merged view; one that lives only in
        // the upper is left for the real rename to judge (after the opaque marking, as the
        // kernel does).
        let replaced_merged_dir =
            dst.is_some_and(|d| !exchange && d.is_dir() && !self.pure_upper(d));
        if replaced_merged_dir
            && let Some(d) = dst
            && !self.merged_empty(d)?
        {
            return Err(Errno::ENOTEMPTY);
        }
        // Moving an object into a directory below itself is the kernel's (VFS) business;
        // it never reaches us.
        self.copy_up(src)?;
        self.copy_up(newparent)?;
        if exchange && let Some(d) = dst {
            self.copy_up(d)?;
        }
        let upper = self.layers.upper_idx()?;
        let odir = self.dir_fd(parent, upper)?;
        let ndir = self.dir_fd(newparent, upper)?;
        let ocn = cname(name)?;
        let ncn = cname(newname)?;

        // Directories that land in a merged directory are made opaque, so that a lower
        // directory of the same name can never show through them.
        if src.is_dir()
            && Self::is_merged_dir(newparent)
            && self.opacity(odir.as_fd(), &ocn) == Opacity::None
        {
            self.set_opaque(odir.as_fd(), &ocn)?;
        }
        if exchange {
            if let Some(d) = dst
                && d.is_dir()
                && Self::is_merged_dir(parent)
                && self.opacity(ndir.as_fd(), &ncn) == Opacity::None
            {
                self.set_opaque(ndir.as_fd(), &ncn)?;
            }
            sys::renameat2(odir.as_fd(), &ocn, ndir.as_fd(), &ncn, sys::RENAME_EXCHANGE)?;
            if let Some(d) = dst {
                self.name_moved(d, (newparent, newname), (parent, name));
            }
            self.name_moved(src, (parent, name), (newparent, newname));
            return Ok(());
        }

        if let Some(d) = dst {
            self.refresh_open_handles(d);
        }
        // What the upper holds at the new name: a whiteout or an object to replace.
        let target = match sys::fstatat(ndir.as_fd(), &ncn) {
            Ok(st) => Some(st),
            Err(e) if e == Errno::ENOENT => None,
            Err(e) => return Err(e),
        };
        if let Some(t) = &target
            && t.is_dir()
            && replaced_merged_dir
        {
            // Merged-empty: only whiteouts are left in it; they go first.
            let _ = self.open_doomed_dir(ndir.as_fd(), &ncn); // it goes: no mode to put back
            let sub = sys::openat(ndir.as_fd(), &ncn, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            super::work::empty_dir(sub.as_fd())?;
        }
        let whiteout = self.lower_positive(parent, name)?;
        if src.is_dir() && target.as_ref().is_some_and(whiteout::is_whiteout_dev) {
            // A directory cannot replace the whiteout (a non-directory): exchange them, as the
            // kernel does, so the name is never uncovered; the whiteout, now at the old name,
            // stays there if a lower still holds that name and goes otherwise.
            sys::renameat2(odir.as_fd(), &ocn, ndir.as_fd(), &ncn, sys::RENAME_EXCHANGE)?;
            if !whiteout {
                sys::unlinkat(odir.as_fd(), &ocn, false)?;
            }
        } else {
            let mut real_flags = if target.is_none() {
                sys::RENAME_NOREPLACE
            } else {
                0
            };
            if whiteout && self.caps.rename_whiteout {
                real_flags |= sys::RENAME_WHITEOUT;
            }
            sys::renameat2(odir.as_fd(), &ocn, ndir.as_fd(), &ncn, real_flags)?;
            if whiteout && !self.caps.rename_whiteout {
                self.make_whiteout(odir.as_fd(), &ocn, name)?;
            }
        }
        if let Some(wh) = whiteout::aufs_whiteout_for(newname) {
            let _ = sys::unlinkat(ndir.as_fd(), &cname(&wh)?, false); // usually absent
        }
        if let Some(t) = target
            && (t.nlink <= 1 || t.is_dir())
        {
            self.inodes.numbers.unalias((t.dev, t.ino));
        }
        if let Some(d) = dst
            && d.is_dir()
        {
            self.invalidate_dir(d.ino);
        }
        if let Some(d) = dst {
            self.name_removed(d, newparent.ino, newname, dst_attr);
        }
        self.name_moved(src, (parent, name), (newparent, newname));
        Ok(())
    }
}
