//! fuse-overlayfs's id options, mounted: `uidmapping=`/`gidmapping=` (files created land on
//! disk with the disk ids, stat shows the mapped ids, an unmapped id shows as 65534 and
//! cannot be chowned to) and the squash options (every id shown is the one given).
//! Runs as root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "rootless/support.rs"]
#[allow(dead_code)]
mod support;

use layover_testkit::*;
use std::fs;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

/// Layers: a lower with files owned by 0:0, 5:6 and 70000:70000 (outside the mapping), an
/// empty upper, mounted with `opts` added. Returns (env, lower, upper, mountpoint).
fn mounted(name: &str, opts: &str) -> (TestEnv, PathBuf, PathBuf, PathBuf) {
    let env = TestEnv::new(name);
    let l = env.layer("l");
    l.file_owned("root", "r", 0o644, 0, 0)
        .file_owned("five", "5", 0o644, 5, 6)
        .file_owned("far", "x", 0o644, 70000, 70000)
        .dir("d")
        .chmod("d", 0o777);
    let up = env.mkdir("u");
    let work = env.mkdir("w");
    let mnt = env.mkdir("m");
    env.mount_layover(
        &format!(
            "lowerdir={},upperdir={},workdir={}{opts}",
            l.root.display(),
            up.display(),
            work.display()
        ),
        &mnt,
    );
    let lower = l.root.clone();
    (env, lower, up, mnt)
}

fn ids(p: &std::path::Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (m.uid(), m.gid())
}

#[test]
fn uidmapping_maps_both_ways() {
    // Disk 0..65536 shown as 100000..165536 (the triples given as two, one joined by `\,`).
    let (_env, _lower, up, mnt) = mounted(
        "uidmapping",
        ",uidmapping=0:100000:10:10:100010:65526,gidmapping=0:100000:10\\,10:100010:65526",
    );
    assert_eq!(ids(&mnt.join("root")), (100000, 100000));
    assert_eq!(ids(&mnt.join("five")), (100005, 100006));
    assert_eq!(ids(&mnt.join("far")), (65534, 65534));

    // A caller with shown ids 100001:100002 creates: on disk 1:2.
    as_user(100001, 100002, 0o022, || {
        fs::write(mnt.join("d/new"), "n").expect("create as a mapped user");
    });
    assert_eq!(ids(&up.join("d/new")), (1, 2));
    assert_eq!(ids(&mnt.join("d/new")), (100001, 100002));

    // chown through the mount writes the disk ids.
    std::os::unix::fs::lchown(mnt.join("five"), Some(100020), Some(100030)).expect("chown");
    assert_eq!(ids(&up.join("five")), (20, 30));
    assert_eq!(ids(&mnt.join("five")), (100020, 100030));

    // An id no range maps cannot be given: EOVERFLOW (the kernel's errno for an id an
    // idmapped mount cannot represent); nothing changes.
    let r = std::os::unix::fs::lchown(mnt.join("five"), Some(1234), None);
    assert_eq!(errno(r), Some(libc::EOVERFLOW));
    let r = std::os::unix::fs::lchown(mnt.join("five"), None, Some(99));
    assert_eq!(errno(r), Some(libc::EOVERFLOW));
    assert_eq!(ids(&up.join("five")), (20, 30));
}

#[test]
fn a_split_mapping_is_refused_with_a_hint() {
    let env = TestEnv::new("uidmapping_split");
    let l = env.layer("l");
    l.file("a", "a");
    let mnt = env.mkdir("m");
    let opts = format!(
        "lowerdir={},uidmapping=0:1000:1,1:100000:65536",
        l.root.display()
    );
    let r = env.run_layover(&[os("-o"), os(&opts), mnt.as_os_str()]);
    assert!(!r.ok(), "mounted with a mapping cut by a comma");
    assert!(r.stderr.contains("join them with ':'"), "{}", r.stderr);
}

#[test]
fn squash_shows_one_owner() {
    let (_env, _lower, up, mnt) = mounted("squash_root", ",squash_to_root");
    for n in ["root", "five", "far", "d"] {
        assert_eq!(ids(&mnt.join(n)), (0, 0), "{n}");
    }
    as_user(4321, 4322, 0o022, || {
        fs::write(mnt.join("d/new"), "n").expect("create");
    });
    // Written with the caller's ids (no mapping), shown as root's.
    assert_eq!(ids(&up.join("d/new")), (4321, 4322));
    assert_eq!(ids(&mnt.join("d/new")), (0, 0));
    drop(_env);

    // squash_to_uid= / squash_to_gid= win over squash_to_root, each on its own side.
    let (_env, _lower, _up, mnt) = mounted("squash_ids", ",squash_to_root,squash_to_uid=777");
    assert_eq!(ids(&mnt.join("five")), (777, 0));
    let (_env2, _lower, _up, mnt) = mounted("squash_gid", ",squash_to_gid=888");
    assert_eq!(ids(&mnt.join("five")), (5, 888));
    assert_eq!(
        fs::metadata(mnt.join("d")).unwrap().permissions().mode() & 0o777,
        0o777
    );
}

