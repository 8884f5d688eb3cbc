//! Finding a name in the layers, as the kernel's ovl_lookup does: the upper first, then the
//! lowers top to bottom; a non-directory or a whiteout ends the search; a directory merges
//! with directories below it until a layer holds a non-directory or it is opaque.

use super::{Entry, Overlay, cname};
use crate::error::{Errno, FsResult};
use crate::inode::{Ino, Inode, InodeState, Presence, PresenceList, RealId};
use crate::sys::{self, Stat};
use crate::whiteout::{self, Opacity};
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

/// What a layer's directory is marked as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct DirMarks {
    /// Hides the layers below (`opaque=y`, or `.wh..wh..opq` inside).
    pub opaque: bool,
    /// Holds xattr whiteouts (`opaque=x`).
    pub xwhiteouts: bool,
}

/// The result of resolving one name in a directory.
pub struct Found {
    /// Layers holding the object, top first (several only for a merged directory).
    pub layers: Vec<Presence>,
    /// The top object's attributes.
    pub stat: Stat,
}

impl Overlay {
    /// What the markers of directory `name` (relative to `dir`) say: the overlay's opaque
    /// xattr (`y` opaque, `x` holds xattr whiteouts) and the AUFS opaque marker inside it,
    /// which makes it opaque whatever the xattr says (an `x` directory with the marker is
    /// both: its xattr whiteouts are still whiteouts).
    pub(super) fn dir_marks(&self, dir: BorrowedFd<'_>, name: &CStr) -> DirMarks {
        let mut buf = [0u8; 8];
        let op = match sys::getxattrat(dir, name, self.opaque_name(), &mut buf) {
            Ok(n) => whiteout::opacity_from_value(&buf[..n]),
            Err(_) => Opacity::None,
        };
        let marks = DirMarks {
            opaque: op == Opacity::Opaque,
            xwhiteouts: op == Opacity::XWhiteouts,
        };
        if marks.opaque {
            return marks;
        }
        // `.wh..wh..opq` inside the directory (OCI/AUFS layers).
        let marker = sys::open_dir_at(dir, name).is_ok_and(|sub| {
            sys::fstatat(
                sub.as_fd(),
                &cname(whiteout::OPAQUE_MARKER).unwrap_or_default(),
            )
            .is_ok()
        });
        DirMarks {
            opaque: marker,
            ..marks
        }
    }

    /// Is `st` (named `name` in `dir`) a whiteout of any format? (`xwh`: xattr whiteouts
    /// count, as in a directory marked as holding them.)
    pub(super) fn is_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        xwh: bool,
    ) -> bool {
        if whiteout::is_whiteout_dev(st) {
            return true;
        }
        xwh && st.is_reg()
            && st.size == 0
            && sys::getxattrat(
                dir,
                name,
                whiteout::xattr_names(self.xattr_ns()).whiteout,
                &mut [],
            )
            .is_ok()
    }

    /// Is there an AUFS `.wh.NAME` whiteout for `name` in `dir`?
    pub(super) fn has_aufs_whiteout(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
        match whiteout::aufs_whiteout_for(name).and_then(|n| cname(&n).ok()) {
            Some(wh) => sys::fstatat(dir, &wh).is_ok(),
            None => false,
        }
    }

    /// Resolves `name` in the directory `parent`. `Ok(None)`: the name does not exist in the
    /// merged view.
    pub(crate) fn resolve(&self, parent: &Arc<Inode>, name: &[u8]) -> FsResult<Option<Found>> {
        if !parent.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if whiteout::is_aufs_special(name) {
            return Ok(None);
        }
        let cn = cname(name)?;
        let players: Vec<Presence> = parent.with_state(|s| s.layers.to_vec());
        let mut found: Option<Found> = None;
        for (i, p) in players.iter().enumerate() {
            let dirfd = self.dir_fd(parent, p.layer)?;
            let dir = dirfd.as_fd();
            let st = match sys::fstatat(dir, &cn) {
                Ok(st) => st,
                Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => {
                    // A `.wh.NAME` hides the layers below; below the last there are none.
                    if i + 1 < players.len() && Self::has_aufs_whiteout(dir, name) {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.is_whiteout(dir, &cn, &st, p.xwhiteouts) {
                break;
            }
            if !st.is_dir() {
                // A non-directory is the object when nothing was found above it; below a
                // directory it ends the merge.
                if found.is_none() {
                    let layers = vec![Presence {
                        layer: p.layer,
                        xwhiteouts: false,
                    }];
                    return Ok(Some(Found { layers, stat: st }));
                }
                break;
            }
            // A directory: the top one gives the attributes; it merges with those below it
            // until one is opaque.
            let f = found.get_or_insert_with(|| Found {
                layers: Vec::new(),
                stat: st,
            });
            let marks = self.dir_marks(dir, &cn);
            f.layers.push(Presence {
                layer: p.layer,
                xwhiteouts: marks.xwhiteouts,
            });
            if marks.opaque {
                break;
            }
        }
        Ok(found)
    }

    /// Takes a lookup reference on the object `found` as `name` in `parent`.
    pub(super) fn enter(&self, parent: &Arc<Inode>, name: &[u8], found: Found) -> Entry {
        let found = self.settle_copied_up(parent, name, found);
        let real = RealId::of(&found.stat);
        let kind = found.stat.file_type();
        let layers: PresenceList = found.layers.into();
        let inode = self.inodes.lookup(real, kind, |ino| {
            Inode::new(
                ino,
                kind,
                InodeState {
                    parent: Some(Arc::clone(parent)),
                    name: name.into(),
                    layers: layers.clone(),
                    real,
                },
            )
        });
        if inode.is_detached() {
            // Known by a name again (another link of an object whose name was removed).
            inode.update(|s| {
                s.parent = Some(Arc::clone(parent));
                s.name = name.into();
                inode.set_detached(false);
            });
        }
        if kind != libc::S_IFDIR && found.stat.nlink > 1 {
            self.link_names.note(inode.ino, parent.ino, name);
        }
        let attr = self.present_attr(&inode, found.stat);
        Entry { inode, attr }
    }

    /// A lookup that found the lower object while another thread's copy-up of the same
    /// name finished: the inode known by this name is already the upper copy. Entering the
    /// lower identity would make a second inode for the name, whose first write would copy
    /// it up again (EEXIST). Take the copy's identity and attributes instead. (Another name
    /// of a lower hard link keeps the lower identity: its name differs.)
    fn settle_copied_up(&self, parent: &Arc<Inode>, name: &[u8], found: Found) -> Found {
        let real = RealId::of(&found.stat);
        let Some(existing) = self.inodes.get(self.inodes.numbers.number(real)) else {
            return found;
        };
        // The common case (the same object looked up again) stops here, copying nothing.
        let stale = existing.kind == found.stat.file_type()
            && existing.with_state(|s| {
                s.real != real
                    && !existing.is_detached()
                    && s.parent.as_ref().is_some_and(|p| p.ino == parent.ino)
                    && *s.name == *name
            });
        if !stale {
            return found;
        }
        match self
            .locate(&existing)
            .and_then(|(dir, cn, _)| sys::fstatat(dir.as_fd(), &cn))
        {
            Ok(st) if existing.with_state(|s| s.real == RealId::of(&st)) => Found {
                layers: existing.with_state(|s| s.layers.to_vec()),
                stat: st,
            },
            _ => found,
        }
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Entry> {
        let parent = self.inode(parent)?;
        let found = self.resolve(&parent, name)?.ok_or(Errno::ENOENT)?;
        Ok(self.enter(&parent, name, found))
    }
}
