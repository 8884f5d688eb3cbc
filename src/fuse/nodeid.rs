//! Kernel node ids and the core's inode numbers. An object's first kernel inode has the node
//! id equal to its number (`Ino`): no entry here, nothing to look up in the common case. When
//! an open cannot be served on the kernel inode it came through (the inode's passthrough
//! backing is an older copy of the data, held by descriptors opened before a copy-up), the
//! transport answers ESTALE and gives the object a fresh *alias* node id: the kernel retries
//! the path walk, its re-lookup gets the alias with the same st_ino, and it makes a new kernel
//! inode without a backing (docs/design.md, "Node ids"). Aliases come from a range no `Ino`
//! uses, so a request's node id says by itself whether it is one.
//!
//! Lookup counts: the core counts per object (the sum over its node ids); an alias's own
//! count lives here, so that it goes when the kernel has forgotten it. The lock is taken only
//! while some alias lives (`live`); it is a leaf (nothing is taken under it, no syscall).

use crate::inode::Ino;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The first alias node id: above every `Ino` (real numbers are below 2^63, counter numbers
/// count up from 2^63 and never reach 2^62 more).
pub const ALIAS_BASE: u64 = (1 << 63) + (1 << 62);

/// A node id as the kernel names a kernel inode (FUSE's `nodeid`): an object's `Ino`, or an
/// alias of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The node id of an object's first kernel inode.
    pub fn of(ino: Ino) -> NodeId {
        NodeId(ino.0)
    }

    fn is_alias(self) -> bool {
        self.0 >= ALIAS_BASE
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Default)]
struct Maps {
    /// alias -> (its object, the kernel's lookup count of it)
    aliases: HashMap<NodeId, (Ino, u64)>,
    /// object -> its aliases, oldest first; the last is the current node id.
    of_ino: HashMap<Ino, Vec<NodeId>>,
}

/// The aliases and their lookup counts.
#[derive(Default)]
pub struct NodeIds {
    maps: Mutex<Maps>,
    /// How many aliases live: while none does, no lock is taken.
    live: AtomicUsize,
    /// The last alias handed out, less `ALIAS_BASE`.
    next: AtomicU64,
}

impl NodeIds {
    /// The object behind a node id a request names. An alias the kernel has forgotten maps
    /// to itself, a number no object has (the core answers ENOENT).
    pub fn ino(&self, node: NodeId) -> Ino {
        if !node.is_alias() {
            return Ino(node.0);
        }
        self.maps
            .lock()
            .aliases
            .get(&node)
            .map_or(Ino(node.0), |a| a.0)
    }

    /// The node id an entry reply names for `ino`, counted as one lookup of it (every entry
    /// reply the kernel takes is one).
    pub fn entry(&self, ino: Ino) -> NodeId {
        if self.live.load(Ordering::Acquire) == 0 {
            return NodeId::of(ino);
        }
        let mut m = self.maps.lock();
        let Some(&node) = m.of_ino.get(&ino).and_then(|v| v.last()) else {
            return NodeId::of(ino);
        };
        if let Some(a) = m.aliases.get_mut(&node) {
            a.1 += 1;
        }
        node
    }

    /// Whether `node` is the node id entry replies name for `ino` now.
    pub fn is_current(&self, ino: Ino, node: NodeId) -> bool {
        if self.live.load(Ordering::Acquire) == 0 {
            return node == NodeId::of(ino);
        }
        node == Self::current(&self.maps.lock(), ino)
    }

    fn current(m: &Maps, ino: Ino) -> NodeId {
        m.of_ino
            .get(&ino)
            .and_then(|v| v.last().copied())
            .unwrap_or(NodeId::of(ino))
    }

    /// Gives `ino` a fresh node id for its next entry replies, unless the kernel inode
    /// `seen` (which an open came through) is already not the current one: then a re-lookup
    /// gets a different node id anyway. The alias starts with no lookups.
    pub fn renew(&self, ino: Ino, seen: NodeId) -> NodeId {
        let mut m = self.maps.lock();
        let current = Self::current(&m, ino);
        if current != seen {
            return current;
        }
        if m.aliases.get(&current).is_some_and(|a| a.1 == 0) {
            self.drop_alias(&mut m, current, ino); // superseded, and the kernel holds none
        }
        let node = NodeId(ALIAS_BASE + self.next.fetch_add(1, Ordering::Relaxed));
        m.aliases.insert(node, (ino, 0));
        m.of_ino.entry(ino).or_default().push(node);
        self.live.fetch_add(1, Ordering::Release);
        node
    }

    /// The kernel forgets `n` lookups of `node`: returns the object to forget them on. An
    /// alias goes with its last lookup unless it is the object's current node id: the kernel
    /// forgets the lookup of a revalidation that found a new node id (one lookup, at once)
    /// and then looks the name up again, which must get the same alias, or the retried open
    /// would reach the older kernel inode again. The current alias goes with the object
    /// (`gone`), or when a newer one replaces it.
    pub fn forget(&self, node: NodeId, n: u64) -> Ino {
        if !node.is_alias() {
            return Ino(node.0);
        }
        let mut m = self.maps.lock();
        let Some(a) = m.aliases.get_mut(&node) else {
            return Ino(node.0);
        };
        a.1 = a.1.saturating_sub(n);
        let (ino, left) = *a;
        let current = m.of_ino.get(&ino).and_then(|v| v.last()) == Some(&node);
        if left == 0 && !current {
            self.drop_alias(&mut m, node, ino);
        }
        ino
    }

