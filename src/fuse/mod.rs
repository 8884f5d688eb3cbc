//! The FUSE transport over /dev/fuse (fuser): the only code that names fuser's request and
//! reply types. Each operation converts its arguments, calls the overlay core once, and
//! replies exactly once. What is FUSE's and not the overlay's lives beside it: the INIT
//! handshake (`init`), how open files' data travels (`passthrough`: passthrough backings,
//! per-inode open modes, the writeback cache's open option), the kernel-cache
//! notifications (`notify`) and the requests' counts and latencies (`stats`: each handler
//! holds one `OpStats::start` guard). The second transport, FUSE over io_uring (`uring`),
//! serves the same operations through the same core, data path and request statistics
//! when the kernel offers it.

mod convert;
mod init;
mod nodeid;
mod notify;
mod passthrough;
mod stats;
pub mod uring;

pub use init::max_write;
pub use notify::KernelCacheLink;
pub(crate) use uring::Ring;

use crate::config::Config;
use crate::error::Errno;
use crate::handle::Fh;
use crate::inode::{Ino, ROOT_INO};
use crate::overlay::{Entry, FileRange, NewNode, Opened, Overlay, SetAttr, xattr::XattrReply};
use crate::privilege::Privilege;
use convert::{FILE_FLAGS, attr, caller, decode_dev, dtype, errno, negative_attr, timespec};
use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use passthrough::{DataPath, Serve};
use stats::{Op, OpStats};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct Fs {
    pub ov: Arc<Overlay>,
    ttl: Duration,
    /// Ask for passthrough at INIT, or why not (`init::passthrough_wish`).
    want_passthrough: Result<(), &'static str>,
    max_write: Option<u32>,
    /// `strict_copy_up=1` (off by default): lower files opened
    /// read-only are not passthrough.
    strict_copy_up: bool,
    /// Ask for POSIX ACLs at INIT (not with `noacl`).
    acl: bool,
    /// Passthrough or cached, per open file (shared with the io_uring transport and the
    /// stats socket's reporter).
    data: Arc<DataPath<AnyBacking>>,
    /// Requests and their latency per operation (both transports).
    ops: Arc<OpStats>,
    /// FUSE over io_uring: asked for, granted at INIT.
    uring: Arc<uring::Offer>,
    /// Kernel node ids and the core's numbers (`nodeid`; aliases are made over io_uring
    /// only, but FORGET comes through /dev/fuse).
    ids: Arc<nodeid::NodeIds>,
}

/// A passthrough backing, registered by the transport that served the open: fuser's over
/// /dev/fuse, ours over io_uring. (Only while the rings start can an inode opened through
/// one be opened through the other: that open fails with EIO, see `uring`.)
pub enum AnyBacking {
    Dev(BackingId),
    Ring(crate::sys::uring::Backing),
}

impl Fs {
    /// `privilege`: who the daemon runs as (passthrough is asked for only as real root).
    pub fn new(ov: Arc<Overlay>, cfg: &Config, privilege: &Privilege) -> Fs {
        Fs {
            ov,
            ttl: cfg.timeout,
            want_passthrough: init::passthrough_wish(cfg.passthrough, privilege.mode),
            max_write: cfg.max_write,
            acl: cfg.acl,
            strict_copy_up: cfg.strict_copy_up,
            data: Arc::new(DataPath::new(!cfg.strict_copy_up)),
            ops: Arc::default(),
            uring: Arc::new(uring::Offer::new(cfg.io_uring)),
            ids: Arc::default(),
        }
    }
}

/// A `Serve::Direct` open: it names the inode's backing, as the kernel wants, but its reads
/// and writes come to the daemon.
const DIRECT_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH.union(FopenFlags::FOPEN_DIRECT_IO);
/// How either transport answers an open the data path decided on: the open's flags and the
/// backing to name (passthrough), or an error, the core's handle then closed. `ring`: the
/// transport is io_uring, which can name only a backing it registered (and /dev/fuse only
/// one fuser registered); the other kind exists only while the rings start (EIO).
fn open_answer(
    ov: &Overlay,
    data: &DataPath<AnyBacking>,
    o: &Opened,
    serve: Serve<AnyBacking>,
    ring: bool,
) -> Result<(FopenFlags, Option<Arc<AnyBacking>>), Errno> {
    let (flags, b) = match serve {
        Serve::Passthrough(b) => (FopenFlags::FOPEN_NOFLUSH, b),
        Serve::Direct(b) => (DIRECT_FLAGS, b),
        Serve::Cached => return Ok((FILE_FLAGS, None)),
        Serve::Busy => {
            ov.release(o.fh);
            return Err(Errno::new(libc::ETXTBSY));
        }
        Serve::Stale => {
            ov.release(o.fh);
            return Err(Errno::ESTALE);
        }
    };
    if matches!(*b, AnyBacking::Ring(_)) != ring {
        log::warn!("an open named a backing of the other transport (the rings were starting)");
        data.release(o.fh);
        ov.release(o.fh);
        return Err(Errno::EIO);
    }
    Ok((flags | FopenFlags::FOPEN_PASSTHROUGH, Some(b)))
}

