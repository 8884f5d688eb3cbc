//! Operation-level tests (tier 2): the overlay core driven directly on temporary layer trees,
//! with no FUSE and no mount. The read side goes through `Overlay::open_read_only` and its
//! path queries; the write side through the daemon's constructor, `Overlay::new`, calling
//! the operations the daemon serves (create, unlink, rmdir, rename, setattr, open, write),
//! and then looks at the upper and work directories on disk. Everything here works as root
//! and as an ordinary user: the markers are `user.overlay.*` (XattrNs::User), and every
//! whiteout format can be made unprivileged (0/0 devices since Linux 5.8).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod depth;
mod identity;
mod markers;
mod support;

use layover::{Caller, Errno, Ino, NewNode, OpenOpts, Overlay, Privilege, SetAttr, TimeSpec};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use support::*;

const ROOT: Ino = layover::ROOT_INO;

fn p(s: &str) -> &Path {
    Path::new(s)
}

fn names(list: &[layover::DirEntry]) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    v.sort();
    v
}

fn read_all(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Three layers: an upper and two lowers, each holding some of the same names.
///   upper:  a="upper", dir/u, shadow/ (a directory), link -> dir
///   lower1: a="l1", b="l1", dir/one, shadow="file", gone="l1"
///   lower2: b="l2", c="l2", dir/two, shadow/deep, gone2="l2"
fn three_layers(s: &Scratch) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (up, l1, l2) = (s.dir("upper"), s.dir("lower1"), s.dir("lower2"));
    file(&up.join("a"), "upper");
    dir(&up.join("dir"));
    file(&up.join("dir/u"), "u");
    dir(&up.join("shadow"));
    symlink("dir", &up.join("link"));
    file(&l1.join("a"), "l1");
    file(&l1.join("b"), "l1");
    dir(&l1.join("dir"));
    file(&l1.join("dir/one"), "1");
    file(&l1.join("shadow"), "file");
    dir(&l2.join("dir"));
    file(&l2.join("dir/two"), "2");
    file(&l2.join("b"), "l2");
    file(&l2.join("c"), "l2");
    dir(&l2.join("shadow"));
    file(&l2.join("shadow/deep"), "deep");
    (up, l1, l2)
}

fn open_ro(up: &Path, lowers: &[&Path]) -> Overlay {
    let mut st = stack(lowers, None);
    st.upperdir = Some(up.to_path_buf());
    Overlay::open_read_only(&st).unwrap()
}

fn layers_of(ov: &Overlay, path: &str) -> Vec<usize> {
    let layers = ov.query().resolve(p(path)).unwrap().layers;
    layers.iter().map(|l| l.index()).collect()
}

#[test]
fn lookup_takes_the_top_layer_and_merges_directories() {
    let s = Scratch::new("precedence");
    let (up, l1, l2) = three_layers(&s);
    let ov = open_ro(&up, &[&l1, &l2]);
    let q = ov.query();
    let info = q.layers();
    assert_eq!(info.len(), 3);
    assert!(info[0].upper && !info[1].upper && !info[2].upper);
    assert_eq!(info[1].path, l1);

    assert_eq!(layers_of(&ov, "a"), vec![0]);
    assert_eq!(q.resolve(p("a")).unwrap().attr.size, 5, "upper's a");
    assert_eq!(layers_of(&ov, "b"), vec![1]);
    assert_eq!(layers_of(&ov, "c"), vec![2]);
    // A directory merges with the directories below it...
    assert_eq!(layers_of(&ov, "dir"), vec![0, 1, 2]);
    assert_eq!(names(&q.list(p("dir")).unwrap()), ["one", "two", "u"]);
    assert_eq!(layers_of(&ov, "dir/two"), vec![2]);
    // ... until a layer holds a non-directory there: lower2's shadow/ is not merged.
    assert_eq!(layers_of(&ov, "shadow"), vec![0]);
    assert_eq!(q.list(p("shadow")).unwrap(), vec![]);
    assert_eq!(q.resolve(p("shadow/deep")).unwrap_err(), Errno::ENOENT);
    // The attributes are those of the top object, with the overlay's number.
    let a = q.resolve(p("a")).unwrap();
    let md = fs::symlink_metadata(up.join("a")).unwrap();
    assert_eq!((a.attr.mode, a.attr.size), (md.mode(), md.size() as i64));
    assert_eq!(a.attr.ino, a.ino.0);
    // A merged directory shows nlink 1, as the kernel's overlay does.
    assert_eq!(q.resolve(p("dir")).unwrap().attr.nlink, 1);
}

