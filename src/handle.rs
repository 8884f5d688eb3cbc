//! Open files and directory streams, by the handle number the kernel gives back to us.

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
    /// The kernel reads and writes the real file directly (FUSE passthrough).
    pub passthrough: std::sync::atomic::AtomicBool,
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

    pub fn remove_dir(&self, fh: Fh) {
        self.dirs.remove(&fh);
    }
}

/// Open modes per inode. The kernel refuses to mix passthrough opens and page-cached opens
/// of one inode (ETXTBSY), so an open is passthrough only while no cached open exists.
#[derive(Default)]
pub struct IoModes {
    /// ino -> (cached opens, passthrough opens)
    map: DashMap<Ino, (u32, u32)>,
}

impl IoModes {
    /// Registers an open; returns whether it may be passthrough.
    pub fn begin(&self, ino: Ino, want_passthrough: bool) -> bool {
        let mut e = self.map.entry(ino).or_default();
        if want_passthrough && e.0 == 0 {
            e.1 += 1;
            true
        } else {
            e.0 += 1;
            false
        }
    }

    pub fn end(&self, ino: Ino, passthrough: bool) {
        self.map.remove_if_mut(&ino, |_, e| {
            if passthrough {
                e.1 = e.1.saturating_sub(1);
            } else {
                e.0 = e.0.saturating_sub(1);
            }
            *e == (0, 0)
        });
    }
}

/// The backing file of an inode's passthrough opens: the kernel wants the same one for all
/// of them. Counted; dropped (which closes it in the kernel) with the last open.
pub struct Backings<B> {
    map: DashMap<Ino, (Arc<B>, u32)>,
}

impl<B> Default for Backings<B> {
    fn default() -> Self {
        Backings {
            map: DashMap::new(),
        }
    }
}

impl<B> Backings<B> {
    /// The inode's backing, made with `make` (a syscall, run without any lock) if it has none.
    pub fn acquire<E>(&self, ino: Ino, make: impl FnOnce() -> Result<B, E>) -> Result<Arc<B>, E> {
        if let Some(mut e) = self.map.get_mut(&ino) {
            e.1 += 1;
            return Ok(Arc::clone(&e.0));
        }
        let made = Arc::new(make()?);
        let mut e = self
            .map
            .entry(ino)
            .or_insert_with(|| (Arc::clone(&made), 0));
        e.1 += 1;
        Ok(Arc::clone(&e.0))
    }

    pub fn release(&self, ino: Ino) {
        let gone = self.map.remove_if_mut(&ino, |_, e| {
            e.1 = e.1.saturating_sub(1);
            e.1 == 0
        });
        drop(gone); // outside the map's lock: dropping closes the backing file
    }
}
