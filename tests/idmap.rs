//! fuse-overlayfs's id options, mounted: `uidmapping=`/`gidmapping=` (files created land on
//! disk with the disk ids, stat shows the mapped ids, an unmapped id shows as 65534 and
//! cannot be chowned to) and the squash options (every id shown is the one given).
//! Runs as root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use layover_testkit::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
