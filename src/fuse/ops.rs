//! The operations, for both transports: each request decoded (from a ring entry, or as read
//! from /dev/fuse by `fuse::dev`), checked against who may use the mount (`Access`), the
//! overlay core called once, with the cache times and open rules (`open_answer`, the data
//! path), and the reply encoded. FORGET, BATCH_FORGET and INTERRUPT only come through
//! /dev/fuse and get no reply (or ENOSYS): `fuse::dev` reads them, `Dispatcher::forget` counts.
//!
//! Node ids: every node id a request names (its header's, RENAME's new directory, LINK's
//! old node) is mapped to the core's number, and every entry reply names the object's
//! current node id with st_ino its number (`nodeid`). An open that meets an older backing
//! on its kernel inode is answered ESTALE after the object got a fresh node id.

use super::abi::{self, Attr, Request, op, u32_at, u64_at};
use super::uring::{self, DEFAULT_SHAPE, Offer};
use crate::error::Errno;
use crate::fuse::nodeid::{NodeId, NodeIds};
use crate::fuse::passthrough::Serve;
use crate::fuse::{Fs, open_answer};
use crate::handle::Fh;
use crate::inode::{Ino, ROOT_INO};
use crate::overlay::xattr::XattrReply;
use crate::overlay::{Caller, Entry, FileRange, NewNode, Overlay, SetAttr};
use crate::sys::fusedev::Backing;
use crate::sys::{Stat, TimeSpec};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::fuse::passthrough::DataPath;
use crate::fuse::stats::{Op, OpStats, Timer};

/// The statistics' name of a ring request's operation (FORGET and INTERRUPT never come
/// through the rings; DESTROY and unknown opcodes are not counted).
fn stat_op(opcode: u32) -> Option<Op> {
    Some(match opcode {
        op::LOOKUP => Op::Lookup,
        op::GETATTR => Op::Getattr,
        op::SETATTR => Op::Setattr,
        op::READLINK => Op::Readlink,
        op::SYMLINK => Op::Symlink,
        op::MKNOD => Op::Mknod,
        op::MKDIR => Op::Mkdir,
        op::UNLINK => Op::Unlink,
        op::RMDIR => Op::Rmdir,
        op::RENAME | op::RENAME2 => Op::Rename,
        op::LINK => Op::Link,
        op::OPEN => Op::Open,
        op::READ => Op::Read,
        op::WRITE => Op::Write,
        op::STATFS => Op::Statfs,
        op::RELEASE => Op::Release,
        op::FSYNC => Op::Fsync,
        op::SETXATTR => Op::Setxattr,
        op::GETXATTR => Op::Getxattr,
        op::LISTXATTR => Op::Listxattr,
        op::REMOVEXATTR => Op::Removexattr,
        op::FLUSH => Op::Flush,
        op::OPENDIR => Op::Opendir,
        op::READDIR => Op::Readdir,
        op::RELEASEDIR => Op::Releasedir,
        op::FSYNCDIR => Op::Fsyncdir,
        op::ACCESS => Op::Access,
        op::CREATE => Op::Create,
        op::FALLOCATE => Op::Fallocate,
        op::READDIRPLUS => Op::Readdirplus,
        op::LSEEK => Op::Lseek,
        op::COPY_FILE_RANGE => Op::CopyFileRange,
        _ => return None,
    })
}

/// Who besides the mount's owner may make requests, as fuser's session enforced it:
/// `allow_other` anyone; `allow_root` root too; else the owner only (in a user namespace
/// the kernel itself lets only the mounter in without `allow_other`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Access {
    owner: u32,
    root_too: bool,
    everyone: bool,
}

impl Access {
    pub(crate) fn new(owner: u32, allow_root: bool, allow_other: bool) -> Access {
        Access {
            owner,
            root_too: allow_root,
            everyone: allow_other,
        }
    }

