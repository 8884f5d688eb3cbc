//! Object identity when the filesystem reuses inode numbers (issue 13): the core, without a
//! mount, on the scratch directory's filesystem. On a filesystem that gives a freed inode
//! number to the next new file (ext4, xfs: the usual $TMPDIR), the files created here get
//! the numbers of lower files the host removed while the core still held them, and each
//! must be an object of its own. (tests/reliability.rs shows the same through a mount on an
//! ext4 image, where the reuse is certain; on tmpfs, which does not reuse numbers at once,
//! this test shows less.)

use crate::support::*;
use crate::{Rw, this_caller};
use layover::{Ino, NewNode, OpenOpts};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;

#[test]
fn a_reused_inode_number_is_another_object() {
    let s = Scratch::new("reuse");
    let rw = Rw::new(&s, |l| {
        dir(&l.join("gone"));
        dir(&l.join("keep"));
        for i in 1..=25 {
            file(&l.join(format!("gone/f{i:02}")), "lower");
        }
    });
    // The core holds every gone/fNN, as a daemon does while the kernel caches them.
    let mut held: BTreeSet<Ino> = BTreeSet::new();
    let mut lower_inos = BTreeSet::new();
    for i in 1..=25 {
        held.insert(rw.ino(&format!("gone/f{i:02}")));
        lower_inos.insert(
            fs::metadata(rw.lower.join(format!("gone/f{i:02}")))
                .unwrap()
                .ino(),
        );
    }
    // The host removes them under the live overlay.
    fs::remove_dir_all(rw.lower.join("gone")).unwrap();

    let keep = rw.ino("keep");
    let mut recycled = 0;
    for k in 1..=8 {
        let name = format!("n{k}");
        let what = NewNode::File {
            mode: 0o644,
            flags: libc::O_WRONLY,
        };
        let (entry, _fd) = rw
            .ov
            .create_node(keep, name.as_bytes(), what, this_caller())
            .unwrap();
        let upper_file = rw.upper.join("keep").join(&name);
        if lower_inos.contains(&fs::metadata(&upper_file).unwrap().ino()) {
            recycled += 1;
        }
        assert!(
            !held.contains(&entry.ino()),
            "keep/{name} was given the inode of a removed lower file"
        );
        // A write through the new inode lands in keep/nK, and a lookup by name finds it.
        let opened = rw
            .ov
            .open(entry.ino(), libc::O_WRONLY, OpenOpts::default())
            .unwrap();
        assert_eq!(
            rw.ov.write(opened.fh, 0, name.as_bytes()).unwrap(),
            name.len()
        );
        rw.ov.release(opened.fh);
        assert_eq!(fs::read_to_string(&upper_file).unwrap(), name);
        assert_eq!(
            rw.ov.lookup(keep, name.as_bytes()).unwrap().ino(),
            entry.ino()
        );
    }
    eprintln!("{recycled} of 8 new files got the inode number of a removed lower file");
}
