//! Questions about the merged view by path, for offline tools and tests: what a path names
//! (its attributes and the layers that supply it), a directory's merged listing, a link's
//! target, extended attributes. Each answer comes from the operations the daemon serves
//! (`lookup`, `getattr`, `opendir`/`readdir`, `readlink`, `getxattr`, `listxattr`), so the
//! rules exist once; this module only walks paths and copies plain data out.
//!
//! Paths are taken relative to the merged root (a leading `/` is allowed), component by
//! component as the kernel would look them up, without following any symlink: a symlink in
//! the middle of a path gives ENOTDIR, and `..` goes back to the component before it. The
//! lookup references a walk takes are released before an answer is returned, so queries
//! leave the inode table as they found it.

use super::xattr::XattrReply;
use super::{Caller, Overlay};
use crate::error::{Errno, FsResult};
use crate::handle::DirEntry;
use crate::inode::{Ino, Inode, ROOT_INO};
use crate::layer::LayerIdx;
use crate::sys::{self, Stat};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// An object of the merged view, found by path.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its inode number: what `st_ino` shows through a mount.
    pub ino: Ino,
    /// Its attributes, as getattr reports them through a mount.
    pub attr: Stat,
    /// The layers that supply it, top first (indexes into `Query::layers`): the first holds
    /// the object itself (its attributes, data, link target and xattrs); a merged directory
    /// lists every layer whose directory is merged into it.
    pub layers: Vec<LayerIdx>,
}

/// One layer of the stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    pub index: LayerIdx,
    /// The path the layer was opened from.
    pub path: PathBuf,
    /// The upper layer (index 0 when there is one); lowers follow top to bottom.
    pub upper: bool,
}

/// Path-based questions about an overlay (from `Overlay::query`).
pub struct Query<'a> {
    ov: &'a Overlay,
}

impl Overlay {
    /// Asks about the merged view by path.
    pub fn query(&self) -> Query<'_> {
        Query { ov: self }
    }
}

/// The lookup references taken along one path, released (forgotten) when dropped, on
/// success and on error alike.
struct Walk<'a> {
    ov: &'a Overlay,
    taken: Vec<Ino>,
}

impl Drop for Walk<'_> {
    fn drop(&mut self) {
        for ino in self.taken.drain(..).rev() {
            self.ov.forget(ino, 1);
        }
    }
}

impl Query<'_> {
    /// The layers of the stack, in index order.
    pub fn layers(&self) -> Vec<LayerInfo> {
        self.ov
            .layers
            .iter()
            .map(|(index, l)| LayerInfo {
                index,
                path: l.path.clone(),
                upper: self.ov.layers.is_upper(index),
            })
            .collect()
    }

    /// How many inodes the overlay holds (the root included): a walk leaves this unchanged.
    pub fn live_inodes(&self) -> usize {
        self.ov.inodes.live_count()
    }

    /// Looks `path` up (as the kernel would, one lookup per component) and runs `f` on the
    /// object it names; every reference taken is released afterwards.
    fn at<T>(&self, path: &Path, f: impl FnOnce(&Arc<Inode>) -> FsResult<T>) -> FsResult<T> {
        let mut walk = Walk {
            ov: self.ov,
            taken: Vec::new(),
        };
        let mut trail: Vec<Arc<Inode>> = vec![self.ov.inode(ROOT_INO)?];
        for comp in path.components() {
            match comp {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    if trail.len() > 1 {
                        trail.pop();
                    }
                }
                Component::Normal(name) => {
                    let parent = trail.last().map_or(ROOT_INO, |p| p.ino);
                    let entry = self.ov.lookup(parent, name.as_bytes())?;
                    walk.taken.push(entry.inode.ino);
                    trail.push(entry.inode);
                }
            }
        }
        let target = trail.last().ok_or(Errno::EIO)?;
        f(target)
    }

    /// What `path` names: its number, attributes (getattr) and the layers that supply it.
    pub fn resolve(&self, path: &Path) -> FsResult<Node> {
        self.at(path, |inode| {
            let attr = self.ov.getattr(inode.ino, None)?;
            let layers = inode.with_state(|s| s.layers.iter().map(|p| p.layer).collect());
            Ok(Node {
                ino: inode.ino,
                attr,
                layers,
            })
        })
    }

    /// The merged listing of directory `path` as readdir gives it, without `.` and `..`:
    /// each entry's name, number (d_ino), `DT_*` type and the layer whose entry won.
    pub fn list(&self, path: &Path) -> FsResult<Vec<DirEntry>> {
        self.at(path, |inode| {
            let fh = self.ov.opendir(inode.ino)?;
            let listing = self.ov.readdir(fh, 0);
            self.ov.releasedir(fh);
            Ok(listing?
                .iter()
                .filter(|e| e.name != b"." && e.name != b"..")
                .cloned()
                .collect())
        })
    }

    /// The target of symlink `path`.
    pub fn readlink(&self, path: &Path) -> FsResult<Vec<u8>> {
        self.at(path, |inode| self.ov.readlink(inode.ino))
    }

    /// The value of extended attribute `name` of `path`, as the merged view shows it (the
    /// overlay's private attributes are not there).
    pub fn getxattr(&self, path: &Path, name: &[u8]) -> FsResult<Vec<u8>> {
        self.at(path, |inode| {
            match self.ov.getxattr(inode.ino, name, u32::MAX)? {
                XattrReply::Data(v) => Ok(v),
                XattrReply::Size(_) => Err(Errno::EIO), // only asked for with size 0
            }
        })
    }

    /// The names of the extended attributes of `path`, as the merged view lists them to
    /// this process (`trusted.*` only with CAP_SYS_ADMIN; never the overlay's private ones).
    pub fn listxattr(&self, path: &Path) -> FsResult<Vec<Vec<u8>>> {
        self.at(path, |inode| {
            let ids = self.ov.privileges.ids; // this process: the tool asks as itself
            let me = Caller {
                uid: ids.uid,
                gid: ids.gid,
                pid: std::process::id(),
                umask: 0,
            };
            let list = match self.ov.listxattr(inode.ino, u32::MAX, &me)? {
                XattrReply::Data(v) => v,
                XattrReply::Size(_) => return Err(Errno::EIO), // only asked for with size 0
            };
            Ok(list
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
                .map(<[u8]>::to_vec)
                .collect())
        })
    }
}

