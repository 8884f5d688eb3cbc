//! The FUSE device, the system side of the /dev/fuse transport: a clone of a connection's
//! fd for each worker (`FUSE_DEV_IOC_CLONE`), reading one request, writing one reply, and
//! the passthrough backing ioctls, which either transport uses on any fd of the connection.
//! Knows nothing of the protocol's operations: callers get and give bytes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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

/// Two pipes through which a READ reply goes from a file to the device without passing
/// through the daemon's memory (the one copy left is the device's, into the page cache): the
/// data is spliced into the first (which tells its length), the reply's header written to the
/// second, the data moved in after it (pipe to pipe: page references, not bytes), and the
/// whole reply spliced into the device in one piece, as the device wants a reply.
pub struct SplicePipes {
    data: (OwnedFd, OwnedFd),
    out: (OwnedFd, OwnedFd),
    /// The most data one reply may carry (the pipes' size less the header).
    max_data: usize,
}

/// What became of a reply sent through the pipes.
#[derive(Debug, PartialEq)]
pub enum Spliced {
    /// Sent: this many bytes of data.
    Sent(usize),
    /// Reading the file failed with this errno before anything was sent: answer with it.
    ReadFailed(i32),
}

fn pipe_of(size: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array, which is valid for two c_ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are open fds that nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ takes an int argument and changes only the pipe's capacity.
    let got = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r, w))
}

/// One splice call; `off`: the offset to read the input at (a file), else None (a pipe).
fn splice(
    from: BorrowedFd<'_>,
    off: Option<u64>,
    to: BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    let mut at = off.map(|o| o as libc::loff_t);
    let at_ptr = at
        .as_mut()
        .map_or(std::ptr::null_mut(), |a| a as *mut libc::loff_t);
    // SAFETY: both fds are open; `at_ptr` is null or points to `at` on the stack for the call;
    // the output offset is null (a pipe or the device).
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            at_ptr,
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

impl SplicePipes {
    /// Pipes for replies of up to `want` bytes, header included, or as large as the system
    /// lets this process make them (`/proc/sys/fs/pipe-max-size`, 1 MiB by default, binds
    /// all but CAP_SYS_RESOURCE); larger replies then go through memory.
    pub fn new(want: usize) -> io::Result<SplicePipes> {
        // The kernel rounds a pipe's size up to a power of two pages.
        let size = want.next_power_of_two();
        let made = pipe_of(size).and_then(|d| Ok((d, pipe_of(size)?, size)));
        let (data, out, size) = match made {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                let limit: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(1 << 20);
                (pipe_of(limit)?, pipe_of(limit)?, limit)
            }
            other => other?,
        };
        Ok(SplicePipes {
            data,
            out,
            max_data: size.saturating_sub(16),
        })
    }

    /// The most data a reply through the pipes may carry.
    pub fn max_data(&self) -> usize {
        self.max_data
    }

    /// Replies to request `unique` on `dev` with up to `size` bytes (at most `max_data`)
    /// of `file` from `offset`; fewer at its end. An error other than `Spliced::ReadFailed`
    /// may leave bytes in the pipes: the caller then drops them and makes new ones.
    pub fn reply_from_file(
        &self,
        dev: BorrowedFd<'_>,
        unique: u64,
        file: BorrowedFd<'_>,
        offset: u64,
        size: usize,
    ) -> io::Result<Spliced> {
        let size = size.min(self.max_data);
        let mut n = 0;
        while n < size {
            match splice(file, Some(offset + n as u64), self.data.1.as_fd(), size - n) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // Nothing read, nothing sent: the caller answers with the error.
                Err(e) if n == 0 => {
                    return Ok(Spliced::ReadFailed(e.raw_os_error().unwrap_or(libc::EIO)));
                }
                Err(e) => return Err(e),
            }
        }
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&((16 + n) as u32).to_ne_bytes());
        header[8..16].copy_from_slice(&unique.to_ne_bytes());
        // SAFETY: write reads 16 bytes from `header`, on the stack for the call.
        let w = unsafe { libc::write(self.out.1.as_raw_fd(), header.as_ptr().cast(), 16) };
        if w != 16 {
            return Err(io::Error::last_os_error());
        }
        let mut moved = 0;
        while moved < n {
            moved += splice(self.data.0.as_fd(), None, self.out.1.as_fd(), n - moved)?;
        }
        let sent = splice(self.out.0.as_fd(), None, dev, 16 + n)?;
        if sent != 16 + n {
            return Err(io::Error::other("a reply went to the device in part"));
        }
        Ok(Spliced::Sent(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A reply spliced into a pipe standing for the device: the header, then the file's
    /// bytes from the offset, fewer at its end.
    #[test]
    fn a_spliced_reply_is_header_then_the_file_range() {
        let dir = std::env::temp_dir().join(format!("layover-splice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let content: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&content)
            .unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let pipes = SplicePipes::new(4096 + 16).unwrap();
        assert!(pipes.max_data() >= 4096);
        let (dev_r, dev_w) = pipe_of(1 << 16).unwrap();
        let mut dev_r = std::fs::File::from(dev_r);
        for (offset, size, expect) in [(10u64, 100usize, 100usize), (4990, 100, 10), (6000, 50, 0)]
        {
            let r = pipes.reply_from_file(dev_w.as_fd(), 7, file.as_fd(), offset, size);
            assert_eq!(r.unwrap(), Spliced::Sent(expect));
            let mut got = vec![0u8; 16 + expect];
            dev_r.read_exact(&mut got).unwrap();
            assert_eq!(
                u32::from_ne_bytes(got[0..4].try_into().unwrap()) as usize,
                16 + expect
            );
            assert_eq!(i32::from_ne_bytes(got[4..8].try_into().unwrap()), 0);
            assert_eq!(u64::from_ne_bytes(got[8..16].try_into().unwrap()), 7);
            let from = offset.min(content.len() as u64) as usize;
            assert_eq!(&got[16..], &content[from..from + expect]);
        }
        // A file that cannot be read: nothing is sent, the errno comes back.
        let wronly = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let r = pipes.reply_from_file(dev_w.as_fd(), 8, wronly.as_fd(), 0, 10);
        assert_eq!(r.unwrap(), Spliced::ReadFailed(libc::EBADF));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