#[test]
fn whiteouts_of_every_format_hide_lower_names() {
    for wh in Whiteout::ALL {
        let s = Scratch::new("whiteout");
        let (up, l1, l2) = three_layers(&s);
        // In lower1, a whiteout for lower2's c; in the upper, one for lower1's b.
        wh.make(&l1, "c");
        wh.make(&up, "b");
        let ov = open_ro(&up, &[&l1, &l2]);
        let q = ov.query();
        for name in ["b", "c"] {
            assert_eq!(
                q.resolve(p(name)).unwrap_err(),
                Errno::ENOENT,
                "{wh:?} {name}"
            );
        }
        let listed = names(&q.list(p("")).unwrap());
        assert_eq!(listed, ["a", "dir", "link", "shadow"], "{wh:?}");
        // The whiteout's own name (`.wh.c`) is not a name of the merged view either.
        assert_eq!(q.resolve(p(".wh.c")).unwrap_err(), Errno::ENOENT, "{wh:?}");
    }
}

#[test]
fn opaque_directories_hide_what_is_below() {
    let s = Scratch::new("opaque");
    let (up, l1, l2) = three_layers(&s);
    set_xattr(&l1.join("dir"), "user.overlay.opaque", b"y");
    let ov = open_ro(&up, &[&l1, &l2]);
    let q = ov.query();
    assert_eq!(layers_of(&ov, "dir"), vec![0, 1], "lower1's dir is opaque");
    assert_eq!(names(&q.list(p("dir")).unwrap()), ["one", "u"]);
    assert_eq!(q.resolve(p("dir/two")).unwrap_err(), Errno::ENOENT);
    drop(ov);

    // The OCI/AUFS marker does the same.
    let s = Scratch::new("opaque-aufs");
    let (up, l1, l2) = three_layers(&s);
    file(&up.join("dir/.wh..wh..opq"), "");
    let ov = open_ro(&up, &[&l1, &l2]);
    assert_eq!(layers_of(&ov, "dir"), vec![0]);
    assert_eq!(names(&ov.query().list(p("dir")).unwrap()), ["u"]);
}

#[test]
fn merged_listing_has_each_name_once_with_its_type_and_number() {
    let s = Scratch::new("readdir");
    let (up, l1, l2) = three_layers(&s);
    Whiteout::Aufs.make(&up, "c");
    let ov = open_ro(&up, &[&l1, &l2]);
    let q = ov.query();
    let list = q.list(p("/")).unwrap();
    assert_eq!(names(&list), ["a", "b", "dir", "link", "shadow"]);
    for e in &list {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let want = match name.as_str() {
            "dir" | "shadow" => libc_dt::DIR,
            "link" => libc_dt::LNK,
            _ => libc_dt::REG,
        };
        assert_eq!(e.d_type, want, "d_type of {name}");
        // d_ino is the st_ino that a lookup of the name gives, and the winner's layer is
        // the one the lookup names first.
        let node = q.resolve(p(&name)).unwrap();
        assert_eq!(e.ino, node.ino, "d_ino of {name}");
        assert_eq!(e.layer, node.layers[0], "layer of {name}");
    }
}

/// A regular file whose override_stat xattr names another type (containers-storage's
/// `force_mask` keeps an image's devices and pipes so) is listed with that type, as it is
/// looked up, in a layer whose root marks it as carrying them; in an unmarked layer the
/// xattr means nothing and the file is a regular file in both.
#[test]
fn listing_gives_the_type_an_override_shows() {
    const ATTR: &str = "user.containers.override_stat";
    let s = Scratch::new("readdir_override");
    let (marked, plain) = (s.dir("marked"), s.dir("plain"));
    set_xattr(&marked, ATTR, b"0:0:0755:dir");
    for (name, value) in [
        ("null", &b"0:0:0666:char-1-3"[..]),
        ("sda", b"0:6:0660:block-8-1"),
        ("fifo", b"0:0:0644:pipe"),
        ("file", b"0:0:0644:file"),
    ] {
        file(&marked.join(name), "");
        set_xattr(&marked.join(name), ATTR, value);
    }
    file(&plain.join("ignored"), "");
    set_xattr(&plain.join("ignored"), ATTR, b"0:0:0666:char-1-3");
    let ov = open_ro(&s.dir("upper"), &[&marked, &plain]);
    let q = ov.query();
    let list = q.list(p("/")).unwrap();
    assert_eq!(names(&list), ["fifo", "file", "ignored", "null", "sda"]);
    for e in &list {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let want = match name.as_str() {
            "null" => libc_dt::CHR,
            "sda" => libc_dt::BLK,
            "fifo" => libc_dt::FIFO,
            _ => libc_dt::REG,
        };
        assert_eq!(e.d_type, want, "d_type of {name}");
        let mode = q.resolve(p(&name)).unwrap().attr.mode;
        assert_eq!(u32::from(e.d_type), mode >> 12, "stat's type of {name}");
    }
}

