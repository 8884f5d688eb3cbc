//! How open files' data travels: through the daemon (page-cached by the kernel) or straight
//! between the kernel and the real file (FUSE passthrough). The core says which opens could
//! be passthrough (`Opened::settled`, `Opened::lower_read`); this module decides, within what
//! the kernel allows (fs/fuse/iomode.c): it refuses to mix passthrough and cached opens of
//! one inode (ETXTBSY), refuses any open without FOPEN_PASSTHROUGH while the inode has a
//! backing (EIO), and wants one backing per inode, shared by its passthrough opens (EBUSY
//! for another).
//!
//! All of it is per *kernel* inode, so it is keyed by node id (`NodeId`), not by the core's
//! number: an object given a fresh node id (`nodeid`) gets a fresh kernel inode, without the
//! older one's backing or open modes.

use super::nodeid::NodeId;
use crate::handle::Fh;
use crate::overlay::{OpenOpts, Opened};
pub use crate::stats::DataPathReport;
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// How the kernel is to serve one open.
#[derive(Debug, PartialEq)]
pub enum Serve<B> {
    /// Through the daemon, page-cached in the FUSE inode.
    Cached,
    /// Passthrough: the kernel reads and writes the backing file itself.
    Passthrough(Arc<B>),
    /// The kernel inode's backing is an older copy of the data (a lower file, copied up
    /// since), still held by opens made before the copy-up, and the kernel wants every
    /// passthrough open of the inode to name it (another: EBUSY). Nothing is recorded: the
    /// transport answers ESTALE and gives the object a fresh node id (`nodeid`), so that
    /// the kernel's retry opens a new kernel inode. Only `begin_at(.., renewable: true)`.
    Stale,
    /// A read-only open under an older backing that a fresh node id cannot help (the
    /// object has one already, and the open still came through the older kernel inode: a
    /// reopen through /proc/PID/fd, or a transport that cannot name node ids): it names the
    /// backing, as the kernel wants, but its reads go through the daemon (FOPEN_DIRECT_IO),
    /// which serves the current copy; only an mmap of it maps the backing (the older copy).
    Direct(Arc<B>),
}

/// The data path negotiated at INIT, and the bookkeeping of passthrough opens.
pub struct DataPath<B> {
    /// The kernel granted passthrough at INIT: opens are tracked from then on. (Atomics, as
    /// both transports share the data path: set once at INIT, before any open.)
    granted: AtomicBool,
    /// Passthrough is granted and the kernel has not refused a backing since.
    passthrough: AtomicBool,
    /// Read-only opens of lower files are passthrough too (not `strict_copy_up`, and the
    /// kernel has not refused a lower file as a backing).
    share_lower: AtomicBool,
    /// The kernel caches writes (FUSE_WRITEBACK_CACHE).
    writeback: AtomicBool,
    /// INIT's decision in one sentence (`init::Granted::summary`), for `layover stats`.
    summary: OnceLock<String>,
    modes: IoModes,
    /// Every open file while passthrough is granted: its kernel inode and whether it is
    /// passthrough.
    opens: DashMap<Fh, (NodeId, bool)>,
    backings: Backings<B>,
}

impl<B> DataPath<B> {
    /// `share_lower`: read-only opens of lower files may be passthrough (see `Serve`).
    pub fn new(share_lower: bool) -> Self {
        DataPath {
            granted: AtomicBool::new(false),
            passthrough: AtomicBool::new(false),
            share_lower: AtomicBool::new(share_lower),
            writeback: AtomicBool::new(false),
            summary: OnceLock::new(),
            modes: IoModes::default(),
            opens: DashMap::new(),
            backings: Backings::default(),
        }
    }

    /// What INIT settled (called from INIT only, before any open), and why (`summary`).
    pub fn negotiated(&self, passthrough: bool, writeback: bool, summary: String) {
        self.granted.store(passthrough, Ordering::Relaxed);
        self.passthrough.store(passthrough, Ordering::Relaxed);
        self.writeback.store(writeback, Ordering::Relaxed);
        let _ = self.summary.set(summary);
    }

    /// How data travels now and why, and how many opens are served which way.
    pub fn report(&self) -> DataPathReport {
        let granted = self.granted.load(Ordering::Relaxed);
        let mode = if self.passthrough.load(Ordering::Relaxed) {
            "passthrough"
        } else if granted {
            "page cache (passthrough refused by the kernel since INIT)"
        } else if self.writeback.load(Ordering::Relaxed) {
            "writeback cache"
        } else {
            "page cache"
        };
        let (mut passthrough_opens, mut cached_opens) = (0, 0);
        for e in self.opens.iter() {
            if e.value().1 {
                passthrough_opens += 1;
            } else {
                cached_opens += 1;
            }
        }
        DataPathReport {
            mode: mode.to_string(),
            why: self.summary.get().cloned().unwrap_or_default(),
            lower_shared: granted && self.share_lower.load(Ordering::Relaxed),
            tracked: granted,
            passthrough_opens,
            cached_opens,
            backings: self.backings.map.len() as u64,
            // The transport's to say (`Fs::reporter`).
            transport: String::new(),
        }
    }

