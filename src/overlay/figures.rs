//! The core's live figures, for `layover stats`: plain counters bumped where the work is
//! done (copy-up), and the sizes of the core's tables read when asked. Nothing here is on
//! a request's way except one relaxed `fetch_add` per copy-up.

use super::Overlay;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of work done since the overlay was built.
#[derive(Default)]
pub(crate) struct Counters {
    copy_ups_files: AtomicU64,
    copy_ups_dirs: AtomicU64,
    copy_ups_other: AtomicU64,
    copy_up_bytes: AtomicU64,
}

impl Counters {
    /// An object of type `file_type` (`S_IFMT` bits) was copied up, with `bytes` of file data
    /// (its size; 0 when the data was left out for a truncating open).
    pub(crate) fn copied_up(&self, file_type: u32, bytes: u64) {
        let which = match file_type {
            libc::S_IFREG => &self.copy_ups_files,
            libc::S_IFDIR => &self.copy_ups_dirs,
            _ => &self.copy_ups_other,
        };
        which.fetch_add(1, Ordering::Relaxed);
        if bytes > 0 {
            self.copy_up_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// A snapshot of the core's figures (`Overlay::figures`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// Inodes in the table (the root included): those the kernel holds a lookup on.
    pub inodes: u64,
    /// Open file handles and directory streams.
    pub open_files: u64,
    pub open_dirs: u64,
    /// Directory fds kept open in the directory cache.
    pub cached_dir_fds: u64,
    /// Copy-ups of regular files, directories and other objects (symlinks, devices, ...).
    pub copy_ups_files: u64,
    pub copy_ups_dirs: u64,
    pub copy_ups_other: u64,
    /// File data copied up: the sizes of the regular files copied with their data (a
    /// reflinked or sparse copy counts its whole size).
    pub copy_up_bytes: u64,
}

impl Overlay {
    /// The core's live figures. Reads each table's size (one pass over its shards) and the
    /// counters; costs nothing to the requests being served.
    pub fn figures(&self) -> Figures {
        let c = &self.counters;
        let (open_files, open_dirs) = self.handles.counts();
        Figures {
            inodes: self.inodes.live_count() as u64,
            open_files: open_files as u64,
            open_dirs: open_dirs as u64,
            cached_dir_fds: self.dirs.fd_count() as u64,
            copy_ups_files: c.copy_ups_files.load(Ordering::Relaxed),
            copy_ups_dirs: c.copy_ups_dirs.load(Ordering::Relaxed),
            copy_ups_other: c.copy_ups_other.load(Ordering::Relaxed),
            copy_up_bytes: c.copy_up_bytes.load(Ordering::Relaxed),
        }
    }
}