    /// Whether a request of `opcode` from `uid` is served. Requests the kernel makes on its
    /// own (reads and writes of the page cache, releases, syncs) may carry any uid.
    fn allows(&self, uid: u32, opcode: u32) -> bool {
        self.everyone
            || uid == self.owner
            || (self.root_too && uid == 0)
            || matches!(
                opcode,
                op::DESTROY
                    | op::READ
                    | op::READDIR
                    | op::READDIRPLUS
                    | op::WRITE
                    | op::FSYNC
                    | op::FSYNCDIR
                    | op::RELEASE
                    | op::RELEASEDIR
            )
    }
}

/// The request handler both transports serve from (`fuse::dev` over /dev/fuse, the queues
/// over io_uring): the core, the data path and the statistics, taken from `Fs` before
/// fuser's session owns it.
pub(crate) struct Dispatcher {
    ov: Arc<Overlay>,
    data: Arc<DataPath<Backing>>,
    ttl: Duration,
    max_write: u32,
    offer: Arc<Offer>,
    /// The per-operation request statistics (`layover stats`).
    ops: Arc<OpStats>,
    access: Access,
    /// Node ids and the core's numbers (shared with the /dev/fuse side's FORGET and with
    /// the kernel-cache notifications).
    ids: Arc<NodeIds>,
}

impl Fs {
    /// The io_uring side of this filesystem (to start once INIT is done).
    pub(crate) fn dispatcher(&self) -> Dispatcher {
        Dispatcher {
            ov: Arc::clone(&self.ov),
            data: Arc::clone(&self.data),
            ttl: self.ttl,
            max_write: super::max_write(self.max_write),
            offer: Arc::clone(&self.uring),
            ops: Arc::clone(&self.ops),
            access: self.access,
            ids: Arc::clone(&self.ids),
        }
    }
}

/// A READ's real file, offset and size (`Dispatcher::read_source`).
pub(crate) type ReadSource = (Arc<OwnedFd>, u64, usize);

/// The core's answer, as bytes or a positive errno.
type Answer = Result<Vec<u8>, i32>;

fn err(e: Errno) -> i32 {
    e.raw()
}

impl Dispatcher {
    /// After INIT: starts `threads` /dev/fuse workers on the connection `dev`, then the
    /// io_uring queues if io_uring was granted (until they have all registered, requests
    /// keep coming through /dev/fuse), and logs which transport serves the mount and why.
    /// Returns the /dev/fuse workers, which end when the connection does.
    pub(crate) fn start(
        self,
        dev: BorrowedFd<'_>,
        threads: usize,
    ) -> io::Result<Vec<std::thread::JoinHandle<io::Result<()>>>> {
        let dev = Arc::new(dev.try_clone_to_owned()?);
        // The kernel's largest request: max_write, or max_pages pages (at most the
        // fs.fuse.max_pages_limit sysctl, 256 by default).
        let limit: usize = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(256);
        let payload = (self.max_write as usize).max(limit * 4096);
        let ring = Arc::new(self);
        let workers = crate::fuse::dev::serve(&ring, &dev, threads, payload)?;
        if !ring.offer.granted() {
            log::info!("transport: /dev/fuse ({})", ring.offer.why_not());
            return Ok(workers);
        }
        let (r, d) = (Arc::clone(&ring), Arc::clone(&dev));
        let reader = Arc::clone(&ring);
        let how = uring::Serving {
            shape: DEFAULT_SHAPE,
            // Measured without (2026-12-06, 2 CPUs): create at 1.20x /dev/fuse's rate
            // against 2.29x pinned, and no row clearly faster (docs/performance.md, "The
            // data path without passthrough, measured").
            pin: true,
            read: Some(Arc::new(move |req, buf| reader.read_into(req, buf))),
        };
        let handler: Arc<uring::Handler> = Arc::new(move |req| r.handle(&d, req));
        match uring::serve_with(&dev, &how, payload, handler) {
            Ok(queues) => {
                ring.offer.serving();
                let (per_queue, depth) = DEFAULT_SHAPE;
                log::info!(
                    "transport: FUSE over io_uring ({} queues, {per_queue} threads of {depth} entries each; FORGET and INTERRUPT through /dev/fuse)",
                    queues.len() / per_queue
                );
            }
            Err(e) => log::warn!("transport: /dev/fuse (FUSE over io_uring failed to start: {e})"),
        }
        Ok(workers)
    }

