//! Extended attributes, name-relative (`*xattrat`, Linux 6.13) with an fd-based fallback.
//!
//! The `*at` forms never follow a symlink (`AT_SYMLINK_NOFOLLOW`). On kernels without them we
//! fall back to the path-based `l*xattr` calls on `/proc/self/fd/N/NAME`, where N is the parent
//! directory's fd: the directory is reached through its magic link and only the last component
//! is resolved, without following it.

use super::{cvt, cvt_isize};
use crate::error::{Errno, FsResult};
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn at_flags(name: &CStr) -> libc::c_uint {
    let mut f = libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    if name.is_empty() {
        f |= libc::AT_EMPTY_PATH as libc::c_uint;
    }
    f
}

fn fallback_path(dir: BorrowedFd<'_>, name: &CStr) -> CString {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        p.push(b'/');
        p.extend_from_slice(name.to_bytes());
    }
    CString::new(p).unwrap_or_default()
}

fn use_at(ret: libc::c_long) -> Option<FsResult<usize>> {
    if ret < 0 {
        let e = Errno::last();
        if e == Errno::ENOSYS {
            NO_XATTRAT.store(true, Ordering::Relaxed);
            return None;
        }
        return Some(Err(e));
    }
    Some(Ok(ret as usize))
}

/// Reads one attribute into `buf` (or only its size when `buf` is empty).
pub fn getxattrat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    buf: &mut [u8],
) -> FsResult<usize> {
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: buf.len() as u32,
            flags: 0,
        };
        // SAFETY: valid fd, NUL-terminated strings, `args` points at a writable buffer of `size`.
        let ret = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                at_flags(name),
                attr.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        if let Some(r) = use_at(ret) {
            return r;
        }
    }
    let path = fallback_path(dir, name);
    // SAFETY: NUL-terminated strings and a writable buffer of the given length.
    cvt_isize(unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            attr.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

/// Reads a whole attribute value, growing the buffer as needed. ENODATA when absent.
pub fn getxattr_vec(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> FsResult<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match getxattrat(dir, name, attr, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e == Errno::ERANGE => {
                let need = getxattrat(dir, name, attr, &mut [])?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Lists attribute names into `buf` (or only the size when `buf` is empty).
pub fn listxattrat(dir: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> FsResult<usize> {
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        // SAFETY: valid fd, NUL-terminated name, writable buffer of the given length.
        let ret = unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                at_flags(name),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if let Some(r) = use_at(ret) {
            return r;
        }
    }
    let path = fallback_path(dir, name);
    // SAFETY: NUL-terminated path and a writable buffer of the given length.
    cvt_isize(unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// All attribute names of an object, each without its NUL.
pub fn listxattr_names(dir: BorrowedFd<'_>, name: &CStr) -> FsResult<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 1024];
    let n = loop {
        match listxattrat(dir, name, &mut buf) {
            Ok(n) => break n,
            Err(e) if e == Errno::ERANGE => {
                let need = listxattrat(dir, name, &mut [])?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    };
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

pub fn setxattrat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    value: &[u8],
    flags: i32,
) -> FsResult<()> {
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        let args = XattrArgs {
            value: value.as_ptr() as u64,
            size: value.len() as u32,
            flags: flags as u32,
        };
        // SAFETY: valid fd, NUL-terminated strings, `args` points at a readable buffer.
        let ret = unsafe {
            libc::syscall(
                SYS_SETXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                at_flags(name),
                attr.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        if let Some(r) = use_at(ret) {
            return r.map(drop);
        }
    }
    let path = fallback_path(dir, name);
    // SAFETY: NUL-terminated strings and a readable buffer of the given length.
    cvt(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            attr.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// `fsetxattr`: sets an attribute of the file open at `fd` (not an `O_PATH` fd), which may
/// have no name at all (`O_TMPFILE`). The same permission rules as by name apply: a `user.*`
/// attribute needs write permission on the inode, whatever the fd's access mode.
pub fn fsetxattr(fd: BorrowedFd<'_>, attr: &CStr, value: &[u8], flags: i32) -> FsResult<()> {
    // SAFETY: valid fd, NUL-terminated name and a readable buffer of the given length.
    cvt(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            attr.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn removexattrat(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> FsResult<()> {
    if !NO_XATTRAT.load(Ordering::Relaxed) {
        // SAFETY: valid fd and NUL-terminated strings.
        let ret = unsafe {
            libc::syscall(
                SYS_REMOVEXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                at_flags(name),
                attr.as_ptr(),
            )
        };
        if let Some(r) = use_at(ret) {
            return r.map(drop);
        }
    }
    let path = fallback_path(dir, name);
    // SAFETY: NUL-terminated strings.
    cvt(unsafe { libc::lremovexattr(path.as_ptr(), attr.as_ptr()) }).map(drop)
}