/// An access ACL (user::rw-, user:1234:r--, group::r--, mask::r--, other::---).
const ACL_1234_R: &[u8] = &[
    2, 0, 0, 0, //
    1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, //
    2, 0, 4, 0, 0xd2, 0x04, 0, 0, //
    4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, //
    0x10, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, //
    0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
];

/// With ACLs (the default) an ACL entry lets uid 1234 read a 0600 file; with `noacl` the
/// kernel checks the mode alone (FUSE_POSIX_ACL was not asked for) and refuses.
#[test]
fn noacl_leaves_acls_unenforced() {
    for (opts, readable) in [("", true), (",noacl", false)] {
        let (_env, _lower, _up, mnt) = mounted("noacl", opts);
        let f = mnt.join("secret");
        fs::write(&f, "s").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        setxattr(&f, "system.posix_acl_access", ACL_1234_R, 0).expect("set the ACL");
        let r = as_user(1234, 1234, 0o022, || fs::read(&f).map(|_| ()));
        assert_eq!(r.is_ok(), readable, "opts '{opts}': {r:?}");
        if !readable {
            assert_eq!(errno(r), Some(libc::EACCES));
        }
    }
}

/// `static_nlink`: every directory shows nlink 1 (without it, one in the upper alone counts
/// its subdirectories).
#[test]
fn static_nlink_shows_one() {
    for (opts, want) in [("", 4), (",static_nlink", 1)] {
        let (_env, _lower, _up, mnt) = mounted("static_nlink", opts);
        fs::create_dir_all(mnt.join("new/a")).unwrap();
        fs::create_dir_all(mnt.join("new/b")).unwrap();
        assert_eq!(
            fs::metadata(mnt.join("new")).unwrap().nlink(),
            want,
            "opts '{opts}'"
        );
        assert_eq!(fs::metadata(mnt.join("root")).unwrap().nlink(), 1);
    }
}

// -------------------------------------------------------------------------------------------
// Owners and modes in override_stat xattrs (xattr_permissions=, containers-storage's)
// -------------------------------------------------------------------------------------------

const FUSE_OVERLAYFS_USER: &str = "user.fuseoverlayfs.override_stat";
const FUSE_OVERLAYFS_SECURITY: &str = "security.fuseoverlayfs.override_stat";
const CONTAINERS: &str = "user.containers.override_stat";

