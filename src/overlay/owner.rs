//! Where an object's owner and mode live: on its inode, or in an override_stat xattr
//! (`xattr_permissions=`, containers-storage's attribute; the format and the rules are
//! `idmap::stat_xattr`'s). Which attributes a layer's objects carry is decided once, from
//! the layer roots, when the overlay is built; here they are read, applied and written.
//! Ids in the attributes are ids on disk: `IdMap::to_shown` maps them like an inode's.

use super::Overlay;
use crate::error::{Errno, FsResult};
use crate::idmap::IdMap;
use crate::idmap::stat_xattr::{self, Override, StatXattr};
use crate::layer::{LayerIdx, Layers};
use crate::sys::{self, Stat};
use std::ffi::CStr;
use std::os::fd::BorrowedFd;

/// An override_stat attribute and the value to write to it.
pub(super) type AttrValue = (StatXattr, Vec<u8>);

/// The attributes honoured per layer, and the one chown and chmod write on the upper.
pub(super) struct StatXattrs {
    per_layer: Box<[Box<[StatXattr]>]>,
    written: Option<StatXattr>,
    /// Some layer's objects carry them (else nothing is ever looked at: the common case).
    any: bool,
}

impl StatXattrs {
    /// Asks each layer root which attributes it carries (`IdMap::stat_xattrs_of_layer`).
    pub(super) fn of_layers(ids: &IdMap, layers: &Layers) -> StatXattrs {
        let per_layer: Box<[Box<[StatXattr]>]> = layers
            .iter()
            .map(|(idx, l)| {
                let root_has = |x: StatXattr| {
                    sys::getxattrat(l.root_fd(), sys::DOT, x.name(), &mut []).is_ok()
                };
                ids.stat_xattrs_of_layer(layers.is_upper(idx), root_has)
                    .into_boxed_slice()
            })
            .collect();
        let written = match layers.upper_idx() {
            Ok(u) => ids.stat_xattr_written(&per_layer[u.index()]),
            Err(_) => None,
        };
        let any = per_layer.iter().any(|l| !l.is_empty());
        StatXattrs {
            per_layer,
            written,
            any,
        }
    }

    fn of(&self, layer: LayerIdx) -> &[StatXattr] {
        self.per_layer.get(layer.index()).map_or(&[], |b| b)
    }
}

/// The permission bits a real object keeps while its owner and mode live in an xattr: its
/// owner (the daemon) may always read and write it (search a directory); no set-id bits.
fn usable_perm(kind: u32, perm: u32) -> u32 {
    let own = if kind == libc::S_IFDIR { 0o700 } else { 0o600 };
    (perm & 0o777) | own
}

impl Overlay {
    /// Whether any layer's objects may carry an override (checked before anything else).
    pub(super) fn any_stat_xattrs(&self) -> bool {
        self.stat_xattrs.any
    }

    /// Whether an object of `layer` with attributes `st` may have an override to read.
    pub(super) fn overridable(&self, layer: LayerIdx, st: &Stat) -> bool {
        !self.stat_xattrs.of(layer).is_empty() && stat_xattr::applies_to(st.mode)
    }

    /// The override of the object `name` in `dir` (with real attributes `st`) in `layer`:
    /// the first attribute of the layer's that it carries. None where the layer's objects
    /// carry none, for other types than directories and regular files, and for a malformed
    /// value (logged: the inode's own attributes are shown).
    pub(super) fn stat_override(
        &self,
        layer: LayerIdx,
        dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
    ) -> Option<Override> {
        if !self.overridable(layer, st) {
            return None;
        }
        self.read_override(layer, dir, name)
    }

