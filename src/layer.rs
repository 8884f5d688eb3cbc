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

/// Index of a layer in `Layers::all` (0 is the upper when there is one).
pub type LayerIdx = u16;

pub struct Layer {
    pub path: PathBuf,
    pub root: Arc<OwnedFd>,
    pub dev: u64,
}

impl Layer {
    /// Opens a layer's root. A lower is reached through a private read-only, noatime clone
    /// of its mount where the kernel allows it (root): reading through the merged view then
    /// never touches a lower's atimes (readlink has no O_NOATIME), the daemon cannot write a
    /// lower even by mistake, and it does not keep the lower's mount point busy.
    fn open(path: &Path, lower: bool) -> FsResult<Layer> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        let fd = match lower.then(|| sys::clone_mount_readonly(&c)) {
            Some(Ok(fd)) => fd,
            Some(Err(e)) => {
                log::debug!(
                    "lower '{}' used without a private mount ({e})",
                    path.display()
                );
                sys::open_path(&c, libc::O_PATH | libc::O_DIRECTORY)?
            }
            None => sys::open_path(&c, libc::O_PATH | libc::O_DIRECTORY)?,
        };
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

impl Layers {
    pub fn open(upper: Option<&Path>, lowers: &[PathBuf]) -> Result<Layers, (PathBuf, Errno)> {
        let mut all = Vec::new();
        if let Some(u) = upper {
            all.push(Layer::open(u, false).map_err(|e| (u.to_path_buf(), e))?);
        }
        for l in lowers {
            all.push(Layer::open(l, true).map_err(|e| (l.clone(), e))?);
        }
        Ok(Layers {
            all,
            has_upper: upper.is_some(),
        })
    }

    pub fn get(&self, idx: LayerIdx) -> FsResult<&Layer> {
        self.all.get(idx as usize).ok_or(Errno::EIO)
    }

    pub fn is_upper(&self, idx: LayerIdx) -> bool {
        self.has_upper && idx == 0
    }

    /// Index of the upper layer, or EROFS for a read-only mount.
    pub fn upper_idx(&self) -> FsResult<LayerIdx> {
        if self.has_upper {
            Ok(0)
        } else {
            Err(Errno::EROFS)
        }
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }
}
