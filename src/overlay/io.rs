//! Open files: open (copying up first when opened for writing), read, write, fsync,
//! lseek, fallocate, copy_file_range; and statfs.

use super::Overlay;
use crate::error::{Errno, FsResult};
use crate::handle::FileHandle;
use crate::sys;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::sys::StatFs;

/// Flags that must not reach the real open: creation is done, appends are positioned by the
/// kernel, O_DIRECT alignment is the kernel's business on our side of FUSE.
const STRIP: i32 = libc::O_CREAT
    | libc::O_EXCL
    | libc::O_NOCTTY
    | libc::O_TRUNC
    | libc::O_APPEND
    | libc::O_DIRECT
    | libc::O_NOFOLLOW;

/// What open tells the kernel.
pub struct OpenResult {
    pub fh: u64,
    pub ino: u64,
    /// The real file, for a passthrough backing.
    pub fd: Arc<OwnedFd>,
    /// Whether the kernel may read and write `fd` directly.
    pub passthrough: bool,
}

pub fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

impl Overlay {
    /// Opens the top real file of `inode` with `flags` (already copied up if writing).
    fn open_real(
        &self,
        inode: &Arc<crate::inode::Inode>,
        flags: i32,
    ) -> FsResult<(Arc<OwnedFd>, u64)> {
        let generation = inode.data_gen.load(Ordering::Acquire);
        let (dir, name, top) = self.locate(inode)?;
        // Reading a lower file leaves its atime alone, as the kernel's overlay does; the
        // upper's atimes are the merged view's own.
        let noatime = if self.layers.is_upper(top.layer) {
            0
        } else {
            libc::O_NOATIME
        };
        let flags = (flags & !STRIP) | noatime;
        let fd = if self.writeback.load(Ordering::Relaxed)
            && flags & libc::O_ACCMODE == libc::O_WRONLY
        {
            // With the writeback cache the kernel reads a partly written page through any
            // open; if the file cannot be read, it stays write-only (as libfuse's examples).
            let rw = (flags & !libc::O_ACCMODE) | libc::O_RDWR;
            match sys::openat(dir.as_fd(), &name, rw, 0) {
                Err(e) if e == Errno(libc::EACCES) => sys::openat(dir.as_fd(), &name, flags, 0)?,
                r => r?,
            }
        } else {
            sys::openat(dir.as_fd(), &name, flags, 0)?
        };
        Ok((Arc::new(fd), generation))
    }

    /// Passthrough is safe when the open file can never be copied up underneath the
    /// kernel's back: it is already in the upper, or the mount has no upper at all. (A
    /// passthrough open of a lower file would keep reading the lower copy after a copy-up.)
    fn passthrough_allowed(&self, inode: &crate::inode::Inode) -> bool {
        self.passthrough.load(Ordering::Relaxed)
            && inode.kind == libc::S_IFREG
            && (!self.layers.has_upper
                || inode.top().is_some_and(|t| self.layers.is_upper(t.layer)))
    }

    /// Records an open file, deciding its I/O mode.
    fn add_handle(
        &self,
        inode: Arc<crate::inode::Inode>,
        fd: Arc<OwnedFd>,
        generation: u64,
        flags: i32,
    ) -> OpenResult {
        let ino = inode.ino;
        let passthrough = self.io_modes.begin(ino, self.passthrough_allowed(&inode));
        let fh = self.handles.add_file(FileHandle {
            inode,
            file: parking_lot::Mutex::new((Arc::clone(&fd), generation)),
            flags,
            passthrough: AtomicBool::new(passthrough),
        });
        OpenResult {
            fh,
            ino,
            fd,
            passthrough,
        }
    }

    /// The kernel would not take the passthrough backing for this handle: it is served
    /// through the daemon instead, and passthrough is not tried again.
    pub(crate) fn passthrough_refused(&self, fh: u64) {
        self.passthrough.store(false, Ordering::Relaxed);
        if let Some(h) = self.handles.file(fh)
            && h.passthrough.swap(false, Ordering::Relaxed)
        {
            self.io_modes.end(h.inode.ino, true);
            self.io_modes.begin(h.inode.ino, false);
        }
    }

    pub fn open(&self, ino: u64, flags: i32) -> FsResult<OpenResult> {
        let inode = self.inode(ino)?;
        if inode.is_dir() {
            return Err(Errno::EISDIR);
        }
        // The kernel takes care of O_TRUNC itself (FUSE_ATOMIC_O_TRUNC is not negotiated):
        // it checks that the file is not being executed, then sends setattr(size=0).
        if wants_write(flags) {
            self.check_writable()?;
            self.copy_up(&inode)?;
        }
        let (fd, generation) = self.open_real(&inode, flags)?;
        Ok(self.add_handle(inode, fd, generation, flags))
    }

