//! The inode table: kernel-facing inode numbers, the real objects behind them, lookup counts
//! and forget. All map locking lives here.
//!
//! Numbering: an object's number is derived from the real (dev, ino) of the top-most object
//! that backs it when it is first seen — the real inode number itself when every layer is on
//! one filesystem, with the layer filesystem's index in the top 7 bits otherwise. Hard links
//! within a layer therefore share a number, readdir can compute d_ino without a stat, and the
//! number survives forget and re-lookup. A copy-up registers the new upper object as an alias
//! of the old number, so the number also survives copy-up. Numbers that cannot be derived
//! (inode numbers ≥ 2^56 or an unknown device) come from a counter and are remembered.
//! With `ino32_t` every number fits in 32 bits: real inode numbers below 2^31 of the first
//! filesystem are kept; the others (another filesystem's, larger ones) are hashed with the
//! filesystem's index into [2^31, 2^32 - 2^24), so they too survive a remount; a number
//! already held by another object (a hash collision included) is replaced by a counter
//! number from the last 2^24, remembered, as above (FUSE makes the node id the st_ino
//! shown, so numbers must stay one per object).
//! Identity is (dev, ino, generation): a number the filesystem reused for a new object is
//! another object (`RealId`).
//!
//! Lock order: a DashMap shard lock is only ever held for a map operation, never across a
//! syscall. `Inode::state` is a leaf lock: it may be taken under a shard lock (lookup checks
//! a live inode's identity), but nothing is ever taken while it is held.

use crate::layer::LayerIdx;
use crate::sys::Stat;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::{Mutex, RwLock};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A kernel-facing inode number: what the transport names an object by (FUSE's node id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl std::fmt::Display for Ino {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The root's number, fixed by FUSE.
pub const ROOT_INO: Ino = Ino(1);
pub(crate) const FS_INDEX_SHIFT: u32 = 56;
const ALLOCATED_BASE: u64 = 1 << 63;
/// With `ino32_t`: real numbers below this are kept, hashed ones start here.
const HASHED_BASE_32: u64 = 1 << 31;
/// With `ino32_t`: counter numbers start here (and wrap back here at 2^32).
const ALLOCATED_BASE_32: u64 = (1 << 32) - (1 << 24);

/// With `ino32_t`: a number in [2^31, 2^32 - 2^24) for inode `ino` of the filesystem with
/// index `fs` (splitmix64's finaliser: deterministic, so the same across mounts).
fn hashed_32(fs: u64, ino: u64) -> u64 {
    let mut z = ino ^ fs.rotate_right(8);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    HASHED_BASE_32 + z % (ALLOCATED_BASE_32 - HASHED_BASE_32)
}

/// A real object's identity in the layers: its (st_dev, st_ino) and a generation that tells
/// apart two objects that had the same inode number one after the other (the filesystem
/// reuses a freed number at once, so a number alone can name a file created after the one it
/// was seen as). Made only by `of` (from a stat), `new` (a directory entry's d_ino in a layer
/// of known device: generation unknown) and `tombstone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RealId {
    pub dev: u64,
    pub ino: u64,
    /// The birth time in nanoseconds where the filesystem keeps one, else `UNKNOWN_GEN`.
    /// Birth times come from the kernel's coarse clock: an object whose number is reused
    /// within the clock tick it was created in (about 12 ms on the test machine) is not told
    /// apart from its successor (docs/reliability.md).
    pub generation: u64,
}

/// The generation of an identity made without a stat, or on a filesystem without birth
/// times: it matches any generation where identities are looked up by number
/// (`Numbering`), and only itself where two stats are compared (`InodeTable::lookup`).
pub const UNKNOWN_GEN: u64 = 0;

impl RealId {
    /// The identity of the object `st` describes.
    pub fn of(st: &Stat) -> RealId {
        let generation = st.btime.map_or(UNKNOWN_GEN, |(sec, nsec)| {
            (sec as u64)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(nsec as u64)
        });
        RealId {
            dev: st.dev,
            ino: st.ino,
            generation,
        }
    }

    pub fn new(dev: u64, ino: u64) -> RealId {
        RealId {
            dev,
            ino,
            generation: UNKNOWN_GEN,
        }
    }

    /// An identity no real object has, for an inode whose object is gone (its number may be
    /// reused by the filesystem before the kernel forgets the inode).
    pub fn tombstone(ino: Ino) -> RealId {
        RealId::new(u64::MAX, ino.0)
    }

