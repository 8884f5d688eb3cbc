//! The FUSE handshake (INIT): which capabilities to ask for, and how file data will travel
//! (passthrough, else the kernel's writeback cache).

use fuser::{InitFlags, KernelConfig};

/// The largest write (and read-ahead window) when `max_write=` does not say: 1 MiB.
pub const DEFAULT_MAX_WRITE: u32 = 1 << 20;

/// The largest write the daemon asks the kernel for.
pub fn max_write(configured: Option<u32>) -> u32 {
    configured.unwrap_or(DEFAULT_MAX_WRITE)
}

/// What the daemon wants from the handshake.
pub struct Wanted {
    /// Ask for passthrough (`passthrough=off` does not).
    pub passthrough: bool,
    pub max_write: Option<u32>,
    /// The merged view cannot be written (no writes to cache).
    pub read_only: bool,
    /// There is an upper layer (passthrough then covers files in it, and lower files opened
    /// read-only unless `strict_copy_up=1`).
    pub has_upper: bool,
    /// `strict_copy_up=1`: lower files are read through the daemon.
    pub strict_copy_up: bool,
}

/// What the kernel granted.
pub struct Granted {
    pub passthrough: bool,
    pub writeback: bool,
}

/// Negotiates with the kernel's offer in `config`.
pub fn negotiate(config: &mut KernelConfig, want: &Wanted) -> Granted {
    // Not FUSE_ATOMIC_O_TRUNC: without it the kernel checks that a file is not being
    // executed before it truncates it for open(O_TRUNC), as it does for the kernel's
    // overlay (ETXTBSY), and sends the truncation as a setattr. FUSE_DONT_MASK: the
    // caller's umask comes unapplied, for the daemon to apply unless the directory has a
    // default ACL (then the upper's filesystem derives the mode from the ACL).
    let wanted = InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_DONT_MASK
        | InitFlags::FUSE_CACHE_SYMLINKS
        | InitFlags::FUSE_BIG_WRITES
        | InitFlags::FUSE_MAX_PAGES
        | InitFlags::FUSE_POSIX_ACL
        | InitFlags::FUSE_DO_READDIRPLUS;
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

/// Passthrough (the kernel reads and writes the real files itself) needs root, a kernel
/// that offers it, and one level of filesystem stacking below us; without it, a writable
/// mount asks for the writeback cache.
fn data_path(config: &mut KernelConfig, want: &Wanted) -> Granted {
    let offered = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH);
    let passthrough = want.passthrough
        && offered
        && config.set_max_stack_depth(1).is_ok()
        && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
    let why_not = if !want.passthrough {
        "passthrough=off"
    } else if !offered {
        "the kernel does not offer passthrough (it needs root and Linux 6.9 or later)"
    } else {
        "the kernel refused passthrough"
    };
    let mut writeback = false;
    if passthrough {
        log::info!(
            "FUSE passthrough granted: the kernel does the I/O of files in the upper layer{}",
            if !want.has_upper {
                " and, as the mount is read-only, of every file"
            } else if want.strict_copy_up {
                " (strict_copy_up=1: lower files are read through the daemon)"
            } else {
                " and of lower files opened read-only (shared page cache)"
            }
        );
    } else if want.read_only {
        log::info!(
            "no passthrough ({why_not}): file data is read through the daemon (page-cached)"
        );
    } else if config
        .capabilities()
        .contains(InitFlags::FUSE_WRITEBACK_CACHE)
        && config
            .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
            .is_ok()
    {
        writeback = true;
        log::info!(
            "no passthrough ({why_not}): file data goes through the daemon with the kernel's writeback cache"
        );
    } else {
        log::warn!(
            "no passthrough ({why_not}) and no writeback cache offered: every write goes through the daemon"
        );
    }
    Granted {
        passthrough,
        writeback,
    }
}