    /// The override of `name` in `dir` in `layer`, whatever its type (the caller knows it
    /// is a directory or a regular file).
    fn read_override(&self, layer: LayerIdx, dir: BorrowedFd<'_>, name: &CStr) -> Option<Override> {
        let names = self.stat_xattrs.of(layer);
        let mut buf = [0u8; 128];
        for x in names {
            match sys::getxattrat(dir, name, x.name(), &mut buf) {
                Ok(n) => {
                    let v = &buf[..n];
                    let o = stat_xattr::parse(v);
                    if o.is_none() {
                        log::debug!("{:?}: malformed value {v:?} ignored", x.name());
                    }
                    return o;
                }
                Err(e) if e == Errno::ENODATA => continue,
                Err(e) => {
                    log::debug!(
                        "{:?}: cannot read it ({e}); the inode's attributes shown",
                        x.name()
                    );
                    return None;
                }
            }
        }
        None
    }

    /// The `DT_*` type a listing gives the regular file `name` in `dir` in `layer` (that
    /// getdents calls `DT_REG`): another where its override shows it as a device, pipe or
    /// socket, as stat does. Costs one xattr read per regular file, and only in layers whose
    /// objects carry overrides; nothing elsewhere.
    pub(super) fn listed_reg_dtype(&self, layer: LayerIdx, dir: BorrowedFd<'_>, name: &[u8]) -> u8 {
        if self.stat_xattrs.of(layer).is_empty() {
            return libc::DT_REG;
        }
        let Ok(name) = super::cname(name) else {
            return libc::DT_REG;
        };
        match self
            .read_override(layer, dir, &name)
            .and_then(|o| o.special_kind())
        {
            Some((t, _)) => sys::dtype_of_mode(t),
            None => libc::DT_REG,
        }
    }

    /// Whether a special file of type `kind` (device, pipe, socket) that the daemon cannot
    /// make as asked (EPERM: a device without CAP_MKNOD in the initial user namespace, a
    /// pipe it cannot give the caller's owner) is kept in a regular file whose override
    /// names its type, as containers-storage's `force_mask` keeps those of an image: where
    /// the upper keeps owners and modes in an attribute.
    pub(super) fn keeps_special_in_files(&self, kind: u32) -> bool {
        matches!(
            kind,
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK
        ) && self.owner_xattr(libc::S_IFREG).is_some()
    }

    /// `st` with the owner and mode its override keeps, type included (what is shown).
    pub(super) fn with_override(
        &self,
        layer: LayerIdx,
        dir: BorrowedFd<'_>,
        name: &CStr,
        st: Stat,
    ) -> Stat {
        match self.stat_override(layer, dir, name, &st) {
            Some(o) => o.apply(st),
            None => st,
        }
    }

