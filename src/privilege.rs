//! Who the daemon runs as, decided once at start: real root, root inside a user namespace,
//! or an ordinary user. Everything that depends on it (how the mount is made, the work
//! directory's mode, whether layers are reached through private mount clones, which xattr
//! namespace holds the overlay's markers) asks the `Privilege` made here, never the process
//! again. Reads /proc only; no I/O on layers.

use std::path::{Path, PathBuf};

/// The three ways layover can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// CAP_SYS_ADMIN in the initial user namespace: mount(2) on /dev/fuse, private clones
    /// of the layers' mounts, `trusted.overlay.*` markers.
    Root,
    /// CAP_SYS_ADMIN in a user namespace of its own (`unshare -Ur`, podman's rootless
    /// namespace): mount(2) on /dev/fuse, which the kernel allows when that namespace owns
    /// the mount namespace; `user.overlay.*` markers.
    UserNamespaceRoot,
    /// No CAP_SYS_ADMIN: the setuid `fusermount3` mounts for us; `user.overlay.*` markers.
    User,
}

#[derive(Clone, Debug)]
pub struct Privilege {
    pub mode: Mode,
    pub euid: u32,
    pub egid: u32,
    /// This namespace's uid map (`inside outside count` lines), for the log line.
    uid_map: String,
}

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_SYS_ADMIN: u32 = 21;

/// The uid map of the initial user namespace: every id maps to itself.
fn is_initial_namespace(uid_map: &str) -> bool {
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// The effective capability set from a /proc/PID/status text.
fn effective_caps(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// The decision itself, on what /proc said.
fn decide(uid_map: &str, caps: u64) -> Mode {
    if caps & (1 << CAP_SYS_ADMIN) == 0 {
        Mode::User
    } else if is_initial_namespace(uid_map) {
        Mode::Root
    } else {
        Mode::UserNamespaceRoot
    }
}

impl Privilege {
    /// Looks at /proc/self/uid_map and the effective capabilities. An unreadable /proc
    /// counts as no capability (the safe side: an ordinary user's mount is tried).
    pub fn detect() -> Privilege {
        let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let caps = effective_caps(&status);
        let mut mode = decide(&uid_map, caps);
        // Without CAP_DAC_OVERRIDE a "root" cannot use a work directory of mode 0 either.
        if mode != Mode::User && caps & (1 << CAP_DAC_OVERRIDE) == 0 {
            mode = Mode::User;
        }
        Privilege {
            mode,
            euid: crate::sys::geteuid(),
            egid: crate::sys::getegid(),
            uid_map: uid_map.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }

    /// mount(2) is ours to call (else fusermount3 does it).
    pub fn mounts_itself(&self) -> bool {
        self.mode != Mode::User
    }

    /// Permission bits do not stop the daemon on objects it owns (CAP_DAC_OVERRIDE over
    /// them): the work directory can be mode 0, as the kernel makes it.
    pub fn overrides_modes(&self) -> bool {
        self.mode != Mode::User
    }

    /// Private clones of mounts (open_tree, mount_setattr) need CAP_SYS_ADMIN over the
    /// layers' mount namespace; only real root is sure to have it.
    pub fn clones_mounts(&self) -> bool {
        self.mode == Mode::Root
    }

    /// `trusted.*` xattrs need CAP_SYS_ADMIN in the initial user namespace.
    pub fn may_use_trusted_xattrs(&self) -> bool {
        self.mode == Mode::Root
    }

    /// How the mount is made, for the one log line at mount.
    pub fn describe(&self) -> String {
        match self.mode {
            Mode::Root => "as root, mount(2) on /dev/fuse".into(),
            Mode::UserNamespaceRoot => format!(
                "as root in a user namespace (uid map {}), mount(2) on /dev/fuse",
                self.uid_map
            ),
            Mode::User => format!(
                "as an ordinary user (uid {}), mounted by fusermount3",
                self.euid
            ),
        }
    }
}

/// The setuid `fusermount3` an ordinary user mounts with: `$FUSERMOUNT_PATH` (as fuser
/// honours it), else the first in `$PATH`, else /bin or /sbin. None: not installed.
pub fn find_fusermount3() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FUSERMOUNT_PATH") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join("fusermount3"))
        .find(|p| Path::new(p).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = 0x1ff_ffff_ffff;

    #[test]
    fn modes() {
        let init = "         0          0 4294967295\n";
        assert_eq!(decide(init, ALL), Mode::Root);
        assert_eq!(decide(init, 0), Mode::User);
        assert_eq!(decide("0 1001 1\n", ALL), Mode::UserNamespaceRoot);
        assert_eq!(
            decide("0 1001 1\n1 100000 65536\n", ALL),
            Mode::UserNamespaceRoot
        );
        assert_eq!(decide("0 1001 1\n", 0), Mode::User);
    }

    #[test]
    fn caps_from_status() {
        let s = "Name:\tx\nCapInh:\t0\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(effective_caps(s), ALL);
        assert_eq!(effective_caps("CapEff:\t0000000000000000\n"), 0);
        assert_eq!(effective_caps(""), 0);
    }
}
