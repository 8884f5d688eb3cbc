//! The only code that names fuser's request and reply types: each operation converts its
//! arguments, calls the overlay core once, and replies exactly once.

use crate::config::Config;
use crate::error::Errno;
use crate::handle::{Backings, Fh};
use crate::inode::Ino;
use crate::overlay::{
    Caller, Entry, FileRange, NewNode, OpenResult, Overlay, SetAttr, xattr::XattrReply,
};
use crate::sys::{self, Stat, TimeSpec};
use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Fs {
    pub ov: Arc<Overlay>,
    ttl: Duration,
    /// Ask for passthrough at INIT (`passthrough=off` does not).
    want_passthrough: bool,
    max_write: Option<u32>,
    backings: Backings<BackingId>,
}

impl Fs {
    pub fn new(ov: Arc<Overlay>, cfg: &Config) -> Fs {
        Fs {
            ov,
            ttl: cfg.timeout,
            want_passthrough: cfg.passthrough,
            max_write: cfg.max_write,
            backings: Backings::default(),
        }
    }

    /// The backing for a passthrough open, or None (and the handle served by the daemon)
    /// when the kernel will not take it.
    fn backing(
        &self,
        o: &OpenResult,
        make: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !o.passthrough {
            return None;
        }
        match self.backings.acquire(o.ino, make) {
            Ok(b) => Some(b),
            Err(e) => {
                log::warn!(
                    "passthrough refused by the kernel ({e}); file data goes through the daemon from now on"
                );
                self.ov.passthrough_refused(o.fh);
                None
            }
        }
    }
}

/// Open files: the page cache survives reopening (every change goes through us), and close
/// needs no FLUSH round trip (no locks or write-back state live in the daemon).
const FILE_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

// The core's numbers and fuser's: converted here and nowhere else.
impl From<INodeNo> for Ino {
    fn from(i: INodeNo) -> Ino {
        Ino(i.0)
    }
}

impl From<Ino> for INodeNo {
    fn from(i: Ino) -> INodeNo {
        INodeNo(i.0)
    }
}

impl From<FileHandle> for Fh {
    fn from(f: FileHandle) -> Fh {
        Fh(f.0)
    }
}

impl From<Fh> for FileHandle {
    fn from(f: Fh) -> FileHandle {
        FileHandle(f.0)
    }
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.raw())
}

/// A timestamp from a layer; one that SystemTime cannot hold (a corrupt or hostile layer)
/// becomes the epoch rather than a panic.
fn time(t: (i64, i64)) -> SystemTime {
    let (sec, nsec) = t;
    let nsec = Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64);
    let t = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

fn timespec(t: TimeOrNow) -> TimeSpec {
    match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::Set(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if n < 0 {
                    s -= 1;
                    n += 1_000_000_000;
                }
                TimeSpec::Set(s, n)
            }
        },
    }
}

fn file_type(mode: u32) -> FileType {
    dtype(sys::dtype_of_mode(mode))
}

fn dtype(d: u8) -> FileType {
    match d {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// The kernel's `new_encode_dev`, which FUSE uses for rdev.
fn encode_dev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn decode_dev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    sys::makedev(major, minor)
}

fn attr(st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.ino),
        size: st.size as u64,
        blocks: st.blocks as u64,
        atime: time(st.atime),
        mtime: time(st.mtime),
        ctime: time(st.ctime),
        crtime: time(st.ctime),
        kind: file_type(st.mode),
        perm: (st.mode & 0o7777) as u16,
        nlink: st.nlink as u32,
        uid: st.uid,
        gid: st.gid,
        rdev: encode_dev(st.rdev),
        blksize: st.blksize as u32,
        flags: 0,
    }
}

/// The attributes of a negative entry: node id 0.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn caller(req: &Request, umask: u32) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask,
    }
}