/// `DT_*` values (from dirent.h), spelled out so the test needs no libc.
mod libc_dt {
    pub const FIFO: u8 = 1;
    pub const CHR: u8 = 2;
    pub const DIR: u8 = 4;
    pub const BLK: u8 = 6;
    pub const REG: u8 = 8;
    pub const LNK: u8 = 10;
}

#[test]
fn readlink_and_paths_through_symlinks() {
    let s = Scratch::new("readlink");
    let (up, l1, l2) = three_layers(&s);
    symlink("../somewhere/else", &l2.join("rel"));
    let ov = open_ro(&up, &[&l1, &l2]);
    let q = ov.query();
    assert_eq!(q.readlink(p("link")).unwrap(), b"dir");
    assert_eq!(q.readlink(p("rel")).unwrap(), b"../somewhere/else");
    assert_eq!(q.readlink(p("a")).unwrap_err(), Errno::EINVAL);
    // A symlink in the middle of a path is not followed.
    assert_eq!(q.resolve(p("link/u")).unwrap_err(), Errno::ENOTDIR);
    // `..` goes back one component; above the root is the root.
    assert_eq!(
        q.resolve(p("dir/../a")).unwrap().ino,
        q.resolve(p("a")).unwrap().ino
    );
    assert_eq!(q.resolve(p("../..")).unwrap().ino, ROOT);
}

#[test]
fn xattrs_show_without_the_overlay_private_ones() {
    let s = Scratch::new("xattr");
    let (up, l1, l2) = three_layers(&s);
    set_xattr(&up.join("dir"), "user.overlay.opaque", b"n");
    set_xattr(&up.join("dir"), "user.mine", b"value");
    set_xattr(&l1.join("b"), "user.overlay.origin", b"x");
    set_xattr(&l1.join("b"), "user.other", b"1");
    let ov = open_ro(&up, &[&l1, &l2]);
    let q = ov.query();
    assert_eq!(q.getxattr(p("dir"), b"user.mine").unwrap(), b"value");
    assert_eq!(
        q.getxattr(p("dir"), b"user.overlay.opaque").unwrap_err(),
        Errno::ENODATA
    );
    assert_eq!(
        q.getxattr(p("b"), b"user.overlay.origin").unwrap_err(),
        Errno::ENODATA
    );
    assert_eq!(q.listxattr(p("dir")).unwrap(), vec![b"user.mine".to_vec()]);
    assert_eq!(q.listxattr(p("b")).unwrap(), vec![b"user.other".to_vec()]);
    assert_eq!(
        q.getxattr(p("a"), b"user.none").unwrap_err(),
        Errno::ENODATA
    );
}

#[test]
fn queries_release_every_reference_they_take() {
    let s = Scratch::new("refs");
    let (up, l1, l2) = three_layers(&s);
    let ov = open_ro(&up, &[&l1, &l2]);
    let q = ov.query();
    assert_eq!(q.live_inodes(), 1, "only the root at first");
    q.resolve(p("dir/two")).unwrap();
    q.list(p("dir")).unwrap();
    q.readlink(p("link")).unwrap();
    q.getxattr(p("dir/u"), b"user.x").unwrap_err();
    q.listxattr(p("shadow")).unwrap();
    // Failures part-way along a path release what was taken before them too.
    q.resolve(p("dir/nothing/x")).unwrap_err();
    q.resolve(p("a/x")).unwrap_err();
    assert_eq!(q.live_inodes(), 1, "every lookup reference released");
    // A lookup by number, as the daemon's, keeps its reference until forgotten.
    let e = ov.lookup(ROOT, b"dir").unwrap();
    assert_eq!(q.live_inodes(), 2);
    ov.forget(e.ino(), 1);
    assert_eq!(q.live_inodes(), 1);
}