    /// The (dev, ino) part, which the numbering's maps are keyed by.
    fn key(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// Whether a generation remembered for a (dev, ino) can belong to the object `generation` was
/// read from: equal, or one of them unknown (readdir's d_ino carries none).
fn same_gen(remembered: u64, generation: u64) -> bool {
    remembered == generation || remembered == UNKNOWN_GEN || generation == UNKNOWN_GEN
}

/// One layer that holds this object (for a directory, one of the merged ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    pub layer: LayerIdx,
    /// A directory whose opaque xattr is `x`: it may hold xattr whiteouts.
    pub xwhiteouts: bool,
}

/// The layers that hold an object, top first: inline for the common single layer (every
/// non-directory), boxed for a merged directory. Reads as a slice.
#[derive(Clone, Debug)]
pub enum PresenceList {
    One(Presence),
    Many(Box<[Presence]>),
}

impl std::ops::Deref for PresenceList {
    type Target = [Presence];
    fn deref(&self) -> &[Presence] {
        match self {
            PresenceList::One(p) => std::slice::from_ref(p),
            PresenceList::Many(b) => b,
        }
    }
}

impl From<Vec<Presence>> for PresenceList {
    fn from(v: Vec<Presence>) -> Self {
        match v.as_slice() {
            [one] => PresenceList::One(*one),
            _ => PresenceList::Many(v.into_boxed_slice()),
        }
    }
}

/// What can change about an inode while it lives.
#[derive(Clone)]
pub struct InodeState {
    /// One name by which the object is reachable: parent and name. None for the root.
    pub parent: Option<Arc<Inode>>,
    pub name: Box<[u8]>,
    /// The layers that hold the object, top first. One entry for a non-directory.
    pub layers: PresenceList,
    /// The real identity of the top object.
    pub real: RealId,
}

impl InodeState {
    pub fn top(&self) -> Option<Presence> {
        self.layers.first().copied()
    }

    /// The number of the directory the object is reached through (the root for the root).
    pub fn parent_ino(&self) -> Ino {
        self.parent.as_ref().map_or(ROOT_INO, |p| p.ino)
    }
}

pub struct Inode {
    pub ino: Ino,
    /// `S_IFMT` bits; an inode never changes type.
    pub kind: u32,
    lookups: AtomicU64,
    state: RwLock<InodeState>,
    /// The object has no name any more (unlinked while open, or its directory removed):
    /// only open handles reach it. Part of the state (written only under its write lock,
    /// by `set_detached` in an `update`), kept here because one more byte in `InodeState`
    /// put every inode in the next allocation size class (see `size_of_inode`).
    detached: AtomicBool,
    /// Serialises copy-up of this object; held across the copy (that is its job). Order: a
    /// file's lock may be held while directories are copied up (its parents, and the parents
    /// of its other hard-link names); a directory's lock is never held while a file's is
    /// taken, so there is no cycle.
    pub copy_up_lock: Mutex<()>,
    /// Bumped whenever the object's data moves to another real file (copy-up), so that
    /// open handles re-open it.
    pub data_gen: AtomicU64,
}

impl Inode {
    pub fn new(ino: Ino, kind: u32, state: InodeState) -> Inode {
        Inode {
            ino,
            kind,
            lookups: AtomicU64::new(0),
            state: RwLock::new(state),
            copy_up_lock: Mutex::new(()),
            data_gen: AtomicU64::new(0),
            detached: AtomicBool::new(false),
        }
    }

    /// A copy of the current state (the lock is released on return).
    pub fn state(&self) -> InodeState {
        self.state.read().clone()
    }

    /// Reads part of the state without copying all of it. `f` runs under the state's read
    /// lock: it must only compute (no syscall, no other lock).
    pub fn with_state<R>(&self, f: impl FnOnce(&InodeState) -> R) -> R {
        f(&self.state.read())
    }

    /// Whether the object has no name any more. Read in a `with_state` closure, it is
    /// consistent with the rest of the state.
    pub fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }

    /// Only in an `update` closure, so that readers of the state see it change with it.
    pub fn set_detached(&self, detached: bool) {
        self.detached.store(detached, Ordering::Release);
    }

    pub fn top(&self) -> Option<Presence> {
        self.state.read().top()
    }

    pub fn parent(&self) -> Option<Arc<Inode>> {
        self.state.read().parent.clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut InodeState)) {
        f(&mut self.state.write());
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
}

