//! Creating names: mknod, mkdir, symlink, link and create, as the kernel does them.
//!
//! A new object goes straight into the upper parent when the upper holds nothing at that
//! name. Over a whiteout it is built in the work directory and exchanged with the whiteout
//! (RENAME_EXCHANGE), which is then removed; a directory made over a whiteout is marked
//! opaque so the lower contents stay hidden. Objects are created by the daemon and then
//! given to the caller (uid, gid — the parent's gid when the parent is setgid).

use super::{Caller, Entry, Overlay, cname};
use crate::error::{Errno, FsResult};
use crate::idmap::stat_xattr::StatXattr;
use crate::inode::{Ino, Inode, Presence};
use crate::layer::LayerIdx;
use crate::sys::{self, Stat};
use crate::whiteout;
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// What to create.
pub enum NewNode<'a> {
    /// mknod: full mode (type and permissions) and device number.
    Node {
        mode: u32,
        rdev: u64,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: &'a [u8],
    },
    /// A regular file, opened with these flags (create; `OpenOpts` already applied).
    File {
        mode: u32,
        flags: i32,
    },
}

/// Names that start with `.wh.` mean whiteouts in OCI/AUFS layers, which layover honours:
/// one made through the mount would hide a name instead of being a file, so they are refused.
pub(super) fn reject_reserved(name: &[u8]) -> FsResult<()> {
    if whiteout::is_aufs_special(name) {
        return Err(Errno::EPERM);
    }
    Ok(())
}

/// Who a new object belongs to, and what must be done to make it so.
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
    mode: u32,
    chown: bool,
    chmod: bool,
}

/// What `make_raw` made: the open fd of a regular file, and the special file a regular
/// file was made to keep (its type and device number), where the daemon could not make it
/// as asked (`Overlay::keeps_special_in_files`).
struct Made {
    fd: Option<OwnedFd>,
    kept: Option<(u32, u64)>,
}

impl Made {
    fn of(fd: Option<OwnedFd>) -> Made {
        Made { fd, kept: None }
    }

    fn kept(kind: u32, rdev: u64) -> Made {
        Made {
            fd: None,
            kept: Some((kind, rdev)),
        }
    }
}

/// What the upper holds at a name we are about to create.
enum UpperSlot {
    Empty,
    /// A 0/0 character-device whiteout.
    Whiteout,
    /// An AUFS `.wh.NAME` file (and nothing at NAME).
    AufsWhiteout,
}

impl Overlay {
    /// `aufs`: also look for a `.wh.NAME` (pointless where no lower layer is merged).
    fn upper_slot(
        &self,
        udir: BorrowedFd<'_>,
        name: &[u8],
        cn: &CStr,
        aufs: bool,
    ) -> FsResult<UpperSlot> {
        match sys::fstatat(udir, cn) {
            Ok(st) if whiteout::is_whiteout_dev(&st) => return Ok(UpperSlot::Whiteout),
            Ok(_) => return Err(Errno::EEXIST),
            Err(e) if e == Errno::ENOENT => {}
            Err(e) => return Err(e),
        }
        if aufs
            && let Some(wh) = whiteout::aufs_whiteout_for(name)
            && sys::fstatat(udir, &cname(&wh)?).is_ok()
        {
            return Ok(UpperSlot::AufsWhiteout);
        }
        Ok(UpperSlot::Empty)
    }

