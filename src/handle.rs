//! Open files and directory streams, by the handle number the kernel gives back to us.
//! (How the transport serves an open file's data, passthrough or cached, is the
//! transport's: see `fuse::passthrough`.)

use crate::inode::{Ino, Inode};
use dashmap::DashMap;
use parking_lot::Mutex;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A file handle: the number the transport gives back to name an open file or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

impl std::fmt::Display for Fh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An open regular file.
pub struct FileHandle {
    pub inode: Arc<Inode>,
    /// The real file, and the inode's `data_gen` when it was opened. Replaced (not mutated)
    /// when the data moved by copy-up; the lock is held only to clone or swap the Arc.
    pub file: Mutex<(Arc<OwnedFd>, u64)>,
    /// Open flags as the caller gave them.
    pub flags: i32,
    /// How the real file is opened (kept for re-opening it after a copy-up).
    pub opts: crate::overlay::OpenOpts,
}

impl FileHandle {
    pub fn current(&self) -> (Arc<OwnedFd>, u64) {
        let g = self.file.lock();
        (Arc::clone(&g.0), g.1)
    }

    pub fn replace(&self, fd: Arc<OwnedFd>, generation: u64) {
        *self.file.lock() = (fd, generation);
    }
}

/// One merged entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    /// `DT_*` value.
    pub d_type: u8,
    /// The layer whose entry won (for readdirplus).
    pub layer: crate::layer::LayerIdx,
}

/// An open directory: its merged listing, built on the first readdir.
pub struct DirHandle {
    pub inode: Arc<Inode>,
    pub entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
}

#[derive(Default)]
pub struct HandleTable {
    files: DashMap<Fh, Arc<FileHandle>>,
    dirs: DashMap<Fh, Arc<DirHandle>>,
    next: AtomicU64,
}

impl HandleTable {
    fn next(&self) -> Fh {
        Fh(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub fn add_file(&self, h: FileHandle) -> Fh {
        let fh = self.next();
        self.files.insert(fh, Arc::new(h));
        fh
    }

    pub fn file(&self, fh: Fh) -> Option<Arc<FileHandle>> {
        self.files.get(&fh).map(|r| Arc::clone(r.value()))
    }

    /// Every open handle of inode `ino` (a scan of the open files).
    pub fn files_of(&self, ino: Ino) -> Vec<Fh> {
        self.files
            .iter()
            .filter(|e| e.value().inode.ino == ino)
            .map(|e| *e.key())
            .collect()
    }

    /// Some open handle of inode `ino` (a scan: only for objects that lost their name).
    pub fn any_file_of(&self, ino: Ino) -> Option<Fh> {
        self.files
            .iter()
            .find(|e| e.value().inode.ino == ino)
            .map(|e| *e.key())
    }

    pub fn remove_file(&self, fh: Fh) -> Option<Arc<FileHandle>> {
        self.files.remove(&fh).map(|(_, v)| v)
    }

    pub fn add_dir(&self, h: DirHandle) -> Fh {
        let fh = self.next();
        self.dirs.insert(fh, Arc::new(h));
        fh
    }

    pub fn dir(&self, fh: Fh) -> Option<Arc<DirHandle>> {
        self.dirs.get(&fh).map(|r| Arc::clone(r.value()))
    }

    /// How many files and directory streams are open.
    pub fn counts(&self) -> (usize, usize) {
        (self.files.len(), self.dirs.len())
    }

    pub fn remove_dir(&self, fh: Fh) {
        self.dirs.remove(&fh);
    }
}
