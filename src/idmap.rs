//! The identity seam: who asks (`Caller`), what the daemon itself may do (`Privileges`), and
//! how ids cross between requests and the layers (`IdMap`). Every id the core writes to disk
//! (the owner of a new object, a chown, the owner of a copy-up) and every id it shows (the
//! attributes of lookup, getattr, setattr, create, readdirplus) goes through `IdMap`;
//! nothing else converts ids. Without options the map is the identity; fuse-overlayfs's
//! `uidmapping=`/`gidmapping=` and `squash_to_root`/`squash_to_uid=`/`squash_to_gid=` are
//! what `IdMap` holds. So are the two other places ids live on disk: POSIX ACL xattrs, whose
//! entries name uids and gids (`acl`: translated both ways unless `noacl`), and the
//! override_stat xattrs that keep an owner and mode instead of the inode (`stat_xattr`:
//! fuse-overlayfs's `xattr_permissions=`, containers-storage's attribute).
//!
//! Two sides: ids *on disk* (in the layers) and ids *shown* (what the kernel exchanges with
//! the daemon: the attributes we reply with, a chown's ids and the `Caller`'s ids, all in the
//! daemon's user namespace). A triple `DISK:SHOWN:COUNT` (fuse-overlayfs's
//! `UID:MAPPED-UID:LEN`) maps disk ids DISK..DISK+COUNT to SHOWN..SHOWN+COUNT.

use crate::error::{Errno, FsResult};
use crate::privilege::Privilege;
use crate::sys::{self, Stat};

pub mod acl;
pub mod stat_xattr;

use acl::AclId;
use stat_xattr::StatXattr;

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

/// The id shown for a disk id outside every range (the kernel's default overflowuid and
/// overflowgid, what a user namespace shows for an unmapped id).
pub const OVERFLOW_ID: u32 = 65534;

/// One range of a mapping: disk ids `disk..disk+count` are shown as `shown..shown+count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub disk: u32,
    pub shown: u32,
    pub count: u32,
}

impl Range {
    fn to_shown(self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.disk).filter(|o| *o < self.count)?;
        Some(self.shown + off)
    }

    fn to_disk(self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.shown).filter(|o| *o < self.count)?;
        Some(self.disk + off)
    }

    fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
        a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
    }
}

/// `uidmapping=`/`gidmapping=`'s value: `DISK:SHOWN:COUNT` triples, joined by `:` or `,`
/// (a `,` only escaped as `\,` on the command line, where it separates -o options). Counts
/// of 0, ranges past 2^32, and ranges that overlap on either side are refused (the kernel
/// refuses the same in a uid_map), so that both directions are one-to-one.
pub fn parse_ranges(v: &str) -> Result<Vec<Range>, String> {
    let nums: Vec<&str> = v.split([':', ',']).collect();
    if v.is_empty() || !nums.len().is_multiple_of(3) {
        return Err("expected DISK:SHOWN:COUNT triples joined by ':'".into());
    }
    let mut out: Vec<Range> = Vec::new();
    for t in nums.chunks(3) {
        let n = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("'{s}' is not an id or a count"))
        };
        let r = Range {
            disk: n(t[0])?,
            shown: n(t[1])?,
            count: n(t[2])?,
        };
        let fits = |start: u32| u64::from(start) + u64::from(r.count) <= 1 << 32;
        if r.count == 0 || !fits(r.disk) || !fits(r.shown) {
            return Err(format!(
                "{}:{}:{}: empty or past 2^32",
                r.disk, r.shown, r.count
            ));
        }
        if out.iter().any(|o| {
            Range::overlaps((o.disk, o.count), (r.disk, r.count))
                || Range::overlaps((o.shown, o.count), (r.shown, r.count))
        }) {
            return Err(format!(
                "{}:{}:{} overlaps another range",
                r.disk, r.shown, r.count
            ));
        }
        out.push(r);
    }
    Ok(out)
}