    /// Whether the kernel's writeback cache keeps file times itself (it then ignores the
    /// times a reply brings for regular files).
    pub fn kernel_keeps_times(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }

    /// How the core must open real files for this data path: with the writeback cache the
    /// kernel reads a partly written page through any open, write-only ones included.
    pub fn open_opts(&self) -> OpenOpts {
        OpenOpts {
            readable: self.writeback.load(Ordering::Relaxed),
        }
    }

    /// Records an open through the kernel inode `node` and says how to serve it. `make` opens
    /// a backing (a syscall, run without any lock); if the kernel refuses it, passthrough is
    /// off for the rest of the mount (only for lower files when it was one: a lower layer may
    /// sit on a filesystem the kernel does not stack on). Under an older backing: `Stale`
    /// for an open that writes, and for a read-only one that is `renewable` (a fresh node id
    /// would help it); else `Direct`. After `Stale` nothing is recorded: the caller closes
    /// the core's handle.
    pub fn begin_at<E: std::fmt::Display>(
        &self,
        node: NodeId,
        o: &Opened,
        make: impl FnOnce() -> Result<B, E>,
        renewable: bool,
    ) -> Serve<B> {
        if !self.granted.load(Ordering::Relaxed) {
            return Serve::Cached;
        }
        let lower = !o.settled && o.lower_read && self.share_lower.load(Ordering::Relaxed);
        // While the inode has a backing the kernel takes passthrough opens only, whatever
        // was decided since (sharing or passthrough turned off after a refusal).
        let want = ((o.settled || lower) && self.passthrough.load(Ordering::Relaxed))
            || self.backings.map.contains_key(&node);
        let passthrough = self.modes.begin(node, want);
        self.opens.insert(o.fh, (node, passthrough));
        if !passthrough {
            return Serve::Cached;
        }
        match self.backings.acquire(node, o.generation, make) {
            Ok((b, true)) => Serve::Passthrough(b),
            Ok((b, false)) if !renewable && !o.writes => Serve::Direct(b),
            Ok(_) => {
                self.release(o.fh);
                Serve::Stale
            }
            Err(e) if lower => {
                log::warn!(
                    "passthrough of a lower file refused by the kernel ({e}); lower files are read through the daemon from now on"
                );
                self.share_lower.store(false, Ordering::Relaxed);
                self.serve_cached(node, o)
            }
            Err(e) => {
                log::warn!(
                    "passthrough refused by the kernel ({e}); file data goes through the daemon from now on"
                );
                self.passthrough.store(false, Ordering::Relaxed);
                self.serve_cached(node, o)
            }
        }
    }

    /// An open recorded as passthrough whose backing the kernel refused: cached after all.
    fn serve_cached(&self, node: NodeId, o: &Opened) -> Serve<B> {
        self.modes.end(node, true);
        self.modes.begin(node, false);
        self.opens.insert(o.fh, (node, false));
        Serve::Cached
    }

    /// The open `fh` is closed.
    pub fn release(&self, fh: Fh) {
        if !self.granted.load(Ordering::Relaxed) {
            return;
        }
        if let Some((_, (node, passthrough))) = self.opens.remove(&fh) {
            self.modes.end(node, passthrough);
            if passthrough {
                self.backings.release(node);
            }
        }
    }
}

/// Open modes per kernel inode. The kernel refuses to mix passthrough opens and page-cached opens
/// of one inode (ETXTBSY), so an open is passthrough only while no cached open exists.
#[derive(Default)]
struct IoModes {
    /// node id -> (cached opens, passthrough opens)
    map: DashMap<NodeId, (u32, u32)>,
}

impl IoModes {
    /// Registers an open; returns whether it may be passthrough.
    fn begin(&self, node: NodeId, want_passthrough: bool) -> bool {
        let mut e = self.map.entry(node).or_default();
        if want_passthrough && e.0 == 0 {
            e.1 += 1;
            true
        } else {
            e.0 += 1;
            false
        }
    }

    fn end(&self, node: NodeId, passthrough: bool) {
        self.map.remove_if_mut(&node, |_, e| {
            if passthrough {
                e.1 = e.1.saturating_sub(1);
            } else {
                e.0 = e.0.saturating_sub(1);
            }
            *e == (0, 0)
        });
    }
}