    /// A READ for a transport that moves the data itself (splice): the statistics timer to
    /// hold until the reply is sent, and the real file with the offset and size to read, or
    /// the errno to answer.
    pub(crate) fn read_source(&self, req: &Request<'_>) -> (Timer<'_>, Result<ReadSource, i32>) {
        let timer = self.ops.start(Op::Read);
        log::debug!("read (spliced) #{} node {}", req.unique, req.nodeid);
        let (fh, offset, size) = read_args(req);
        let file = self.ov.read_file(fh).map_err(err);
        (timer, file.map(|f| (f, offset, size)))
    }

    /// READ into `buf` (the transport's reply buffer, at least the request's size): the
    /// number of bytes read, fewer than asked only at the end of the file.
    pub(crate) fn read_into(&self, req: &Request<'_>, buf: &mut [u8]) -> Result<usize, i32> {
        let _timer = self.ops.start(Op::Read);
        let (fh, offset, size) = read_args(req);
        let buf = buf.get_mut(..size).ok_or(libc::EIO)?;
        self.ov.read_into(fh, offset, buf).map_err(err)
    }

    /// The node ids (for the kernel-cache notifications).
    pub(crate) fn node_ids(&self) -> Arc<NodeIds> {
        Arc::clone(&self.ids)
    }

    /// FORGET (through /dev/fuse): `nlookup` lookups of the kernel inode `nodeid` are gone.
    pub(crate) fn forget(&self, nodeid: u64, nlookup: u64) {
        let _t = self.ops.start(Op::Forget);
        log::debug!("forget node {nodeid} ({nlookup})");
        let ino = self.ids.forget(NodeId(nodeid), nlookup);
        self.ov.forget(ino, nlookup);
        if self.ids.aliases() != 0 && self.ov.inodes.get(ino).is_none() {
            self.ids.gone(ino);
        }
    }

    /// How long the kernel may keep the attributes of `ino` it got through node `node`. A
    /// superseded kernel inode (its object has a newer node id: it is held by descriptors
    /// opened before a copy-up) keeps none: the object changes through the newer one, whose
    /// replies refresh only that one, so its fstat asks each time and sees the current object,
    /// as on the kernel's overlay.
    fn attr_ttl(&self, ino: Ino, node: NodeId) -> Duration {
        if ino == ROOT_INO {
            self.ttl.min(super::ROOT_ATTR_TTL)
        } else if !self.ids.is_current(ino, node) {
            Duration::ZERO
        } else {
            self.ttl
        }
    }