#[test]
fn read_only_opening_writes_nothing_and_refuses_changes() {
    let s = Scratch::new("readonly");
    let (up, l1, l2) = three_layers(&s);
    let work = s.dir("work");
    dir(&work.join("work"));
    file(&work.join("work/leftover"), "a crashed mount's");
    let before = snapshot(&s.root);
    {
        let mut st = stack(&[&l1, &l2], Some((&up, &work)));
        st.read_only = false; // it says writable; the offline opener is read-only anyway
        let ov = Overlay::open_read_only(&st).unwrap();
        let q = ov.query();
        q.list(p("dir")).unwrap();
        q.resolve(p("dir/one")).unwrap();
        let caller = this_caller();
        let b = ov.lookup(ROOT, b"b").unwrap().ino();
        let fail = [
            ov.unlink(ROOT, b"a").unwrap_err(),
            ov.create_node(ROOT, b"new", NewNode::Dir { mode: 0o755 }, caller)
                .map(drop)
                .unwrap_err(),
            ov.setattr(b, chmod(0o600)).map(drop).unwrap_err(),
            ov.open(b, O_WRONLY, OpenOpts::default())
                .map(drop)
                .unwrap_err(),
            ov.rename(ROOT, b"b", ROOT, b"b2", 0).unwrap_err(),
            ov.setxattr(b, b"user.x", b"1", 0).unwrap_err(),
        ];
        assert!(fail.iter().all(|e| *e == Errno::EROFS), "{fail:?}");
        // Reading works: through an open file as the daemon reads.
        let fh = ov.open(b, O_RDONLY, OpenOpts::default()).unwrap().fh;
        assert_eq!(ov.read(fh, 0, 100).unwrap(), b"l1");
        ov.release(fh);
    }
    assert_eq!(snapshot(&s.root), before, "nothing changed on disk");
    assert_eq!(names_on_disk(&work.join("work")), ["leftover"]);
}

const O_RDONLY: i32 = 0;
const O_WRONLY: i32 = 1;
const O_RDWR: i32 = 2;

fn chmod(mode: u32) -> SetAttr {
    SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    }
}

fn this_caller() -> Caller {
    let (uid, gid) = ids();
    Caller {
        uid,
        gid,
        pid: std::process::id(),
        umask: 0o022,
    }
}

/// An overlay made as the daemon makes it, over one lower, with upper and work in `s`.
struct Rw {
    ov: Overlay,
    upper: std::path::PathBuf,
    lower: std::path::PathBuf,
    work: std::path::PathBuf,
}

impl Rw {
    fn new(s: &Scratch, build_lower: impl FnOnce(&Path)) -> Rw {
        let (upper, lower, work) = (s.dir("upper"), s.dir("lower"), s.dir("work"));
        build_lower(&lower);
        let ov = Overlay::new(
            stack(&[&lower], Some((&upper, &work))),
            1024,
            &Privilege::detect(),
            None,
        )
        .unwrap();
        Rw {
            ov,
            upper,
            lower,
            work,
        }
    }

    /// Looks a path up as the kernel would, keeping the references (a daemon's kernel holds
    /// them while the names are in its cache).
    fn ino(&self, path: &str) -> Ino {
        path.split('/').fold(ROOT, |parent, name| {
            self.ov.lookup(parent, name.as_bytes()).unwrap().ino()
        })
    }

    /// As the daemon ends: the work directory must then be empty.
    fn assert_work_empty(&self) {
        self.ov.cleanup_work();
        assert_eq!(names_on_disk(&self.work), ["work"]);
        assert_eq!(names_on_disk(&self.work.join("work")), Vec::<String>::new());
    }
}

