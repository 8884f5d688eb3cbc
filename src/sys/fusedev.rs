//! The FUSE device, the system side of the /dev/fuse transport: a clone of a connection's
//! fd for each worker (`FUSE_DEV_IOC_CLONE`), reading one request, writing one reply, and
//! the passthrough backing ioctls, which either transport uses on any fd of the connection.
//! Knows nothing of the protocol's operations: callers get and give bytes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// `_IOR(229, 0, uint32_t)`.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;
/// `_IOW(229, 1, struct fuse_backing_map)`.
const FUSE_DEV_IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
/// `_IOW(229, 2, uint32_t)`.
const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

/// A new /dev/fuse fd attached to the connection of `dev`: requests are shared out among all
/// the fds of a connection, each read by whoever reads it first.
pub fn clone_device(dev: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let new = super::open_fuse_device().map_err(|e| io::Error::from_raw_os_error(e.raw()))?;
    let mut source = dev.as_raw_fd() as u32;
    // SAFETY: the ioctl reads a u32 (the fd to clone) from the pointer, which points to
    // `source` on the stack for the call.
    let r = unsafe { libc::ioctl(new.as_raw_fd(), FUSE_DEV_IOC_CLONE, &mut source) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(new)
}

/// Reads one request into `buf` (the kernel writes exactly one per read, and refuses a
/// buffer smaller than its largest request). Errors as the device gives them: ENODEV once
/// the connection is gone; ENOENT (a request interrupted before it was read), EINTR and
/// EAGAIN mean "read again".
pub fn read_request(dev: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: read writes at most buf.len() bytes into buf, which is valid and writable for
    // that length for the call.
    let n = unsafe { libc::read(dev.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes one reply (or notification), gathered from `parts`, in one writev: the device
/// takes a message whole or not at all. ENOENT: the request was interrupted or aborted and
/// its reply is no longer wanted.
pub fn write_reply(dev: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<()> {
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: every iovec points into a slice of `parts`, valid for reading for its length
    // for the call; writev does not write through them.
    let n = unsafe { libc::writev(dev.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A passthrough backing file registered on a FUSE connection; closed when dropped.
pub struct Backing {
    dev: Arc<OwnedFd>,
    id: u32,
}

impl Backing {
    /// `FUSE_DEV_IOC_BACKING_OPEN`: registers `file` as a backing on the connection `dev`.
    pub fn open(dev: &Arc<OwnedFd>, file: BorrowedFd<'_>) -> io::Result<Backing> {
        // struct fuse_backing_map { int32 fd; uint32 flags; uint64 padding; }
        let mut map = [0u64; 2];
        map[0] = u64::from(file.as_raw_fd() as u32);
        // SAFETY: the ioctl reads a 16-byte fuse_backing_map from the pointer, which points
        // to 16 initialized bytes that outlive the call (fd in the low 4 bytes on
        // little-endian; flags and padding zero).
        let id =
            unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_OPEN, map.as_mut_ptr()) };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Backing {
            dev: Arc::clone(dev),
            id: id as u32,
        })
    }

    /// The backing id to give in `fuse_open_out`.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        let id = self.id;
        // SAFETY: the ioctl reads a u32 from the pointer, which points to `id` on the stack.
        unsafe {
            libc::ioctl(self.dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_CLOSE, &id);
        }
    }
}