    /// One request: a dispatch on the operation (long: one short arm per operation; the
    /// ones on open files are in `handle_io`). `dev`: the connection, on which passthrough
    /// backings are registered.
    pub(crate) fn handle(&self, dev: &Arc<OwnedFd>, req: &Request<'_>) -> Answer {
        let op = stat_op(req.opcode);
        // `-d`: every request (the reply's errno, if any, follows from `fuse::dev`/the queue).
        log::debug!(
            "{} (opcode {}) #{} node {} uid {} pid {}",
            op.map_or("?", Op::name),
            req.opcode,
            req.unique,
            req.nodeid,
            req.uid,
            req.pid
        );
        let _timer = op.map(|o| self.ops.start(o));
        if !self.access.allows(req.uid, req.opcode) {
            return Err(libc::EACCES);
        }
        let node = NodeId(req.nodeid);
        let ino = self.ids.ino(node);
        let mut out = Vec::new();
        match req.opcode {
            op::LOOKUP => match self.ov.lookup(ino, name(req, 0)?) {
                Ok(e) => return Ok(self.entry(&e)),
                // A negative entry the kernel may cache: names only appear through us.
                Err(e) if e == Errno::ENOENT => {
                    abi::entry_out(&mut out, 0, &Attr::default(), self.ttl)
                }
                Err(e) => return Err(err(e)),
            },
            op::GETATTR => {
                let fh = (u32_at(req.op_in, 0) & 1 != 0).then(|| Fh(u64_at(req.op_in, 8)));
                let st = self.ov.getattr(ino, fh).map_err(err)?;
                abi::attr_out(&mut out, &attr(&st), self.attr_ttl(ino, node));
            }
            op::SETATTR => {
                let a = SetAttr {
                    times_kept: self.data.kernel_keeps_times(),
                    ..setattr(req.op_in)
                };
                let st = self.ov.setattr(ino, a).map_err(err)?;
                abi::attr_out(&mut out, &attr(&st), self.attr_ttl(ino, node));
            }
            op::READLINK => return self.ov.readlink(ino).map_err(err),
            op::SYMLINK | op::MKNOD | op::MKDIR => return self.make(req),
            op::UNLINK => self.ov.unlink(ino, name(req, 0)?).map_err(err)?,
            op::RMDIR => self.ov.rmdir(ino, name(req, 0)?).map_err(err)?,
            op::RENAME | op::RENAME2 => {
                let flags = if req.opcode == op::RENAME2 {
                    u32_at(req.op_in, 8)
                } else {
                    0
                };
                let to = self.ids.ino(NodeId(u64_at(req.op_in, 0)));
                let (from_name, to_name) = (name(req, 0)?, name(req, 1)?);
                self.ov
                    .rename(ino, from_name, to, to_name, flags)
                    .map_err(err)?;
            }
            op::LINK => {
                let e = self
                    .ov
                    .link(
                        self.ids.ino(NodeId(u64_at(req.op_in, 0))),
                        ino,
                        name(req, 0)?,
                    )
                    .map_err(err)?;
                return Ok(self.entry(&e));
            }
            op::OPEN => {
                let flags = u32_at(req.op_in, 0) as i32;
                let o = self
                    .ov
                    .open(ino, flags, self.data.open_opts())
                    .map_err(err)?;
                let fh = o.fh;
                self.answer_open(dev, node, &o, &mut out)
                    .inspect_err(|_| log::debug!("open {fh:?} refused"))?;
            }
            op::CREATE => return self.create(dev, req),
            _ => return self.handle_io(req),
        }
        Ok(out)
    }

