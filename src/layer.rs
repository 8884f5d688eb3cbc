//! The layers: one upper (optional) and the lowers, each an `O_PATH` fd on its root.
//!
//! Layer index 0 is the upper when there is one; lowers follow top to bottom. All access
//! below a root goes through `*at` calls on fds that descend from that root one component at
//! a time (see `dircache`), never through a path string, so nothing escapes a layer.

use crate::error::{Errno, FsResult};
use crate::sys;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Index of a layer in `Layers::all`, top first (0 is the upper when there is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerIdx(u16);

impl LayerIdx {
    /// The top layer: the upper when there is one.
    pub const TOP: LayerIdx = LayerIdx(0);

    /// The `i`th layer from the top (`Layers::indexes` gives those of a real stack).
    #[cfg(test)]
    pub const fn new(i: u16) -> LayerIdx {
        LayerIdx(i)
    }

    /// The position in `Layers::all`.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

pub struct Layer {
    pub path: PathBuf,
    pub root: Arc<OwnedFd>,
    pub dev: u64,
}

impl Layer {
    /// Opens a lower's root, through a private read-only, noatime clone of its mount where
    /// the kernel allows it (real root): reading through the merged view then never touches a
    /// lower's atimes (readlink has no O_NOATIME), the daemon cannot write a lower even by
    /// mistake, and it does not keep the lower's mount point busy.
    /// `clone`: private clones are tried (real root); else the plain path is opened.
    fn open_lower(path: &Path, clone: bool) -> FsResult<Layer> {
        let c = cpath(path)?;
        if !clone {
            return Layer::from_fd(path, sys::open_path(&c, libc::O_PATH | libc::O_DIRECTORY)?);
        }
        let fd = match sys::clone_mount_readonly(&c) {
            Ok(fd) => fd,
            Err(e) => {
                log::debug!(
                    "lower '{}' used without a private mount ({e})",
                    path.display()
                );
                sys::open_dir(&c)?
            }
        };
        Layer::from_fd(path, fd)
    }

    fn from_fd(path: &Path, fd: OwnedFd) -> FsResult<Layer> {
        let st = sys::fstat(fd.as_fd())?;
        Ok(Layer {
            path: path.to_path_buf(),
            root: Arc::new(fd),
            dev: st.dev,
        })
    }

    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

pub struct Layers {
    pub all: Vec<Layer>,
    pub has_upper: bool,
}

fn cpath(p: &Path) -> FsResult<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Opens `rel` (a canonical relative path) below `root`, one component at a time.
fn open_below(root: &OwnedFd, rel: &Path) -> FsResult<OwnedFd> {
    let mut cur = sys::open_dir_at(root.as_fd(), sys::DOT)?;
    for comp in rel.components() {
        let c = CString::new(comp.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        cur = sys::open_dir_at(cur.as_fd(), &c)?;
    }
    Ok(cur)
}

/// The upper and work directories (canonical paths), reached through one private clone of
/// the mount they share where the kernel allows it (root): then unmounting that mount right
/// after unmounting layover never finds it busy, even while the daemon is still exiting.
/// Both must come from the same mount, or renames between them fail with EXDEV.
/// `clone`: a private clone is tried (real root); else the plain paths are opened.
pub fn open_upper_and_work(upper: &Path, work: &Path, clone: bool) -> FsResult<(OwnedFd, OwnedFd)> {
    let plain = || -> FsResult<(OwnedFd, OwnedFd)> {
        Ok((
            sys::open_dir(&cpath(upper)?)?,
            sys::open_dir(&cpath(work)?)?,
        ))
    };
    if !clone {
        return plain();
    }
    let mut common = upper.to_path_buf();
    while !work.starts_with(&common) {
        if !common.pop() {
            return plain();
        }
    }
    let shared = (|| -> FsResult<(OwnedFd, OwnedFd)> {
        let id = sys::mount_id(&cpath(&common)?)?;
        if sys::mount_id(&cpath(upper)?)? != id || sys::mount_id(&cpath(work)?)? != id {
            return Err(Errno::EXDEV);
        }
        let clone = sys::clone_mount(&cpath(&common)?)?;
        let rel = |p: &Path| {
            p.strip_prefix(&common)
                .map(Path::to_path_buf)
                .map_err(|_| Errno::EINVAL)
        };
        Ok((
            open_below(&clone, &rel(upper)?)?,
            open_below(&clone, &rel(work)?)?,
        ))
    })();
    match shared {
        Ok(fds) => Ok(fds),
        Err(e) => {
            log::debug!("upper and work used without a private mount ({e})");
            plain()
        }
    }
}

impl Layers {
    /// `upper`: its path and root fd (from `open_upper_and_work`). `clone`: lowers are
    /// opened through private clones of their mounts where the kernel allows it (real root).
    pub fn open(
        upper: Option<(&Path, OwnedFd)>,
        lowers: &[PathBuf],
        clone: bool,
    ) -> Result<Layers, (PathBuf, Errno)> {
        let mut all = Vec::new();
        let has_upper = upper.is_some();
        if let Some((u, fd)) = upper {
            all.push(Layer::from_fd(u, fd).map_err(|e| (u.to_path_buf(), e))?);
        }
        for l in lowers {
            if all.len() >= usize::from(u16::MAX) {
                return Err((l.clone(), Errno::EINVAL)); // LayerIdx is 16 bits
            }
            all.push(Layer::open_lower(l, clone).map_err(|e| (l.clone(), e))?);
        }
        Ok(Layers { all, has_upper })
    }

    /// Every layer opened for reading only, the upper (when given) as a lower is: through a
    /// private read-only, noatime clone of its mount where permitted (`clone`: real root),
    /// plainly otherwise. For
    /// offline tools, which must change nothing; the upper is still index 0.
    pub fn open_read_only(
        upper: Option<&Path>,
        lowers: &[PathBuf],
        clone: bool,
    ) -> Result<Layers, (PathBuf, Errno)> {
        let mut all = Vec::new();
        for l in upper.into_iter().chain(lowers.iter().map(PathBuf::as_path)) {
            all.push(Layer::open_lower(l, clone).map_err(|e| (l.to_path_buf(), e))?);
        }
        Ok(Layers {
            all,
            has_upper: upper.is_some(),
        })
    }

    pub fn get(&self, idx: LayerIdx) -> FsResult<&Layer> {
        self.all.get(idx.index()).ok_or(Errno::EIO)
    }

    pub fn is_upper(&self, idx: LayerIdx) -> bool {
        self.has_upper && idx == LayerIdx::TOP
    }

    /// Index of the upper layer, or EROFS for a read-only mount.
    pub fn upper_idx(&self) -> FsResult<LayerIdx> {
        if self.has_upper {
            Ok(LayerIdx::TOP)
        } else {
            Err(Errno::EROFS)
        }
    }

    /// `O_NOATIME` for a lower layer, 0 for the upper: reading a lower leaves its atimes
    /// alone, as the kernel's overlay does; the upper's atimes are the merged view's own.
    pub fn noatime(&self, idx: LayerIdx) -> i32 {
        if self.is_upper(idx) {
            0
        } else {
            libc::O_NOATIME
        }
    }

    /// Every layer's index, top first. (`Layers::open` refuses more than `u16::MAX`.)
    pub fn indexes(&self) -> impl Iterator<Item = LayerIdx> + use<> {
        (0..self.all.len()).map(|i| LayerIdx(u16::try_from(i).unwrap_or(u16::MAX)))
    }

    /// The layers with their indexes, top first.
    pub fn iter(&self) -> impl Iterator<Item = (LayerIdx, &Layer)> {
        self.indexes().zip(self.all.iter())
    }
}