fn xattr_text(p: &std::path::Path, name: &str) -> Option<String> {
    getxattr(p, name)
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn mode_of(p: &std::path::Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode()
}

/// Mounts layover again on the same layers (after unmounting `mnt`) with `opts` added.
fn remount(
    env: &TestEnv,
    lower: &std::path::Path,
    up: &std::path::Path,
    mnt: &std::path::Path,
    opts: &str,
) {
    umount_retrying(mnt);
    env.untrack(mnt);
    let work = up.parent().unwrap().join("w");
    env.mount_layover(
        &format!(
            "lowerdir={},upperdir={},workdir={}{opts}",
            lower.display(),
            up.display(),
            work.display()
        ),
        mnt,
    );
}

/// `xattr_permissions=1|2`: chown and chmod through the mount, the owner of what a caller
/// creates and of a copy-up go to the attribute (fuse-overlayfs 1.10's value, the whole mode
/// in octal), the inode keeps the daemon's ids and a usable mode, stat shows the attribute's
/// values, the attribute itself is invisible and cannot be set through the mount, and the
/// upper reads alike after a remount without the option (its root is marked).
#[test]
fn xattr_permissions_keep_owner_and_mode_in_an_xattr() {
    for (opt, name) in [(1, FUSE_OVERLAYFS_SECURITY), (2, FUSE_OVERLAYFS_USER)] {
        let (env, lower, up, mnt) =
            mounted("xattr_permissions", &format!(",xattr_permissions={opt}"));
        let root = fs::metadata(&up).unwrap();
        let want_root = format!("{}:{}:{:o}", root.uid(), root.gid(), root.mode());
        assert_eq!(xattr_text(&up, name), Some(want_root), "={opt}: upper root");

        // chown: a copy-up, then the attribute; the inode keeps root's ids and 0644.
        std::os::unix::fs::lchown(mnt.join("five"), Some(7), Some(8)).unwrap();
        assert_eq!(
            xattr_text(&up.join("five"), name).as_deref(),
            Some("7:8:100644")
        );
        assert_eq!(ids(&up.join("five")), (0, 0), "={opt}: the inode's owner");
        assert_eq!(ids(&mnt.join("five")), (7, 8));
        fs::set_permissions(mnt.join("five"), fs::Permissions::from_mode(0o4750)).unwrap();
        assert_eq!(
            xattr_text(&up.join("five"), name).as_deref(),
            Some("7:8:104750")
        );
        assert_eq!(
            mode_of(&up.join("five")) & 0o7777,
            0o644,
            "={opt}: the inode's mode"
        );
        assert_eq!(mode_of(&mnt.join("five")) & 0o7777, 0o4750);
        // A chown clears set-user-ID (and set-group-ID with group execute), as a filesystem does.
        std::os::unix::fs::lchown(mnt.join("five"), Some(9), None).unwrap();
        assert_eq!(
            xattr_text(&up.join("five"), name).as_deref(),
            Some("9:8:100750")
        );
        // A copy-up by itself writes the lower file's owner and mode there.
        fs::write(mnt.join("far"), "more").unwrap();
        assert_eq!(
            xattr_text(&up.join("far"), name).as_deref(),
            Some("70000:70000:100644")
        );
        assert_eq!(ids(&mnt.join("far")), (70000, 70000));

        // What a caller creates: the attribute holds the caller's ids and its mode.
        as_user(1234, 1235, 0o022, || {
            fs::write(mnt.join("d/new"), "n").expect("create");
            fs::create_dir(mnt.join("d/sub")).expect("mkdir");
            fs::set_permissions(mnt.join("d/sub"), fs::Permissions::from_mode(0o500)).unwrap();
        });
        assert_eq!(
            xattr_text(&up.join("d/new"), name).as_deref(),
            Some("1234:1235:100644")
        );
        assert_eq!(
            xattr_text(&up.join("d/sub"), name).as_deref(),
            Some("1234:1235:40500")
        );
        assert_eq!(ids(&up.join("d/sub")), (0, 0));
        assert_eq!(
            mode_of(&up.join("d/sub")) & 0o777,
            0o755,
            "={opt}: the inode keeps its mode"
        );
        assert_eq!(ids(&mnt.join("d/sub")), (1234, 1235));
        assert_eq!(mode_of(&mnt.join("d/sub")) & 0o7777, 0o500);
        // The kernel checks the mode shown: the 0500 directory refuses its owner a new name.
        let r = as_user(1234, 1235, 0o022, || fs::write(mnt.join("d/sub/x"), "x"));
        assert_eq!(errno(r), Some(libc::EACCES));

        // The attribute is not there for the merged view, and cannot be set there.
        let f = mnt.join("five");
        assert!(
            !listxattr(&f)
                .unwrap()
                .iter()
                .any(|n| n.contains("override_stat"))
        );
        for n in [FUSE_OVERLAYFS_USER, FUSE_OVERLAYFS_SECURITY, CONTAINERS] {
            assert_eq!(errno(getxattr(&f, n)), Some(libc::ENODATA), "get {n}");
            assert_eq!(
                errno(setxattr(&f, n, b"0:0:777", 0)),
                Some(libc::EPERM),
                "set {n}"
            );
            assert_eq!(errno(removexattr(&f, n)), Some(libc::ENODATA), "remove {n}");
        }
        assert_eq!(
            xattr_text(&up.join("five"), name).as_deref(),
            Some("9:8:100750")
        );

        // A remount without the option reads the upper alike, and keeps writing there.
        remount(&env, &lower, &up, &mnt, "");
        assert_eq!(ids(&mnt.join("five")), (9, 8));
        assert_eq!(ids(&mnt.join("d/sub")), (1234, 1235));
        std::os::unix::fs::lchown(mnt.join("d/new"), Some(3), Some(4)).unwrap();
        assert_eq!(
            xattr_text(&up.join("d/new"), name).as_deref(),
            Some("3:4:100644")
        );
        assert_eq!(ids(&up.join("d/new")), (0, 0));
    }
}

/// containers-storage's `user.containers.override_stat` on a layer whose root carries one
/// (as containers-storage marks a layer it extracted with `force_mask`): stat shows it, a
/// device kept in a regular file shows as the device; on a layer whose root does not, it
/// is not read (as with fuse-overlayfs). fuse-overlayfs's own attribute wins over it. A
/// copy-up writes the shown values to the upper's attribute; without one root gives the
/// copy's inode the shown owner and mode.
#[test]
fn containers_override_stat_is_read() {
    let env = TestEnv::new("containers_override");
    let l = env.layer("l");
    l.file_owned("suid", "s", 0o644, 1000, 1000)
        .file_owned("null", "", 0o600, 1000, 1000)
        .file_owned("both", "b", 0o600, 1000, 1000)
        .dir("sub")
        .xattr(".", CONTAINERS, "0:0:0755:dir")
        .xattr("suid", CONTAINERS, "0:0:4755:file")
        .xattr("null", CONTAINERS, "0:0:0666:char-1-3")
        .xattr("both", CONTAINERS, "1:1:0640:file")
        .xattr("sub", CONTAINERS, "2:3:0700:dir")
        .xattr(".", FUSE_OVERLAYFS_USER, "0:0:40755")
        .xattr("both", FUSE_OVERLAYFS_USER, "4:4:100604");
    let plain = env.layer("plain");
    plain.file_owned("ignored", "i", 0o644, 1000, 1000).xattr(
        "ignored",
        CONTAINERS,
        "0:0:0777:file",
    );
    for opts in ["", ",xattr_permissions=2"] {
        let up = env.mkdir(format!("u{}", opts.len()));
        let work = env.mkdir(format!("w{}", opts.len()));
        let mnt = env.mkdir(format!("m{}", opts.len()));
        env.mount_layover(
            &format!(
                "lowerdir={}:{},upperdir={},workdir={}{opts}",
                l.root.display(),
                plain.root.display(),
                up.display(),
                work.display()
            ),
            &mnt,
        );
        let shown = |n: &str| {
            let m = fs::symlink_metadata(mnt.join(n)).unwrap();
            (m.uid(), m.gid(), m.mode(), m.rdev())
        };
        assert_eq!(shown("suid"), (0, 0, libc::S_IFREG | 0o4755, 0), "'{opts}'");
        assert_eq!(
            shown("null"),
            (0, 0, libc::S_IFCHR | 0o666, libc::makedev(1, 3))
        );
        assert_eq!(shown("sub"), (2, 3, libc::S_IFDIR | 0o700, 0));
        assert_eq!(shown("ignored"), (1000, 1000, libc::S_IFREG | 0o644, 0));
        // readdir's d_type (what `DirEntry::file_type` gives, without a stat) agrees.
        let listed: Vec<(String, bool, bool)> = {
            let mut v: Vec<_> = fs::read_dir(&mnt)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let t = e.file_type().unwrap();
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, t.is_char_device(), t.is_file())
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            listed,
            [
                ("both".into(), false, true),
                ("ignored".into(), false, true),
                ("null".into(), true, false),
                ("sub".into(), false, false),
                ("suid".into(), false, true),
            ],
            "'{opts}'"
        );
        assert_eq!(
            shown("both"),
            (4, 4, libc::S_IFREG | 0o604, 0),
            "fuse-overlayfs's wins"
        );

        // Copy-up (an append) keeps what is shown.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("suid"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"x").unwrap();
        drop(f);
        assert_eq!(
            shown("suid"),
            (0, 0, libc::S_IFREG | 0o4755, 0),
            "'{opts}' after copy-up"
        );
        if opts.is_empty() {
            // Root gave the inode the shown owner and mode; the attribute came along.
            assert_eq!(ids(&up.join("suid")), (0, 0));
            assert_eq!(mode_of(&up.join("suid")) & 0o7777, 0o4755);
            // A device kept in a file is not copied to an upper that does not keep them so.
            let r = fs::set_permissions(mnt.join("null"), fs::Permissions::from_mode(0o600));
            assert_eq!(errno(r), Some(libc::EPERM));
            assert!(!up.join("null").exists());
            assert_eq!(
                shown("null"),
                (0, 0, libc::S_IFCHR | 0o666, libc::makedev(1, 3))
            );
        } else {
            assert_eq!(
                xattr_text(&up.join("suid"), FUSE_OVERLAYFS_USER).as_deref(),
                Some("0:0:104755")
            );
            assert_eq!(xattr_text(&up.join("suid"), CONTAINERS), None, "not copied");
            assert_eq!(
                mode_of(&up.join("suid")) & 0o7777,
                0o755,
                "usable, no set-id"
            );
            // fuse-overlayfs's attribute wins over containers-storage's on one object.
            fs::set_permissions(mnt.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
            assert_eq!(
                xattr_text(&up.join("sub"), FUSE_OVERLAYFS_USER).as_deref(),
                Some("2:3:40750")
            );
            assert_eq!(shown("sub"), (2, 3, libc::S_IFDIR | 0o750, 0));
            // A device kept in a regular file keeps its type through a chown's copy-up.
            std::os::unix::fs::lchown(mnt.join("null"), Some(5), None).unwrap();
            assert_eq!(
                xattr_text(&up.join("null"), FUSE_OVERLAYFS_USER).as_deref(),
                Some("5:0:666:char-1-3")
            );
            assert_eq!(
                shown("null"),
                (5, 0, libc::S_IFCHR | 0o666, libc::makedev(1, 3))
            );
        }
        umount_retrying(&mnt);
        env.untrack(&mnt);
    }
}

/// A POSIX ACL value: the header, then (tag, perm, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (t, p, id) in entries {
        v.extend_from_slice(&t.to_le_bytes());
        v.extend_from_slice(&p.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// An access ACL naming user `u` and group `g` (the other entries carry no id).
fn acl_ug(u: u32, g: u32) -> Vec<u8> {
    let none = u32::MAX;
    acl(&[
        (1, 6, none),
        (2, 4, u),
        (4, 4, none),
        (8, 4, g),
        (0x10, 4, none),
        (0x20, 0, none),
    ])
}

/// ACL entries name uids and gids, which cross `uidmapping=`/`gidmapping=` like owners: a
/// lower file's ACL shows mapped ids (an unmapped one as 65534); one set through the mount
/// lands on disk with disk ids, and one naming an id no range maps is refused with EINVAL
/// (the kernel's answer for an id the caller's namespace cannot represent). With `noacl`
/// ACLs are stored as given. (fuse-overlayfs 1.10 maps none of them.)
#[test]
fn acl_ids_cross_the_mapping() {
    const ACCESS: &str = "system.posix_acl_access";
    let maps = ",uidmapping=0:100000:65536,gidmapping=0:100000:65536";
    let (_env, lower, up, mnt) = mounted("acl_map", maps);
    setxattr(&lower.join("root"), ACCESS, &acl_ug(5, 70000), 0).unwrap();
    assert_eq!(
        getxattr(&mnt.join("root"), ACCESS).unwrap(),
        acl_ug(100005, OVERFLOW)
    );
    setxattr(&mnt.join("five"), ACCESS, &acl_ug(100007, 100008), 0).unwrap();
    assert_eq!(getxattr(&up.join("five"), ACCESS).unwrap(), acl_ug(7, 8));
    assert_eq!(
        getxattr(&mnt.join("five"), ACCESS).unwrap(),
        acl_ug(100007, 100008)
    );
    let r = setxattr(&mnt.join("five"), ACCESS, &acl_ug(42, 100008), 0);
    assert_eq!(errno(r), Some(libc::EINVAL));
    let r = setxattr(&mnt.join("five"), ACCESS, &acl_ug(100001, 7), 0);
    assert_eq!(errno(r), Some(libc::EINVAL));
    assert_eq!(
        getxattr(&up.join("five"), ACCESS).unwrap(),
        acl_ug(7, 8),
        "unchanged"
    );
    // A default ACL too.
    let dflt = "system.posix_acl_default";
    setxattr(&mnt.join("d"), dflt, &acl_ug(100003, 100004), 0).unwrap();
    assert_eq!(getxattr(&up.join("d"), dflt).unwrap(), acl_ug(3, 4));

    let (_env, _lower, up, mnt) = mounted("acl_noacl", &format!("{maps},noacl"));
    setxattr(&mnt.join("five"), ACCESS, &acl_ug(42, 43), 0).unwrap();
    assert_eq!(getxattr(&up.join("five"), ACCESS).unwrap(), acl_ug(42, 43));
    assert_eq!(getxattr(&mnt.join("five"), ACCESS).unwrap(), acl_ug(42, 43));
}

const OVERFLOW: u32 = 65534;

/// `ino32_t`: every st_ino and d_ino fits in 32 bits, also for a lower on another filesystem
/// (whose numbers otherwise carry its index above bit 56); numbers stay one per object,
/// agree between readdir(plus) and lookup, stay put across lookups, and across a remount
/// wherever they do without the option (not for a copied-up file: its number was its lower
/// file's, and is its upper file's after a remount, with or without `ino32_t`).
#[test]
fn ino32_t_numbers_fit_in_32_bits() {
    let env = TestEnv::new("ino32");
    let lowfs = env.mount_tmpfs("lowfs", "16m");
    for d in ["a", "b/c"] {
        fs::create_dir_all(lowfs.join(d)).unwrap();
    }
    for f in ["f1", "a/f2", "b/c/f3", "b/f4"] {
        fs::write(lowfs.join(f), f).unwrap();
    }
    fs::hard_link(lowfs.join("f1"), lowfs.join("a/f1-link")).unwrap();
    let up = env.mkdir("u");
    let work = env.mkdir("w");
    let mnt = env.mkdir("m");
    let opts = |extra: &str| {
        format!(
            "lowerdir={},upperdir={},workdir={}{extra}",
            lowfs.display(),
            up.display(),
            work.display()
        )
    };
    // Without the option, the other filesystem's numbers do not fit.
    env.mount_layover(&opts(""), &mnt);
    assert!(fs::metadata(mnt.join("f1")).unwrap().ino() >= 1 << 32);
    umount_retrying(&mnt);
    env.untrack(&mnt);

    env.mount_layover(&opts(",ino32_t"), &mnt);
    fs::write(mnt.join("up-file"), "u").unwrap();
    fs::create_dir(mnt.join("b/up-dir")).unwrap();
    fs::write(mnt.join("b/f4"), "copied up").unwrap();
    let walk = |root: &std::path::Path| {
        let mut seen: Vec<(PathBuf, u64)> = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let m = fs::symlink_metadata(e.path()).unwrap();
                assert_eq!(e.ino(), m.ino(), "{}: d_ino and st_ino", e.path().display());
                if m.is_dir() {
                    stack.push(e.path());
                }
                seen.push((e.path().strip_prefix(root).unwrap().to_path_buf(), m.ino()));
            }
        }
        seen.sort();
        seen
    };
    let first = walk(&mnt);
    assert!(first.len() >= 10, "{first:?}");
    for (p, ino) in &first {
        assert!(*ino < 1 << 32, "{}: {ino:#x}", p.display());
    }
    // One number per object: only the two names of the hard link share one.
    let mut by_ino: std::collections::BTreeMap<u64, Vec<&PathBuf>> = Default::default();
    for (p, ino) in &first {
        by_ino.entry(*ino).or_default().push(p);
    }
    for (ino, names) in &by_ino {
        let linked = names.len() == 2
            && names.iter().any(|n| n.ends_with("f1"))
            && names.iter().any(|n| n.ends_with("f1-link"));
        assert!(names.len() == 1 || linked, "{ino:#x} names {names:?}");
    }
    // Stable across lookups in the same mount.
    assert_eq!(walk(&mnt), first);
    // After a remount, every object but the copied-up file keeps its number.
    remount(&env, &lowfs, &up, &mnt, ",ino32_t");
    let again: std::collections::BTreeMap<_, _> = walk(&mnt).into_iter().collect();
    for p in [
        "up-file",
        "b/up-dir",
        "f1",
        "a/f1-link",
        "a",
        "b/c",
        "b/c/f3",
    ] {
        let before = first
            .iter()
            .find(|(q, _)| q == std::path::Path::new(p))
            .unwrap()
            .1;
        assert_eq!(
            again[std::path::Path::new(p)],
            before,
            "{p} after a remount"
        );
    }
}