    /// The operations on open files and directories, xattrs and the rest (long: one short
    /// arm per operation).
    fn handle_io(&self, req: &Request<'_>) -> Answer {
        let ino = self.ids.ino(NodeId(req.nodeid));
        let fh = Fh(u64_at(req.op_in, 0));
        let mut out = Vec::new();
        match req.opcode {
            // A transport without a buffer of its own to read into (see `read_into`).
            op::READ => {
                let (fh, offset, size) = read_args(req);
                return self.ov.read(fh, offset, size as u32).map_err(err);
            }
            op::WRITE => {
                let (offset, size) = (u64_at(req.op_in, 8), u32_at(req.op_in, 16) as usize);
                let data = req.payload.get(..size).ok_or(libc::EINVAL)?;
                let n = self.ov.write(fh, offset, data).map_err(err)?;
                write_out(&mut out, n);
            }
            op::STATFS => statfs_out(&mut out, self.ov.statfs().map_err(err)?),
            op::RELEASE => {
                self.ov.release(fh);
                self.data.release(fh);
            }
            op::FSYNC => self
                .ov
                .fsync(fh, u32_at(req.op_in, 8) & 1 != 0)
                .map_err(err)?,
            op::FSYNCDIR => self
                .ov
                .fsyncdir(ino, u32_at(req.op_in, 8) & 1 != 0)
                .map_err(err)?,
            op::SETXATTR => {
                let size = u32_at(req.op_in, 0) as usize;
                let flags = u32_at(req.op_in, 4) as i32;
                let n = name(req, 0)?;
                let value = req
                    .payload
                    .get(n.len() + 1..n.len() + 1 + size)
                    .ok_or(libc::EINVAL)?;
                self.ov.setxattr(ino, n, value, flags).map_err(err)?;
            }
            op::GETXATTR => {
                let r = self.ov.getxattr(ino, name(req, 0)?, u32_at(req.op_in, 0));
                return xattr(r);
            }
            op::LISTXATTR => {
                let r = self
                    .ov
                    .listxattr(ino, u32_at(req.op_in, 0), &caller(req, 0));
                return xattr(r);
            }
            op::REMOVEXATTR => self.ov.removexattr(ino, name(req, 0)?).map_err(err)?,
            // As over /dev/fuse (`Fs::flush`): nothing to do at close, and ENOSYS tells the
            // kernel to send no more FLUSH for the mount.
            op::FLUSH => return Err(libc::ENOSYS),
            op::DESTROY => {}
            op::OPENDIR => {
                let fh = self.ov.opendir(ino).map_err(err)?;
                // As over /dev/fuse: the kernel may cache the listing across opens.
                abi::open_out(
                    &mut out,
                    fh.0,
                    abi::FOPEN_CACHE_DIR | abi::FOPEN_KEEP_CACHE,
                    0,
                );
            }
            op::READDIR => return self.readdir(req, fh),
            op::READDIRPLUS => return self.readdirplus(req, fh),
            op::RELEASEDIR => self.ov.releasedir(fh),
            op::ACCESS => self
                .ov
                .access(ino, u32_at(req.op_in, 0) as i32)
                .map_err(err)?,
            op::FALLOCATE => {
                let (offset, len) = (u64_at(req.op_in, 8), u64_at(req.op_in, 16));
                let mode = u32_at(req.op_in, 24) as i32;
                self.ov.fallocate(fh, offset, len, mode).map_err(err)?;
            }
            op::LSEEK => {
                let offset = u64_at(req.op_in, 8) as i64;
                let whence = u32_at(req.op_in, 16) as i32;
                let o = self.ov.lseek(fh, offset, whence).map_err(err)?;
                out.extend_from_slice(&o.to_ne_bytes());
            }
            op::COPY_FILE_RANGE => {
                let from = FileRange {
                    fh,
                    offset: u64_at(req.op_in, 8),
                };
                let to = FileRange {
                    fh: Fh(u64_at(req.op_in, 24)),
                    offset: u64_at(req.op_in, 32),
                };
                let n = self
                    .ov
                    .copy_file_range(from, to, u64_at(req.op_in, 40))
                    .map_err(err)?;
                write_out(&mut out, n);
            }
            _ => return Err(libc::ENOSYS),
        }
        Ok(out)
    }

    /// An entry reply: the object's current node id, counted as a lookup of it.
    fn entry(&self, e: &Entry) -> Vec<u8> {
        let mut out = Vec::with_capacity(abi::ENTRY_OUT_SIZE + abi::OPEN_OUT_SIZE);
        let node = self.ids.entry(e.ino());
        abi::entry_out(&mut out, node.0, &attr(&e.attr), self.ttl);
        out
    }

    /// SYMLINK, MKNOD, MKDIR.
    fn make(&self, req: &Request<'_>) -> Answer {
        let parent = self.ids.ino(NodeId(req.nodeid));
        let n = name(req, 0)?;
        let (what, umask) = match req.opcode {
            op::SYMLINK => (
                NewNode::Symlink {
                    target: name(req, 1)?,
                },
                0,
            ),
            op::MKNOD => (
                NewNode::Node {
                    mode: u32_at(req.op_in, 0),
                    rdev: abi::decode_dev(u32_at(req.op_in, 4)),
                },
                u32_at(req.op_in, 8),
            ),
            _ => (
                NewNode::Dir {
                    mode: u32_at(req.op_in, 0),
                },
                u32_at(req.op_in, 4),
            ),
        };
        let (e, _) = self
            .ov
            .create_node(parent, n, what, caller(req, umask))
            .map_err(err)?;
        Ok(self.entry(&e))
    }

