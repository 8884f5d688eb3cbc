//! How open files' data travels: through the daemon (page-cached by the kernel) or straight
//! between the kernel and the real file (FUSE passthrough). The core says which opens could
//! be passthrough (`Opened::settled`); this module decides, within what the kernel allows:
//! it refuses to mix passthrough and cached opens of one inode (ETXTBSY), and wants one
//! backing per inode, shared by its passthrough opens.

use crate::handle::Fh;
use crate::inode::Ino;
use crate::overlay::{OpenOpts, Opened};
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The data path negotiated at INIT, and the bookkeeping of passthrough opens.
pub struct DataPath<B> {
    /// The kernel granted passthrough at INIT: opens are tracked from then on.
    granted: bool,
    /// Passthrough is granted and the kernel has not refused a backing since.
    passthrough: AtomicBool,
    /// The kernel caches writes (FUSE_WRITEBACK_CACHE).
    writeback: bool,
    modes: IoModes,
    /// Every open file while passthrough is granted: its inode and whether it is passthrough.
    opens: DashMap<Fh, (Ino, bool)>,
    backings: Backings<B>,
}

impl<B> Default for DataPath<B> {
    fn default() -> Self {
        DataPath {
            granted: false,
            passthrough: AtomicBool::new(false),
            writeback: false,
            modes: IoModes::default(),
            opens: DashMap::new(),
            backings: Backings::default(),
        }
    }
}

impl<B> DataPath<B> {
    /// What INIT settled (called from INIT only, before any open).
    pub fn negotiated(&mut self, passthrough: bool, writeback: bool) {
        self.granted = passthrough;
        self.passthrough = AtomicBool::new(passthrough);
        self.writeback = writeback;
    }

    /// How the core must open real files for this data path: with the writeback cache the
    /// kernel reads a partly written page through any open, write-only ones included.
    pub fn open_opts(&self) -> OpenOpts {
        OpenOpts {
            readable: self.writeback,
        }
    }

    /// Records an open; returns the backing to give the kernel for a passthrough open, or
    /// None when the daemon serves it. `make` opens a backing (a syscall, run without any
    /// lock); if the kernel refuses it, passthrough is off for the rest of the mount.
    pub fn begin<E: std::fmt::Display>(
        &self,
        o: &Opened,
        make: impl FnOnce() -> Result<B, E>,
    ) -> Option<Arc<B>> {
        if !self.granted {
            return None;
        }
        let want = o.settled && self.passthrough.load(Ordering::Relaxed);
        let passthrough = self.modes.begin(o.ino, want);
        self.opens.insert(o.fh, (o.ino, passthrough));
        if !passthrough {
            return None;
        }
        match self.backings.acquire(o.ino, make) {
            Ok(b) => Some(b),
            Err(e) => {
                log::warn!(
                    "passthrough refused by the kernel ({e}); file data goes through the daemon from now on"
                );
                self.passthrough.store(false, Ordering::Relaxed);
                self.modes.end(o.ino, true);
                self.modes.begin(o.ino, false);
                self.opens.insert(o.fh, (o.ino, false));
                None
            }
        }
    }

    /// The open `fh` is closed.
    pub fn release(&self, fh: Fh) {
        if !self.granted {
            return;
        }
        if let Some((_, (ino, passthrough))) = self.opens.remove(&fh) {
            self.modes.end(ino, passthrough);
            if passthrough {
                self.backings.release(ino);
            }
        }
    }
}

/// Open modes per inode. The kernel refuses to mix passthrough opens and page-cached opens
/// of one inode (ETXTBSY), so an open is passthrough only while no cached open exists.
#[derive(Default)]
struct IoModes {
    /// ino -> (cached opens, passthrough opens)
    map: DashMap<Ino, (u32, u32)>,
}

impl IoModes {
    /// Registers an open; returns whether it may be passthrough.
    fn begin(&self, ino: Ino, want_passthrough: bool) -> bool {
        let mut e = self.map.entry(ino).or_default();
        if want_passthrough && e.0 == 0 {
            e.1 += 1;
            true
        } else {
            e.0 += 1;
            false
        }
    }

    fn end(&self, ino: Ino, passthrough: bool) {
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
struct Backings<B> {
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
    fn acquire<E>(&self, ino: Ino, make: impl FnOnce() -> Result<B, E>) -> Result<Arc<B>, E> {
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

    fn release(&self, ino: Ino) {
        let gone = self.map.remove_if_mut(&ino, |_, e| {
            e.1 = e.1.saturating_sub(1);
            e.1 == 0
        });
        drop(gone); // outside the map's lock: dropping closes the backing file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn opened(fh: u64, ino: u64, settled: bool) -> Opened {
        let fd = OwnedFd::from(std::fs::File::open("/").unwrap());
        Opened {
            fh: Fh(fh),
            ino: Ino(ino),
            fd: Arc::new(fd),
            settled,
        }
    }

    fn granted() -> DataPath<u32> {
        let mut d = DataPath::default();
        d.negotiated(true, false);
        d
    }

    #[test]
    fn not_granted_is_never_passthrough() {
        let d = DataPath::<u32>::default();
        assert!(
            d.begin(&opened(1, 5, true), || Ok::<_, String>(7))
                .is_none()
        );
        assert!(!d.open_opts().readable);
        let mut w = DataPath::<u32>::default();
        w.negotiated(false, true);
        assert!(w.open_opts().readable);
    }

    #[test]
    fn cached_open_keeps_later_opens_cached() {
        let d = granted();
        // A lower file's open (not settled) is cached; the inode's next open must be too,
        // until the cached one is closed.
        assert!(
            d.begin(&opened(1, 5, false), || Ok::<_, String>(7))
                .is_none()
        );
        assert!(
            d.begin(&opened(2, 5, true), || Ok::<_, String>(7))
                .is_none()
        );
        d.release(Fh(1));
        d.release(Fh(2));
        let b = d.begin(&opened(3, 5, true), || Ok::<_, String>(7));
        assert_eq!(b.as_deref(), Some(&7));
    }

    #[test]
    fn one_backing_per_inode() {
        let d = granted();
        let a = d.begin(&opened(1, 5, true), || Ok::<_, String>(7));
        let b = d.begin(&opened(2, 5, true), || Ok::<_, String>(8));
        assert_eq!((a.as_deref(), b.as_deref()), (Some(&7), Some(&7)));
        d.release(Fh(1));
        d.release(Fh(2));
        let c = d.begin(&opened(3, 5, true), || Ok::<_, String>(9));
        assert_eq!(c.as_deref(), Some(&9));
    }

    #[test]
    fn refused_backing_turns_passthrough_off() {
        let d = granted();
        assert!(
            d.begin(&opened(1, 5, true), || Err("no".to_string()))
                .is_none()
        );
        assert!(
            d.begin(&opened(2, 6, true), || Ok::<_, String>(7))
                .is_none()
        );
        d.release(Fh(1));
        d.release(Fh(2));
        assert!(d.opens.is_empty() && d.modes.map.is_empty());
    }
}