/// A streaming write (`overlay::io::STREAMING_WRITE`, 1 MiB, or more, on a durable mount,
/// where the core also starts its disk writeback) and reads into a caller's buffer (`read_into`, as the io_uring
/// transport reads into its ring entry), across the end of the file, in both kinds of mount.
#[test]
fn large_writes_and_reads_into_a_buffer() {
    const STREAMING_WRITE: usize = 1 << 20;
    for durable in [true, false] {
        let s = Scratch::new(if durable {
            "stream-durable"
        } else {
            "stream-volatile"
        });
        let (upper, lower, work) = (s.dir("upper"), s.dir("lower"), s.dir("work"));
        file(&lower.join("f"), "0123456789");
        let mut st = stack(&[&lower], Some((&upper, &work)));
        st.durable = durable;
        let ov = Overlay::new(st, 1024, &Privilege::detect(), None).unwrap();
        let f = ov.lookup(ROOT, b"f").unwrap().ino();
        let opened = ov.open(f, O_RDWR, OpenOpts::default()).unwrap();
        let data: Vec<u8> = (0..STREAMING_WRITE + 3).map(|i| (i % 251) as u8).collect();
        assert_eq!(ov.write(opened.fh, 5, &data).unwrap(), data.len());
        ov.fsync(opened.fh, false).unwrap();
        let size = 5 + data.len();
        let mut buf = vec![0u8; size + 100];
        assert_eq!(
            ov.read_into(opened.fh, 0, &mut buf).unwrap(),
            size,
            "short at EOF"
        );
        assert_eq!(&buf[..5], b"01234");
        assert!(buf[5..size] == data[..], "data read back differs");
        assert_eq!(ov.read_into(opened.fh, size as u64, &mut buf).unwrap(), 0);
        let mut two = [0u8; 2];
        assert_eq!(ov.read_into(opened.fh, 4, &mut two).unwrap(), 2);
        assert_eq!(two, [b'4', 0]);
        ov.release(opened.fh);
        let on_disk = fs::read(upper.join("f")).unwrap();
        assert!(
            on_disk[5..] == data[..] && on_disk.len() == size,
            "upper file differs"
        );
    }
}