    fn create(&self, dev: &Arc<OwnedFd>, req: &Request<'_>) -> Answer {
        let flags = u32_at(req.op_in, 0) as i32;
        let (mode, umask) = (u32_at(req.op_in, 4), u32_at(req.op_in, 8));
        let opts = self.data.open_opts();
        let (e, o) = self
            .ov
            .create_file(
                self.ids.ino(NodeId(req.nodeid)),
                name(req, 0)?,
                mode,
                flags,
                opts,
                caller(req, umask),
            )
            .map_err(err)?;
        let mut out = self.entry(&e);
        let node = NodeId(u64_at(&out, 0));
        // A new file has no older backing; if it had, the kernel takes neither the entry
        // nor its lookup.
        self.answer_open(dev, node, &o, &mut out)
            .inspect_err(|_| self.forget(node.0, 1))?;
        Ok(out)
    }

    /// The `fuse_open_out` of an open the core made through kernel inode `node`:
    /// passthrough with a backing this transport registers, or not, as the data path
    /// decides (`open_answer`). Under an older backing (`Serve::Stale`) the object gets a
    /// fresh node id and the open ESTALE: the kernel walks the path again with LOOKUP_REVAL,
    /// its LOOKUP gets the new node id, and the retried open reaches a new kernel inode.
    fn answer_open(
        &self,
        dev: &Arc<OwnedFd>,
        node: NodeId,
        o: &crate::overlay::Opened,
        out: &mut Vec<u8>,
    ) -> Result<(), i32> {
        let make = || Backing::open(dev, o.fd.as_fd());
        // A writer always gets a fresh node id; a reader only if the object has none newer
        // than the one it came through (else it came back through the older kernel inode:
        // it is served, by the daemon, `Serve::Direct`).
        let renewable = o.writes || self.ids.is_current(o.ino, node);
        let serve = self.data.begin_at(node, o, make, renewable);
        if matches!(serve, Serve::Stale) {
            let fresh = self.ids.renew(o.ino, node);
            log::debug!(
                "open of {} through node id {node} under an older backing: ESTALE, node id {fresh} from now on",
                o.ino
            );
            // The superseded kernel inode keeps no attributes from now on (`attr_ttl`): drop
            // what it has.
            self.ov.invalidate_attr(o.ino);
        }
        let (flags, b) = open_answer(&self.ov, o, serve).map_err(err)?;
        abi::open_out(out, o.fh.0, flags, b.map_or(0, |b| b.id()));
        Ok(())
    }

    fn readdir(&self, req: &Request<'_>, fh: Fh) -> Answer {
        let (offset, size) = (u64_at(req.op_in, 8), u32_at(req.op_in, 16) as usize);
        let list = self.ov.readdir(fh, offset).map_err(err)?;
        let mut out = Vec::new();
        for (i, e) in list.iter().enumerate().skip(offset as usize) {
            let d = (e.ino.0, (i + 1) as u64, dirent_type(e.d_type), &e.name[..]);
            if !abi::dirent(&mut out, size, d) {
                break;
            }
        }
        Ok(out)
    }

    fn readdirplus(&self, req: &Request<'_>, fh: Fh) -> Answer {
        let (offset, size) = (u64_at(req.op_in, 8), u32_at(req.op_in, 16) as usize);
        let mut out = Vec::new();
        let ttl = self.ttl;
        self.ov
            .readdirplus(fh, offset, |e, next, st| {
                let full =
                    out.len() + abi::ENTRY_OUT_SIZE + (24 + e.name.len()).next_multiple_of(8);
                if full > size {
                    return true;
                }
                // "." and ".." take no lookup (and are directories: never an alias).
                let node = if e.name == b"." || e.name == b".." {
                    e.ino.0
                } else {
                    self.ids.entry(e.ino).0
                };
                abi::entry_out(&mut out, node, &attr(st), ttl);
                let t = (st.mode & libc::S_IFMT) >> 12;
                !abi::dirent(&mut out, size, (st.ino, next, t, &e.name[..]))
            })
            .map_err(err)?;
        Ok(out)
    }
}