/// One kind of id (uids or gids): its ranges (none: the identity) and its squash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OneMap {
    pub ranges: Vec<Range>,
    /// Every id shown is this one (`squash_to_uid=`/`squash_to_gid=`/`squash_to_root`);
    /// what is written to disk is still mapped by `ranges`.
    pub squash: Option<u32>,
}

impl OneMap {
    fn to_shown(&self, id: u32) -> u32 {
        self.squash.unwrap_or_else(|| self.ranges_to_shown(id))
    }

    fn to_disk(&self, id: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(id);
        }
        self.ranges.iter().find_map(|r| r.to_disk(id))
    }

    /// An id as the ranges alone show it: an owner unless squashed, and every id inside an
    /// ACL (a squash names the owner shown, and would make every ACL entry name one id).
    fn ranges_to_shown(&self, id: u32) -> u32 {
        if self.ranges.is_empty() {
            return id;
        }
        self.ranges
            .iter()
            .find_map(|r| r.to_shown(id))
            .unwrap_or(OVERFLOW_ID)
    }
}

/// How ids in requests map to ids on disk, and ids on disk to the ids shown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    pub uids: OneMap,
    pub gids: OneMap,
    /// `noacl`: ACL xattrs are stored as given, their ids untranslated (nothing enforces
    /// them, as with fuse-overlayfs).
    pub noacl: bool,
    /// `xattr_permissions=1|2`: chown and chmod of directories and regular files write this
    /// attribute of the upper copy instead of its inode.
    pub stat_xattr: Option<StatXattr>,
}

/// An ACL from a request naming an id no range maps: EINVAL, as the kernel's
/// `posix_acl_from_xattr` gives for an id the caller's user namespace cannot represent.
const ACL_UNMAPPED: Errno = Errno::EINVAL;

/// A chown to an id no range maps: EOVERFLOW, as the kernel gives for an id an idmapped mount
/// (or a filesystem's user namespace) cannot represent (fuse-overlayfs writes the overflow
/// id instead; we refuse rather than give a file an owner nobody asked for).
const UNMAPPED: Errno = Errno::new(libc::EOVERFLOW);

impl IdMap {
    pub fn identity() -> IdMap {
        IdMap::default()
    }

    /// The owner on disk of what `caller` creates. A caller whose id no range maps creates
    /// files owned by the overflow id, as with fuse-overlayfs.
    pub fn owner_of(&self, caller: &Caller) -> Ids {
        Ids {
            uid: self.uids.to_disk(caller.uid).unwrap_or(OVERFLOW_ID),
            gid: self.gids.to_disk(caller.gid).unwrap_or(OVERFLOW_ID),
        }
    }

    /// A uid from a request (chown) as written to disk; EOVERFLOW outside every range.
    pub fn uid_to_host(&self, uid: u32) -> FsResult<u32> {
        self.uids.to_disk(uid).ok_or(UNMAPPED)
    }

    /// A gid from a request (chown) as written to disk; EOVERFLOW outside every range.
    pub fn gid_to_host(&self, gid: u32) -> FsResult<u32> {
        self.gids.to_disk(gid).ok_or(UNMAPPED)
    }

    /// The owner that copy-up gives the upper copy of `lower` (both are ids on disk).
    pub fn copy_up_owner(&self, lower: &Stat) -> Ids {
        Ids {
            uid: lower.uid,
            gid: lower.gid,
        }
    }

    /// Attributes read from a layer, with the ids the merged view shows.
    pub fn to_shown(&self, mut st: Stat) -> Stat {
        st.uid = self.uids.to_shown(st.uid);
        st.gid = self.gids.to_shown(st.gid);
        st
    }

    /// Whether the value of xattr `name` carries ids that cross this map (an ACL, with
    /// ranges given and without `noacl`).
    pub fn maps_xattr(&self, name: &[u8]) -> bool {
        !self.noacl
            && (!self.uids.ranges.is_empty() || !self.gids.ranges.is_empty())
            && acl::is_acl_name(name)
    }

