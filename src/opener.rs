//! The opener: how an ordinary user's daemon reads a file of its own whose mode denies it
//! (a 0000 file to copy up: its data, and its `user.*` xattrs, whose reading needs read
//! permission), as the kernel's overlayfs mounted in a user namespace does with
//! its mounter's CAP_DAC_OVERRIDE. At start, before any thread, layer or /dev/fuse is
//! opened, a helper process is forked that enters a user namespace of its own mapping only
//! the user's uid and gid to themselves: there it holds CAP_DAC_OVERRIDE over exactly the
//! objects whose owner and group are the user's. It opens such a file read-only, relative to
//! a directory fd the daemon sends it, and sends the open file back (SCM_RIGHTS). The daemon
//! itself stays in the initial namespace, so every other owner still shows as it is. The
//! helper gives the user nothing they could not do themselves (`unshare -U`), and exits when
//! the daemon does (its socket's end closes).
//!
//! Where user namespaces are not allowed (a sysctl, an LSM), there is no opener and such a
//! copy-up fails with EACCES, logged once at start.

use crate::error::{Errno, FsResult};
use crate::privilege::{Mode, Privilege};
use crate::sys;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

/// Requests: `o` + NAME (open NAME read-only), `x` + NAME + NUL + XATTR (read an xattr),
/// each with the directory fd attached. Answers: the errno (4 bytes, 0 for success), then the
/// open file attached or the xattr's value.
const OPEN: u8 = b'o';
const XATTR: u8 = b'x';
/// The largest xattr value (XATTR_SIZE_MAX) and the errno in front of it.
const ANSWER_MAX: usize = 65536 + 4;

pub struct Opener {
    /// One request at a time: the request and its answer are a pair on the socket.
    sock: Mutex<OwnedFd>,
}

impl Opener {
    /// Starts the helper for an ordinary user's daemon (None for root, who needs none, and
    /// where the helper cannot enter a user namespace). Must be called while the process is
    /// single-threaded.
    pub fn start(privilege: &Privilege) -> Option<Opener> {
        if privilege.mode != Mode::User {
            return None;
        }
        let (ours, theirs) = match sys::seqpacket_pair() {
            Ok(p) => p,
            Err(e) => {
                log::warn!("no opener ({e}): copy-up of a file whose mode denies reading fails");
                return None;
            }
        };
        match sys::fork() {
            Ok(sys::Fork::Child) => {
                drop(ours);
                helper(theirs, privilege.euid, privilege.egid)
            }
            Ok(sys::Fork::Parent) => {}
            Err(e) => {
                log::warn!(
                    "no opener (fork: {e}): copy-up of a file whose mode denies reading fails"
                );
                return None;
            }
        }
        drop(theirs);
        let mut ready = [0u8; 1];
        match sys::recv_with_fd(ours.as_fd(), &mut ready) {
            Ok((1, _)) if ready[0] == b'1' => Some(Opener {
                sock: Mutex::new(ours),
            }),
            _ => {
                log::warn!(
                    "no opener (a user namespace of our own is not allowed here): copy-up of \
                     a file whose mode denies reading fails with EACCES"
                );
                None
            }
        }
    }

    /// Opens `name` in `dir` read-only (never following a symlink) through the helper.
    pub fn open_read(&self, dir: BorrowedFd<'_>, name: &CStr) -> FsResult<OwnedFd> {
        let mut req = vec![OPEN];
        req.extend_from_slice(name.to_bytes());
        let (_, fd) = self.ask(dir, &req)?;
        fd.ok_or(Errno::EIO)
    }

    /// The value of xattr `attr` of `name` in `dir` (not following a symlink).
    pub fn getxattr(&self, dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> FsResult<Vec<u8>> {
        let mut req = vec![XATTR];
        req.extend_from_slice(name.to_bytes_with_nul());
        req.extend_from_slice(attr.to_bytes());
        Ok(self.ask(dir, &req)?.0)
    }

    fn ask(&self, dir: BorrowedFd<'_>, req: &[u8]) -> FsResult<(Vec<u8>, Option<OwnedFd>)> {
        let sock = self.sock.lock().map_err(|_| Errno::EIO)?;
        // A helper that is gone leaves the daemon as it would be without one: EACCES.
        let gone = |e: Errno| {
            log::warn!(
                "the opener is gone ({e}): a file whose mode denies reading cannot be copied up"
            );
            Errno::EACCES
        };
        sys::send_with_fd(sock.as_fd(), req, Some(dir)).map_err(gone)?;
        let mut answer = vec![0u8; ANSWER_MAX];
        let (n, fd) = sys::recv_with_fd(sock.as_fd(), &mut answer).map_err(gone)?;
        if n == 0 {
            return Err(gone(Errno::new(libc::EPIPE)));
        }
        let code = answer
            .get(..4)
            .filter(|_| n >= 4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .ok_or(Errno::EIO)?;
        if code != 0 {
            return Err(Errno::new(code));
        }
        answer.truncate(n);
        answer.drain(..4);
        Ok((answer, fd))
    }
}

/// What the helper does for one request.
fn answer(req: &[u8], dir: Option<OwnedFd>) -> FsResult<(Vec<u8>, Option<OwnedFd>)> {
    let dir = dir.ok_or(Errno::EINVAL)?;
    match req.split_first() {
        Some((&OPEN, name)) => {
            let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
            let fd = sys::openat(dir.as_fd(), &name, libc::O_RDONLY | libc::O_NOATIME, 0)?;
            Ok((Vec::new(), Some(fd)))
        }
        Some((&XATTR, rest)) => {
            let nul = rest.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
            let name = CString::new(&rest[..nul]).map_err(|_| Errno::EINVAL)?;
            let attr = CString::new(&rest[nul + 1..]).map_err(|_| Errno::EINVAL)?;
            Ok((sys::getxattr_vec(dir.as_fd(), &name, &attr)?, None))
        }
        _ => Err(Errno::EINVAL),
    }
}

/// The helper process: enters its own user namespace, says whether that worked, then
/// serves open requests until the daemon's end of the socket closes.
fn helper(sock: OwnedFd, uid: u32, gid: u32) -> ! {
    // Out of the terminal's session, so that a hangup or ^C meant for the command that
    // started the mount does not end the helper of a daemon that lives on.
    sys::setsid();
    sys::redirect_stdio_to_null();
    let entered = sys::unshare(libc::CLONE_NEWUSER).is_ok()
        && std::fs::write("/proc/self/setgroups", "deny").is_ok()
        && std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1")).is_ok()
        && std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1")).is_ok();
    let ready = if entered { b"1" } else { b"0" };
    if !entered || sys::send_with_fd(sock.as_fd(), ready, None).is_err() {
        sys::exit_now(0);
    }
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, dir) = match sys::recv_with_fd(sock.as_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => sys::exit_now(0),
            Ok(got) => got,
        };
        let sent = match answer(&buf[..n], dir) {
            Ok((mut value, fd)) => {
                value.splice(0..0, [0u8; 4]);
                sys::send_with_fd(sock.as_fd(), &value, fd.as_ref().map(|f| f.as_fd()))
            }
            Err(e) => sys::send_with_fd(sock.as_fd(), &e.raw().to_le_bytes(), None),
        };
        if sent.is_err() {
            sys::exit_now(0);
        }
    }
}