impl Drop for Inode {
    /// Drops the chain of parents this inode held the last reference to one by one, not by
    /// recursion: the chain is as long as the tree is deep, which may be deeper than any
    /// thread's stack.
    fn drop(&mut self) {
        let mut next = self.state.get_mut().parent.take();
        while let Some(parent) = next {
            next = Arc::into_inner(parent).and_then(|mut p| p.state.get_mut().parent.take());
        }
    }
}

/// Derives inode numbers from real identities (see the module comment). The maps are keyed
/// by (dev, ino) and remember the generation of the object they were made for: a number
/// remembered for an object that is gone is not given to the object that reuses its inode
/// number (it is dropped when that object is first seen with its generation).
pub struct Numbering {
    devs: Vec<u64>,
    aliases: DashMap<(u64, u64), (u64, Ino)>,
    allocated: DashMap<(u64, u64), (u64, Ino)>,
    next: AtomicU64,
    /// `ino32_t`: every number below 2^32.
    ino32: bool,
}

impl Numbering {
    pub fn new(layer_devs: &[u64]) -> Numbering {
        let mut devs: Vec<u64> = Vec::new();
        for &d in layer_devs {
            if !devs.contains(&d) {
                devs.push(d);
            }
        }
        Numbering {
            devs,
            aliases: DashMap::new(),
            allocated: DashMap::new(),
            next: AtomicU64::new(ALLOCATED_BASE),
            ino32: false,
        }
    }

    /// `ino32_t`: numbers that fit in 32 bits (see the module comment).
    pub fn fitting_32_bits(self, on: bool) -> Numbering {
        Numbering {
            next: AtomicU64::new(if on {
                ALLOCATED_BASE_32
            } else {
                ALLOCATED_BASE
            }),
            ino32: on,
            ..self
        }
    }

    /// The number for the object whose top real identity is `id`.
    pub fn number(&self, id: RealId) -> Ino {
        if let Some(n) = Self::remembered(&self.aliases, id) {
            return n;
        }
        self.derive(id)
    }

    /// The number `map` remembers for `id`'s (dev, ino), if it was remembered for this
    /// object. One remembered for an older object with that inode number is dropped.
    fn remembered(map: &DashMap<(u64, u64), (u64, Ino)>, id: RealId) -> Option<Ino> {
        let (generation, n) = *map.get(&id.key())?;
        if same_gen(generation, id.generation) {
            if generation == UNKNOWN_GEN && id.generation != UNKNOWN_GEN {
                // Remembered from a readdir: the first stat tells whose it is.
                map.alter(&id.key(), |_, (g, n)| {
                    (if g == UNKNOWN_GEN { id.generation } else { g }, n)
                });
            }
            return Some(n);
        }
        map.remove_if(&id.key(), |_, (g, _)| *g == generation);
        None
    }

    fn derive(&self, id: RealId) -> Ino {
        let RealId { dev, ino, .. } = id;
        let idx = self.devs.iter().position(|&d| d == dev);
        let derived = match idx {
            Some(0) if self.ino32 && ino < HASHED_BASE_32 => Some(ino),
            Some(i) if self.ino32 => Some(hashed_32(i as u64, ino)),
            None if self.ino32 => None,
            Some(0) if ino < ALLOCATED_BASE => Some(ino),
            Some(i) if ino < (1 << FS_INDEX_SHIFT) && i < 127 => {
                Some(ino | ((i as u64) << FS_INDEX_SHIFT))
            }
            _ => None,
        };
        match derived {
            Some(n) if n > ROOT_INO.0 => Ino(n),
            _ => match Self::remembered(&self.allocated, id) {
                Some(n) => n,
                None => {
                    self.allocated
                        .entry(id.key())
                        .or_insert_with(|| (id.generation, self.allocate()))
                        .1
                }
            },
        }
    }

    fn allocate(&self) -> Ino {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.ino32 {
            // After 2^24 numbers the counter wraps; a number still held by a live inode is
            // then skipped by `InodeTable::lookup`, which asks again.
            let span = (1 << 32) - ALLOCATED_BASE_32;
            return Ino(ALLOCATED_BASE_32 + (n - ALLOCATED_BASE_32) % span);
        }
        Ino(n)
    }

    /// A number of its own for `id`, whose derived number another object holds now (a
    /// lower hard link whose sibling was copied up, or an object that reuses the inode
    /// number of one the kernel still holds); remembered, so that lookups and readdir keep
    /// agreeing on it.
    pub fn renumber(&self, id: RealId) -> Ino {
        let n = self.allocate();
        self.aliases.insert(id.key(), (id.generation, n));
        n
    }