const FUSE_OVERLAYFS: &str = "/usr/bin/fuse-overlayfs";

/// Which program mounts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Prog {
    FuseOverlayfs,
    Layover,
}

/// Mounts `prog` with `opts` at `mnt` (registered for cleanup).
fn mount_prog(env: &TestEnv, prog: Prog, opts: &str, mnt: &std::path::Path) {
    match prog {
        Prog::Layover => {
            env.mount_layover(opts, mnt);
        }
        Prog::FuseOverlayfs => {
            let r = cmd(FUSE_OVERLAYFS, &[os("-o"), os(opts), mnt.as_os_str()]);
            assert!(
                r.ok() && is_mounted(mnt),
                "fuse-overlayfs -o {opts}: {}",
                r.stderr
            );
            env.track(mnt, MountKind::Other);
        }
    }
}

fn unmount(env: &TestEnv, mnt: &std::path::Path) {
    umount_retrying(mnt);
    env.untrack(mnt);
}

/// Owner, mode and type of every name below `root`, sorted.
fn owners(root: &std::path::Path) -> Vec<(String, u32, u32, u32)> {
    let mut out: Vec<_> = list_tree(root)
        .into_iter()
        .map(|(p, _)| {
            let m = fs::symlink_metadata(root.join(&p)).unwrap();
            (p.display().to_string(), m.uid(), m.gid(), m.mode())
        })
        .collect();
    out.sort();
    out
}