    /// The core has forgotten `ino`: its aliases without lookups go (all of them, unless an
    /// entry reply naming one raced with the forget).
    pub fn gone(&self, ino: Ino) {
        if self.live.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut m = self.maps.lock();
        let Some(v) = m.of_ino.get(&ino).cloned() else {
            return;
        };
        for node in v {
            if m.aliases.get(&node).is_some_and(|a| a.1 == 0) {
                self.drop_alias(&mut m, node, ino);
            }
        }
    }

    /// Drops an alias. If it was the current node id, the object's previous one (the alias
    /// before it, or its `Ino`) is current again: if that kernel inode still holds an older
    /// backing, the next open through it gets ESTALE and a fresh alias once more.
    fn drop_alias(&self, m: &mut Maps, node: NodeId, ino: Ino) {
        m.aliases.remove(&node);
        if let Some(v) = m.of_ino.get_mut(&ino) {
            v.retain(|&x| x != node);
            if v.is_empty() {
                m.of_ino.remove(&ino);
            }
        }
        self.live.fetch_sub(1, Ordering::Release);
    }

    /// Every node id the kernel may hold for `ino` (for cache invalidations): its `Ino`, and
    /// its live aliases.
    pub fn all(&self, ino: Ino) -> Vec<NodeId> {
        let mut v = vec![NodeId::of(ino)];
        if self.live.load(Ordering::Acquire) != 0
            && let Some(a) = self.maps.lock().of_ino.get(&ino)
        {
            v.extend_from_slice(a);
        }
        v
    }

    /// How many aliases live (for `layover stats` and tests).
    pub fn aliases(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_node_id_is_the_number_and_costs_nothing() {
        let ids = NodeIds::default();
        assert_eq!(ids.entry(Ino(42)), NodeId(42));
        assert_eq!(ids.ino(NodeId(42)), Ino(42));
        assert_eq!(ids.forget(NodeId(42), 3), Ino(42));
        assert_eq!(ids.all(Ino(42)), vec![NodeId(42)]);
        assert_eq!(ids.aliases(), 0);
    }

    #[test]
    fn alias_is_named_counted_and_forgotten() {
        let ids = NodeIds::default();
        let a = ids.renew(Ino(42), NodeId(42));
        assert!(a.0 >= ALIAS_BASE);
        // A second open through the old inode does not make another alias.
        assert_eq!(ids.renew(Ino(42), NodeId(42)), a);
        assert!(ids.is_current(Ino(42), a) && !ids.is_current(Ino(42), NodeId(42)));
        assert_eq!(ids.entry(Ino(42)), a);
        assert_eq!(ids.entry(Ino(42)), a);
        assert_eq!(ids.ino(a), Ino(42));
        assert_eq!(ids.all(Ino(42)), vec![NodeId(42), a]);
        // Other objects are untouched.
        assert_eq!(ids.entry(Ino(7)), NodeId(7));
        assert_eq!(ids.forget(a, 1), Ino(42));
        assert_eq!(ids.aliases(), 1);
        // The current alias stays without lookups: the kernel's re-lookup must get it.
        assert_eq!(ids.forget(a, 1), Ino(42));
        assert_eq!(ids.aliases(), 1);
        assert_eq!(ids.entry(Ino(42)), a);
        assert_eq!(ids.forget(a, 1), Ino(42));
        // Gone with the object: its number is its node id again.
        ids.gone(Ino(42));
        assert_eq!(ids.aliases(), 0);
        assert_eq!(ids.entry(Ino(42)), NodeId(42));
        assert_eq!(ids.all(Ino(42)), vec![NodeId(42)]);
    }

    #[test]
    fn an_open_through_an_alias_renews_it() {
        let ids = NodeIds::default();
        let a = ids.renew(Ino(5), NodeId(5));
        assert_eq!(ids.entry(Ino(5)), a);
        let b = ids.renew(Ino(5), a);
        assert_ne!(a, b);
        assert_eq!(ids.entry(Ino(5)), b);
        // The older alias goes with its last lookup; the newer stays current.
        assert_eq!(ids.forget(a, 1), Ino(5));
        assert_eq!(ids.entry(Ino(5)), b);
        assert_eq!(ids.all(Ino(5)), vec![NodeId(5), b]);
        assert_eq!(ids.forget(b, 2), Ino(5));
        assert_eq!(ids.aliases(), 1);
        // An entry reply racing with the object's forget keeps its alias.
        assert_eq!(ids.entry(Ino(5)), b);
        ids.gone(Ino(5));
        assert_eq!(ids.aliases(), 1);
        assert_eq!(ids.forget(b, 1), Ino(5));
        ids.gone(Ino(5));
        assert_eq!(ids.aliases(), 0);
    }

    #[test]
    fn a_superseded_alias_without_lookups_goes() {
        let ids = NodeIds::default();
        let a = ids.renew(Ino(5), NodeId(5));
        let b = ids.renew(Ino(5), a);
        assert_ne!(a, b);
        assert_eq!(ids.aliases(), 1);
        assert_eq!(ids.all(Ino(5)), vec![NodeId(5), b]);
    }
}