    /// The owner and final mode of a new object in a directory with attributes `pst`, and
    /// which of them the upper's filesystem will not give it by itself when the daemon
    /// creates it (so that creating as root for root costs no extra syscalls).
    fn new_owner(&self, caller: Caller, pst: &Stat, kind: u32, wanted: u32) -> Owner {
        let wanted = wanted & 0o7777;
        let mut mode = wanted;
        let setgid_parent = pst.mode & libc::S_ISGID != 0;
        let host = self.ids.owner_of(&caller);
        let gid = if setgid_parent { pst.gid } else { host.gid };
        if kind == libc::S_IFDIR && setgid_parent {
            mode |= libc::S_ISGID;
        } else if kind != libc::S_IFDIR
            && mode & libc::S_ISGID != 0
            && !caller.may_fsetid()
            && gid != host.gid
            && !caller.in_group(gid)
        {
            mode &= !libc::S_ISGID;
        }
        // What the filesystem gives an object the daemon creates.
        let daemon = self.privileges.ids;
        let fs_gid = if setgid_parent { pst.gid } else { daemon.gid };
        let fs_mode = if kind == libc::S_IFDIR && setgid_parent {
            wanted | libc::S_ISGID
        } else {
            wanted
        };
        let chown = (host.uid, gid) != (daemon.uid, fs_gid);
        // chown clears setuid/setgid of non-directories.
        let chmod = kind != libc::S_IFLNK
            && (mode != fs_mode || (chown && kind != libc::S_IFDIR && mode & 0o6000 != 0));
        Owner {
            uid: host.uid,
            gid,
            mode,
            chown,
            chmod,
        }
    }

    /// Creates `what` as `name` (in `dir`): the raw object, no ownership yet, with an open
    /// fd for regular files. A device node the daemon may not make (EPERM) is made as an
    /// empty regular file where the upper keeps owners in an attribute, which will name the
    /// device (`keeps_special_in_files`); elsewhere the EPERM stands, as the kernel's
    /// overlayfs in a user namespace gives it.
    fn make_raw(&self, dir: BorrowedFd<'_>, name: &CStr, what: &NewNode<'_>) -> FsResult<Made> {
        match what {
            NewNode::Node { mode, rdev } => match sys::mknodat(dir, name, *mode, *rdev) {
                Err(e) if e == Errno::EPERM && self.keeps_special_in_files(mode & libc::S_IFMT) => {
                    self.make_keeper(dir, name, mode & 0o7777)?;
                    Ok(Made::kept(mode & libc::S_IFMT, *rdev))
                }
                r => r.map(|_| Made::of(None)),
            },
            NewNode::Dir { mode } => {
                let mode = self.real_create_mode(libc::S_IFDIR, mode & 0o7777);
                sys::mkdirat(dir, name, mode).map(|_| Made::of(None))
            }
            NewNode::Symlink { target } => {
                sys::symlinkat(&cname(target)?, dir, name).map(|_| Made::of(None))
            }
            NewNode::File { mode, flags } => {
                let acc = flags & (libc::O_ACCMODE | libc::O_SYNC | libc::O_DSYNC);
                let mode = self.real_create_mode(libc::S_IFREG, mode & 0o7777);
                let fd = sys::openat(dir, name, acc | libc::O_CREAT | libc::O_EXCL, mode)?;
                Ok(Made::of(Some(fd)))
            }
        }
    }

    /// The empty regular file that keeps a special file with permission bits `perm`.
    fn make_keeper(&self, dir: BorrowedFd<'_>, name: &CStr, perm: u32) -> FsResult<()> {
        let mode = libc::S_IFREG | self.real_create_mode(libc::S_IFREG, perm);
        sys::mknodat(dir, name, mode, 0)
    }

