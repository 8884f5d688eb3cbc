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
use crate::sys::Stat;
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
