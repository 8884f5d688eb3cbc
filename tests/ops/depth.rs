//! Trees deeper than a thread's stack (issue 13, item 5): the core follows parent chains in
//! loops, never by a recursion per level. Each test runs on a thread with a small stack, so a
//! recursion per level overflows it (the process aborts: the test fails loudly). Through a
//! mount the same chain of 20,000 lower directories killed the daemon at the copy-up
//! (scripts/exhaustion.py, docs/reliability.md).

use crate::support::*;
use crate::{ROOT, Rw, this_caller};
use layover::{Ino, NewNode};
use rustix::fs::{Mode, OFlags, mkdirat, openat};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;

/// 5,000 levels of 11 bytes: 55,000 bytes of path, far past PATH_MAX.
const DEPTH: usize = 5_000;
/// Enough for the tests' own frames, far too little for one frame of copy-up per level.
const STACK: usize = 256 * 1024;
const NAME: &str = "d123456789";

fn open_dir(at: &OwnedFd, name: &str) -> rustix::io::Result<OwnedFd> {
    openat(at, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
}

/// Makes DEPTH levels of NAME below `top`, one fd at a time.
fn chain(top: &Path) {
    let mut fd = openat(
        rustix::fs::CWD,
        top,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..DEPTH {
        mkdirat(&fd, NAME, Mode::from_raw_mode(0o755)).unwrap();
        fd = open_dir(&fd, NAME).unwrap();
    }
}

/// How many NAME levels are below `top`, and whether the last holds `file`.
fn levels(top: &Path) -> (usize, bool) {
    let mut fd = openat(
        rustix::fs::CWD,
        top,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    let mut n = 0;
    while let Ok(next) = open_dir(&fd, NAME) {
        fd = next;
        n += 1;
    }
    let has_file = rustix::fs::statat(&fd, "file", rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok();
    (n, has_file)
}

fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

/// Removes the scratch directory with `rm -rf` (fts: any depth) before `Scratch` tries.
fn remove(s: &Scratch) {
    let st = Command::new("rm").arg("-rf").arg(&s.root).status().unwrap();
    assert!(st.success(), "rm -rf {}", s.root.display());
}

/// A file created at the bottom of a lower chain deeper than the stack: every parent is
/// copied up (top down, in a loop), and dropping the overlay drops the chain of inodes, each
/// holding its parent, without a recursion either.
#[test]
fn a_lower_chain_deeper_than_the_stack_is_copied_up_and_dropped() {
    let s = Scratch::new("deep");
    let (upper, lower) = (s.root.join("upper"), s.root.join("lower"));
    let rw = Rw::new(&s, chain);
    on_small_stack(move || {
        let mut ino: Ino = ROOT;
        for _ in 0..DEPTH {
            ino = rw.ov.lookup(ino, NAME.as_bytes()).unwrap().ino();
        }
        let what = NewNode::File {
            mode: 0o644,
            flags: libc::O_WRONLY,
        };
        rw.ov
            .create_node(ino, b"file", what, this_caller())
            .unwrap();
        // Looked up again from a cold directory cache (the overlay was made with room for
        // 256 fds): the bottom's fd is opened from the nearest cached ancestor.
        assert!(rw.ov.lookup(ino, b"file").is_ok());
        drop(rw);
    });
    assert_eq!(levels(&upper), (DEPTH, true));
    assert_eq!(levels(&lower), (DEPTH, false));
    remove(&s);
}