/// fuse-overlayfs 1.10 (installed) and layover, both with `xattr_permissions=2`, read an
/// upper written by either alike (every owner and mode shown is the same), and write the
/// same attribute values where fuse-overlayfs 1.10 is right (the upper's root, a new
/// directory, a chown of it). (Where 1.10 is not, it differs: a copy-up or a new file gets
/// its mode or'ed with 0755, and a chmod after a chown writes owner 0:0; fixed in 1.14.)
#[test]
fn fuse_overlayfs_reads_our_upper_and_we_read_its() {
    assert!(
        std::path::Path::new(FUSE_OVERLAYFS).exists(),
        "PREREQUISITE MISSING: {FUSE_OVERLAYFS} (apt-get install fuse-overlayfs)"
    );
    let env = TestEnv::new("fuse_overlayfs_xattr");
    let l = env.layer("l");
    l.file_owned("a", "a", 0o640, 5, 6)
        .file_owned("b", "b", 0o600, 70000, 70000)
        .dir("d");
    let mut values = Vec::new();
    for writer in [Prog::FuseOverlayfs, Prog::Layover] {
        let tag = format!("{writer:?}");
        let up = env.mkdir(format!("{tag}/u"));
        let work = env.mkdir(format!("{tag}/w"));
        let mnt = env.mkdir(format!("{tag}/m"));
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},xattr_permissions=2",
            l.root.display(),
            up.display(),
            work.display()
        );
        mount_prog(&env, writer, &opts, &mnt);
        std::os::unix::fs::lchown(mnt.join("a"), Some(7), Some(8)).unwrap();
        fs::set_permissions(mnt.join("b"), fs::Permissions::from_mode(0o604)).unwrap();
        fs::create_dir(mnt.join("nd")).unwrap();
        std::os::unix::fs::lchown(mnt.join("nd"), Some(9), Some(9)).unwrap();
        fs::create_dir(mnt.join("d/sub")).unwrap();
        fs::write(mnt.join("d/new"), "n").unwrap();
        unmount(&env, &mnt);
        values.push(
            ["", "nd", "d/sub"]
                .map(|p| xattr_text(&up.join(p), FUSE_OVERLAYFS_USER).unwrap_or_default()),
        );
        let mut seen = Vec::new();
        for reader in [Prog::FuseOverlayfs, Prog::Layover] {
            mount_prog(&env, reader, &opts, &mnt);
            seen.push(owners(&mnt));
            unmount(&env, &mnt);
        }
        assert_eq!(
            seen[0], seen[1],
            "an upper written by {tag}: fuse-overlayfs, then layover"
        );
        assert!(
            seen[1]
                .iter()
                .any(|(p, u, g, _)| p == "nd" && (*u, *g) == (9, 9))
        );
    }
    assert_eq!(
        values[0], values[1],
        "the values written by fuse-overlayfs, then layover"
    );
    assert_eq!(values[1][1], "9:9:40755");
}

