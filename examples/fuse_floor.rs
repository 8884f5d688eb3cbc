//! The FUSE floor: the least work a daemon built like layover (fuser 0.18, the same worker
//! threads, cloned fds, passthrough, long timeouts, negative entries, default_permissions)
//! can do for the benchmark's create and small-file copy-up workloads. It has none of an
//! overlay's rules: a name is looked up in the upper, then in each lower, by path; a write
//! open of a file that only a lower has copies its missing parent directories and its data
//! (std::fs::copy, so copy_file_range) straight to the same path in the upper, with an fsync
//! when asked, and nothing else (no work dir, no owner, times or xattrs, no whiteouts); a
//! getxattr answers ENODATA without asking the disk, and no cached attribute is ever
//! invalidated. For the cold walk it lists a directory by reading it in every layer (upper
//! first, a name once, whiteouts included) and answers READDIR (not READDIRPLUS). What it
//! costs per file is what the FUSE round trips cost on the machine, which no overlay on FUSE
//! can go below: `scripts/bench.sh --fs kernel,layover,floor` measures it beside the kernel
//! and layover.
//!
//! With `--uring` the same daemon serves its requests over FUSE over io_uring (one queue per
//! CPU, `layover::fuse_uring`) instead of /dev/fuse: INIT, FORGET and INTERRUPT still come
//! through /dev/fuse (fuser), the operations below through the rings, calling the same
//! functions. It fails at start if the kernel does not grant io_uring (the fuse module's
//! `enable_uring` parameter must be Y).
//!
//! Usage (root): `fuse_floor [--fsync] [--uring] UPPER MOUNTPOINT [LOWER...]` (lowers top
//! first); it runs until unmounted. Not a filesystem to use: nodes are never forgotten, and unlink,
//! rename, readdir and most other operations are missing.

use fuser::{
    BackingId, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr, Request,
};
use layover::fuse_uring::{self, abi};
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(86_400);
/// The largest request payload asked for at INIT: also the size of a ring entry's buffer.
const MAX_WRITE: u32 = 1 << 20;

/// What keeps an open file's passthrough backing registered (either transport's kind).
type Keep = Box<dyn Any + Send>;

/// A directory's entries: name, node id, `DT_*` type.
type Listing = Vec<(OsString, u64, u8)>;

/// What both transports serve from.
struct Core {
    upper: PathBuf,
    lowers: Vec<PathBuf>,
    fsync: bool,
    /// Node id to the path below the layer roots (the root is 1, "").
    paths: Mutex<HashMap<u64, PathBuf>>,
    /// Path to node id, so that a path keeps its node id across a copy-up.
    ids: Mutex<HashMap<PathBuf, u64>>,
    next_id: AtomicU64,
    /// Open files: the fd and its backing (either transport's), until RELEASE.
    open: Mutex<HashMap<u64, (File, Keep)>>,
    next_fh: AtomicU64,
    /// Open directories: their merged listing, until RELEASEDIR.
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    /// Asked for io_uring, and whether the INIT reply granted it.
    want_uring: bool,
    uring: AtomicBool,
    /// Requests answered over the rings (printed at exit, to show they were used).
    ring_requests: AtomicU64,
}

/// The /dev/fuse side (fuser).
struct Floor(Arc<Core>);

fn err(e: &io::Error) -> fuser::Errno {
    fuser::Errno::from_i32(errno(e))
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::new(
            sec.max(0) as u64,
            nsec.clamp(0, 999_999_999) as u32,
        ))
        .unwrap_or(UNIX_EPOCH)
}