    /// An ACL read from a layer, as shown: each entry's id as `to_shown` shows an owner
    /// (an unmapped one as the overflow id). A value that is not an ACL is a corrupt layer:
    /// EIO.
    pub fn acl_to_shown(&self, value: &[u8]) -> FsResult<Vec<u8>> {
        let out = acl::map_ids(value, |k, id| {
            Ok::<_, Errno>(match k {
                AclId::Uid => self.uids.ranges_to_shown(id),
                AclId::Gid => self.gids.ranges_to_shown(id),
            })
        });
        out.ok_or(Errno::EIO)?
    }

    /// An ACL from a request, as written to disk: EINVAL when malformed or when an entry
    /// names an id no range maps (the kernel's answers for both).
    pub fn acl_to_disk(&self, value: &[u8]) -> FsResult<Vec<u8>> {
        let out = acl::map_ids(value, |k, id| {
            match k {
                AclId::Uid => self.uids.to_disk(id),
                AclId::Gid => self.gids.to_disk(id),
            }
            .ok_or(ACL_UNMAPPED)
        });
        out.ok_or(Errno::EINVAL)?
    }

    /// The override_stat attributes honoured on a layer, in `stat_xattr::PRECEDENCE`:
    /// those its root carries (`root_has`; how fuse-overlayfs and containers-storage mark a
    /// layer whose objects carry them), and on the upper the one `xattr_permissions=`
    /// writes. Other layers' objects are not read for them (no cost where none are used).
    pub fn stat_xattrs_of_layer(
        &self,
        is_upper: bool,
        root_has: impl Fn(StatXattr) -> bool,
    ) -> Vec<StatXattr> {
        stat_xattr::PRECEDENCE
            .into_iter()
            .filter(|x| (is_upper && self.stat_xattr == Some(*x)) || root_has(*x))
            .collect()
    }

    /// The attribute chown and chmod write on the upper: `xattr_permissions=`'s, else the
    /// first the upper's root carries (an upper written so keeps being written so; its
    /// attributes would otherwise hide every later chown and chmod).
    pub fn stat_xattr_written(&self, upper: &[StatXattr]) -> Option<StatXattr> {
        self.stat_xattr.or_else(|| upper.first().copied())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(u: &str, g: &str) -> IdMap {
        IdMap {
            uids: OneMap {
                ranges: parse_ranges(u).unwrap(),
                squash: None,
            },
            gids: OneMap {
                ranges: parse_ranges(g).unwrap(),
                squash: None,
            },
            ..IdMap::default()
        }
    }

    fn caller(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            pid: 0,
            umask: 0,
        }
    }