#[test]
fn write_copies_up_data_and_mode() {
    let s = Scratch::new("copyup-write");
    let rw = Rw::new(&s, |l| {
        dir(&l.join("d"));
        file_mode(&l.join("d/f"), "lower data", 0o640);
    });
    let lower_before = snapshot(&rw.lower);
    let f = rw.ino("d/f");
    let opened = rw.ov.open(f, O_RDWR, OpenOpts::default()).unwrap();
    assert_eq!(rw.ov.write(opened.fh, 0, b"UP").unwrap(), 2);
    rw.ov.release(opened.fh);
    let up = rw.upper.join("d/f");
    assert_eq!(read_all(&up), "UPwer data");
    assert_eq!(fs::metadata(&up).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(
        rw.ov.getattr(f, None).unwrap().ino,
        f.0,
        "st_ino kept across copy-up"
    );
    assert_eq!(
        snapshot(&rw.lower),
        lower_before,
        "the lower is never written"
    );
    assert_eq!(read_all(&rw.lower.join("d/f")), "lower data");
    rw.assert_work_empty();
}

#[test]
fn chmod_copies_up_keeping_times_and_owner() {
    let s = Scratch::new("copyup-attr");
    let rw = Rw::new(&s, |l| {
        file_mode(&l.join("f"), "data", 0o644);
        set_times(&l.join("f"), 1_000_000_000, 1_100_000_000);
        set_xattr(&l.join("f"), "user.kept", b"yes");
    });
    let f = rw.ino("f");
    let st = rw.ov.setattr(f, chmod(0o600)).unwrap();
    assert_eq!(st.mode & 0o7777, 0o600);
    let up = fs::symlink_metadata(rw.upper.join("f")).unwrap();
    let low = fs::symlink_metadata(rw.lower.join("f")).unwrap();
    assert_eq!(up.mode() & 0o7777, 0o600);
    assert_eq!(low.mode() & 0o7777, 0o644);
    assert_eq!((up.mtime(), up.atime()), (1_100_000_000, 1_000_000_000));
    assert_eq!((up.uid(), up.gid()), (low.uid(), low.gid()));
    assert_eq!(read_all(&rw.upper.join("f")), "data");
    assert_eq!(get_xattr(&rw.upper.join("f"), "user.kept").unwrap(), b"yes");
    // Explicit times go to the upper copy.
    let times = SetAttr {
        mtime: Some(TimeSpec::Set(1_200_000_000, 0)),
        ..SetAttr::default()
    };
    rw.ov.setattr(f, times).unwrap();
    assert_eq!(
        fs::symlink_metadata(rw.upper.join("f")).unwrap().mtime(),
        1_200_000_000
    );
    rw.assert_work_empty();
}

#[test]
fn same_size_truncate_leaves_the_times_to_a_caller_that_keeps_them() {
    let s = Scratch::new("truncate-same-size");
    let rw = Rw::new(&s, |l| {
        for name in ["kept", "not-kept", "grown"] {
            file_mode(&l.join(name), "data", 0o644);
            set_times(&l.join(name), 1_000_000_000, 1_100_000_000);
        }
    });
    let truncate = |name: &str, size: u64, times_kept: bool| {
        let a = SetAttr {
            size: Some(size),
            times_kept,
            ..SetAttr::default()
        };
        rw.ov.setattr(rw.ino(name), a).unwrap();
        fs::symlink_metadata(rw.upper.join(name)).unwrap()
    };
    // The premise: this filesystem (ext4) changes the mtime of a same-size truncate.
    let plain = truncate("not-kept", 4, false);
    assert_ne!(
        plain.mtime(),
        1_100_000_000,
        "the upper's filesystem keeps times itself"
    );
    // A caller that keeps the times (FUSE's writeback cache) gets the file copied up with
    // them, and they stay: what it shows is what the upper holds.
    let kept = truncate("kept", 4, true);
    assert_eq!((kept.mtime(), kept.size()), (1_100_000_000, 4));
    assert_eq!(read_all(&rw.upper.join("kept")), "data");
    // A size change is made whoever keeps the times.
    let grown = truncate("grown", 10, true);
    assert_eq!(grown.size(), 10);
    rw.assert_work_empty();
}

/// What a live overlay's work directory (`work`: the workdir) holds but the volatile mount's
/// mark.
fn temporaries(work: &Path) -> Vec<String> {
    let mut names = names_on_disk(&work.join("work"));
    names.retain(|n| n != "incompat");
    names
}

/// A regular file's copy is built with no name (`O_TMPFILE`) and linked into place, or, where
/// the filesystem has no `O_TMPFILE`, under a temporary name and renamed: either way the upper
/// then holds it with one link and the lower's data, mode, owner, times and xattrs (one
/// longer than the first read buffer too), and the work directory holds nothing at once,
/// while the overlay lives (not only after `cleanup_work`); on a durable and a volatile mount,
/// for a truncating copy-up, which copies no data, and for a file without owner write.
#[test]
fn copy_up_of_a_regular_file_leaves_one_complete_link_and_nothing_in_work() {
    for durable in [true, false] {
        let s = Scratch::new(if durable {
            "copyup-reg-durable"
        } else {
            "copyup-reg-volatile"
        });
        let (upper, lower, work) = (s.dir("upper"), s.dir("lower"), s.dir("work"));
        let data: String = (0..5000u32)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let long = vec![b'x'; 1000];
        for name in ["f", "t"] {
            let path = lower.join(name);
            file(&path, &data);
            set_xattr(&path, "user.short", b"s");
            set_xattr(&path, "user.long", &long);
            set_times(&path, 1_000_000_000, 1_100_000_000);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o751)).unwrap();
        }
        let path = lower.join("r");
        file(&path, &data);
        set_xattr(&path, "user.short", b"s");
        set_xattr(&path, "user.long", &long);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap();
        let mut st = stack(&[&lower], Some((&upper, &work)));
        st.durable = durable;
        let ov = Overlay::new(st, 1024, &Privilege::detect(), None).unwrap();
        let f = ov.lookup(ROOT, b"f").unwrap().ino();
        let opened = ov.open(f, O_WRONLY, OpenOpts::default()).unwrap();
        assert_eq!(temporaries(&work), Vec::<String>::new());
        let t = ov.lookup(ROOT, b"t").unwrap().ino();
        let truncate = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        ov.setattr(t, truncate).unwrap();
        // Without owner write (an ordinary user's daemon makes it 0600 to set its xattrs,
        // then gives it its mode); copied up by a change of its times.
        let r = ov.lookup(ROOT, b"r").unwrap().ino();
        let times = SetAttr {
            mtime: Some(TimeSpec::Set(1_200_000_000, 0)),
            ..SetAttr::default()
        };
        ov.setattr(r, times).unwrap();
        assert_eq!(temporaries(&work), Vec::<String>::new());
        for name in ["f", "t", "r"] {
            let (up, low) = (upper.join(name), lower.join(name));
            let (um, lm) = (fs::metadata(&up).unwrap(), fs::metadata(&low).unwrap());
            assert_eq!(um.nlink(), 1, "{name}: one link");
            assert_ne!(um.ino(), lm.ino(), "{name}: a copy");
            assert_eq!(um.mode(), lm.mode(), "{name}: type and mode");
            assert_eq!((um.uid(), um.gid()), (lm.uid(), lm.gid()), "{name}: owner");
            assert_eq!(get_xattr(&up, "user.short").as_deref(), Some(&b"s"[..]));
            assert_eq!(get_xattr(&up, "user.long"), Some(long.clone()));
        }
        let fm = fs::metadata(upper.join("f")).unwrap();
        assert_eq!(fs::read(upper.join("f")).unwrap(), data.as_bytes());
        assert_eq!((fm.atime(), fm.mtime()), (1_000_000_000, 1_100_000_000));
        assert_eq!(fs::metadata(upper.join("t")).unwrap().len(), 0);
        assert_eq!(ov.getattr(f, None).unwrap().ino, f.0, "st_ino kept");
        ov.release(opened.fh);
        ov.cleanup_work();
        assert_eq!(names_on_disk(&work.join("work")), Vec::<String>::new());
    }
}

