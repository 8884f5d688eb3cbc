//! layover as a library: the overlay core (layers, the on-disk format, the inode table and
//! the semantics in `overlay`), the FUSE transport (`fuse`, `mount`) and the command line
//! (`cli`, `config`). The binary in `main.rs` only parses, logs and runs; offline tools and
//! the operation-level tests use the same core the daemon does.
//!
//! The public API, for tools and tests:
//! - `config::Stack` describes a layer stack; `Overlay::open_read_only` opens it for reading
//!   (no mount, no workdir, nothing written, no privilege needed), `Overlay::new` as the
//!   daemon does (upper and work opened, `WORKDIR/work` emptied and probed).
//! - `Overlay::query` answers by path (`Query`: resolve, list, readlink, getxattr,
//!   listxattr, and which layers supply an object).
//! - `Overlay`'s operations by inode number are the ones the daemon serves (lookup, getattr,
//!   readdir, create_node, unlink, rename, setattr, open, write, ...), with the types they
//!   take and return re-exported here.
//!
//! Everything else (the inode table, handles, layers, the syscall layer `sys`, the on-disk
//! format `whiteout`, the FUSE glue) stays crate-private: it may change at any time.

pub mod autounmount;
pub mod cli;
pub mod config;
mod dircache;
pub mod error;
mod fuse;
mod handle;
pub mod idmap;
mod inode;
pub mod inspect;
mod layer;
pub mod mount;
pub mod mountinfo;
mod opener;
mod overlay;
pub mod privilege;
pub mod stats;
#[allow(unsafe_code)]
mod sys;
mod whiteout;

pub use config::{Stack, XattrNs};
pub use error::{Errno, FsResult, StartupError};
/// FUSE over io_uring (the transport's queues, request decoding, reply encoding).
pub use fuse::uring as fuse_uring;
pub use handle::DirEntry;
pub use handle::Fh;
pub use inode::Ino;
pub use inode::ROOT_INO;
pub use layer::LayerIdx;
pub use opener::Opener;
pub use overlay::xattr::XattrReply;
pub use overlay::{
    Caller, Entry, Figures, FileRange, InoOrigin, LayerDir, LayerInfo, LayerObj, NewNode, Node,
    OpaqueBy, OpenOpts, Opened, Overlay, Query, SetAttr, WhiteoutKind,
};
pub use privilege::Privilege;
pub use sys::{Stat, StatFs, TimeSpec};
pub use whiteout::Format as WhiteoutFormat;