    #[test]
    fn parses_triples_joined_by_colons_or_commas() {
        let want = vec![
            Range {
                disk: 0,
                shown: 1000,
                count: 1,
            },
            Range {
                disk: 1,
                shown: 100000,
                count: 65536,
            },
        ];
        assert_eq!(parse_ranges("0:1000:1:1:100000:65536").unwrap(), want);
        assert_eq!(parse_ranges("0:1000:1,1:100000:65536").unwrap(), want);
        for bad in [
            "",
            "0:1000",
            "0:1000:1:5",
            "a:1:1",
            "0:0:0",
            "4294967295:0:2",
            "0:0:10:5:100:10",
            "0:0:10:100:5:10",
            "-1:0:1",
        ] {
            assert!(parse_ranges(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn maps_both_ways_with_overflow() {
        let m = map("0:1000:1:1:100000:65536", "0:2000:10");
        // Shown: disk 0 -> 1000, disk 5 -> 100004; outside -> 65534.
        let st = |uid, gid| Stat {
            uid,
            gid,
            ..Stat::default()
        };
        let s = m.to_shown(st(0, 3));
        assert_eq!((s.uid, s.gid), (1000, 2003));
        let s = m.to_shown(st(5, 10));
        assert_eq!((s.uid, s.gid), (100004, OVERFLOW_ID));
        let s = m.to_shown(st(70000, 0));
        assert_eq!((s.uid, s.gid), (OVERFLOW_ID, 2000));
        // Disk: the inverse; outside -> EOVERFLOW for chown, the overflow id for a creator.
        assert_eq!(m.uid_to_host(1000), Ok(0));
        assert_eq!(m.uid_to_host(100004), Ok(5));
        assert_eq!(m.gid_to_host(2009), Ok(9));
        assert_eq!(m.uid_to_host(0), Err(Errno::new(libc::EOVERFLOW)));
        assert_eq!(m.gid_to_host(2010), Err(Errno::new(libc::EOVERFLOW)));
        assert_eq!(m.owner_of(&caller(100000, 2001)), Ids { uid: 1, gid: 1 });
        assert_eq!(
            m.owner_of(&caller(7, 7)),
            Ids {
                uid: OVERFLOW_ID,
                gid: OVERFLOW_ID
            }
        );
    }

    #[test]
    fn acls_cross_like_owners() {
        let m = map("0:1000:10", "0:2000:10");
        let v = |u: u32, g: u32| {
            let mut v = vec![2, 0, 0, 0];
            for (t, id) in [(1u16, u32::MAX), (2, u), (8, g)] {
                v.extend_from_slice(&t.to_le_bytes());
                v.extend_from_slice(&[6, 0]);
                v.extend_from_slice(&id.to_le_bytes());
            }
            v
        };
        assert!(m.maps_xattr(b"system.posix_acl_access"));
        assert!(!m.maps_xattr(b"user.x"));
        assert_eq!(m.acl_to_shown(&v(3, 4)), Ok(v(1003, 2004)));
        assert_eq!(m.acl_to_shown(&v(30, 4)), Ok(v(OVERFLOW_ID, 2004)));
        assert_eq!(m.acl_to_disk(&v(1003, 2004)), Ok(v(3, 4)));
        assert_eq!(m.acl_to_disk(&v(3, 2004)), Err(Errno::EINVAL));
        assert_eq!(m.acl_to_disk(&[2, 0, 0]), Err(Errno::EINVAL));
        assert_eq!(m.acl_to_shown(&[9, 0, 0, 0]), Err(Errno::EIO));
        let noacl = IdMap {
            noacl: true,
            ..m.clone()
        };
        assert!(!noacl.maps_xattr(b"system.posix_acl_access"));
        assert!(!IdMap::identity().maps_xattr(b"system.posix_acl_default"));
    }

    #[test]
    fn stat_xattrs_per_layer() {
        let m = IdMap {
            stat_xattr: Some(StatXattr::User),
            ..IdMap::default()
        };
        let containers = |x| x == StatXattr::Containers;
        assert_eq!(
            m.stat_xattrs_of_layer(true, containers),
            vec![StatXattr::User, StatXattr::Containers]
        );
        assert_eq!(
            m.stat_xattrs_of_layer(false, containers),
            vec![StatXattr::Containers]
        );
        assert!(m.stat_xattrs_of_layer(false, |_| false).is_empty());
        assert_eq!(m.stat_xattr_written(&[]), Some(StatXattr::User));
        let plain = IdMap::identity();
        assert_eq!(
            plain.stat_xattr_written(&[StatXattr::Containers]),
            Some(StatXattr::Containers)
        );
        assert_eq!(plain.stat_xattr_written(&[]), None);
    }

    #[test]
    fn identity_without_options() {
        let m = IdMap::identity();
        assert_eq!(m.uid_to_host(4242), Ok(4242));
        assert_eq!(m.owner_of(&caller(3, 4)), Ids { uid: 3, gid: 4 });
        let s = m.to_shown(Stat {
            uid: 70000,
            gid: 9,
            ..Stat::default()
        });
        assert_eq!((s.uid, s.gid), (70000, 9));
    }
}