// ---- One layer at a time -------------------------------------------------------------------
//
// The merged view answers *what* a path is; the tools also say *why*: which layer holds what
// at a name, and which whiteout or opaque marker is where. These helpers read one layer's
// directories raw (one component at a time from the layer's root, never following a
// symlink) and classify what they find with the rule functions lookup uses
// (`Overlay::is_whiteout`, the opaque xattr through `whiteout::opacity_from_value`,
// `Overlay::opacity` for the AUFS marker, `whiteout::aufs_*`): nothing here decides
// visibility, and no rule is restated.

/// A whiteout at a name, by format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WhiteoutKind {
    /// A character device 0/0 (what the kernel writes).
    CharDev,
    /// A zero-size file marked `overlay.whiteout` in a directory whose `overlay.opaque` is `x`.
    Xattr,
    /// No entry at the name, but an AUFS/OCI `.wh.NAME` file beside it.
    Aufs,
}

/// What makes a directory opaque.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpaqueBy {
    /// `overlay.opaque=y` (in the namespace the stack uses).
    Xattr,
    /// A `.wh..wh..opq` file inside it (AUFS/OCI).
    AufsMarker,
}

/// One entry of one layer, classified as lookup would read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerObj {
    Whiteout(WhiteoutKind, Stat),
    /// An AUFS/OCI `.wh.NAME` file (hidden from the merged view; hides NAME below).
    AufsWhiteout {
        hides: Vec<u8>,
        stat: Stat,
    },
    /// `.wh..wh..opq` (hidden; makes its directory opaque).
    AufsOpaque(Stat),
    /// Another `.wh.` name (`.wh..wh.*` AUFS metadata): hidden from the merged view.
    AufsMeta(Stat),
    Dir {
        stat: Stat,
        opaque: Option<OpaqueBy>,
        /// `overlay.opaque=x`: the directory may hold xattr whiteouts.
        xwhiteouts: bool,
    },
    /// Any other object (file, symlink, device, fifo, socket).
    Other(Stat),
}

impl LayerObj {
    pub fn stat(&self) -> &Stat {
        match self {
            LayerObj::Whiteout(_, s)
            | LayerObj::AufsWhiteout { stat: s, .. }
            | LayerObj::AufsOpaque(s)
            | LayerObj::AufsMeta(s)
            | LayerObj::Dir { stat: s, .. }
            | LayerObj::Other(s) => s,
        }
    }
}

