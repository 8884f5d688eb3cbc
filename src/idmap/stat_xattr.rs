//! The xattrs that keep an object's owner and mode instead of its inode: fuse-overlayfs's
//! `security.fuseoverlayfs.override_stat` (`xattr_permissions=1`) and
//! `user.fuseoverlayfs.override_stat` (`xattr_permissions=2`), and containers-storage's
//! `user.containers.override_stat` (written by rootless podman with `force_mask`).
//!
//! The value is `UID:GID:MODE[:TYPE]`: decimal ids (on disk, before any `uidmapping=`),
//! the mode in octal (fuse-overlayfs writes the whole `st_mode`, type bits included; only
//! the permission bits are taken from it), and containers-storage's optional type: `file`,
//! `dir`, `symlink`, `pipe`, `socket`, `block-MAJOR-MINOR`, `char-MAJOR-MINOR`. The value
//! comes from a layer: anything malformed is `None`, never a panic.

use crate::sys::{self, Stat};
use std::ffi::CStr;

/// One of the three attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatXattr {
    /// `security.fuseoverlayfs.override_stat` (`xattr_permissions=1`).
    Security,
    /// `user.fuseoverlayfs.override_stat` (`xattr_permissions=2`).
    User,
    /// `user.containers.override_stat` (containers-storage).
    Containers,
}

/// The order in which an object's attributes are consulted: the first present wins.
/// fuse-overlayfs's own two come first (fuse-overlayfs 1.10's order for a layer): on an
/// upper that containers-storage prepared (its root carries `user.containers.*`) and then
/// mounted with `xattr_permissions=2`, the fuse-overlayfs attribute is the one a chown or
/// chmod through the mount wrote, after containers-storage extracted the file.
pub const PRECEDENCE: [StatXattr; 3] =
    [StatXattr::Security, StatXattr::User, StatXattr::Containers];

impl StatXattr {
    pub fn name(self) -> &'static CStr {
        match self {
            StatXattr::Security => c"security.fuseoverlayfs.override_stat",
            StatXattr::User => c"user.fuseoverlayfs.override_stat",
            StatXattr::Containers => c"user.containers.override_stat",
        }
    }

    /// `xattr_permissions=N`'s attribute (0: none).
    pub fn of_option(n: u32) -> Option<Option<StatXattr>> {
        match n {
            0 => Some(None),
            1 => Some(Some(StatXattr::Security)),
            2 => Some(Some(StatXattr::User)),
            _ => None,
        }
    }

    /// The value to write for an object with `mode` (its real type and the permission bits
    /// to keep) shown as `kind` when that is another type (a device kept in a regular file):
    /// fuse-overlayfs's `%d:%d:%o` of the whole mode (type bits included, as fuse-overlayfs
    /// 1.10 writes it), or containers-storage's `%d:%d:%04o:TYPE` for its own attribute. A
    /// `kind` is added as a fourth field to fuse-overlayfs's too, after the permission bits
    /// alone: fuse-overlayfs 1.15 and later or the type named there into the mode read
    /// (`0:0:100644:char-1-3` would read as `S_IFREG | S_IFCHR`, a symlink), 1.10 reads the
    /// first three fields and keeps the file's own type, containers-storage takes the
    /// permission bits of any value.
    pub fn format(self, uid: u32, gid: u32, mode: u32, kind: Option<(u32, u64)>) -> Vec<u8> {
        let (t, rdev) = kind.unwrap_or((mode & libc::S_IFMT, 0));
        let perm = mode & 0o7777;
        let mut v = match self {
            StatXattr::Containers => format!("{uid}:{gid}:{perm:04o}"),
            _ if kind.is_some() => format!("{uid}:{gid}:{perm:o}"),
            StatXattr::Security | StatXattr::User => format!("{uid}:{gid}:{mode:o}"),
        };
        if kind.is_some() || self == StatXattr::Containers {
            v.push(':');
            v.push_str(&type_name(t, rdev));
        }
        v.into_bytes()
    }
}