/// `struct fuse_read_in`: the handle, the offset and the size of a READ.
fn read_args(req: &Request<'_>) -> (Fh, u64, usize) {
    let fh = Fh(u64_at(req.op_in, 0));
    (fh, u64_at(req.op_in, 8), u32_at(req.op_in, 16) as usize)
}

/// The `n`th NUL-terminated name of the payload.
fn name<'a>(req: &Request<'a>, n: usize) -> Result<&'a [u8], i32> {
    req.payload
        .split(|&b| b == 0)
        .nth(n)
        .filter(|_| req.payload.iter().filter(|&&b| b == 0).count() > n)
        .ok_or(libc::EINVAL)
}

fn caller(req: &Request<'_>, umask: u32) -> Caller {
    Caller {
        uid: req.uid,
        gid: req.gid,
        pid: req.pid,
        umask,
    }
}

/// A `DT_*` as the kernel takes it: an unknown type is a regular file.
fn dirent_type(d: u8) -> u32 {
    match d {
        libc::DT_DIR
        | libc::DT_LNK
        | libc::DT_CHR
        | libc::DT_BLK
        | libc::DT_FIFO
        | libc::DT_SOCK => u32::from(d),
        _ => u32::from(libc::DT_REG),
    }
}

fn attr(st: &Stat) -> Attr {
    let t = |(s, n): (i64, i64)| (s, n.clamp(0, 999_999_999) as u32);
    Attr {
        ino: st.ino,
        size: st.size as u64,
        blocks: st.blocks as u64,
        atime: t(st.atime),
        mtime: t(st.mtime),
        ctime: t(st.ctime),
        mode: st.mode,
        nlink: st.nlink as u32,
        uid: st.uid,
        gid: st.gid,
        rdev: abi::encode_dev(st.rdev),
        blksize: st.blksize as u32,
    }
}

/// `struct fuse_setattr_in`: which fields are set (`valid`), and their values.
fn setattr(b: &[u8]) -> SetAttr {
    const MODE: u32 = 1 << 0;
    const UID: u32 = 1 << 1;
    const GID: u32 = 1 << 2;
    const SIZE: u32 = 1 << 3;
    const ATIME: u32 = 1 << 4;
    const MTIME: u32 = 1 << 5;
    const FH: u32 = 1 << 6;
    const ATIME_NOW: u32 = 1 << 7;
    const MTIME_NOW: u32 = 1 << 8;
    const CTIME: u32 = 1 << 10;
    let valid = u32_at(b, 0);
    let has = |bit: u32| valid & bit != 0;
    let time = |set: u32, now: u32, sec: usize, nsec: usize| {
        if has(now) {
            Some(TimeSpec::Now)
        } else if has(set) {
            Some(TimeSpec::Set(
                u64_at(b, sec) as i64,
                i64::from(u32_at(b, nsec)),
            ))
        } else {
            None
        }
    };
    SetAttr {
        mode: has(MODE).then(|| u32_at(b, 68)),
        uid: has(UID).then(|| u32_at(b, 76)),
        gid: has(GID).then(|| u32_at(b, 80)),
        size: has(SIZE).then(|| u64_at(b, 16)),
        atime: time(ATIME, ATIME_NOW, 32, 56),
        mtime: time(MTIME, MTIME_NOW, 40, 60),
        fh: has(FH).then(|| Fh(u64_at(b, 8))),
        ctime: has(CTIME),
        times_kept: false, // the transport's to say
    }
}

fn xattr(r: Result<XattrReply, Errno>) -> Answer {
    match r {
        // struct fuse_getxattr_out { size, padding }
        Ok(XattrReply::Size(n)) => Ok([(n as u32).to_ne_bytes(), [0; 4]].concat()),
        Ok(XattrReply::Data(d)) => Ok(d),
        Err(e) => Err(err(e)),
    }
}

