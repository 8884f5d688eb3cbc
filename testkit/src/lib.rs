//! Support for layover's mounted black-box tests (`tests/*.rs`), organised by purpose:
//!
//! - [`env`]: the guard every test starts with ([`TestEnv`]): a temporary directory, every
//!   mount under it unmounted on drop, a watchdog for hung mounts, the prerequisite check;
//! - [`layer`]: building fixture layers;
//! - [`mode`]: the three ways the suites run (root, an ordinary user, root of a user
//!   namespace), from `$LAYOVER_TEST_MODE`;
//! - [`compare`]: the kernel's overlayfs and layover side by side on identical copies of the
//!   same layers, and the comparison of what they show;
//! - [`snapshot`] and [`tree`]: what a tree shows, and readable differences between two;
//! - [`sys`]: syscalls std does not offer, and calls made as another user;
//! - [`run`] and [`procfs`]: helper commands, the mount table and daemon processes.
//!
//! The kernel's overlayfs is the authority: a test builds one set of layers, copies it twice
//! (`cp -a`, so times, owners, xattrs and hard links are identical), mounts the kernel's
//! overlay on one copy and layover on the other, and compares what the two merged trees show.
//! Raw inode numbers are never compared between the two mounts; only their structure (which
//! names share an inode, d_ino == st_ino) is.
//!
//! Everything is re-exported at the crate root: a test says `use layover_testkit::*;`.
//! Test support fails the test on any unexpected error, hence the panics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod compare;
pub mod env;
pub mod layer;
pub mod mode;
pub mod podman;
pub mod procfs;
pub mod run;
pub mod snapshot;
pub mod sys;
pub mod tree;

pub use compare::*;
pub use env::*;
pub use layer::*;
pub use mode::*;
pub use podman::*;
pub use procfs::*;
pub use run::*;
pub use snapshot::*;
pub use sys::*;
pub use tree::*;