    /// After a copy-up: `upper` is now the object that `number` names.
    pub fn alias(&self, upper: RealId, number: Ino) {
        if self.derive(upper) != number {
            self.aliases.insert(upper.key(), (upper.generation, number));
        }
    }

    /// The upper object `id` is gone: its identity may be reused by the filesystem.
    pub fn unalias(&self, id: RealId) {
        self.aliases
            .remove_if(&id.key(), |_, (g, _)| same_gen(*g, id.generation));
    }
}

/// The names the kernel has seen for objects with several hard links: (parent, name) per
/// inode. FUSE names an inode, never the name it was reached by, so these are what lets a
/// copy-up keep the links together and an unlink move the inode to a name that still exists.
#[derive(Default)]
pub struct LinkNames {
    map: DashMap<Ino, Vec<LinkName>>,
}

/// One name of a hard-linked object: (parent inode, name).
pub type LinkName = (Ino, Box<[u8]>);

impl LinkNames {
    pub fn note(&self, ino: Ino, parent: Ino, name: &[u8]) {
        let mut names = self.map.entry(ino).or_default();
        if !names.iter().any(|(p, n)| *p == parent && **n == *name) {
            names.push((parent, name.into()));
        }
    }

    pub fn names(&self, ino: Ino) -> Vec<LinkName> {
        self.map.get(&ino).map(|v| v.clone()).unwrap_or_default()
    }

    /// The name is gone; returns another known name of the inode, if any.
    pub fn unlink(&self, ino: Ino, parent: Ino, name: &[u8]) -> Option<LinkName> {
        let mut names = self.map.get_mut(&ino)?;
        names.retain(|(p, n)| !(*p == parent && **n == *name));
        names.first().cloned()
    }

    pub fn forget(&self, ino: Ino) {
        self.map.remove(&ino);
    }
}

/// Live inodes by number, with their lookup counts.
pub struct InodeTable {
    map: DashMap<Ino, Arc<Inode>>,
    pub numbers: Numbering,
    /// Inodes dropped since the map was last shrunk.
    dropped: AtomicU64,
}

/// After this many inodes are dropped, see whether the map should give memory back.
const SHRINK_EVERY: u64 = 1 << 14;

impl InodeTable {
    pub fn new(numbers: Numbering, root: Inode) -> InodeTable {
        let map = DashMap::new();
        root.lookups.store(1, Ordering::Relaxed);
        map.insert(ROOT_INO, Arc::new(root));
        InodeTable {
            map,
            numbers,
            dropped: AtomicU64::new(0),
        }
    }

    /// How many inodes are live (the root included).
    pub fn live_count(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, ino: Ino) -> Option<Arc<Inode>> {
        self.map.get(&ino).map(|r| Arc::clone(r.value()))
    }

    /// Records one kernel lookup of the object with top identity `real`, creating its inode
    /// if it is not live. `make` builds a new inode for a given number.
    pub fn lookup(&self, real: RealId, kind: u32, make: impl Fn(Ino) -> Inode) -> Arc<Inode> {
        let mut number = self.numbers.number(real);
        loop {
            match self.map.entry(number) {
                Entry::Occupied(e) => {
                    let inode = e.get();
                    let st = inode.state.read();
                    if st.real == real && inode.kind == kind {
                        drop(st);
                        inode.lookups.fetch_add(1, Ordering::Relaxed);
                        return Arc::clone(inode);
                    }
                    // The number is held by another object (a hard link broken by copy-up,
                    // or a reused inode number): this one gets a number of its own.
                    drop(st);
                    drop(e);
                    number = self.numbers.renumber(real);
                }
                Entry::Vacant(v) => {
                    let inode = Arc::new(make(number));
                    inode.lookups.store(1, Ordering::Relaxed);
                    v.insert(Arc::clone(&inode));
                    return inode;
                }
            }
        }
    }