/// `struct fuse_write_out { size, padding }`.
fn write_out(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
}

/// `struct fuse_statfs_out` (`fuse_kstatfs`: five counts, bsize, namelen, frsize, padding,
/// six spare words).
fn statfs_out(out: &mut Vec<u8>, s: crate::sys::StatFs) {
    for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    for v in [s.bsize, s.namelen, s.frsize] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out.resize(out.len() + 4 + 24, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(op_in: &'a [u8], payload: &'a [u8]) -> Request<'a> {
        Request {
            opcode: op::RENAME,
            unique: 1,
            nodeid: 1,
            uid: 0,
            gid: 0,
            pid: 0,
            op_in,
            payload,
        }
    }

    #[test]
    fn access_follows_allow_root_and_allow_other() {
        let owner_only = Access::new(1000, false, false);
        assert!(owner_only.allows(1000, op::LOOKUP));
        assert!(
            !owner_only.allows(0, op::LOOKUP),
            "root is refused without allow_root"
        );
        assert!(!owner_only.allows(1001, op::OPEN));
        // What the kernel sends on its own (page-cache writeback, releases) carries any uid.
        assert!(owner_only.allows(1001, op::WRITE) && owner_only.allows(0, op::RELEASE));
        let root_too = Access::new(1000, true, false);
        assert!(root_too.allows(0, op::LOOKUP) && !root_too.allows(1001, op::LOOKUP));
        assert!(Access::new(1000, false, true).allows(1001, op::MKDIR));
    }

    #[test]
    fn names_are_nul_terminated_and_counted() {
        let r = req(&[], b"old\0new\0");
        assert_eq!(name(&r, 0), Ok(&b"old"[..]));
        assert_eq!(name(&r, 1), Ok(&b"new"[..]));
        assert_eq!(name(&r, 2), Err(libc::EINVAL));
        let r = req(&[], b"unterminated");
        assert_eq!(name(&r, 0), Err(libc::EINVAL));
    }

    #[test]
    fn setattr_decodes_only_the_valid_fields() {
        let mut b = [0u8; 88];
        // valid: MODE | SIZE | MTIME_NOW | FH
        b[0..4].copy_from_slice(&(1u32 | 8 | 256 | 64).to_ne_bytes());
        b[8..16].copy_from_slice(&7u64.to_ne_bytes());
        b[16..24].copy_from_slice(&4096u64.to_ne_bytes());
        b[68..72].copy_from_slice(&0o640u32.to_ne_bytes());
        b[76..80].copy_from_slice(&1000u32.to_ne_bytes()); // uid, not valid
        let a = setattr(&b);
        assert_eq!(a.mode, Some(0o640));
        assert_eq!(a.size, Some(4096));
        assert_eq!(a.fh, Some(Fh(7)));
        assert_eq!(a.uid, None);
        assert!(a.atime.is_none());
        assert!(matches!(a.mtime, Some(TimeSpec::Now)));
        assert!(!a.ctime);
        b[0..4].copy_from_slice(&(32u32 | 1024).to_ne_bytes()); // MTIME | CTIME
        assert!(setattr(&b).ctime);
    }

    #[test]
    fn statfs_and_write_replies_have_the_kernel_sizes() {
        let mut v = Vec::new();
        let s = crate::sys::StatFs {
            blocks: 1,
            bfree: 2,
            bavail: 3,
            files: 4,
            ffree: 5,
            bsize: 6,
            namelen: 7,
            frsize: 8,
        };
        statfs_out(&mut v, s);
        assert_eq!(v.len(), 80);
        assert_eq!(u32_at(&v, 40), 6);
        assert_eq!(u32_at(&v, 48), 8);
        let mut v = Vec::new();
        write_out(&mut v, 5);
        assert_eq!(v, [5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(dirent_type(libc::DT_UNKNOWN), u32::from(libc::DT_REG));
        assert_eq!(dirent_type(libc::DT_DIR), u32::from(libc::DT_DIR));
    }
}