/// containers-storage's name of a type (`char-MAJOR-MINOR` for a device).
fn type_name(t: u32, rdev: u64) -> String {
    let dev = |what: &str| format!("{what}-{}-{}", libc::major(rdev), libc::minor(rdev));
    match t {
        libc::S_IFDIR => "dir".into(),
        libc::S_IFLNK => "symlink".into(),
        libc::S_IFIFO => "pipe".into(),
        libc::S_IFSOCK => "socket".into(),
        libc::S_IFBLK => dev("block"),
        libc::S_IFCHR => dev("char"),
        _ => "file".into(),
    }
}

/// Whether `name` is one of the three (hidden from the merged view, and refused there).
pub fn is_stat_xattr(name: &[u8]) -> bool {
    PRECEDENCE.iter().any(|x| x.name().to_bytes() == name)
}

/// Whether an object of this type may carry its attributes in one of them (fuse-overlayfs
/// reads them for directories and regular files only; others keep theirs on the inode).
pub fn applies_to(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFDIR | libc::S_IFREG)
}

/// A parsed value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (07777).
    pub perm: u32,
    /// The type the value names, with its device number (containers-storage's fourth field).
    pub kind: Option<(u32, u64)>,
}

fn dec(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn oct(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(|c| (b'0'..=b'7').contains(c)) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(s).ok()?, 8).ok()
}

/// `MAJOR-MINOR` after a device type (leading dashes skipped, as fuse-overlayfs does; more
/// fields after the minor ignored, as containers-storage does).
fn device(rest: &[u8]) -> Option<u64> {
    let start = rest.iter().position(|c| *c != b'-')?;
    let mut parts = rest[start..].split(|c| *c == b'-');
    let major = dec(parts.next()?)?;
    let minor = dec(parts.next()?)?;
    Some(sys::makedev(major, minor))
}

fn kind(ty: &[u8]) -> Option<(u32, u64)> {
    let simple = [
        (&b"file"[..], libc::S_IFREG),
        (b"dir", libc::S_IFDIR),
        (b"symlink", libc::S_IFLNK),
        (b"pipe", libc::S_IFIFO),
        (b"socket", libc::S_IFSOCK),
    ];
    if let Some((_, t)) = simple.iter().find(|(p, _)| ty.starts_with(p)) {
        return Some((*t, 0));
    }
    let devs = [(&b"block"[..], libc::S_IFBLK), (b"char", libc::S_IFCHR)];
    let (p, t) = devs.iter().find(|(p, _)| ty.starts_with(p))?;
    Some((*t, device(&ty[p.len()..])?))
}

/// Parses a value; `None` when malformed (a trailing NUL, as some tools write, is allowed).
pub fn parse(value: &[u8]) -> Option<Override> {
    let value = value.strip_suffix(b"\0").unwrap_or(value);
    let mut f = value.splitn(4, |c| *c == b':');
    let uid = dec(f.next()?)?;
    let gid = dec(f.next()?)?;
    let mode = oct(f.next()?)?;
    let kind = match f.next() {
        Some(ty) => Some(kind(ty)?),
        None => None,
    };
    Some(Override {
        uid,
        gid,
        perm: mode & 0o7777,
        kind,
    })
}

impl Override {
    /// The type this value shows a regular file as, when it is another one that the merged
    /// view can serve so (a pipe, socket or device).
    pub fn special_kind(&self) -> Option<(u32, u64)> {
        self.kind
            .filter(|(t, _)| !matches!(*t, libc::S_IFDIR | libc::S_IFLNK | libc::S_IFREG))
    }

