//! The FUSE handshake (INIT): which capabilities to ask for, and how file data will travel
//! (passthrough, else the kernel's writeback cache).

use crate::privilege::Mode;
use fuser::{InitFlags, KernelConfig};

/// The largest write (and read-ahead window) when `max_write=` does not say: 1 MiB.
pub const DEFAULT_MAX_WRITE: u32 = 1 << 20;

/// The largest write the daemon asks the kernel for.
pub fn max_write(configured: Option<u32>) -> u32 {
    configured.unwrap_or(DEFAULT_MAX_WRITE)
}

/// Whether to ask for passthrough at INIT, or why not: `passthrough=off`, or a daemon that
/// is not real root. The kernel offers passthrough at INIT to anyone but registers a backing
/// file only for CAP_SYS_ADMIN in the initial user namespace: asked for without it, the
/// first open would fail to register one, and the mount would go on without the writeback
/// cache, which is decided here at INIT.
pub fn passthrough_wish(configured: bool, privilege: Mode) -> Result<(), &'static str> {
    if !configured {
        Err("passthrough=off")
    } else if privilege != Mode::Root {
        Err(
            "not real root: the kernel registers passthrough backing files only for CAP_SYS_ADMIN \
             in the initial user namespace",
        )
    } else {
        Ok(())
    }
}

/// What the daemon wants from the handshake.
pub struct Wanted {
    /// Ask for passthrough, or why not (`passthrough_wish`).
    pub passthrough: Result<(), &'static str>,
    pub max_write: Option<u32>,
    /// The merged view cannot be written (no writes to cache).
    pub read_only: bool,
    /// There is an upper layer (passthrough then covers files in it, and lower files opened
    /// read-only unless `strict_copy_up`).
    pub has_upper: bool,
    /// `strict_copy_up=1`: lower files are read through the daemon.
    pub strict_copy_up: bool,
    /// Ask for FUSE_POSIX_ACL (not with `noacl`).
    pub acl: bool,
}

/// What the kernel granted.
pub struct Granted {
    pub passthrough: bool,
    pub writeback: bool,
    /// The decision and why, in one sentence (logged, and shown by `layover stats`).
    pub summary: String,
}

/// Negotiates with the kernel's offer in `config`.
pub fn negotiate(config: &mut KernelConfig, want: &Wanted) -> Granted {
    // Not FUSE_ATOMIC_O_TRUNC: without it the kernel checks that a file is not being
    // executed before it truncates it for open(O_TRUNC), as it does for the kernel's
    // overlay (ETXTBSY), and sends the truncation as a setattr. FUSE_DONT_MASK: the
    // caller's umask comes unapplied, for the daemon to apply unless the directory has a
    // default ACL (then the upper's filesystem derives the mode from the ACL).
    let mut wanted = InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_DONT_MASK
        | InitFlags::FUSE_CACHE_SYMLINKS
        | InitFlags::FUSE_BIG_WRITES
        | InitFlags::FUSE_MAX_PAGES
        | InitFlags::FUSE_POSIX_ACL
        | InitFlags::FUSE_DO_READDIRPLUS;
    if !want.acl {
        wanted.remove(InitFlags::FUSE_POSIX_ACL);
    }
    let supported = config.capabilities() & wanted;
    if let Err(missing) = config.add_capabilities(supported) {
        log::debug!("kernel refused capabilities {missing:?}");
    }
    let granted = data_path(config, want);
    if let Err(m) = config.set_max_write(max_write(want.max_write)) {
        let _ = config.set_max_write(m); // the kernel's maximum
    }
    granted
}

/// The kernel's offer, as far as the data path depends on it.
#[derive(Clone, Copy)]
pub struct Offer {
    pub passthrough: bool,
    pub writeback: bool,
    /// FUSE_MAX_PAGES: requests may be larger than 32 pages (Linux 4.20).
    pub max_pages: bool,
}

/// How file data travels, decided once, from the kernel's offer, before the INIT reply.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// The kernel reads and writes the real files itself.
    pub passthrough: bool,
    /// Without passthrough, writes are cached by the kernel and sent in large batches.
    pub writeback: bool,
    /// The largest read or write request, in bytes.
    pub request: u32,
}

/// The kernel's largest request without FUSE_MAX_PAGES: 32 pages.
const OLD_MAX_REQUEST: u32 = 32 * 4096;
/// The kernel's largest request with it, unless root raised fs.fuse.max_pages_limit: 256
/// pages.
const MAX_REQUEST: u32 = 256 * 4096;

/// The data path for `offer`. Passthrough where it is wanted and offered. Without it the
/// daemon carries the data, and then a writable mount takes the writeback cache (writes
/// leave the kernel in large batches, not one request per write call) and every mount the
/// largest requests the kernel allows (1 MiB: a quarter of the requests of 256 KiB ones).
/// Splice is not a choice made here: the /dev/fuse workers splice every READ reply that fits
/// their pipes (`fuse::dev`); over io_uring the data goes through the ring entry's buffer.
pub fn plan(offer: Offer, want: &Wanted) -> Plan {
    let passthrough = want.passthrough.is_ok() && offer.passthrough;
    let limit = if offer.max_pages {
        MAX_REQUEST
    } else {
        OLD_MAX_REQUEST
    };
    Plan {
        passthrough,
        writeback: !passthrough && !want.read_only && offer.writeback,
        request: max_write(want.max_write).min(limit),
    }
}