impl Fs {
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
        // Not FUSE_ATOMIC_O_TRUNC: without it the kernel checks that a file is not being
        // executed before it truncates it for open(O_TRUNC), as it does for the kernel's
        // overlay (ETXTBSY), and sends the truncation as a setattr. FUSE_DONT_MASK: the
        // caller's umask comes unapplied, for the daemon to apply unless the directory has a
        // default ACL (then the upper's filesystem derives the mode from the ACL).
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DONT_MASK
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DO_READDIRPLUS;
        let supported = config.capabilities() & wanted;
        if let Err(missing) = config.add_capabilities(supported) {
            log::debug!("kernel refused capabilities {missing:?}");
        }
        // Passthrough: the kernel reads and writes the real files itself. It needs root, a
        // kernel that offers it, and one level of filesystem stacking below us.
        let offered = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH);
        let passthrough = self.want_passthrough
            && offered
            && config.set_max_stack_depth(1).is_ok()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
        let why_not = if !self.want_passthrough {
            "passthrough=off"
        } else if !offered {
            "the kernel does not offer passthrough (it needs root and Linux 6.9 or later)"
        } else {
            "the kernel refused passthrough"
        };
        if passthrough {
            self.ov.enable_passthrough();
            log::info!(
                "FUSE passthrough granted: the kernel does the I/O of files in the upper layer{}",
                if self.ov.layers.has_upper {
                    ""
                } else {
                    " and, as the mount is read-only, of every file"
                }
            );
        } else if self.ov.cfg.read_only {
            log::info!(
                "no passthrough ({why_not}): file data is read through the daemon (page-cached)"
            );
        } else if config
            .capabilities()
            .contains(InitFlags::FUSE_WRITEBACK_CACHE)
            && config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_ok()
        {
            self.ov.enable_writeback();
            log::info!(
                "no passthrough ({why_not}): file data goes through the daemon with the kernel's writeback cache"
            );
        } else {
            log::warn!(
                "no passthrough ({why_not}) and no writeback cache offered: every write goes through the daemon"
            );
        }
        let max_write = self.max_write.unwrap_or(1 << 20);
        if let Err(m) = config.set_max_write(max_write) {
            let _ = config.set_max_write(m); // the kernel's maximum
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.ov.lookup(parent.into(), name.as_bytes()) {
            // A negative entry the kernel may cache: names only appear through us.
            Err(e) if e == Errno::ENOENT => reply.entry(&self.ttl, &negative_attr(), Generation(0)),
            r => self.reply_entry(r, reply),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ov.forget(ino.into(), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.ov.getattr(ino.into(), fh.map(Fh::from)) {
            Ok(st) => reply.attr(&self.ttl, &attr(&st)),
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
            Ok(st) => reply.attr(&self.ttl, &attr(&st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
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
        let r = self.ov.create_node(
            parent.into(),
            name.as_bytes(),
            NewNode::Dir { mode },
            caller(req, umask),
        );
        self.reply_entry(r.map(|(e, _)| e), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::reply_empty(self.ov.unlink(parent.into(), name.as_bytes()), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
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
        self.reply_entry(
            self.ov
                .link(ino.into(), newparent.into(), newname.as_bytes()),
            reply,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.ov.open(ino.into(), flags.0) {
            Ok(o) => match self.backing(&o, || reply.open_backing(o.fd.as_fd())) {
                Some(b) => reply.opened_passthrough(o.fh.into(), FopenFlags::FOPEN_NOFLUSH, &b),
                None => reply.opened(o.fh.into(), FILE_FLAGS),
            },
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
        match self.ov.write(fh.into(), offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
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
        if let Some((ino, true)) = self.ov.release(fh.into()) {
            self.backings.release(ino);
        }
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
        Self::reply_empty(self.ov.fsync(fh.into(), datasync), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
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
        Self::reply_empty(self.ov.fsyncdir(ino.into(), datasync), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
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
        Self::reply_empty(
            self.ov.setxattr(ino.into(), name.as_bytes(), value, flags),
            reply,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        Self::reply_xattr(self.ov.getxattr(ino.into(), name.as_bytes(), size), reply);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        Self::reply_xattr(self.ov.listxattr(ino.into(), size, req.pid()), reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::reply_empty(self.ov.removexattr(ino.into(), name.as_bytes()), reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
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
        let what = NewNode::File { mode, flags };
        match self.ov.create_file(
            parent.into(),
            name.as_bytes(),
            what,
            flags,
            caller(req, umask),
        ) {
            Ok((e, o)) => match self.backing(&o, || reply.open_backing(o.fd.as_fd())) {
                Some(b) => reply.created_passthrough(
                    &self.ttl,
                    &attr(&e.attr),
                    Generation(0),
                    o.fh.into(),
                    FopenFlags::FOPEN_NOFLUSH,
                    &b,
                ),
                None => reply.created(
                    &self.ttl,
                    &attr(&e.attr),
                    Generation(0),
                    o.fh.into(),
                    FILE_FLAGS,
                ),
            },
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