    /// `st` (a real directory or regular file) with the owner and mode the value keeps. A
    /// type is taken only where the merged view can serve it: a directory stays one (and
    /// only a directory is shown as one); a regular file may be shown as a pipe, socket or
    /// device (what containers-storage's `force_mask` made of them), never as a symlink
    /// (the merged view could not read its target).
    pub fn apply(&self, mut st: Stat) -> Stat {
        let real = st.file_type();
        let shown = match self.special_kind() {
            Some((t, rdev)) if real == libc::S_IFREG => {
                // A device, pipe or socket has no data: the file keeping it is empty anyway.
                st.rdev = rdev;
                st.size = 0;
                st.blocks = 0;
                t
            }
            _ => real,
        };
        st.uid = self.uid;
        st.gid = self.gid;
        st.mode = shown | self.perm;
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_writers() {
        // fuse-overlayfs 1.10 (the whole mode) and containers-storage (a type).
        let o = parse(b"5:6:100755").unwrap();
        assert_eq!((o.uid, o.gid, o.perm, o.kind), (5, 6, 0o755, None));
        let o = parse(b"0:0:0640:file").unwrap();
        assert_eq!((o.perm, o.kind), (0o640, Some((libc::S_IFREG, 0))));
        let o = parse(b"1:2:4755:char-1-3").unwrap();
        assert_eq!(o.kind, Some((libc::S_IFCHR, sys::makedev(1, 3))));
        assert_eq!(o.perm, 0o4755);
        assert!(parse(b"1:2:0600:block--8-1-extra").is_some());
        assert!(parse(b"1:2:755\0").is_some());
        for bad in [
            &b""[..],
            b"1:2",
            b"-1:2:755",
            b"1:2:789",
            b"a:2:755",
            b"1:2:755:weird",
            b"1:2:755:char-1",
            b"99999999999:0:755",
            b"1::755",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_as_the_writers_do() {
        let x = StatXattr::User;
        assert_eq!(x.format(5, 6, libc::S_IFREG | 0o755, None), b"5:6:100755");
        assert_eq!(x.format(0, 0, libc::S_IFDIR | 0o750, None), b"0:0:40750");
        let chr = Some((libc::S_IFCHR, sys::makedev(1, 3)));
        assert_eq!(
            x.format(0, 0, libc::S_IFREG | 0o644, chr),
            b"0:0:644:char-1-3"
        );
        let c = StatXattr::Containers;
        assert_eq!(c.format(0, 0, libc::S_IFDIR | 0o750, None), b"0:0:0750:dir");
        assert_eq!(
            c.format(1, 2, libc::S_IFREG | 0o4755, None),
            b"1:2:4755:file"
        );
        let kinds = [None, chr, Some((libc::S_IFIFO, 0))];
        for (uid, gid, mode) in [
            (5, 6, libc::S_IFREG | 0o4755),
            (0, 1, libc::S_IFDIR | 0o1777),
        ] {
            for (w, kind) in PRECEDENCE.into_iter().zip(kinds) {
                let o = parse(&w.format(uid, gid, mode, kind)).unwrap();
                assert_eq!((o.uid, o.gid, o.perm), (uid, gid, mode & 0o7777));
                assert!(kind.is_none() || o.kind == kind);
            }
        }
    }

    #[test]
    fn applies_owner_mode_and_a_servable_type() {
        let file = Stat {
            mode: libc::S_IFREG | 0o755,
            uid: 1000,
            gid: 1000,
            ..Stat::default()
        };
        let st = parse(b"0:0:0644:char-1-3").unwrap().apply(Stat {
            size: 5,
            blocks: 8,
            ..file
        });
        assert_eq!((st.uid, st.gid, st.mode), (0, 0, libc::S_IFCHR | 0o644));
        assert_eq!((st.rdev, st.size, st.blocks), (sys::makedev(1, 3), 0, 0));
        // What fuse-overlayfs writes for a device (the permission bits, then the type).
        let st = parse(b"3:4:640:block-8-1").unwrap().apply(file);
        assert_eq!((st.uid, st.mode), (3, libc::S_IFBLK | 0o640));
        assert_eq!(st.rdev, sys::makedev(8, 1));
        let st = parse(b"0:0:0777:symlink").unwrap().apply(file);
        assert_eq!(st.mode, libc::S_IFREG | 0o777);
        let dir = Stat {
            mode: libc::S_IFDIR | 0o700,
            ..Stat::default()
        };
        let st = parse(b"3:4:1777:file").unwrap().apply(dir);
        assert_eq!((st.uid, st.mode), (3, libc::S_IFDIR | 0o1777));
    }
}
