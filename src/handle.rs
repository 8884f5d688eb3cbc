//! Open files and directory streams, by the handle number the kernel gives back to us.

use crate::inode::Inode;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// An open regular file.
pub struct FileHandle {
    pub inode: Arc<Inode>,
    /// The real file, and the inode's `data_gen` when it was opened. Replaced (not mutated)
    /// when the data moved by copy-up; the lock is held only to clone or swap the Arc.
    pub file: Mutex<(Arc<OwnedFd>, u64)>,
    /// Open flags as the caller gave them.
    pub flags: i32,
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
    pub ino: u64,
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
    files: DashMap<u64, Arc<FileHandle>>,
    dirs: DashMap<u64, Arc<DirHandle>>,
    next: AtomicU64,
}

impl HandleTable {
    fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn add_file(&self, h: FileHandle) -> u64 {
        let fh = self.next();
        self.files.insert(fh, Arc::new(h));
        fh
    }

    pub fn file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.get(&fh).map(|r| Arc::clone(r.value()))
    }

    pub fn remove_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.remove(&fh).map(|(_, v)| v)
    }

    pub fn add_dir(&self, h: DirHandle) -> u64 {
        let fh = self.next();
        self.dirs.insert(fh, Arc::new(h));
        fh
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        self.dirs.get(&fh).map(|r| Arc::clone(r.value()))
    }

    pub fn remove_dir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }
}