/// Where a merged inode number comes from (`Query::ino_origin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InoOrigin {
    /// The top real object's inode number, unchanged.
    Real,
    /// The real number with this filesystem index in the high bits (layers on several
    /// filesystems).
    FsIndex(u64),
    /// A number of the inode table's own (the real one does not fit beside the index).
    Allocated,
}

/// A directory of one layer, opened raw (`O_PATH`), for the helpers below.
pub struct LayerDir {
    fd: std::os::fd::OwnedFd,
    pub layer: LayerIdx,
    /// The directory is marked `overlay.opaque=x` (its xattr whiteouts count).
    pub xwhiteouts: bool,
}

impl Query<'_> {
    /// Layer `layer`'s directory at `path` (relative to the layer root; `..` is refused),
    /// or None when a component is missing or not a directory in that layer.
    pub fn layer_dir(&self, layer: LayerIdx, path: &Path) -> FsResult<Option<LayerDir>> {
        use std::os::fd::AsFd;
        let root = self.ov.layers.get(layer)?;
        let mut fd = sys::open_dir_at(root.root_fd(), sys::DOT)?;
        for comp in path.components() {
            match comp {
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => return Err(Errno::EINVAL),
                Component::Normal(n) => {
                    match sys::open_dir_at(fd.as_fd(), &super::cname(n.as_bytes())?) {
                        Ok(sub) => fd = sub,
                        Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => return Ok(None),
                        Err(e) if e.raw() == libc::ELOOP => return Ok(None), // a symlink
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let (_, xwhiteouts) = self.dir_marks(fd.as_fd(), sys::DOT);
        Ok(Some(LayerDir {
            fd,
            layer,
            xwhiteouts,
        }))
    }

    /// Subdirectory `name` of a layer directory.
    pub fn layer_subdir(&self, dir: &LayerDir, name: &[u8]) -> FsResult<LayerDir> {
        use std::os::fd::AsFd;
        let fd = sys::open_dir_at(dir.fd.as_fd(), &super::cname(name)?)?;
        let (_, xwhiteouts) = self.dir_marks(fd.as_fd(), sys::DOT);
        Ok(LayerDir {
            fd,
            layer: dir.layer,
            xwhiteouts,
        })
    }

    /// What stands at `name` in a layer directory, None when nothing does. A missing name
    /// with a `.wh.NAME` beside it is `Whiteout(Aufs)`.
    pub fn layer_object(&self, dir: &LayerDir, name: &[u8]) -> FsResult<Option<LayerObj>> {
        use std::os::fd::AsFd;
        let cn = super::cname(name)?;
        match sys::fstatat(dir.fd.as_fd(), &cn) {
            Ok(st) => Ok(Some(self.classify_raw(dir, name, st)?)),
            Err(e) if e == Errno::ENOENT => {
                if Overlay::has_aufs_whiteout(dir.fd.as_fd(), name) {
                    let wh = whiteout_name(name)?;
                    let st = sys::fstatat(dir.fd.as_fd(), &wh)?;
                    Ok(Some(LayerObj::Whiteout(WhiteoutKind::Aufs, st)))
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Every entry of a layer directory (without `.` and `..`), classified, in the order
    /// the filesystem returns them. `.wh.` names are listed as themselves.
    pub fn layer_entries(&self, dir: &LayerDir) -> FsResult<Vec<(Vec<u8>, LayerObj)>> {
        use std::os::fd::AsFd;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | self.ov.layers.noatime(dir.layer);
        let rd = sys::openat(dir.fd.as_fd(), sys::DOT, flags, 0)?;
        let mut out = Vec::new();
        for e in sys::read_dir_entries(rd.as_fd())? {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let Ok(st) = sys::fstatat(dir.fd.as_fd(), &super::cname(&e.name)?) else {
                continue; // vanished since getdents
            };
            let obj = self.classify_raw(dir, &e.name, st)?;
            out.push((e.name, obj));
        }
        Ok(out)
    }

    /// The real extended attributes of `name` in a layer directory (private ones included),
    /// sorted by name.
    pub fn layer_xattrs(&self, dir: &LayerDir, name: &[u8]) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::os::fd::AsFd;
        let cn = super::cname(name)?;
        let mut out = Vec::new();
        for n in sys::listxattr_names(dir.fd.as_fd(), &cn)? {
            let Ok(attr) = super::cname(&n) else { continue };
            match sys::getxattr_vec(dir.fd.as_fd(), &cn, &attr) {
                Ok(v) => out.push((n, v)),
                Err(e) if e == Errno::ENODATA => {}
                Err(e) => return Err(e),
            }
        }
        out.sort();
        Ok(out)
    }

    /// `name` in a layer directory opened for reading (no symlink followed, no atime
    /// touched in a lower).
    pub fn layer_open(&self, dir: &LayerDir, name: &[u8]) -> FsResult<std::fs::File> {
        use std::os::fd::AsFd;
        let flags = libc::O_RDONLY | self.ov.layers.noatime(dir.layer);
        let fd = sys::openat(dir.fd.as_fd(), &super::cname(name)?, flags, 0)?;
        Ok(std::fs::File::from(fd))
    }

    /// The target of symlink `name` in a layer directory.
    pub fn layer_readlink(&self, dir: &LayerDir, name: &[u8]) -> FsResult<Vec<u8>> {
        use std::os::fd::AsFd;
        sys::readlinkat(dir.fd.as_fd(), &super::cname(name)?)
    }

    /// The xattr namespace of the overlay's own markers for this stack.
    pub fn xattr_ns(&self) -> crate::config::XattrNs {
        self.ov.xattr_ns()
    }

    /// How the merged view's number `ino` was made from the top real object `real`: the
    /// real number itself (the first filesystem of the stack), the real number with the
    /// filesystem's index in the high bits, or a number allocated by the inode table (the
    /// real one does not fit). Read back from the number, with the table's own shift.
    pub fn ino_origin(&self, real: &Stat, ino: Ino) -> InoOrigin {
        let shift = crate::inode::FS_INDEX_SHIFT;
        let low = ino.0 & ((1u64 << shift) - 1);
        if ino.0 == real.ino {
            InoOrigin::Real
        } else if low == real.ino && ino.0 >> shift < 127 {
            InoOrigin::FsIndex(ino.0 >> shift)
        } else {
            InoOrigin::Allocated
        }
    }

    fn classify_raw(&self, dir: &LayerDir, name: &[u8], st: Stat) -> FsResult<LayerObj> {
        use std::os::fd::AsFd;
        if crate::whiteout::is_aufs_special(name) {
            return Ok(if name == crate::whiteout::OPAQUE_MARKER {
                LayerObj::AufsOpaque(st)
            } else if let Some(h) = crate::whiteout::aufs_hidden_name(name) {
                LayerObj::AufsWhiteout {
                    hides: h.to_vec(),
                    stat: st,
                }
            } else {
                LayerObj::AufsMeta(st)
            });
        }
        let cn = super::cname(name)?;
        if st.is_dir() {
            let (opaque, xwhiteouts) = self.dir_marks(dir.fd.as_fd(), &cn);
            return Ok(LayerObj::Dir {
                stat: st,
                opaque,
                xwhiteouts,
            });
        }
        if self
            .ov
            .is_whiteout(dir.fd.as_fd(), &cn, &st, dir.xwhiteouts)
        {
            let kind = if crate::whiteout::is_whiteout_dev(&st) {
                WhiteoutKind::CharDev
            } else {
                WhiteoutKind::Xattr
            };
            return Ok(LayerObj::Whiteout(kind, st));
        }
        Ok(LayerObj::Other(st))
    }

    /// A directory's opaque marking: which marker makes it opaque, and whether it is `x`
    /// (lookup's `Overlay::dir_marks` decides; the xattr is read again only to say which
    /// marker it was: an opaque directory whose xattr is not `y` is opaque through the AUFS
    /// marker).
    fn dir_marks(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &std::ffi::CStr,
    ) -> (Option<OpaqueBy>, bool) {
        use crate::whiteout::{Opacity, opacity_from_value};
        let marks = self.ov.dir_marks(dir, name);
        if !marks.opaque {
            return (None, marks.xwhiteouts);
        }
        let mut buf = [0u8; 8];
        let by_xattr = sys::getxattrat(dir, name, self.ov.opaque_name(), &mut buf)
            .is_ok_and(|n| opacity_from_value(&buf[..n]) == Opacity::Opaque);
        let by = if by_xattr {
            OpaqueBy::Xattr
        } else {
            OpaqueBy::AufsMarker
        };
        (Some(by), marks.xwhiteouts)
    }
}

fn whiteout_name(name: &[u8]) -> FsResult<std::ffi::CString> {
    let wh = crate::whiteout::aufs_whiteout_for(name).ok_or(Errno::ENAMETOOLONG)?;
    super::cname(&wh)
}