/// How long the kernel may keep the root's attributes: at most a second, whatever `timeout`
/// says. `stat MNT` and `mountpoint MNT` answer from them, so with a long cache they would go
/// on succeeding after the daemon died (while every other use fails with ENOTCONN). A path
/// walk checks the root's permission bits from them too: one GETATTR a second at most.
const ROOT_ATTR_TTL: Duration = Duration::from_secs(1);

impl Fs {
    /// The attribute cache time for `ino`.
    fn attr_ttl(&self, ino: INodeNo) -> Duration {
        if Ino::from(ino) == ROOT_INO {
            self.ttl.min(ROOT_ATTR_TTL)
        } else {
            self.ttl
        }
    }

    fn reply_entry(&self, r: Result<Entry, Errno>, reply: ReplyEntry) {
        match r {
            Ok(e) => reply.entry(&self.ttl, &attr(&e.attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn reply_empty(r: Result<(), Errno>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn reply_xattr(r: Result<XattrReply, Errno>, reply: ReplyXattr) {
        match r {
            Ok(XattrReply::Size(n)) => reply.size(n as u32),
            Ok(XattrReply::Data(d)) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let want = init::Wanted {
            passthrough: self.want_passthrough,
            max_write: self.max_write,
            read_only: self.ov.read_only(),
            has_upper: self.ov.layers.has_upper,
            strict_copy_up: self.strict_copy_up,
            acl: self.acl,
        };
        let granted = init::negotiate(config, &want);
        self.data
            .negotiated(granted.passthrough, granted.writeback, granted.summary);
        self.uring.negotiate(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = self.ops.start(Op::Lookup);
        match self.ov.lookup(parent.into(), name.as_bytes()) {
            // A negative entry the kernel may cache: names only appear through us.
            Err(e) if e == Errno::ENOENT => reply.entry(&self.ttl, &negative_attr(), Generation(0)),
            r => self.reply_entry(r, reply),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _t = self.ops.start(Op::Forget);
        uring::forget(&self.ov, &self.ids, ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = self.ops.start(Op::Getattr);
        match self.ov.getattr(ino.into(), fh.map(Fh::from)) {
            Ok(st) => reply.attr(&self.attr_ttl(ino), &attr(&st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _t = self.ops.start(Op::Setattr);
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(timespec),
            mtime: mtime.map(timespec),
            fh: fh.map(Fh::from),
        };
        match self.ov.setattr(ino.into(), a) {
            Ok(st) => reply.attr(&self.attr_ttl(ino), &attr(&st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _t = self.ops.start(Op::Readlink);
        match self.ov.readlink(ino.into()) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _t = self.ops.start(Op::Mknod);
        let what = NewNode::Node {
            mode,
            rdev: decode_dev(rdev),
        };
        let r = self
            .ov
            .create_node(parent.into(), name.as_bytes(), what, caller(req, umask));
        self.reply_entry(r.map(|(e, _)| e), reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _t = self.ops.start(Op::Mkdir);
        let r = self.ov.create_node(
            parent.into(),
            name.as_bytes(),
            NewNode::Dir { mode },
            caller(req, umask),
        );
        self.reply_entry(r.map(|(e, _)| e), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.ops.start(Op::Unlink);
        Self::reply_empty(self.ov.unlink(parent.into(), name.as_bytes()), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.ops.start(Op::Rmdir);
        Self::reply_empty(self.ov.rmdir(parent.into(), name.as_bytes()), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _t = self.ops.start(Op::Symlink);
        let what = NewNode::Symlink {
            target: target.as_os_str().as_bytes(),
        };
        let r = self
            .ov
            .create_node(parent.into(), link_name.as_bytes(), what, caller(req, 0));
        self.reply_entry(r.map(|(e, _)| e), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.start(Op::Rename);
        let r = self.ov.rename(
            parent.into(),
            name.as_bytes(),
            newparent.into(),
            newname.as_bytes(),
            flags.bits(),
        );
        Self::reply_empty(r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _t = self.ops.start(Op::Link);
        self.reply_entry(
            self.ov
                .link(ino.into(), newparent.into(), newname.as_bytes()),
            reply,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.ops.start(Op::Open);
        match self.ov.open(ino.into(), flags.0, self.data.open_opts()) {
            Ok(o) => {
                let make = || reply.open_backing(o.fd.as_fd()).map(AnyBacking::Dev);
                let serve = self.data.begin(&o, make);
                match open_answer(&self.ov, &self.data, &o, serve, false) {
                    Ok((flags, b)) => match b.as_deref() {
                        Some(AnyBacking::Dev(id)) => {
                            reply.opened_passthrough(o.fh.into(), flags, id)
                        }
                        _ => reply.opened(o.fh.into(), flags),
                    },
                    Err(e) => reply.error(errno(e)),
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _t = self.ops.start(Op::Read);
        match self.ov.read(fh.into(), offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _t = self.ops.start(Op::Write);
        match self.ov.write(fh.into(), offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Nothing is flushed in the daemon (no locks, no write-back state): ENOSYS tells the
    /// kernel so, once, and it sends no FLUSH again. Opens ask for none (FOPEN_NOFLUSH), but
    /// with the writeback cache the kernel sends one at every close all the same, after
    /// writing the file's dirty pages back: a round trip per close of every file written.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.start(Op::Flush);
        reply.error(fuser::Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.start(Op::Release);
        self.ov.release(fh.into());
        self.data.release(fh.into());
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.start(Op::Fsync);
        Self::reply_empty(self.ov.fsync(fh.into(), datasync), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = self.ops.start(Op::Opendir);
        match self.ov.opendir(ino.into()) {
            // The kernel may cache the listing and keep it across opens: every change to a
            // directory goes through us, and the kernel drops the cache when it sees one.
            Ok(fh) => reply.opened(
                fh.into(),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _t = self.ops.start(Op::Readdir);
        match self.ov.readdir(fh.into(), offset) {
            Ok(list) => {
                for (i, e) in list.iter().enumerate().skip(offset as usize) {
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(e.ino.into(), (i + 1) as u64, dtype(e.d_type), name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _t = self.ops.start(Op::Readdirplus);
        let ttl = self.ttl;
        let r = self.ov.readdirplus(fh.into(), offset, |e, next, st| {
            let name = OsStr::from_bytes(&e.name);
            reply.add(e.ino.into(), next, name, &ttl, &attr(st), Generation(0))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.start(Op::Releasedir);
        self.ov.releasedir(fh.into());
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.start(Op::Fsyncdir);
        Self::reply_empty(self.ov.fsyncdir(ino.into(), datasync), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _t = self.ops.start(Op::Statfs);
        match self.ov.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.start(Op::Setxattr);
        Self::reply_empty(
            self.ov.setxattr(ino.into(), name.as_bytes(), value, flags),
            reply,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = self.ops.start(Op::Getxattr);
        Self::reply_xattr(self.ov.getxattr(ino.into(), name.as_bytes(), size), reply);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = self.ops.start(Op::Listxattr);
        Self::reply_xattr(self.ov.listxattr(ino.into(), size, &caller(req, 0)), reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = self.ops.start(Op::Removexattr);
        Self::reply_empty(self.ov.removexattr(ino.into(), name.as_bytes()), reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _t = self.ops.start(Op::Access);
        Self::reply_empty(self.ov.access(ino.into(), mask.bits()), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = self.ops.start(Op::Create);
        let opts = self.data.open_opts();
        let name = name.as_bytes();
        match self
            .ov
            .create_file(parent.into(), name, mode, flags, opts, caller(req, umask))
        {
            // A new file has no older opens (no `Serve::Direct` or `Serve::Busy`), but each
            // is served as the kernel allows if it comes.
            Ok((e, o)) => {
                let make = || reply.open_backing(o.fd.as_fd()).map(AnyBacking::Dev);
                let serve = self.data.begin(&o, make);
                let a = attr(&e.attr);
                match open_answer(&self.ov, &self.data, &o, serve, false) {
                    Ok((flags, b)) => match b.as_deref() {
                        Some(AnyBacking::Dev(id)) => reply.created_passthrough(
                            &self.ttl,
                            &a,
                            Generation(0),
                            o.fh.into(),
                            flags,
                            id,
                        ),
                        _ => reply.created(&self.ttl, &a, Generation(0), o.fh.into(), flags),
                    },
                    Err(e) => reply.error(errno(e)),
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _t = self.ops.start(Op::Fallocate);
        Self::reply_empty(self.ov.fallocate(fh.into(), offset, length, mode), reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _t = self.ops.start(Op::Lseek);
        match self.ov.lseek(fh.into(), offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _t = self.ops.start(Op::CopyFileRange);
        let from = FileRange {
            fh: fh_in.into(),
            offset: offset_in,
        };
        let to = FileRange {
            fh: fh_out.into(),
            offset: offset_out,
        };
        match self.ov.copy_file_range(from, to, len) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }
}
