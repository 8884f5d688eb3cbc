//! Passing file descriptors over a Unix socket (SCM_RIGHTS), and unshare(2): what the
//! opener helper (`crate::opener`) is made of; and a socket peer's credentials
//! (SO_PEERCRED), which the stats socket checks.

use super::{cvt, own};
use crate::error::{Errno, FsResult};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// `unshare(flags)`.
pub fn unshare(flags: i32) -> FsResult<()> {
    // SAFETY: no pointers; the caller is single-threaded when it asks for a user namespace.
    cvt(unsafe { libc::unshare(flags) }).map(drop)
}

/// Room for one fd in a control message (u64 words, so it is aligned for `cmsghdr`).
const CMSG_WORDS: usize = 4;

/// Sends `data` (not empty) with `fd` attached, if any.
pub fn send_with_fd(sock: BorrowedFd<'_>, data: &[u8], fd: Option<BorrowedFd<'_>>) -> FsResult<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = [0u64; CMSG_WORDS];
    // SAFETY: an all-zero msghdr is valid (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` (<= 32) zeroed, aligned bytes, which hold one
        // cmsghdr and one int; CMSG_FIRSTHDR/CMSG_DATA stay inside them.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(Errno::last());
    }
    if (n as usize) < data.len() {
        return Err(Errno::EIO); // one small datagram-like message: never split here
    }
    Ok(())
}

/// Receives one message into `buf`; returns its length (0 at end of stream) and the fd
/// that came with it, if any.
pub fn recv_with_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> FsResult<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; CMSG_WORDS];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(Errno::last());
    }
    let mut fd = None;
    // SAFETY: the kernel filled msg_control and msg_controllen; CMSG_FIRSTHDR/NXTHDR walk
    // only inside them, and an SCM_RIGHTS message's data holds ints.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                fd = Some(own(raw));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, fd))
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (message boundaries kept, and the end
/// of the peer seen as a read of 0 bytes).
pub fn seqpacket_pair() -> FsResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors socketpair writes.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    Ok((own(fds[0]), own(fds[1])))
}

/// Who is at the other end of a connected Unix socket (SO_PEERCRED): (pid, uid, gid), as
/// the kernel recorded them when the peer connected.
pub fn peer_cred(sock: BorrowedFd<'_>) -> FsResult<(i32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the kernel writes at
    // most `len` bytes.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    if len as usize != size_of::<libc::ucred>() {
        return Err(Errno::EIO);
    }
    Ok((cred.pid, cred.uid, cred.gid))
}