/// The backing file of a kernel inode's passthrough opens: the kernel wants the same one for all
/// of them. Counted; dropped (which closes it in the kernel) with the last open. Each is
/// tagged with the data generation of the file it was made from (`Opened::generation`).
struct Backings<B> {
    /// node id -> (backing, opens, data generation)
    map: DashMap<NodeId, (Arc<B>, u32, u64)>,
}

impl<B> Default for Backings<B> {
    fn default() -> Self {
        Backings {
            map: DashMap::new(),
        }
    }
}

impl<B> Backings<B> {
    /// The inode's backing, made with `make` (a syscall, run without any lock) from a file
    /// of data generation `generation` if it has none; and whether the backing holds that
    /// generation or a later one (false: an older copy, opened before a copy-up).
    fn acquire<E>(
        &self,
        node: NodeId,
        generation: u64,
        make: impl FnOnce() -> Result<B, E>,
    ) -> Result<(Arc<B>, bool), E> {
        if let Some(mut e) = self.map.get_mut(&node) {
            e.1 += 1;
            return Ok((Arc::clone(&e.0), e.2 >= generation));
        }
        let made = Arc::new(make()?);
        let mut e = self
            .map
            .entry(node)
            .or_insert_with(|| (Arc::clone(&made), 0, generation));
        e.1 += 1;
        Ok((Arc::clone(&e.0), e.2 >= generation))
    }

