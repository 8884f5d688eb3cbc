//! The opener: how an ordinary user's daemon reads a file of its own whose mode denies it
//! (a 0000 file to copy up), as the kernel's overlayfs mounted in a user namespace does with
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
        let sock = self.sock.lock().map_err(|_| Errno::EIO)?;
        sys::send_with_fd(sock.as_fd(), name.to_bytes(), Some(dir))?;
        let mut code = [0u8; 4];
        match sys::recv_with_fd(sock.as_fd(), &mut code)? {
            (4, Some(fd)) if code == [0; 4] => Ok(fd),
            (4, None) => Err(Errno(i32::from_le_bytes(code))),
            _ => Err(Errno::EIO),
        }
    }
}

/// The helper process: enters its own user namespace, says whether that worked, then
/// serves open requests until the daemon's end of the socket closes.
fn helper(sock: OwnedFd, uid: u32, gid: u32) -> ! {
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
        let opened = match (dir, CString::new(&buf[..n])) {
            (Some(dir), Ok(name)) => {
                sys::openat(dir.as_fd(), &name, libc::O_RDONLY | libc::O_NOATIME, 0)
            }
            _ => Err(Errno::EINVAL),
        };
        let sent = match &opened {
            Ok(fd) => sys::send_with_fd(sock.as_fd(), &[0; 4], Some(fd.as_fd())),
            Err(e) => sys::send_with_fd(sock.as_fd(), &e.0.to_le_bytes(), None),
        };
        if sent.is_err() {
            sys::exit_now(0);
        }
    }
}
