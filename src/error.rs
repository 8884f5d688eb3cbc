//! Error types: `Errno` on the request path, `StartupError` before the mount is live.

use std::fmt;
use std::num::NonZeroI32;

/// A copyable errno value: what a FUSE request replies with when it fails. Never 0 (which
/// would read as success): `Errno::new` turns 0 and negative values into EIO.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(NonZeroI32);

pub type FsResult<T> = Result<T, Errno>;

/// `EIO` as a non-zero value (the fallback of `Errno::new`).
const EIO_RAW: NonZeroI32 = match NonZeroI32::new(libc::EIO) {
    Some(n) => n,
    None => NonZeroI32::MIN, // libc::EIO is 5: never taken
};

impl Errno {
    pub const EPERM: Errno = Errno::new(libc::EPERM);
    pub const ENOENT: Errno = Errno::new(libc::ENOENT);
    pub const EINTR: Errno = Errno::new(libc::EINTR);
    pub const EIO: Errno = Errno(EIO_RAW);
    pub const EBADF: Errno = Errno::new(libc::EBADF);
    pub const EEXIST: Errno = Errno::new(libc::EEXIST);
    pub const EXDEV: Errno = Errno::new(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno::new(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno::new(libc::EISDIR);
    pub const EINVAL: Errno = Errno::new(libc::EINVAL);
    pub const EROFS: Errno = Errno::new(libc::EROFS);
    pub const ERANGE: Errno = Errno::new(libc::ERANGE);
    pub const ENAMETOOLONG: Errno = Errno::new(libc::ENAMETOOLONG);
    pub const ENOSYS: Errno = Errno::new(libc::ENOSYS);
    pub const ENOTEMPTY: Errno = Errno::new(libc::ENOTEMPTY);
    pub const ENODATA: Errno = Errno::new(libc::ENODATA);
    pub const EOPNOTSUPP: Errno = Errno::new(libc::EOPNOTSUPP);
    pub const ENOTCONN: Errno = Errno::new(libc::ENOTCONN);
    pub const ESTALE: Errno = Errno::new(libc::ESTALE);
    pub const EACCES: Errno = Errno::new(libc::EACCES);
    pub const ENXIO: Errno = Errno::new(libc::ENXIO);

    /// The errno `raw`; 0 and negative values (no error, or a raw syscall return that
    /// slipped through) become EIO.
    pub const fn new(raw: i32) -> Errno {
        match NonZeroI32::new(raw) {
            Some(n) if raw > 0 => Errno(n),
            _ => Errno(EIO_RAW),
        }
    }

    /// The positive errno value.
    pub const fn raw(self) -> i32 {
        self.0.get()
    }

    /// The calling thread's errno after a failed libc call.
    pub fn last() -> Errno {
        Errno::new(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            self.raw(),
            std::io::Error::from_raw_os_error(self.raw())
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.raw()))
    }
}

#[cfg(test)]
mod tests {
    use super::Errno;

    #[test]
    fn never_zero() {
        assert_eq!(Errno::new(0), Errno::EIO);
        assert_eq!(Errno::new(-2), Errno::EIO);
        assert_eq!(Errno::new(libc::ENOENT).raw(), libc::ENOENT);
        assert_eq!(Errno::EIO.raw(), libc::EIO);
    }
}

/// A failure before the mount is live: printed once by main, exit status 1.
#[derive(Debug)]
pub struct StartupError(pub String);

impl StartupError {
    pub fn new(msg: impl Into<String>) -> Self {
        StartupError(msg.into())
    }
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
