//! Open files: open (copying up first when opened for writing), read, write, fsync,
//! lseek, fallocate, copy_file_range; and statfs.

use super::Overlay;
use crate::error::{Errno, FsResult};
use crate::handle::{Fh, FileHandle};
use crate::inode::Ino;
use crate::sys;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

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

/// The smallest write whose disk writeback `Overlay::write` starts at once: the largest
/// request FUSE sends by default (1 MiB), which its writeback cache sends only for a long run
/// of dirty pages (a file being streamed out), never for a small file.
pub const STREAMING_WRITE: usize = 1 << 20;

/// How the transport wants real files opened (given with each open, kept by its handle).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOpts {
    /// Open write-only files for reading too, where the file allows it: the transport caches
    /// writes and may read a partly written page through any open (FUSE's writeback cache).
    pub readable: bool,
}

impl OpenOpts {
    /// The access mode to ask for first: read-write instead of write-only when `readable`.
    fn access(self, flags: i32) -> i32 {
        if self.readable && flags & libc::O_ACCMODE == libc::O_WRONLY {
            (flags & !libc::O_ACCMODE) | libc::O_RDWR
        } else {
            flags
        }
    }
}

/// What an open made: the handle, and what the transport needs to decide how to serve it.
pub struct Opened {
    pub fh: Fh,
    pub ino: Ino,
    /// The real file.
    pub fd: Arc<OwnedFd>,
    /// A regular file whose data stays in `fd` for good: it is in the upper already, or the
    /// mount has no upper to copy it to. The transport may let the kernel read and write
    /// `fd` directly (FUSE passthrough). Any other open is served through the core if the
    /// reader must see a later copy-up: after one, the core's handle re-opens the copy, which
    /// a kernel-held file could not (it would keep reading the lower file; see `lower_read`).
    pub settled: bool,
    /// A read-only open of a regular file whose data is still in a lower layer. Its data
    /// moves only if the file is copied up; a transport that lets the kernel read `fd`
    /// directly anyway shares the lower file's page cache between mounts, and this open then
    /// keeps reading the lower copy after a copy-up (Linux before 4.19).
    pub lower_read: bool,
    /// The inode's data generation (`Inode::data_gen`, bumped by each copy-up) `fd` belongs to.
    pub generation: u64,
    /// Opened for writing.
    pub writes: bool,
}