    /// What copy-up gives the copy of `src` (the real object `name` in `dir` in `layer`):
    /// the attributes for the copy's inode, and the override_stat value to write on it.
    /// Where the upper keeps owners in an attribute, the copy's inode gets the daemon's ids
    /// and a usable mode, and the attribute the owner and mode `src` shows (its own
    /// override's, device type included). Otherwise root gives the inode the owner and mode
    /// shown (as fuse-overlayfs does); an ordinary user's daemon, which could not, copies the
    /// inode's own and carries the attributes as they are. A device, pipe or socket kept in
    /// a regular file is not copied to such an upper (EPERM): the copy would be a regular
    /// file there, its type lost (its number could not stay either: the inode's type is its
    /// real one). The kernel's overlayfs gives EPERM too for a device it cannot make.
    pub(super) fn copy_up_attrs(
        &self,
        layer: LayerIdx,
        (dir, name): (BorrowedFd<'_>, &CStr),
        src: Stat,
    ) -> FsResult<(Stat, Option<AttrValue>)> {
        let over = self.stat_override(layer, dir, name, &src);
        let kind = src.file_type();
        let shown = over.map_or(src, |o| Stat {
            uid: o.uid,
            gid: o.gid,
            mode: kind | o.perm,
            ..src
        });
        match self.owner_xattr(kind) {
            Some(x) => {
                let v = x.format(
                    shown.uid,
                    shown.gid,
                    shown.mode,
                    over.and_then(|o| o.special_kind()),
                );
                let daemon = self.privileges.ids;
                let inode = Stat {
                    uid: daemon.uid,
                    gid: daemon.gid,
                    mode: kind | usable_perm(kind, shown.mode),
                    ..src
                };
                Ok((inode, Some((x, v))))
            }
            None if over.and_then(|o| o.special_kind()).is_some() => Err(Errno::EPERM),
            None if self.privileges.any_owner() => Ok((shown, None)),
            None => Ok((src, None)),
        }
    }

    /// Whether copy-up leaves the override_stat attributes of the source behind: when the
    /// upper keeps owners in one, copy-up writes that one (`copy_up_attrs`), and a copied
    /// other one could hide it.
    pub(super) fn writes_stat_xattrs(&self) -> bool {
        self.stat_xattrs.written.is_some()
    }

    /// The attribute that holds the owner and mode of an upper object of type `kind`
    /// instead of its inode; None: the inode does.
    pub(super) fn owner_xattr(&self, kind: u32) -> Option<StatXattr> {
        self.stat_xattrs
            .written
            .filter(|_| stat_xattr::applies_to(kind))
    }

    /// The mode to create a real object of type `kind` with, that should have `mode`: a
    /// usable one when its owner and mode go to an xattr.
    pub(super) fn real_create_mode(&self, kind: u32, mode: u32) -> u32 {
        match self.owner_xattr(kind) {
            Some(_) => usable_perm(kind, mode),
            None => mode,
        }
    }

    /// Writes owner `uid`:`gid` (on disk) and `mode` (the real type and the permission bits
    /// to show) of the upper object `name` in `dir` to attribute `x`; `kind`: the type shown
    /// when another (a device kept in a regular file).
    pub(super) fn write_owner_xattr(
        &self,
        x: StatXattr,
        (dir, name): (BorrowedFd<'_>, &CStr),
        (uid, gid, mode): (u32, u32, u32),
        kind: Option<(u32, u64)>,
    ) -> FsResult<()> {
        let v = x.format(uid, gid, mode, kind);
        sys::setxattrat(dir, name, x.name(), &v, 0)
    }

    /// At mount, an upper whose chown and chmod go to an attribute gets it on its root when
    /// it has none, holding the root's own owner and mode (as fuse-overlayfs does): another
    /// mount, by fuse-overlayfs or layover, then reads the upper's objects alike.
    pub(super) fn mark_upper_root(&self) -> FsResult<()> {
        let (Some(x), Ok(upper)) = (self.stat_xattrs.written, self.layers.upper_idx()) else {
            return Ok(());
        };
        let root = self.layers.get(upper)?.root_fd();
        if sys::getxattrat(root, sys::DOT, x.name(), &mut []).is_ok() {
            return Ok(());
        }
        let st = sys::fstat(root)?;
        self.write_owner_xattr(x, (root, sys::DOT), (st.uid, st.gid, st.mode), None)
    }

    /// chown and chmod of an upper directory or regular file whose owner and mode live in
    /// attribute `x`: the new values are written there and the inode is left alone. A chown
    /// clears set-user-ID, and set-group-ID with group execute, of a non-directory, as a
    /// filesystem does.
    pub(super) fn setattr_in_xattr(
        &self,
        x: StatXattr,
        at: (BorrowedFd<'_>, &CStr),
        ids: (Option<u32>, Option<u32>),
        mode: Option<u32>,
    ) -> FsResult<()> {
        let upper = self.layers.upper_idx()?;
        let st = sys::fstatat(at.0, at.1)?;
        let o = self.stat_override(upper, at.0, at.1, &st);
        let (mut uid, mut gid, mut perm) = match o {
            Some(o) => (o.uid, o.gid, o.perm),
            None => (st.uid, st.gid, st.mode & 0o7777),
        };
        if ids.0.is_some() || ids.1.is_some() {
            uid = ids.0.unwrap_or(uid);
            gid = ids.1.unwrap_or(gid);
            if !st.is_dir() {
                perm &= !libc::S_ISUID;
                if perm & libc::S_IXGRP != 0 {
                    perm &= !libc::S_ISGID;
                }
            }
        }
        if let Some(m) = mode {
            perm = m & 0o7777;
        }
        let kind = o.and_then(|o| o.special_kind());
        self.write_owner_xattr(x, at, (uid, gid, st.file_type() | perm), kind)
    }
}
