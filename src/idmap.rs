//! The identity seam: who asks (`Caller`), what the daemon itself may do (`Privileges`), and
//! how ids cross between requests and the layers (`IdMap`). Every id the core writes to disk
//! (the owner of a new object, a chown, the owner of a copy-up) and every id it shows (the
//! attributes of lookup, getattr, setattr, create, readdirplus) goes through `IdMap`;
//! nothing else converts ids. The map is the identity today: id mapping (uidmapping=,
//! gidmapping=) and squashing are a change to `IdMap` alone.

use crate::privilege::Privilege;
use crate::sys::{self, Stat};

/// Who is asking: the caller's credentials as the transport gives them (the kernel's ids).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The caller's umask: ours to apply (POSIX ACLs are on), unless the parent directory
    /// has a default ACL, which the upper's filesystem then applies instead.
    pub umask: u32,
}

impl Caller {
    /// Whether the caller may keep a set-group-ID bit on a file whose group it is not in
    /// (the kernel asks for CAP_FSETID; root has it).
    pub fn may_fsetid(&self) -> bool {
        self.uid == 0
    }

    /// Whether the caller has CAP_SYS_ADMIN (from /proc/PID/status).
    pub fn has_cap_sys_admin(&self) -> bool {
        sys::pid_has_cap_sys_admin(self.pid)
    }

    /// Whether the caller is in group `gid` (on disk), as its primary or a supplementary one.
    pub fn in_group(&self, gid: u32) -> bool {
        sys::pid_in_group(self.pid, gid)
    }
}

/// An owner: a uid and a gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// How ids in requests map to ids on disk, and ids on disk to the ids shown. The identity
/// today.
#[derive(Clone, Debug, Default)]
pub struct IdMap {
    _identity: (),
}

impl IdMap {
    pub fn identity() -> IdMap {
        IdMap::default()
    }

    /// The owner on disk of what `caller` creates.
    pub fn owner_of(&self, caller: &Caller) -> Ids {
        Ids {
            uid: self.uid_to_host(caller.uid),
            gid: self.gid_to_host(caller.gid),
        }
    }

    /// A uid from a request (chown) as written to disk.
    pub fn uid_to_host(&self, uid: u32) -> u32 {
        uid
    }

    /// A gid from a request (chown) as written to disk.
    pub fn gid_to_host(&self, gid: u32) -> u32 {
        gid
    }

    /// The owner that copy-up gives the upper copy of `lower` (both are ids on disk).
    pub fn copy_up_owner(&self, lower: &Stat) -> Ids {
        Ids {
            uid: lower.uid,
            gid: lower.gid,
        }
    }

    /// Attributes read from a layer, with the ids the merged view shows.
    pub fn to_shown(&self, st: Stat) -> Stat {
        st
    }
}

/// What the daemon itself is allowed: the core's view of the one decision made at start
/// (`privilege::Privilege::detect`), never probed again here.
#[derive(Clone, Copy, Debug)]
pub struct Privileges {
    /// The daemon's euid and egid: what the upper's filesystem gives what it creates.
    pub ids: Ids,
    /// Permission bits do not stop the daemon on the upper's objects (CAP_DAC_OVERRIDE: root,
    /// or root in a user namespace over its own files); an ordinary user's daemon works around
    /// them where it owns the object, as the kernel's mounter credentials need not.
    pub overrides_modes: bool,
}

impl Privileges {
    /// The core's part of `privilege`.
    pub fn of(privilege: &Privilege) -> Privileges {
        Privileges {
            ids: Ids {
                uid: privilege.euid,
                gid: privilege.egid,
            },
            overrides_modes: privilege.overrides_modes(),
        }
    }

    /// Whether the daemon can give what it makes any owner and mode afterwards (root): then
    /// a copy is created with its final permissions, else with owner access to finish it.
    pub fn any_owner(&self) -> bool {
        self.ids.uid == 0
    }
}
