//! A bounded cache of `O_PATH` directory fds, one per (directory inode, layer).
//!
//! Lookups and readdir work relative to a directory's real fd in each layer. Opening it from
//! the parent's cached fd costs one `openat` of one component; caching it makes most lookups
//! a single `fstatat`. The cache is bounded (a quarter of the open-file limit, at most 4,096
//! fds), so neither fds nor memory grow
//! with the size of the tree walked; an evicted fd is simply opened again.
//! Entries are dropped when the overlay changes what a directory resolves to (copy-up,
//! removal, rename over it) and when the kernel forgets the inode.

use crate::inode::Ino;
use crate::layer::LayerIdx;
use dashmap::DashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

const MAX_CAPACITY: usize = 4096;

pub struct DirCache {
    capacity: usize,
    map: DashMap<(Ino, LayerIdx), Arc<OwnedFd>>,
}

impl DirCache {
    /// A cache that keeps at most a quarter of `nofile` (the open-file limit) fds, leaving
    /// the rest to open files and the layers.
    pub fn new(nofile: u64) -> DirCache {
        let capacity = usize::try_from(nofile / 4)
            .unwrap_or(MAX_CAPACITY)
            .clamp(16, MAX_CAPACITY);
        DirCache {
            capacity,
            map: DashMap::new(),
        }
    }

    /// How many fds the cache holds.
    pub fn fd_count(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, ino: Ino, layer: LayerIdx) -> Option<Arc<OwnedFd>> {
        self.map.get(&(ino, layer)).map(|r| Arc::clone(r.value()))
    }

    pub fn insert(&self, ino: Ino, layer: LayerIdx, fd: Arc<OwnedFd>) {
        if self.map.len() >= self.capacity {
            self.shrink();
        }
        self.map.insert((ino, layer), fd);
    }

    /// Drops every cached fd of one directory.
    pub fn invalidate(&self, ino: Ino, layers: impl Iterator<Item = LayerIdx>) {
        for l in layers {
            self.map.remove(&(ino, l));
        }
    }

    /// Evicts a quarter of the capacity, whichever entries the map yields first (its order
    /// follows the key hashes, so the victims are spread over the tree), so the cache stays
    /// under its capacity however the inode numbers fall.
    fn shrink(&self) {
        let excess = self.map.len().saturating_sub(self.capacity * 3 / 4);
        let victims: Vec<(Ino, LayerIdx)> =
            self.map.iter().take(excess).map(|e| *e.key()).collect();
        for k in victims {
            // Removed one at a time, each fd closed after its shard lock is released.
            let gone = self.map.remove(&k);
            drop(gone);
        }
    }
}