    /// The handle's real file, re-opened if the data moved (copy-up) since it was opened:
    /// a reader that opened the lower file sees what is written after the copy-up.
    pub(super) fn handle_fd(&self, fh: u64) -> FsResult<(Arc<FileHandle>, Arc<OwnedFd>)> {
        let h = self.handles.file(fh).ok_or(Errno::EBADF)?;
        let (fd, generation) = h.current();
        if generation == h.inode.data_gen.load(Ordering::Acquire) {
            return Ok((h, fd));
        }
        match self.open_real(&h.inode, h.flags) {
            Ok((fd, generation)) => {
                h.replace(Arc::clone(&fd), generation);
                Ok((h, fd))
            }
            // Copied up, then its name went (unlink, rename over it) before this handle was
            // used again: there is nothing to re-open by name; the fd it has still answers.
            Err(e) if e == Errno::ENOENT || e == Errno::ESTALE => Ok((h, fd)),
            Err(e) => Err(e),
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let (_, fd) = self.handle_fd(fh)?;
        sys::pread_vec(fd.as_fd(), size as usize, offset)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        let (_, fd) = self.handle_fd(fh)?;
        let mut done = 0usize;
        while done < data.len() {
            let n = sys::pwrite(fd.as_fd(), &data[done..], offset + done as u64)?;
            if n == 0 {
                return Err(Errno::EIO);
            }
            done += n;
        }
        Ok(done)
    }

    /// Closes a handle; returns (inode, was passthrough) for the caller's backing bookkeeping.
    pub fn release(&self, fh: u64) -> Option<(u64, bool)> {
        let h = self.handles.remove_file(fh)?;
        let passthrough = h.passthrough.load(Ordering::Relaxed);
        self.io_modes.end(h.inode.ino, passthrough);
        Some((h.inode.ino, passthrough))
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        if !self.cfg.durable {
            return Ok(()); // volatile / fsync=0: every sync is skipped, as the kernel's volatile
        }
        let (_, fd) = self.handle_fd(fh)?;
        sys::fsync(fd.as_fd(), datasync)
    }

    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> FsResult<()> {
        let inode = self.inode(ino)?;
        let top = inode.top().ok_or(Errno::ESTALE)?;
        // A directory removed while open has nothing left to sync: the kernel's overlay
        // syncs the removed upper directory it holds open, which succeeds.
        if !self.cfg.durable || !self.layers.is_upper(top.layer) || inode.is_detached() {
            return Ok(());
        }
        let fd = self.dir_fd(&inode, top.layer)?;
        let rd = sys::openat(fd.as_fd(), sys::DOT, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        sys::fsync(rd.as_fd(), datasync)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let (_, fd) = self.handle_fd(fh)?;
        sys::lseek(fd.as_fd(), offset, whence)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let (_, fd) = self.handle_fd(fh)?;
        sys::fallocate(fd.as_fd(), mode, offset, len)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<usize> {
        let (_, src) = self.handle_fd(fh_in)?;
        let (_, dst) = self.handle_fd(fh_out)?;
        let len = len.min(1 << 30) as usize;
        sys::copy_file_range(src.as_fd(), off_in, dst.as_fd(), off_out, len)
    }

    /// access(): permissions are the kernel's (default_permissions); what is left to say is
    /// that a read-only mount cannot be written.
    pub fn access(&self, ino: u64, mask: i32) -> FsResult<()> {
        let inode = self.inode(ino)?;
        if mask & libc::W_OK != 0 && self.check_writable().is_err() {
            return Err(Errno::EROFS);
        }
        let (dir, name) = self.reach(&inode)?;
        sys::fstatat(dir.as_fd(), &name).map(drop)
    }

    /// create(): a new regular file, opened.
    pub fn create_file(
        &self,
        parent: u64,
        name: &[u8],
        what: super::NewNode<'_>,
        flags: i32,
        caller: super::Caller,
    ) -> FsResult<(super::Entry, OpenResult)> {
        let (entry, fd) = self.create_node(parent, name, what, caller)?;
        let fd = fd.ok_or(Errno::EIO)?;
        let generation = entry.inode.data_gen.load(Ordering::Acquire);
        let opened = self.add_handle(Arc::clone(&entry.inode), Arc::new(fd), generation, flags);
        Ok((entry, opened))
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        let layer = self.layers.get(0)?;
        sys::fstatfs(layer.root_fd())
    }
}