/// Asks the kernel for what `plan` chose; what it refuses is taken out of the plan.
fn data_path(config: &mut KernelConfig, want: &Wanted) -> Granted {
    let caps = config.capabilities();
    let offer = Offer {
        passthrough: caps.contains(InitFlags::FUSE_PASSTHROUGH),
        writeback: caps.contains(InitFlags::FUSE_WRITEBACK_CACHE),
        max_pages: caps.contains(InitFlags::FUSE_MAX_PAGES),
    };
    // Passthrough first: what the kernel refuses of it decides the rest.
    let passthrough = want.passthrough.is_ok()
        && offer.passthrough
        && config.set_max_stack_depth(1).is_ok()
        && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
    let mut p = plan(
        Offer {
            passthrough,
            ..offer
        },
        want,
    );
    p.writeback = p.writeback
        && config
            .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
            .is_ok();
    let why_not = if let Err(why) = want.passthrough {
        why
    } else if !offer.passthrough {
        "the kernel does not offer passthrough (it needs root and Linux 6.9 or later)"
    } else {
        "the kernel refused passthrough"
    };
    let summary = describe(&p, want, why_not);
    if p.passthrough || p.writeback || want.read_only {
        log::info!("{summary}");
    } else {
        log::warn!("{summary}");
    }
    Granted {
        passthrough: p.passthrough,
        writeback: p.writeback,
        summary,
    }
}

/// The data path in one sentence (logged, and shown by `layover stats`).
fn describe(p: &Plan, want: &Wanted, why_not: &str) -> String {
    let kib = p.request / 1024;
    if p.passthrough {
        format!(
            "FUSE passthrough granted: the kernel does the I/O of files in the upper layer{}",
            if !want.has_upper {
                " and, as the mount is read-only, of every file"
            } else if want.strict_copy_up {
                " (strict_copy_up=1: lower files are read through the daemon)"
            } else {
                " and of lower files opened read-only (their page cache shared with the lower)"
            }
        )
    } else if want.read_only {
        format!(
            "no passthrough ({why_not}): file data is read through the daemon (page-cached), \
             in requests of up to {kib} KiB"
        )
    } else if p.writeback {
        format!(
            "no passthrough ({why_not}): file data goes through the daemon with the kernel's \
             writeback cache, in requests of up to {kib} KiB"
        )
    } else {
        format!(
            "no passthrough ({why_not}) and no writeback cache offered: every write goes \
             through the daemon, in requests of up to {kib} KiB"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_is_asked_for_only_as_real_root() {
        assert_eq!(passthrough_wish(true, Mode::Root), Ok(()));
        assert_eq!(passthrough_wish(false, Mode::Root), Err("passthrough=off"));
        for m in [Mode::UserNamespaceRoot, Mode::User] {
            let why = passthrough_wish(true, m).unwrap_err();
            assert!(why.starts_with("not real root"), "{why}");
            assert_eq!(passthrough_wish(false, m), Err("passthrough=off"));
        }
    }

    fn wanted(passthrough: bool, read_only: bool, max_write: Option<u32>) -> Wanted {
        Wanted {
            passthrough: if passthrough {
                Ok(())
            } else {
                Err("not real root")
            },
            max_write,
            read_only,
            has_upper: !read_only,
            strict_copy_up: true,
            acl: true,
        }
    }

    const NEW_KERNEL: Offer = Offer {
        passthrough: true,
        writeback: true,
        max_pages: true,
    };

    #[test]
    fn root_takes_passthrough_and_no_writeback_cache() {
        let p = plan(NEW_KERNEL, &wanted(true, false, None));
        assert_eq!(
            p,
            Plan {
                passthrough: true,
                writeback: false,
                request: 1 << 20
            }
        );
    }

    #[test]
    fn without_passthrough_writes_are_cached_and_requests_large() {
        // An ordinary user: offered passthrough (the kernel offers it to anyone) but not
        // asking for it.
        let p = plan(NEW_KERNEL, &wanted(false, false, None));
        assert_eq!(
            p,
            Plan {
                passthrough: false,
                writeback: true,
                request: 1 << 20
            }
        );
        // Root on a kernel without passthrough: the same.
        let old = Offer {
            passthrough: false,
            ..NEW_KERNEL
        };
        assert_eq!(plan(old, &wanted(true, false, None)), p);
        // A read-only mount has nothing to cache for writing, but still large reads.
        let ro = plan(NEW_KERNEL, &wanted(false, true, None));
        assert!(!ro.passthrough && !ro.writeback && ro.request == 1 << 20);
    }

    #[test]
    fn requests_are_as_large_as_the_kernel_allows() {
        let no_max_pages = Offer {
            passthrough: false,
            writeback: false,
            max_pages: false,
        };
        let p = plan(no_max_pages, &wanted(false, false, None));
        assert_eq!((p.writeback, p.request), (false, 128 * 1024));
        // max_write= can make them smaller, never larger than the kernel takes.
        let p = plan(NEW_KERNEL, &wanted(false, false, Some(64 * 1024)));
        assert_eq!(p.request, 64 * 1024);
        let p = plan(NEW_KERNEL, &wanted(false, false, Some(8 << 20)));
        assert_eq!(p.request, 1 << 20);
    }
}