    /// The kernel dropped `n` references; the inode goes when none are left.
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(inode) = self.get(ino) else {
            return;
        };
        let prev = inode.lookups.fetch_sub(
            n.min(inode.lookups.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        if prev <= n
            && self
                .map
                .remove_if(&ino, |_, v| v.lookups.load(Ordering::Relaxed) == 0)
                .is_some()
            && self.dropped.fetch_add(1, Ordering::Relaxed) + 1 >= SHRINK_EVERY
        {
            self.dropped.store(0, Ordering::Relaxed);
            // When the kernel forgot most of what it held (memory pressure, drop_caches),
            // give the memory back instead of keeping the high-water mark.
            if self.map.len() * 4 < self.map.capacity() {
                self.map.shrink_to_fit();
                crate::sys::malloc_trim();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(dev: u64, ino: u64) -> RealId {
        RealId::new(dev, ino)
    }

    fn state(real: RealId) -> InodeState {
        InodeState {
            parent: None,
            name: Box::new([]),
            layers: Vec::new().into(),
            real,
        }
    }

    #[test]
    fn numbers_same_fs_are_real_inos() {
        let n = Numbering::new(&[5, 5]);
        assert_eq!(n.number(id(5, 1234)), Ino(1234));
        assert_eq!(n.number(id(5, 1)), n.number(id(5, 1)));
        assert!(n.number(id(5, 1)).0 >= ALLOCATED_BASE);
    }

    #[test]
    fn numbers_multi_fs_are_distinct() {
        let n = Numbering::new(&[5, 6]);
        assert_ne!(n.number(id(5, 100)), n.number(id(6, 100)));
        let big = n.number(id(6, 1 << 60));
        assert!(big.0 >= ALLOCATED_BASE);
        assert_eq!(big, n.number(id(6, 1 << 60)));
        assert!(n.number(id(7, 3)).0 >= ALLOCATED_BASE);
    }

    #[test]
    fn numbers_fit_32_bits_with_ino32() {
        let n = Numbering::new(&[5, 6]).fitting_32_bits(true);
        assert_eq!(n.number(id(5, 1234)), Ino(1234));
        let big = n.number(id(5, 1 << 40));
        let other = n.number(id(6, 1234));
        let unknown = n.number(id(7, 1));
        for x in [big, other] {
            assert!(x.0 >= HASHED_BASE_32 && x.0 < ALLOCATED_BASE_32, "{x}");
        }
        assert!(unknown.0 >= ALLOCATED_BASE_32 && unknown.0 < 1 << 32);
        assert!(
            n.number(id(5, 1)).0 >= ALLOCATED_BASE_32,
            "FUSE's root number"
        );
        // Derived numbers are the same in another mount; counter numbers are remembered.
        let again = Numbering::new(&[5, 6]).fitting_32_bits(true);
        assert_eq!(again.number(id(6, 1234)), other);
        assert_eq!(again.number(id(5, 1 << 40)), big);
        assert_eq!(unknown, n.number(id(7, 1)));
        assert!(big != other && other != unknown);
        let r = n.renumber(id(6, 1234));
        assert!(r.0 >= ALLOCATED_BASE_32 && r.0 < 1 << 32 && r != other);
        // Spread: 100,000 objects of another filesystem, few collisions.
        let mut seen = std::collections::HashSet::new();
        let dup = (2..100_002u64)
            .filter(|i| !seen.insert(hashed_32(1, *i)))
            .count();
        assert!(dup < 20, "{dup} collisions");
    }

    #[test]
    fn alias_keeps_number_across_copy_up() {
        let n = Numbering::new(&[5]);
        let lower = n.number(id(5, 10));
        n.alias(id(5, 99), lower);
        assert_eq!(n.number(id(5, 99)), Ino(10));
        n.unalias(id(5, 99));
        assert_eq!(n.number(id(5, 99)), Ino(99));
    }

    #[test]
    fn lookup_and_forget() {
        let t = InodeTable::new(
            Numbering::new(&[5]),
            Inode::new(ROOT_INO, libc::S_IFDIR, state(id(5, 2))),
        );
        let make = |ino| Inode::new(ino, libc::S_IFREG, state(id(5, 10)));
        let a = t.lookup(id(5, 10), libc::S_IFREG, make);
        let b = t.lookup(id(5, 10), libc::S_IFREG, make);
        assert_eq!(a.ino, Ino(10));
        assert!(Arc::ptr_eq(&a, &b));
        t.forget(Ino(10), 1);
        assert!(t.get(Ino(10)).is_some());
        t.forget(Ino(10), 1);
        assert!(t.get(Ino(10)).is_none());
        t.forget(ROOT_INO, 5);
        assert!(t.get(ROOT_INO).is_some());
    }

    fn born(dev: u64, ino: u64, btime: i64) -> RealId {
        RealId::of(&Stat {
            dev,
            ino,
            btime: Some((btime, 0)),
            ..Stat::default()
        })
    }

    fn table() -> InodeTable {
        InodeTable::new(
            Numbering::new(&[5]),
            Inode::new(ROOT_INO, libc::S_IFDIR, state(id(5, 2))),
        )
    }

    #[test]
    fn reused_inode_number_is_another_object() {
        // The kernel still holds the inode of a file the host removed; the filesystem gives
        // its inode number to a new file. The new file must get an inode of its own, and
        // readdir (no generation) must agree with lookup on its number.
        let t = table();
        let old = born(5, 10, 1000);
        let new = born(5, 10, 2000);
        let make = |real: RealId| move |ino| Inode::new(ino, libc::S_IFREG, state(real));
        let a = t.lookup(old, libc::S_IFREG, make(old));
        let b = t.lookup(new, libc::S_IFREG, make(new));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_ne!(a.ino, b.ino);
        assert_eq!(t.numbers.number(new), b.ino);
        assert_eq!(t.numbers.number(id(5, 10)), b.ino);
        let again = t.lookup(new, libc::S_IFREG, make(new));
        assert!(Arc::ptr_eq(&b, &again));
        // Without birth times the identity is (dev, ino) as before.
        assert_eq!(RealId::of(&Stat::default()).generation, UNKNOWN_GEN);
    }

    #[test]
    fn alias_of_a_gone_object_is_not_inherited() {
        let n = Numbering::new(&[5]);
        n.alias(born(5, 99, 1000), Ino(10));
        assert_eq!(n.number(born(5, 99, 1000)), Ino(10));
        assert_eq!(n.number(id(5, 99)), Ino(10));
        // The copy was removed outside the mount and number 99 reused: not the same object.
        assert_eq!(n.number(born(5, 99, 2000)), Ino(99));
        assert_eq!(n.number(id(5, 99)), Ino(99));
        // unalias of an older object leaves a newer object's alias alone.
        n.alias(born(5, 99, 3000), Ino(11));
        n.unalias(born(5, 99, 1000));
        assert_eq!(n.number(born(5, 99, 3000)), Ino(11));
        n.unalias(born(5, 99, 3000));
        assert_eq!(n.number(born(5, 99, 3000)), Ino(99));
    }

    #[test]
    fn allocated_numbers_follow_the_generation() {
        let n = Numbering::new(&[5]);
        let a = n.number(born(5, 1, 1000));
        assert!(a.0 >= ALLOCATED_BASE);
        assert_eq!(n.number(id(5, 1)), a);
        assert_ne!(n.number(born(5, 1, 2000)), a);
        // A number first allocated from a readdir is kept by the first stat of the object.
        let r = n.number(id(5, 0));
        assert_eq!(n.number(born(5, 0, 7)), r);
        assert_ne!(n.number(born(5, 0, 8)), r);
    }

    #[test]
    fn size_of_inode() {
        // An inode lives in an Arc (two counts before it): at most 120 bytes, with malloc's
        // 8-byte header, fit the 128-byte size class. At 112 (RealId's generation and a
        // `detached` flag in InodeState) they took a 144-byte chunk: 16 bytes more per inode
        // the kernel holds, 16 MB over a 1,000,000-file walk.
        assert!(
            std::mem::size_of::<Inode>() <= 104,
            "Inode is {} bytes",
            std::mem::size_of::<Inode>()
        );
    }

    #[test]
    fn a_chain_of_parents_deeper_than_the_stack_drops() {
        // Each inode holds its parent; the leaf held the last reference to all of them.
        // Dropped on a 64 KiB stack: one frame per level would overflow it.
        let leaf = (2..200_000u64).fold(None, |parent: Option<Arc<Inode>>, n| {
            let mut st = state(id(5, n));
            st.parent = parent;
            Some(Arc::new(Inode::new(Ino(n), libc::S_IFDIR, st)))
        });
        let dropper = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || drop(leaf))
            .unwrap();
        assert!(dropper.join().is_ok());
    }

    #[test]
    fn conflicting_identity_gets_fresh_number() {
        let t = InodeTable::new(
            Numbering::new(&[5]),
            Inode::new(ROOT_INO, libc::S_IFDIR, state(id(5, 2))),
        );
        let a = t.lookup(id(5, 10), libc::S_IFREG, |ino| {
            Inode::new(ino, libc::S_IFREG, state(id(5, 10)))
        });
        a.update(|s| s.real = id(5, 77));
        let b = t.lookup(id(5, 10), libc::S_IFREG, |ino| {
            Inode::new(ino, libc::S_IFREG, state(id(5, 10)))
        });
        assert_ne!(a.ino, b.ino);
    }
}