fn attr(ino: u64, m: &Metadata) -> FileAttr {
    let kind = if m.is_dir() {
        FileType::Directory
    } else if m.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

/// The same attributes in the io_uring transport's encoding.
fn ring_attr(ino: u64, m: &Metadata) -> abi::Attr {
    abi::Attr {
        ino,
        size: m.size(),
        blocks: m.blocks(),
        atime: (m.atime(), m.atime_nsec() as u32),
        mtime: (m.mtime(), m.mtime_nsec() as u32),
        ctime: (m.ctime(), m.ctime_nsec() as u32),
        mode: m.mode(),
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: m.blksize() as u32,
    }
}

/// A negative entry (node id 0), which the kernel caches for the entry timeout.
fn negative() -> FileAttr {
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

impl Core {
    fn rel(&self, ino: u64) -> io::Result<PathBuf> {
        let p = self.paths.lock().map_err(|_| enoent())?;
        p.get(&ino).cloned().ok_or_else(enoent)
    }

    /// The top-most layer's path for `rel` and its metadata; `upper` says whether it is the
    /// upper's.
    fn find(&self, rel: &Path) -> io::Result<(PathBuf, Metadata, bool)> {
        let up = self.upper.join(rel);
        match fs::symlink_metadata(&up) {
            Ok(m) => return Ok((up, m, true)),
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            Err(_) => {}
        }
        for l in &self.lowers {
            let p = l.join(rel);
            if let Ok(m) = fs::symlink_metadata(&p) {
                return Ok((p, m, false));
            }
        }
        Err(enoent())
    }

    /// The node id of `rel`, made on first sight.
    fn id(&self, rel: &Path) -> io::Result<u64> {
        let mut ids = self.ids.lock().map_err(|_| enoent())?;
        if let Some(&id) = ids.get(rel) {
            return Ok(id);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        ids.insert(rel.to_owned(), id);
        drop(ids);
        self.paths
            .lock()
            .map_err(|_| enoent())?
            .insert(id, rel.to_owned());
        Ok(id)
    }

    /// LOOKUP: the node id and metadata of `name` in `parent`.
    fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<(u64, Metadata)> {
        let rel = self.rel(parent)?.join(name);
        let (_, m, _) = self.find(&rel)?;
        Ok((self.id(&rel)?, m))
    }

    fn getattr(&self, ino: u64) -> io::Result<Metadata> {
        Ok(self.find(&self.rel(ino)?)?.1)
    }

    /// Copies `rel` (and its missing parents) from the top-most lower to the upper.
    fn copy_up(&self, rel: &Path) -> io::Result<()> {
        if let Some(parent) = rel.parent()
            && !parent.as_os_str().is_empty()
            && !self.upper.join(parent).exists()
        {
            self.copy_up(parent)?;
        }
        let (src, m, in_upper) = self.find(rel)?;
        if in_upper {
            return Ok(());
        }
        let dst = self.upper.join(rel);
        if m.is_dir() {
            match fs::DirBuilder::new().mode(m.mode() & 0o7777).create(&dst) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => return Ok(()),
            }
        }
        fs::copy(&src, &dst)?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        if self.fsync {
            File::open(&dst)?.sync_all()?;
        }
        Ok(())
    }

    fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<(u64, Metadata)> {
        let p = self.rel(parent)?;
        self.copy_up(&p)?;
        let rel = p.join(name);
        fs::DirBuilder::new()
            .mode(mode & !umask & 0o7777)
            .create(self.upper.join(&rel))?;
        let (_, m, _) = self.find(&rel)?;
        Ok((self.id(&rel)?, m))
    }

    /// CREATE: the new file, open for writing, its node id and metadata.
    fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<(File, u64, Metadata)> {
        let p = self.rel(parent)?;
        self.copy_up(&p)?;
        let rel = p.join(name);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & !umask & 0o7777)
            .open(self.upper.join(&rel))?;
        let m = file.metadata()?;
        Ok((file, self.id(&rel)?, m))
    }

    /// OPEN: the file, copied up first if opened for writing.
    fn open(&self, ino: u64, flags: i32) -> io::Result<File> {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let rel = self.rel(ino)?;
        if writes {
            self.copy_up(&rel)?;
        }
        let (path, _, _) = self.find(&rel)?;
        fs::OpenOptions::new()
            .read(!writes || flags & libc::O_ACCMODE == libc::O_RDWR)
            .write(writes)
            .open(path)
    }

    /// Keeps an open file until its RELEASE (entered before the reply, which the RELEASE
    /// may otherwise overtake).
    fn register(&self, file: File, backing: Keep) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut o) = self.open.lock() {
            o.insert(fh, (file, backing));
        }
        fh
    }

    /// OPENDIR: lists the directory in every layer (upper first; a name once, whiteouts and
    /// all: the floor has no overlay rules) and keeps the listing until RELEASEDIR.
    fn opendir(&self, ino: u64) -> io::Result<u64> {
        let rel = self.rel(ino)?;
        let mut seen = HashSet::new();
        let mut list: Listing = vec![
            (".".into(), ino, libc::DT_DIR),
            ("..".into(), 1, libc::DT_DIR),
        ];
        for root in std::iter::once(&self.upper).chain(&self.lowers) {
            let Ok(rd) = fs::read_dir(root.join(&rel)) else {
                continue;
            };
            for e in rd {
                let e = e?;
                let name = e.file_name();
                if seen.insert(name.clone()) {
                    let t = e.file_type()?;
                    let dt = if t.is_dir() {
                        libc::DT_DIR
                    } else if t.is_symlink() {
                        libc::DT_LNK
                    } else if t.is_file() {
                        libc::DT_REG
                    } else {
                        libc::DT_UNKNOWN
                    };
                    list.push((name.clone(), self.id(&rel.join(&name))?, dt));
                }
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut d) = self.dirs.lock() {
            d.insert(fh, Arc::new(list));
        }
        Ok(fh)
    }

    fn listing(&self, fh: u64) -> io::Result<Arc<Listing>> {
        let d = self.dirs.lock().map_err(|_| enoent())?;
        d.get(&fh)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    fn releasedir(&self, fh: u64) {
        let gone = self.dirs.lock().ok().and_then(|mut d| d.remove(&fh));
        drop(gone);
    }

    fn release(&self, fh: u64) {
        let gone = self.open.lock().ok().and_then(|mut o| o.remove(&fh));
        drop(gone);
    }
}

impl Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DONT_MASK
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_POSIX_ACL;
        let _ = config.add_capabilities(config.capabilities() & wanted);
        let _ = config.set_max_write(MAX_WRITE);
        if self.0.want_uring {
            let granted = config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok();
            self.0.uring.store(granted, Ordering::Relaxed);
        }
        let passthrough = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.set_max_stack_depth(1).is_ok()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok();
        if passthrough {
            Ok(())
        } else {
            Err(io::Error::other(
                "the floor needs FUSE passthrough (root, Linux >= 6.9)",
            ))
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.0.lookup(parent.0, name) {
            Ok((id, m)) => reply.entry(&TTL, &attr(id, &m), Generation(0)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                reply.entry(&TTL, &negative(), Generation(0))
            }
            Err(e) => reply.error(err(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.getattr(ino.0) {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.0.mkdir(parent.0, name, mode, umask) {
            Ok((id, m)) => reply.entry(&TTL, &attr(id, &m), Generation(0)),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let made = self
            .0
            .create(parent.0, name, mode, umask)
            .and_then(|(file, id, m)| {
                let backing = reply.open_backing(&file)?;
                Ok((attr(id, &m), file, Arc::new(backing)))
            });
        match made {
            Ok((a, file, backing)) => {
                let fh = self.0.register(file, Box::new(Arc::clone(&backing)));
                reply.created_passthrough(
                    &TTL,
                    &a,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_NOFLUSH,
                    &backing,
                );
            }
            Err(e) => reply.error(err(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.0.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(err(&e)),
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
        let list = match self.0.listing(fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(err(&e)),
        };
        for (i, (name, id, dt)) in list.iter().enumerate().skip(offset as usize) {
            let kind = match *dt {
                libc::DT_DIR => FileType::Directory,
                libc::DT_LNK => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            if reply.add(INodeNo(*id), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.releasedir(fh.0);
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = self.0.open(ino.0, flags.0).and_then(|file| {
            let backing: BackingId = reply.open_backing(&file)?;
            Ok((file, Arc::new(backing)))
        });
        match opened {
            Ok((file, backing)) => {
                let fh = self.0.register(file, Box::new(Arc::clone(&backing)));
                reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &backing);
            }
            Err(e) => reply.error(err(&e)),
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(fuser::Errno::from_i32(libc::ENODATA));
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
        self.0.release(fh.0);
        reply.ok();
    }
}

/// The io_uring side: the same operations, decoded from a ring entry.
fn ring_op(core: &Core, dev: &Arc<OwnedFd>, req: &abi::Request<'_>) -> Result<Vec<u8>, i32> {
    core.ring_requests.fetch_add(1, Ordering::Relaxed);
    let name = || req.name().map(OsStr::from_bytes).ok_or(libc::EINVAL);
    let e = |e: io::Error| errno(&e);
    let mut out = Vec::with_capacity(abi::ENTRY_OUT_SIZE + abi::OPEN_OUT_SIZE);
    match req.opcode {
        abi::op::LOOKUP => match core.lookup(req.nodeid, name()?) {
            Ok((id, m)) => abi::entry_out(&mut out, id, &ring_attr(id, &m), TTL),
            Err(x) if x.raw_os_error() == Some(libc::ENOENT) => {
                abi::entry_out(&mut out, 0, &abi::Attr::default(), TTL)
            }
            Err(x) => return Err(e(x)),
        },
        abi::op::GETATTR => {
            let m = core.getattr(req.nodeid).map_err(e)?;
            abi::attr_out(&mut out, &ring_attr(req.nodeid, &m), TTL);
        }
        abi::op::MKDIR => {
            let (mode, umask) = (abi::u32_at(req.op_in, 0), abi::u32_at(req.op_in, 4));
            let (id, m) = core.mkdir(req.nodeid, name()?, mode, umask).map_err(e)?;
            abi::entry_out(&mut out, id, &ring_attr(id, &m), TTL);
        }
        abi::op::CREATE => {
            let (mode, umask) = (abi::u32_at(req.op_in, 4), abi::u32_at(req.op_in, 8));
            let (file, id, m) = core.create(req.nodeid, name()?, mode, umask).map_err(e)?;
            let backing = fuse_uring::Backing::open(dev, file.as_fd()).map_err(e)?;
            let bid = backing.id();
            let fh = core.register(file, Box::new(backing));
            abi::entry_out(&mut out, id, &ring_attr(id, &m), TTL);
            abi::open_out(
                &mut out,
                fh,
                abi::FOPEN_NOFLUSH | abi::FOPEN_PASSTHROUGH,
                bid,
            );
        }
        abi::op::OPEN => {
            let flags = abi::u32_at(req.op_in, 0) as i32;
            let file = core.open(req.nodeid, flags).map_err(e)?;
            let backing = fuse_uring::Backing::open(dev, file.as_fd()).map_err(e)?;
            let bid = backing.id();
            let fh = core.register(file, Box::new(backing));
            abi::open_out(
                &mut out,
                fh,
                abi::FOPEN_NOFLUSH | abi::FOPEN_PASSTHROUGH,
                bid,
            );
        }
        abi::op::GETXATTR => return Err(libc::ENODATA),
        abi::op::RELEASE => core.release(abi::u64_at(req.op_in, 0)),
        abi::op::FLUSH => {}
        abi::op::OPENDIR => abi::open_out(&mut out, core.opendir(req.nodeid).map_err(e)?, 0, 0),
        abi::op::READDIR => {
            let list = core.listing(abi::u64_at(req.op_in, 0)).map_err(e)?;
            let (offset, size) = (abi::u64_at(req.op_in, 8), abi::u32_at(req.op_in, 16));
            for (i, (name, id, dt)) in list.iter().enumerate().skip(offset as usize) {
                let entry = (*id, (i + 1) as u64, u32::from(*dt), name.as_bytes());
                if !abi::dirent(&mut out, size as usize, entry) {
                    break;
                }
            }
        }
        abi::op::RELEASEDIR => core.releasedir(abi::u64_at(req.op_in, 0)),
        _ => return Err(libc::ENOSYS),
    }
    Ok(out)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut fsync = false;
    let mut uring = false;
    while let Some(a) = args.first() {
        match a.as_str() {
            "--fsync" => fsync = true,
            "--uring" => uring = true,
            _ => break,
        }
        args.remove(0);
    }
    if args.len() < 2 {
        eprintln!("usage: fuse_floor [--fsync] [--uring] UPPER MOUNTPOINT [LOWER...]");
        std::process::exit(2);
    }
    let mut paths = HashMap::new();
    paths.insert(1, PathBuf::new());
    let mut ids = HashMap::new();
    ids.insert(PathBuf::new(), 1);
    let core = Arc::new(Core {
        upper: PathBuf::from(&args[0]),
        lowers: args[2..].iter().map(PathBuf::from).collect(),
        fsync,
        paths: Mutex::new(paths),
        ids: Mutex::new(ids),
        next_id: AtomicU64::new(2),
        open: Mutex::new(HashMap::new()),
        dirs: Mutex::new(HashMap::new()),
        next_fh: AtomicU64::new(1),
        want_uring: uring,
        uring: AtomicBool::new(false),
        ring_requests: AtomicU64::new(0),
    });
    let mut cfg = fuser::Config::default();
    // The session shape of layover's default on this machine.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cfg.n_threads = Some((cpus * 2).clamp(8, 32));
    cfg.clone_fd = true;
    cfg.mount_options = vec![
        fuser::MountOption::FSName("fuse_floor".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    let run = fuser::Session::new(Floor(Arc::clone(&core)), &args[1], &cfg).and_then(|s| {
        if uring {
            start_rings(&core, &s)?;
        } else {
            eprintln!("fuse_floor: transport /dev/fuse");
        }
        s.run()
    });
    if let Err(e) = run {
        eprintln!("fuse_floor: {e}");
        std::process::exit(1);
    }
    if uring {
        let n = core.ring_requests.load(Ordering::Relaxed);
        eprintln!("fuse_floor: {n} requests answered over io_uring");
    }
    // The ring threads end with the connection; do not wait for them.
    std::process::exit(0);
}

/// Starts the io_uring queues after INIT, or says why not (an error: asked for io_uring).
fn start_rings<F: Filesystem>(core: &Arc<Core>, s: &fuser::Session<F>) -> io::Result<()> {
    if !core.uring.load(Ordering::Relaxed) {
        let why = if fuse_uring::uring_enabled() {
            "the kernel did not offer FUSE_OVER_IO_URING at INIT"
        } else {
            "the fuse module's enable_uring is off"
        };
        return Err(io::Error::other(format!("io_uring asked for, but {why}")));
    }
    let dev = Arc::new(s.as_fd().try_clone_to_owned()?);
    let (c, d) = (Arc::clone(core), Arc::clone(&dev));
    let handler: Arc<fuse_uring::Handler> = Arc::new(move |req| ring_op(&c, &d, req));
    // One thread per CPU queue: the floor's operations are short.
    let shape = (1, 16);
    let threads = fuse_uring::serve(&dev, shape, MAX_WRITE as usize, handler)?;
    eprintln!(
        "fuse_floor: transport io_uring ({} queues x {} entries)",
        threads.len(),
        shape.1
    );
    Ok(())
}