    /// Makes `what` as `name` in `dir` (`make_raw`) and gives it its owner and mode
    /// (`set_owner`); removes it again when that fails. A pipe or socket whose owner the
    /// daemon cannot give (EPERM: an ordinary user's daemon making one for root) is kept in
    /// a regular file instead, where the upper keeps owners in an attribute, as a device is.
    fn make_owned(
        &self,
        (dir, name): (BorrowedFd<'_>, &CStr),
        what: &NewNode<'_>,
        kind: u32,
        owner: &Owner,
    ) -> FsResult<Made> {
        let made = self.make_raw(dir, name, what)?;
        let Err(e) = self.set_owner((dir, name), kind, owner, made.kept) else {
            return Ok(made);
        };
        let _ = sys::unlinkat(dir, name, kind == libc::S_IFDIR); // undo
        let pipe = matches!(kind, libc::S_IFIFO | libc::S_IFSOCK);
        if e != Errno::EPERM || made.kept.is_some() || !pipe || !self.keeps_special_in_files(kind) {
            return Err(e);
        }
        self.make_keeper(dir, name, owner.mode)?;
        if let Err(e) = self.set_owner((dir, name), kind, owner, Some((kind, 0))) {
            let _ = sys::unlinkat(dir, name, false);
            return Err(e);
        }
        Ok(Made::kept(kind, 0))
    }

    /// Applies the caller's umask unless the directory has a default ACL (then the upper's
    /// filesystem derives the mode from the ACL, as for any other caller). `dir` is an
    /// `O_PATH` fd, which the xattr calls refuse (EBADF) with an empty name: the directory
    /// is named as ".".
    fn apply_umask<'a>(&self, dir: BorrowedFd<'_>, what: NewNode<'a>, umask: u32) -> NewNode<'a> {
        if umask == 0 || sys::getxattrat(dir, c".", c"system.posix_acl_default", &mut []).is_ok() {
            return what;
        }
        match what {
            NewNode::Node { mode, rdev } => NewNode::Node {
                mode: mode & !umask,
                rdev,
            },
            NewNode::Dir { mode } => NewNode::Dir {
                mode: mode & !umask,
            },
            NewNode::File { mode, flags } => NewNode::File {
                mode: mode & !umask,
                flags,
            },
            s @ NewNode::Symlink { .. } => s,
        }
    }

    fn kind_of(what: &NewNode<'_>) -> u32 {
        match what {
            NewNode::Node { mode, .. } => mode & libc::S_IFMT,
            NewNode::Dir { .. } => libc::S_IFDIR,
            NewNode::Symlink { .. } => libc::S_IFLNK,
            NewNode::File { .. } => libc::S_IFREG,
        }
    }

    fn mode_of(what: &NewNode<'_>) -> u32 {
        match what {
            NewNode::Node { mode, .. } | NewNode::Dir { mode } | NewNode::File { mode, .. } => {
                *mode
            }
            NewNode::Symlink { .. } => 0o777,
        }
    }

    /// Gives a freshly made object of type `kind` its owner and mode: in its override_stat
    /// xattr when the upper keeps them there (`xattr_permissions=`), else on its inode. A
    /// special file `kept` in a regular file is named in the xattr, after the permission
    /// bits.
    fn set_owner(
        &self,
        (dir, name): (BorrowedFd<'_>, &CStr),
        kind: u32,
        o: &Owner,
        kept: Option<(u32, u64)>,
    ) -> FsResult<()> {
        if kept.is_some()
            && let Some(x) = self.owner_xattr(libc::S_IFREG)
        {
            let mode = libc::S_IFREG | o.mode;
            return self.write_owner_xattr(x, (dir, name), (o.uid, o.gid, mode), kept);
        }
        if let Some(x) = self.owner_xattr(kind) {
            // The mode as the request gave it, as fuse-overlayfs 1.10 writes its attributes:
            // mkdir's has no type bits, create's has them (every reader takes the permission
            // bits alone). containers-storage's names the type in a field of its own.
            let bare = kind == libc::S_IFDIR && x != StatXattr::Containers;
            let mode = if bare { o.mode } else { kind | o.mode };
            return self.write_owner_xattr(x, (dir, name), (o.uid, o.gid, mode), None);
        }
        if o.chown {
            sys::fchownat(dir, name, o.uid, o.gid)?;
        }
        if o.chmod {
            sys::fchmodat(dir, name, o.mode)?;
        }
        Ok(())
    }

    /// Creates `name` in directory `parent` for `caller`. Returns the new entry and, for a
    /// regular file, its open fd.
    pub fn create_node(
        &self,
        parent: Ino,
        name: &[u8],
        what: NewNode<'_>,
        caller: Caller,
    ) -> FsResult<(Entry, Option<OwnedFd>)> {
        self.check_writable()?;
        reject_reserved(name)?;
        let parent = self.inode(parent)?;
        // In a directory only the upper holds, the upper itself says whether the name exists.
        let pure_upper = self.pure_upper(&parent);
        if !pure_upper && self.resolve(&parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        if let NewNode::Node { mode, rdev } = what
            && mode & libc::S_IFMT == libc::S_IFCHR
            && rdev == 0
        {
            return Err(Errno::EPERM); // a whiteout cannot be made through the overlay
        }
        self.copy_up(&parent)?;
        let upper = self.layers.upper_idx()?;
        let udir = self.dir_fd(&parent, upper)?;
        let cn = cname(name)?;
        let slot = self.upper_slot(udir.as_fd(), name, &cn, !pure_upper)?;
        // The parent's owner and mode as shown (its override's, where it has one).
        let pst = self.with_override(upper, udir.as_fd(), sys::DOT, sys::fstat(udir.as_fd())?);
        let kind = Self::kind_of(&what);
        let what = self.apply_umask(udir.as_fd(), what, caller.umask);
        let owner = self.new_owner(caller, &pst, kind, Self::mode_of(&what));
        let fd = match slot {
            UpperSlot::Whiteout => {
                self.create_over_whiteout(udir.as_fd(), &cn, &what, kind, &owner)?
            }
            UpperSlot::Empty | UpperSlot::AufsWhiteout => {
                let made = self.make_owned((udir.as_fd(), &cn), &what, kind, &owner)?;
                if let UpperSlot::AufsWhiteout = slot {
                    Self::remove_aufs_whiteout(udir.as_fd(), name)?;
                    if kind == libc::S_IFDIR {
                        self.set_opaque(udir.as_fd(), &cn)?;
                    }
                }
                made.fd
            }
        };
        let st = sys::fstatat(udir.as_fd(), &cn)?;
        let entry = self.enter_upper(&parent, name, st);
        Ok((entry, fd))
    }

    /// Builds the object in the work directory, exchanges it with the whiteout at `cn`, and
    /// removes the whiteout.
    fn create_over_whiteout(
        &self,
        udir: BorrowedFd<'_>,
        cn: &CStr,
        what: &NewNode<'_>,
        kind: u32,
        owner: &Owner,
    ) -> FsResult<Option<OwnedFd>> {
        // Made in the work directory, the object got the work directory's defaults, not the
        // parent's (a setgid parent's group): owner and mode are always set.
        // A directory without owner write and search permission gets its mode once in place,
        // where an ordinary user's daemon could not move it (see `dir_mode_deferred`).
        let deferred = kind == libc::S_IFDIR
            && self.owner_xattr(kind).is_none()
            && self.dir_mode_deferred(owner.mode);
        let mode = owner.mode;
        let owner = Owner {
            chown: true,
            chmod: kind != libc::S_IFLNK,
            mode: if deferred {
                owner.mode | 0o700
            } else {
                owner.mode
            },
            ..*owner
        };
        let made = self.replace_whiteout(
            udir,
            cn,
            kind == libc::S_IFDIR,
            |work, tmp| self.make_owned((work, tmp), what, kind, &owner),
            |work, tmp| {
                if kind == libc::S_IFDIR {
                    self.set_opaque(work, tmp)?;
                }
                Ok(())
            },
        )?;
        if deferred {
            sys::fchmodat(udir, cn, mode)?;
        }
        Ok(made.fd)
    }

    /// Puts a new object in the place of the whiteout at `cn` in upper directory `udir`:
    /// `make` creates it under a temporary name in the work directory and `finish` completes
    /// it there (on a failure of `finish` or of the exchange, it is removed again); then it
    /// is exchanged with the whiteout (`RENAME_EXCHANGE`), so that the name never uncovers
    /// the lower layers, and the whiteout, now in the work directory, is removed.
    fn replace_whiteout<T>(
        &self,
        udir: BorrowedFd<'_>,
        cn: &CStr,
        is_dir: bool,
        make: impl FnOnce(BorrowedFd<'_>, &CStr) -> FsResult<T>,
        finish: impl FnOnce(BorrowedFd<'_>, &CStr) -> FsResult<()>,
    ) -> FsResult<T> {
        let work = self.work_fd()?;
        let tmp = self.temp_name();
        let made = make(work, &tmp)?;
        let mut guard = super::copy_up::TempGuard {
            dir: work,
            name: tmp.clone(),
            is_dir,
            armed: true,
        };
        finish(work, &tmp)?;
        sys::renameat2(work, &tmp, udir, cn, sys::RENAME_EXCHANGE)?;
        // The whiteout is now at `tmp` in the work directory: the guard removes it.
        guard.is_dir = false;
        drop(guard);
        Ok(made)
    }

    /// Removes the AUFS `.wh.NAME` whiteout of `name` from upper directory `udir` (an object
    /// now exists at `name`, which the whiteout would hide).
    pub(super) fn remove_aufs_whiteout(udir: BorrowedFd<'_>, name: &[u8]) -> FsResult<()> {
        match whiteout::aufs_whiteout_for(name) {
            Some(wh) => sys::unlinkat(udir, &cname(&wh)?, false),
            None => Ok(()),
        }
    }

    /// Marks a directory opaque: the xattr, or a `.wh..wh..opq` file inside it when this
    /// mount writes whiteouts as files. Both need write permission on the directory, which an
    /// ordinary user's daemon lends itself for a directory made without it (`mkdir d 0500`).
    pub(super) fn set_opaque(&self, dir: BorrowedFd<'_>, name: &CStr) -> FsResult<()> {
        if self.caps.whiteout_dev && self.privileges.overrides_modes {
            return sys::setxattrat(dir, name, self.opaque_name(), b"y", 0);
        }
        let sub = sys::openat(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        self.lending_owner_write(sub.as_fd(), || {
            if self.caps.whiteout_dev {
                return sys::setxattrat(dir, name, self.opaque_name(), b"y", 0);
            }
            let marker = cname(whiteout::OPAQUE_MARKER)?;
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
            match sys::openat(sub.as_fd(), &marker, flags, 0) {
                Ok(_) => Ok(()),
                Err(e) if e == Errno::EEXIST => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    /// Registers an object that now lives only in the upper as `name` in `parent`.
    pub(super) fn enter_upper(&self, parent: &Arc<Inode>, name: &[u8], st: Stat) -> Entry {
        let found = super::lookup::Found {
            layers: vec![Presence {
                layer: LayerIdx::TOP,
                xwhiteouts: false,
            }],
            stat: st,
        };
        self.enter(parent, name, found)
    }

    /// link(): copies the source up and links it in the upper.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> FsResult<Entry> {
        self.check_writable()?;
        reject_reserved(newname)?;
        let inode = self.inode(ino)?;
        if inode.is_dir() {
            return Err(Errno::EPERM);
        }
        let parent = self.inode(newparent)?;
        if self.resolve(&parent, newname)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.copy_up(&inode)?;
        self.copy_up(&parent)?;
        let upper = self.layers.upper_idx()?;
        let (sdir, sname, _) = self.locate(&inode)?;
        // Both names are known from now on: an unlink of either leaves the other usable.
        let st = inode.state();
        self.link_names.note(inode.ino, st.parent_ino(), &st.name);
        let udir = self.dir_fd(&parent, upper)?;
        let cn = cname(newname)?;
        match self.upper_slot(udir.as_fd(), newname, &cn, true)? {
            UpperSlot::Whiteout => self.replace_whiteout(
                udir.as_fd(),
                &cn,
                false,
                |work, tmp| sys::linkat(sdir.as_fd(), &sname, work, tmp),
                |_, _| Ok(()),
            )?,
            slot => {
                sys::linkat(sdir.as_fd(), &sname, udir.as_fd(), &cn)?;
                if let UpperSlot::AufsWhiteout = slot {
                    Self::remove_aufs_whiteout(udir.as_fd(), newname)?;
                }
            }
        }
        let st = sys::fstatat(udir.as_fd(), &cn)?;
        Ok(self.enter_upper(&parent, newname, st))
    }
}