/// The attribute's use: an unprivileged daemon. As root of a user namespace mapping the
/// user's subordinate ids (podman's rootless namespace), a chown through a
/// `xattr_permissions=2` mount leaves the upper copy owned by the user (the namespace's
/// root) with the ids in `user.fuseoverlayfs.override_stat`; without the option the inode
/// is chowned to a subordinate id. As the ordinary user through fusermount3, a chmod 000
/// shows and is enforced (the kernel checks the mode shown) while the file stays usable to
/// the daemon; chmod 644 gives it back.
#[test]
fn xattr_permissions_without_privileges() {
    let s = support::Scratch::new("xattr_permissions");
    let ns = "unshare --map-auto --map-root-user -m";
    let setup = "mkdir -p l u w m u2 w2 && echo a > l/a && mkdir l/d";
    let ops = "chown 5:6 m/a && mkdir m/nd && chown 7:7 m/nd && chmod 700 m/nd && \
               stat -c \"%n %u:%g %a\" m/a m/nd";
    let out = s.user_ok(&format!(
        "{setup}
         {ns} sh -ec '$LAYOVER -o lowerdir=$PWD/l,upperdir=$PWD/u,workdir=$PWD/w,xattr_permissions=2 $PWD/m; \
           {ops}; $OPS unmount $PWD/m'
         {ns} sh -ec '$LAYOVER -o lowerdir=$PWD/l,upperdir=$PWD/u2,workdir=$PWD/w2 $PWD/m; \
           {ops}; $OPS unmount $PWD/m'
         stat -c \"%n %u:%g %a\" u/a u/nd u2/a u2/nd
         python3 -c \"import os; print([os.getxattr(p, \'user.fuseoverlayfs.override_stat\').decode() for p in (\'u/a\', \'u/nd\')])\""
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "m/a 5:6 644",
            "m/nd 7:7 700",
            "m/a 5:6 644",
            "m/nd 7:7 700",
            "u/a 1001:1001 644",
            "u/nd 1001:1001 755",
            "u2/a 100004:100005 644",
            "u2/nd 100006:100006 700",
            "['5:6:100644', '7:7:40700']",
        ],
        "{out}"
    );

    let out = s.user_ok(
        "rm -rf u w m && mkdir u w m
         $LAYOVER -o lowerdir=$PWD/l,upperdir=$PWD/u,workdir=$PWD/w,xattr_permissions=2 $PWD/m
         chmod 000 m/a
         stat -c \"%n %a\" m/a u/a
         cat m/a 2>/dev/null || echo refused
         chmod 644 m/a && cat m/a
         $OPS unmount $PWD/m",
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["m/a 0", "u/a 644", "refused", "a"],
        "{out}"
    );
}