    fn release(&self, node: NodeId) {
        let gone = self.map.remove_if_mut(&node, |_, e| {
            e.1 = e.1.saturating_sub(1);
            e.1 == 0
        });
        drop(gone); // outside the map's lock: dropping closes the backing file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inode::Ino;
    use std::os::fd::OwnedFd;

    impl<B> DataPath<B> {
        /// An open through the object's first kernel inode (node id = its number), when no
        /// fresh node id would help a reader.
        fn begin<E: std::fmt::Display>(
            &self,
            o: &Opened,
            make: impl FnOnce() -> Result<B, E>,
        ) -> Serve<B> {
            self.begin_at(NodeId::of(o.ino), o, make, false)
        }
    }

    /// An open of inode `ino`: `settled`, else a read-only open of a lower file; of data
    /// generation `generation`; for writing or not.
    fn open_of(fh: u64, ino: u64, settled: bool, generation: u64, writes: bool) -> Opened {
        let fd = OwnedFd::from(std::fs::File::open("/").unwrap());
        Opened {
            fh: Fh(fh),
            ino: Ino(ino),
            fd: Arc::new(fd),
            settled,
            lower_read: !settled && !writes,
            generation,
            writes,
        }
    }

    fn opened(fh: u64, ino: u64, settled: bool) -> Opened {
        open_of(fh, ino, settled, 0, false)
    }

    fn granted(share_lower: bool) -> DataPath<u32> {
        let d = DataPath::new(share_lower);
        d.negotiated(true, false, String::new());
        d
    }

    fn pt(b: u32) -> Serve<u32> {
        Serve::Passthrough(Arc::new(b))
    }

    #[test]
    fn not_granted_is_never_passthrough() {
        let d = DataPath::<u32>::new(true);
        assert_eq!(
            d.begin(&opened(1, 5, true), || Ok::<_, String>(7)),
            Serve::Cached
        );
        assert!(!d.open_opts().readable);
        let w = DataPath::<u32>::new(true);
        w.negotiated(false, true, String::new());
        assert!(w.open_opts().readable);
    }

    #[test]
    fn strict_cached_open_keeps_later_opens_cached() {
        let d = granted(false);
        // A lower file's open (not settled) is cached in strict mode; the inode's next open
        // must be too, until the cached one is closed.
        assert_eq!(
            d.begin(&opened(1, 5, false), || Ok::<_, String>(7)),
            Serve::Cached
        );
        assert_eq!(
            d.begin(&opened(2, 5, true), || Ok::<_, String>(7)),
            Serve::Cached
        );
        d.release(Fh(1));
        d.release(Fh(2));
        assert_eq!(d.begin(&opened(3, 5, true), || Ok::<_, String>(7)), pt(7));
    }

    #[test]
    fn lower_reads_are_passthrough_unless_strict() {
        let d = granted(true);
        assert_eq!(d.begin(&opened(1, 5, false), || Ok::<_, String>(7)), pt(7));
        // A lower file opened for writing is copied up first: it is never `lower_read`.
        let mut w = open_of(2, 6, false, 0, true);
        w.lower_read = false;
        assert_eq!(d.begin(&w, || Ok::<_, String>(8)), Serve::Cached);
    }

    #[test]
    fn copy_up_under_a_lower_backing() {
        let d = granted(true);
        let (old, fresh) = (NodeId(5), NodeId(crate::fuse::nodeid::ALIAS_BASE));
        // A reader of the lower file (generation 0) holds the lower backing.
        let reader = opened(1, 5, false);
        assert_eq!(d.begin_at(old, &reader, || Ok::<_, String>(7), true), pt(7));
        // Copied up (generation 1): through the old kernel inode a writer and a reader are
        // both stale, and leave nothing behind ...
        for (fh, writes) in [(2, true), (3, false)] {
            let o = open_of(fh, 5, true, 1, writes);
            assert_eq!(
                d.begin_at(old, &o, || Ok::<_, String>(8), true),
                Serve::Stale
            );
            assert!(!d.opens.contains_key(&Fh(fh)));
        }
        // ... and through a fresh node id (a new kernel inode) they get the copy's backing,
        // beside the older reader's.
        let w = open_of(4, 5, true, 1, true);
        assert_eq!(d.begin_at(fresh, &w, || Ok::<_, String>(9), true), pt(9));
        let r = open_of(5, 5, true, 1, false);
        assert_eq!(d.begin_at(fresh, &r, || Ok::<_, String>(10), true), pt(9));
        assert_eq!(d.backings.map.len(), 2);
        for fh in [4, 5] {
            d.release(Fh(fh));
        }
        // A reader that comes back through the old kernel inode (a reopen through
        // /proc/PID/fd) when a fresh one exists is served by the daemon, naming the backing.
        let back = open_of(7, 5, true, 1, false);
        let serve = d.begin_at(old, &back, || Ok::<_, String>(12), false);
        assert_eq!(serve, Serve::Direct(Arc::new(7)));
        d.release(Fh(7));
        d.release(Fh(1));
        assert!(d.backings.map.is_empty() && d.modes.map.is_empty());
        // Once the older opens are closed the old kernel inode serves the copy too.
        assert_eq!(
            d.begin_at(
                old,
                &open_of(6, 5, true, 1, true),
                || Ok::<_, String>(11),
                true
            ),
            pt(11)
        );
    }

    #[test]
    fn copy_up_under_a_lower_backing_without_fresh_node_ids() {
        let d = granted(true);
        assert_eq!(d.begin(&opened(1, 5, false), || Ok::<_, String>(7)), pt(7));
        // A writer is sent for a fresh node id even so, and leaves nothing behind ...
        assert_eq!(
            d.begin(&open_of(2, 5, true, 1, true), || Ok::<_, String>(8)),
            Serve::Stale
        );
        assert!(!d.opens.contains_key(&Fh(2)));
        // ... a reader names the old backing but is served by the daemon.
        assert_eq!(
            d.begin(&open_of(3, 5, true, 1, false), || Ok::<_, String>(8)),
            Serve::Direct(Arc::new(7))
        );
        d.release(Fh(1));
        d.release(Fh(3));
        assert!(d.backings.map.is_empty() && d.modes.map.is_empty());
    }

    #[test]
    fn one_backing_per_inode() {
        let d = granted(true);
        let a = d.begin(&opened(1, 5, true), || Ok::<_, String>(7));
        let b = d.begin(&opened(2, 5, true), || Ok::<_, String>(8));
        assert_eq!((a, b), (pt(7), pt(7)));
        d.release(Fh(1));
        d.release(Fh(2));
        assert_eq!(d.begin(&opened(3, 5, true), || Ok::<_, String>(9)), pt(9));
    }

    #[test]
    fn refused_lower_backing_turns_only_lower_sharing_off() {
        let d = granted(true);
        assert_eq!(
            d.begin(&opened(1, 5, false), || Err("no".to_string())),
            Serve::Cached
        );
        assert_eq!(
            d.begin(&opened(2, 6, false), || Ok::<_, String>(7)),
            Serve::Cached
        );
        assert_eq!(d.begin(&opened(3, 7, true), || Ok::<_, String>(8)), pt(8));
        // An inode that has a backing keeps it for its next opens.
        assert_eq!(d.begin(&opened(4, 7, false), || Ok::<_, String>(9)), pt(8));
    }

    #[test]
    fn refused_backing_turns_passthrough_off() {
        let d = granted(true);
        assert_eq!(
            d.begin(&opened(1, 5, true), || Err("no".to_string())),
            Serve::Cached
        );
        assert_eq!(
            d.begin(&opened(2, 6, true), || Ok::<_, String>(7)),
            Serve::Cached
        );
        d.release(Fh(1));
        d.release(Fh(2));
        assert!(d.opens.is_empty() && d.modes.map.is_empty());
    }
}