/// A copy-up whose name was taken in the upper behind the overlay's back (an offline edit of
/// a live upper) fails with EEXIST and never replaces what is there, and leaves nothing in
/// the work directory.
#[test]
fn copy_up_never_replaces_a_name_taken_in_the_upper() {
    let s = Scratch::new("copyup-taken");
    let rw = Rw::new(&s, |l| file(&l.join("f"), "lower"));
    let f = rw.ino("f");
    file(&rw.upper.join("f"), "planted");
    let opened = rw.ov.open(f, O_RDWR, OpenOpts::default());
    assert_eq!(opened.err(), Some(Errno::EEXIST));
    assert_eq!(read_all(&rw.upper.join("f")), "planted");
    assert_eq!(temporaries(&rw.work), Vec::<String>::new());
    rw.assert_work_empty();
}

#[test]
fn unlink_of_a_lower_file_leaves_a_whiteout() {
    let s = Scratch::new("unlink");
    let rw = Rw::new(&s, |l| {
        file(&l.join("f"), "x");
        file(&l.join("keep"), "k");
    });
    rw.ino("f");
    rw.ov.unlink(ROOT, b"f").unwrap();
    // The kernel's format wherever the filesystem lets us make it (as root, and since
    // Linux 5.8 as anyone), else the OCI one.
    let expected = if device_whiteouts_allowed(&s.root) {
        "0/0 device"
    } else {
        ".wh. file"
    };
    assert_eq!(upper_whiteout(&rw.upper, "f"), Some(expected));
    assert_eq!(
        rw.ov.lookup(ROOT, b"f").map(drop).unwrap_err(),
        Errno::ENOENT
    );
    assert_eq!(names(&rw.ov.query().list(p("")).unwrap()), ["keep"]);
    assert_eq!(
        read_all(&rw.lower.join("f")),
        "x",
        "the lower keeps its file"
    );
    // The same layers opened again read-only see the whiteout as well.
    let mut st = stack(&[&rw.lower], None);
    st.upperdir = Some(rw.upper.clone());
    let again = Overlay::open_read_only(&st).unwrap();
    assert_eq!(names(&again.query().list(p("")).unwrap()), ["keep"]);
    rw.assert_work_empty();
}

#[test]
fn create_over_a_whiteout_replaces_it() {
    let s = Scratch::new("create-over");
    let rw = Rw::new(&s, |l| file(&l.join("f"), "lower"));
    rw.ino("f");
    rw.ov.unlink(ROOT, b"f").unwrap();
    let caller = this_caller();
    let flags = O_WRONLY;
    let (_, opened) = rw
        .ov
        .create_file(ROOT, b"f", 0o600, flags, OpenOpts::default(), caller)
        .unwrap();
    assert_eq!(rw.ov.write(opened.fh, 0, b"new").unwrap(), 3);
    rw.ov.release(opened.fh);
    assert_eq!(read_all(&rw.upper.join("f")), "new");
    assert_eq!(
        names_on_disk(&rw.upper),
        ["f"],
        "no whiteout left beside it"
    );
    assert_eq!(get_xattr(&rw.upper.join("f"), "user.overlay.opaque"), None);
    assert_eq!(rw.ov.query().resolve(p("f")).unwrap().attr.size, 3);
    rw.assert_work_empty();
}