/// `xattr_permissions=2` with `uidmapping=`/`gidmapping=`: the attribute holds ids on disk,
/// as an inode does (fuse-overlayfs writes the host ids there too), and stat maps them back.
#[test]
fn xattr_permissions_hold_ids_on_disk() {
    let maps = ",xattr_permissions=2,uidmapping=0:100000:65536,gidmapping=0:100000:65536";
    let (_env, _lower, up, mnt) = mounted("xattr_permissions_mapped", maps);
    assert_eq!(ids(&mnt.join("five")), (100005, 100006));
    std::os::unix::fs::lchown(mnt.join("five"), Some(100007), Some(100008)).unwrap();
    assert_eq!(
        xattr_text(&up.join("five"), FUSE_OVERLAYFS_USER).as_deref(),
        Some("7:8:100644")
    );
    assert_eq!(ids(&mnt.join("five")), (100007, 100008));
    let r = std::os::unix::fs::lchown(mnt.join("five"), Some(42), None);
    assert_eq!(errno(r), Some(libc::EOVERFLOW));
    as_user(100001, 100002, 0o022, || {
        fs::write(mnt.join("d/new"), "n").expect("create as a mapped user");
    });
    assert_eq!(
        xattr_text(&up.join("d/new"), FUSE_OVERLAYFS_USER).as_deref(),
        Some("1:2:100644")
    );
    assert_eq!(ids(&mnt.join("d/new")), (100001, 100002));
}

/// Helpers run by the device tests (as root or the test user): `dtypes DIR` prints each
/// name's `d_type` as readdir(3) gives it (no stat), `mknod PATH` makes the character device
/// 1:3 and prints "made" or the errno, `values ATTR PATH...` prints the xattr's values.
const DEVICE_HELPER: &str = r#"
import ctypes, os, sys
if sys.argv[1] == "dtypes":
    class D(ctypes.Structure):
        _fields_ = [("ino", ctypes.c_uint64), ("off", ctypes.c_int64),
                    ("reclen", ctypes.c_ushort), ("type", ctypes.c_ubyte),
                    ("name", ctypes.c_char * 256)]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = [ctypes.c_char_p]
    libc.readdir.restype = ctypes.POINTER(D)
    libc.readdir.argtypes = [ctypes.c_void_p]
    d = libc.opendir(sys.argv[2].encode())
    assert d, os.strerror(ctypes.get_errno())
    names = {4: "dir", 8: "reg", 2: "chr", 6: "blk", 1: "fifo", 12: "sock", 10: "lnk"}
    out = []
    while True:
        e = libc.readdir(d)
        if not e:
            break
        n = e.contents.name.decode()
        if n not in (".", ".."):
            out.append(n + ":" + names.get(e.contents.type, str(e.contents.type)))
    print(" ".join(sorted(out)))
elif sys.argv[1] == "mknod":
    try:
        os.mknod(sys.argv[2], 0o20644, os.makedev(1, 3))
        print("made")
    except OSError as e:
        print("errno", e.errno)
elif sys.argv[1] == "values":
    print(" ".join(os.getxattr(p, sys.argv[2]).decode() for p in sys.argv[3:]))
"#;

