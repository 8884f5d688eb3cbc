//! Extended attributes of merged objects: those of the top object, with the overlay's own
//! markers (`trusted.overlay.*`, or `user.overlay.*` with userxattr) hidden. A name in that
//! namespace set through the merged view is stored escaped (`trusted.overlay.overlay.*`),
//! as the kernel does for nested overlays. Changing one copies the object up first.
//! The override_stat attributes (`idmap::stat_xattr`), which hold an owner and mode, are
//! neither shown nor settable (ENODATA, EPERM), as fuse-overlayfs hides its own; POSIX ACLs
//! carry ids, which cross `IdMap` (`acl_to_shown`, `acl_to_disk`).

use super::{Overlay, cname};
use crate::error::{Errno, FsResult};
use crate::idmap::stat_xattr::is_stat_xattr;
use crate::inode::Ino;
use crate::sys;
use crate::whiteout::{from_real_xattr, to_real_xattr};
use std::os::fd::AsFd;

/// The reply to getxattr/listxattr: the size only, or the data.
pub enum XattrReply {
    Size(usize),
    Data(Vec<u8>),
}

fn sized(data: Vec<u8>, size: u32) -> FsResult<XattrReply> {
    if size == 0 {
        Ok(XattrReply::Size(data.len()))
    } else if data.len() > size as usize {
        Err(Errno::ERANGE)
    } else {
        Ok(XattrReply::Data(data))
    }
}

/// A name the merged view neither shows nor lets be set nor removed (it is not there, as far
/// as the merged view goes): an override_stat attribute.
fn refused(shown: &[u8], e: Errno) -> FsResult<()> {
    if is_stat_xattr(shown) { Err(e) } else { Ok(()) }
}

impl Overlay {
    pub fn getxattr(&self, ino: Ino, shown: &[u8], size: u32) -> FsResult<XattrReply> {
        refused(shown, Errno::ENODATA)?;
        let name = &to_real_xattr(self.xattr_ns(), shown);
        let inode = self.inode(ino)?;
        let (dir, fname) = self.reach(&inode)?;
        let mut v = sys::getxattr_vec(dir.as_fd(), &fname, &cname(name)?)?;
        if self.ids.maps_xattr(shown) {
            v = self.ids.acl_to_shown(&v)?;
        }
        sized(v, size)
    }

    /// listxattr. The trusted.* names are listed only to a caller with CAP_SYS_ADMIN, as a
    /// filesystem lists them (the daemon itself sees them all).
    pub fn listxattr(&self, ino: Ino, size: u32, caller: &super::Caller) -> FsResult<XattrReply> {
        let inode = self.inode(ino)?;
        let (dir, fname) = self.reach(&inode)?;
        let mut out = Vec::new();
        let mut privileged: Option<bool> = None;
        for n in sys::listxattr_names(dir.as_fd(), &fname)? {
            if n.starts_with(b"trusted.")
                && !*privileged.get_or_insert_with(|| caller.has_cap_sys_admin())
            {
                continue;
            }
            if let Some(shown) = from_real_xattr(self.xattr_ns(), &n)
                && !is_stat_xattr(&shown)
            {
                out.extend_from_slice(&shown);
                out.push(0);
            }
        }
        sized(out, size)
    }

    pub fn setxattr(&self, ino: Ino, shown: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        refused(shown, Errno::EPERM)?;
        let name = &to_real_xattr(self.xattr_ns(), shown);
        self.check_writable()?;
        let mapped;
        let value = if self.ids.maps_xattr(shown) {
            mapped = self.ids.acl_to_disk(value)?;
            &mapped[..]
        } else {
            value
        };
        let inode = self.inode(ino)?;
        self.copy_up_or_upper(&inode)?;
        let (dir, fname) = self.reach(&inode)?;
        sys::setxattrat(dir.as_fd(), &fname, &cname(name)?, value, flags)
    }

    pub fn removexattr(&self, ino: Ino, shown: &[u8]) -> FsResult<()> {
        refused(shown, Errno::ENODATA)?;
        let name = &to_real_xattr(self.xattr_ns(), shown);
        self.check_writable()?;
        let inode = self.inode(ino)?;
        let cn = cname(name)?;
        // Removing an attribute that does not exist must not copy up (ENODATA, as the kernel).
        // An object already in the upper goes straight to the upper's removexattr, as with
        // the kernel: its refusal (EPERM for a security.* name without CAP_SYS_ADMIN over
        // the upper, a daemon in a user namespace) comes before ENODATA.
        let in_upper = inode.top().is_some_and(|t| self.layers.is_upper(t.layer));
        if !in_upper {
            let (dir, fname) = self.reach(&inode)?;
            sys::getxattrat(dir.as_fd(), &fname, &cn, &mut [])?;
        }
        self.copy_up_or_upper(&inode)?;
        let (dir, fname) = self.reach(&inode)?;
        sys::removexattrat(dir.as_fd(), &fname, &cn)
    }
}
