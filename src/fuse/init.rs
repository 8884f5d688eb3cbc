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
    /// read-only with `strict_copy_up=0`).
    pub has_upper: bool,
    /// `strict_copy_up` (the default): lower files are read through the daemon.
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

/// Passthrough (the kernel reads and writes the real files itself) needs root, a kernel
/// that offers it, and one level of filesystem stacking below us; without it, a writable
/// mount asks for the writeback cache.
fn data_path(config: &mut KernelConfig, want: &Wanted) -> Granted {
    let offered = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH);
    let passthrough = want.passthrough.is_ok()
        && offered
        && config.set_max_stack_depth(1).is_ok()
        && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
    let why_not = if let Err(why) = want.passthrough {
        why
    } else if !offered {
        "the kernel does not offer passthrough (it needs root and Linux 6.9 or later)"
    } else {
        "the kernel refused passthrough"
    };
    let mut writeback = false;
    let summary = if passthrough {
        format!(
            "FUSE passthrough granted: the kernel does the I/O of files in the upper layer{}",
            if !want.has_upper {
                " and, as the mount is read-only, of every file"
            } else if want.strict_copy_up {
                " (strict_copy_up: lower files are read through the daemon)"
            } else {
                " and of lower files opened read-only (strict_copy_up=0: shared page cache)"
            }
        )
    } else if want.read_only {
        format!("no passthrough ({why_not}): file data is read through the daemon (page-cached)")
    } else if config
        .capabilities()
        .contains(InitFlags::FUSE_WRITEBACK_CACHE)
        && config
            .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
            .is_ok()
    {
        writeback = true;
        format!(
            "no passthrough ({why_not}): file data goes through the daemon with the kernel's writeback cache"
        )
    } else {
        format!(
            "no passthrough ({why_not}) and no writeback cache offered: every write goes through the daemon"
        )
    };
    if passthrough || writeback || want.read_only {
        log::info!("{summary}");
    } else {
        log::warn!("{summary}");
    }
    Granted {
        passthrough,
        writeback,
        summary,
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
}
