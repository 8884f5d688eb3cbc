//! layover as a library: the overlay core (layers, the on-disk format, the inode table and
//! the semantics in `overlay`), the FUSE transport (`fuse`, `mount`) and the command line
//! (`cli`, `config`). The binary in `main.rs` only parses, logs and runs; offline tools and
//! the operation-level tests use the same core the daemon does.

pub mod cli;
pub mod config;
mod dircache;
pub mod error;
mod fuse;
mod handle;
mod inode;
mod layer;
pub mod mount;
mod opener;
mod overlay;
pub mod privilege;
#[allow(unsafe_code)]
mod sys;
mod whiteout;