#[test]
fn unlink_of_an_upper_only_file_leaves_nothing() {
    let s = Scratch::new("unlink-upper");
    let rw = Rw::new(&s, |_| {});
    let caller = this_caller();
    let (e, fd) = rw
        .ov
        .create_node(
            ROOT,
            b"new",
            NewNode::File {
                mode: 0o644,
                flags: O_WRONLY,
            },
            caller,
        )
        .unwrap();
    drop(fd);
    assert!(rw.upper.join("new").is_file());
    assert_eq!(e.attr.mode & 0o7777, 0o644);
    rw.ov.unlink(ROOT, b"new").unwrap();
    assert_eq!(names_on_disk(&rw.upper), Vec::<String>::new());
    rw.assert_work_empty();
}

#[test]
fn mkdir_over_a_whiteout_makes_an_opaque_directory() {
    let s = Scratch::new("mkdir-opaque");
    let rw = Rw::new(&s, |l| {
        dir(&l.join("d"));
        file(&l.join("d/x"), "x");
    });
    // Empty the merged d, then remove it: the upper gets d/ with a whiteout for x, then a
    // whiteout for d itself.
    rw.ino("d/x");
    rw.ov.unlink(rw.ino("d"), b"x").unwrap();
    rw.ov.rmdir(ROOT, b"d").unwrap();
    assert!(upper_whiteout(&rw.upper, "d").is_some(), "a whiteout for d");
    let caller = this_caller();
    let (e, _) = rw
        .ov
        .create_node(ROOT, b"d", NewNode::Dir { mode: 0o750 }, caller)
        .unwrap();
    assert_eq!(e.attr.mode & 0o7777, 0o750);
    let d = rw.upper.join("d");
    assert!(fs::symlink_metadata(&d).unwrap().is_dir());
    assert_eq!(
        get_xattr(&d, "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(upper_whiteout(&rw.upper, "d"), None, "the whiteout is gone");
    assert_eq!(rw.ov.query().list(p("d")).unwrap(), vec![]);
    assert_eq!(layers_of(&rw.ov, "d"), vec![0]);
    assert_eq!(read_all(&rw.lower.join("d/x")), "x");
    rw.assert_work_empty();
}

#[test]
fn rename_of_a_lower_file_copies_it_up_and_leaves_a_whiteout() {
    let s = Scratch::new("rename");
    let rw = Rw::new(&s, |l| {
        file_mode(&l.join("old"), "payload", 0o600);
        dir(&l.join("sub"));
    });
    let old = rw.ino("old");
    let sub = rw.ino("sub");
    rw.ov.rename(ROOT, b"old", sub, b"new", 0).unwrap();
    assert_eq!(read_all(&rw.upper.join("sub/new")), "payload");
    assert!(
        upper_whiteout(&rw.upper, "old").is_some(),
        "a whiteout for old"
    );
    assert_eq!(rw.ov.query().resolve(p("sub/new")).unwrap().ino, old);
    assert_eq!(rw.ov.query().resolve(p("old")).unwrap_err(), Errno::ENOENT);
    // A directory from a lower cannot be renamed (redirect_dir=off): EXDEV.
    assert_eq!(
        rw.ov.rename(ROOT, b"sub", ROOT, b"sub2", 0).unwrap_err(),
        Errno::EXDEV
    );
    rw.assert_work_empty();
}

#[test]
fn daemon_constructor_empties_the_work_directory() {
    let s = Scratch::new("workdir");
    let work = s.dir("work");
    dir(&work.join("work"));
    dir(&work.join("work/stale-dir"));
    file(&work.join("work/stale-dir/f"), "");
    file(&work.join("work/#layover.1.0"), "");
    // Mode 0, as the kernel leaves it: an ordinary user's daemon must still manage.
    fs::set_permissions(work.join("work"), fs::Permissions::from_mode(0o000)).unwrap();
    let (upper, lower) = (s.dir("upper"), s.dir("lower"));
    let ov = Overlay::new(
        stack(&[&lower], Some((&upper, &work))),
        1024,
        &Privilege::detect(),
        None,
    )
    .unwrap();
    ov.cleanup_work();
    assert_eq!(names_on_disk(&work.join("work")), Vec::<String>::new());
}