/// One side of a copy_file_range: an open file and a position in it.
#[derive(Clone, Copy, Debug)]
pub struct FileRange {
    pub fh: Fh,
    pub offset: u64,
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
        opts: OpenOpts,
    ) -> FsResult<(Arc<OwnedFd>, u64)> {
        let generation = inode.data_gen.load(Ordering::Acquire);
        let (dir, name, top) = self.locate(inode)?;
        let flags = (flags & !STRIP) | self.layers.noatime(top.layer);
        let fd = match sys::openat(dir.as_fd(), &name, opts.access(flags), 0) {
            // Asked for reading too (`OpenOpts::readable`) but the file cannot be read: it
            // stays write-only (as libfuse's examples do).
            Err(e) if e == Errno::EACCES && opts.access(flags) != flags => {
                sys::openat(dir.as_fd(), &name, flags, 0)?
            }
            r => r?,
        };
        Ok((Arc::new(fd), generation))
    }

    /// Whether the data of `inode`'s open file stays in the real file it opened (see
    /// `Opened::settled`).
    fn data_settled(&self, inode: &crate::inode::Inode) -> bool {
        inode.kind == libc::S_IFREG
            && (!self.layers.has_upper
                || inode.top().is_some_and(|t| self.layers.is_upper(t.layer)))
    }

    /// Records an open file.
    fn add_handle(
        &self,
        inode: Arc<crate::inode::Inode>,
        fd: Arc<OwnedFd>,
        generation: u64,
        flags: i32,
        opts: OpenOpts,
    ) -> Opened {
        let ino = inode.ino;
        let settled = self.data_settled(&inode);
        let lower_read = !settled && inode.kind == libc::S_IFREG && !wants_write(flags);
        let fh = self.handles.add_file(FileHandle {
            inode,
            file: parking_lot::Mutex::new((Arc::clone(&fd), generation)),
            flags,
            opts,
        });
        Opened {
            fh,
            ino,
            fd,
            settled,
            lower_read,
            generation,
            writes: wants_write(flags),
        }
    }

    pub fn open(&self, ino: Ino, flags: i32, opts: OpenOpts) -> FsResult<Opened> {
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
        let (fd, generation) = self.open_real(&inode, flags, opts)?;
        Ok(self.add_handle(inode, fd, generation, flags, opts))
    }

    /// The handle's real file, re-opened if the data moved (copy-up) since it was opened:
    /// a reader that opened the lower file sees what is written after the copy-up.
    pub(super) fn handle_fd(&self, fh: Fh) -> FsResult<(Arc<FileHandle>, Arc<OwnedFd>)> {
        let h = self.handles.file(fh).ok_or(Errno::EBADF)?;
        let (fd, generation) = h.current();
        if generation == h.inode.data_gen.load(Ordering::Acquire) {
            return Ok((h, fd));
        }
        match self.open_real(&h.inode, h.flags, h.opts) {
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

    /// The real file a read of `fh` reads now, for a transport that moves the data itself
    /// (splice): what `read` reads from.
    pub fn read_file(&self, fh: Fh) -> FsResult<Arc<OwnedFd>> {
        Ok(self.handle_fd(fh)?.1)
    }

    /// Reads up to `size` bytes at `offset` into a new buffer (`read_into`, for callers
    /// without a buffer of their own).
    pub fn read(&self, fh: Fh, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let mut buf = vec![0; size as usize];
        let n = self.read_into(fh, offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads up to `buf.len()` bytes at `offset` straight into `buf` (a transport's reply
    /// buffer: no copy of its own); returns how many, fewer only at the end of the file.
    pub fn read_into(&self, fh: Fh, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let (_, fd) = self.handle_fd(fh)?;
        sys::pread_full(fd.as_fd(), buf, offset)
    }

    /// Writes `data` at `offset`. On a durable mount a large write (`STREAMING_WRITE` or
    /// more: a transport's cache writing back a long dirty range) also starts the disk
    /// writeback of what it wrote: the disk then writes while the next batch arrives, and a
    /// later fsync has only the tail left to wait for. Nothing waits for it here and nothing
    /// is less durable: the fsync still waits for every page and reports any error.
    pub fn write(&self, fh: Fh, offset: u64, data: &[u8]) -> FsResult<usize> {
        let (_, fd) = self.handle_fd(fh)?;
        let mut done = 0usize;
        while done < data.len() {
            let n = sys::pwrite(fd.as_fd(), &data[done..], offset + done as u64)?;
            if n == 0 {
                return Err(Errno::EIO);
            }
            done += n;
        }
        if self.cfg.durable && done >= STREAMING_WRITE {
            // Only a head start for the fsync, which reports any write error.
            let _ = sys::start_writeback(fd.as_fd(), offset, done as u64);
        }
        Ok(done)
    }

    /// Closes a handle.
    pub fn release(&self, fh: Fh) {
        self.handles.remove_file(fh);
    }

    pub fn fsync(&self, fh: Fh, datasync: bool) -> FsResult<()> {
        if !self.cfg.durable {
            return Ok(()); // volatile / fsync=0: every sync is skipped, as the kernel's volatile
        }
        let (_, fd) = self.handle_fd(fh)?;
        sys::fsync(fd.as_fd(), datasync)
    }

    pub fn fsyncdir(&self, ino: Ino, datasync: bool) -> FsResult<()> {
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

    pub fn lseek(&self, fh: Fh, offset: i64, whence: i32) -> FsResult<i64> {
        let (_, fd) = self.handle_fd(fh)?;
        sys::lseek(fd.as_fd(), offset, whence)
    }

    pub fn fallocate(&self, fh: Fh, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let (_, fd) = self.handle_fd(fh)?;
        sys::fallocate(fd.as_fd(), mode, offset, len)
    }

    /// Copies up to `len` bytes (at most 1 GiB per call) from one open file to another.
    pub fn copy_file_range(&self, from: FileRange, to: FileRange, len: u64) -> FsResult<usize> {
        let (_, src) = self.handle_fd(from.fh)?;
        let (_, dst) = self.handle_fd(to.fh)?;
        let len = len.min(1 << 30) as usize;
        sys::copy_file_range(src.as_fd(), from.offset, dst.as_fd(), to.offset, len)
    }

    /// access(): permissions are the kernel's (default_permissions); what is left to say is
    /// that a read-only mount cannot be written.
    pub fn access(&self, ino: Ino, mask: i32) -> FsResult<()> {
        let inode = self.inode(ino)?;
        if mask & libc::W_OK != 0 && self.check_writable().is_err() {
            return Err(Errno::EROFS);
        }
        let (dir, name) = self.reach(&inode)?;
        sys::fstatat(dir.as_fd(), &name).map(drop)
    }

    /// create(): a new regular file with permissions `mode`, opened with `flags`.
    pub fn create_file(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
        opts: OpenOpts,
        caller: super::Caller,
    ) -> FsResult<(super::Entry, Opened)> {
        let what = super::NewNode::File {
            mode,
            flags: opts.access(flags),
        };
        let (entry, fd) = self.create_node(parent, name, what, caller)?;
        let fd = fd.ok_or(Errno::EIO)?;
        let generation = entry.inode.data_gen.load(Ordering::Acquire);
        let inode = Arc::clone(&entry.inode);
        let opened = self.add_handle(inode, Arc::new(fd), generation, flags, opts);
        Ok((entry, opened))
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        let layer = self.layers.get(crate::layer::LayerIdx::TOP)?;
        sys::fstatfs(layer.root_fd())
    }
}