/// mknod under `xattr_permissions=2` by a caller with CAP_MKNOD (root) on an ordinary
/// user's mount (`allow_root`), whose daemon cannot make devices: an empty regular file
/// keeps each device, pipe and socket, its attribute naming the type after the permission
/// bits (`0:0:644:char-1-3`, as containers-storage writes one and fuse-overlayfs 1.15 reads
/// it); stat shows the device with its owner, mode, number and size 0, readdir's d_type
/// says the same; chmod, chown, a hard link and a rename keep it; so does a remount.
/// fuse-overlayfs 1.10 reads only the first three fields: regular files with the owner and
/// mode. Without the option root's mknod gets the daemon's EPERM; in a user namespace the
/// VFS refuses it before any filesystem (layover's or the kernel's overlayfs) sees it.
#[test]
fn mknod_keeps_devices_in_files_under_xattr_permissions() {
    assert!(
        std::path::Path::new(FUSE_OVERLAYFS).exists(),
        "PREREQUISITE MISSING: {FUSE_OVERLAYFS} (apt-get install fuse-overlayfs)"
    );
    let s = support::Scratch::new("mknod_devices");
    fs::write(s.path("t.py"), DEVICE_HELPER).unwrap();
    let mount = "$U $LAYOVER -o lowerdir=$PWD/l,upperdir=$PWD/u,workdir=$PWD/w,xattr_permissions=2,allow_root $PWD/m";
    let show = "stat -c \"%n %F %t:%T %u:%g %a %s %b %h\"";
    let out = s.root_beside_user_ok(&format!(
        "$U sh -c \"mkdir l u w m u2 w2 && echo a > l/a\"
         umask 022
         {mount}
         mknod m/null c 1 3
         mknod -m 640 m/sda b 8 1
         mkfifo m/fifo
         python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('m/sock')\"
         {show} m/null m/sda m/fifo m/sock
         python3 t.py dtypes m
         chmod 600 m/null && chown 5:6 m/null && ln m/null m/null2 && mv m/null2 m/null3
         {show} m/null m/null3
         $U $OPS unmount $PWD/m
         stat -c \"%n %F %U %s\" u/null u/null3 u/sda u/fifo u/sock
         python3 t.py values user.fuseoverlayfs.override_stat u/null u/sda u/fifo u/sock
         {mount}
         {show} m/null m/null3 m/sda m/fifo
         python3 t.py dtypes m
         $U $OPS unmount $PWD/m
         $U {FUSE_OVERLAYFS} -o lowerdir=$PWD/l,upperdir=$PWD/u,workdir=$PWD/w,xattr_permissions=2 $PWD/m
         $U stat -c \"%n %F %u:%g %a\" m/null m/sda m/fifo
         $U fusermount3 -u m
         $U $LAYOVER -o lowerdir=$PWD/l,upperdir=$PWD/u2,workdir=$PWD/w2,allow_root $PWD/m
         python3 t.py mknod m/null
         $U $OPS unmount $PWD/m
         $U unshare --map-auto --map-root-user -m sh -ec \"
           {} -o lowerdir=\\$PWD/l,upperdir=\\$PWD/u2,workdir=\\$PWD/w2,xattr_permissions=2 \\$PWD/m
           python3 t.py mknod m/null
           umount m
           mkdir k ku kw
           mount -t overlay overlay -o userxattr,lowerdir=\\$PWD/l,upperdir=\\$PWD/ku,workdir=\\$PWD/kw \\$PWD/k
           python3 t.py mknod k/null
           umount k\"",
        "$LAYOVER"
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "m/null character special file 1:3 0:0 644 0 0 1",
            "m/sda block special file 8:1 0:0 640 0 0 1",
            "m/fifo fifo 0:0 0:0 644 0 0 1",
            "m/sock socket 0:0 0:0 755 0 0 1",
            "a:reg fifo:fifo null:chr sda:blk sock:sock",
            "m/null character special file 1:3 5:6 600 0 0 2",
            "m/null3 character special file 1:3 5:6 600 0 0 2",
            "u/null regular empty file podtest 0",
            "u/null3 regular empty file podtest 0",
            "u/sda regular empty file podtest 0",
            "u/fifo regular empty file podtest 0",
            "u/sock regular empty file podtest 0",
            "5:6:600:char-1-3 0:0:640:block-8-1 0:0:644:pipe 0:0:755:socket",
            "m/null character special file 1:3 5:6 600 0 0 2",
            "m/null3 character special file 1:3 5:6 600 0 0 2",
            "m/sda block special file 8:1 0:0 640 0 0 1",
            "m/fifo fifo 0:0 0:0 644 0 0 1",
            "a:reg fifo:fifo null3:chr null:chr sda:blk sock:sock",
            // fuse-overlayfs 1.10: the owner and mode, not the type.
            "m/null regular empty file 5:6 600",
            "m/sda regular empty file 0:0 640",
            "m/fifo regular empty file 0:0 644",
            // Without xattr_permissions: the daemon's EPERM.
            "errno 1",
            // In a user namespace, layover's mount and the kernel's: the VFS's EPERM.
            "errno 1",
            "errno 1",
        ],
        "{out}"
    );
}
