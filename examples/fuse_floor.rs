//! The FUSE floor: the least work a daemon built like layover (fuser 0.18, the same worker
//! threads, cloned fds, passthrough, long timeouts, negative entries, default_permissions)
//! can do for the benchmark's create and small-file copy-up workloads. It has none of an
//! overlay's rules: a name is looked up in the upper, then in each lower, by path; a write
//! open of a file that only a lower has copies its missing parent directories and its data
//! (std::fs::copy, so copy_file_range) straight to the same path in the upper, with an fsync
//! when asked, and nothing else (no work dir, no owner, times or xattrs, no whiteouts); a
//! getxattr answers ENODATA without asking the disk, and no cached attribute is ever
//! invalidated. What it costs per file is what the FUSE round trips cost on the machine, which
//! no overlay on FUSE can go below: `scripts/bench.sh --floor` measures it beside the kernel
//! and layover.
//!
//! Usage (root): `fuse_floor [--fsync] UPPER MOUNTPOINT [LOWER...]` (lowers top first); it
//! runs until unmounted. Not a filesystem to use: nodes are never forgotten, and unlink,
//! rename, readdir and most other operations are missing.

use fuser::{
    BackingId, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyXattr, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(86_400);

struct Floor {
    upper: PathBuf,
    lowers: Vec<PathBuf>,
    fsync: bool,
    /// Node id to the path below the layer roots (the root is 1, "").
    paths: Mutex<HashMap<u64, PathBuf>>,
    /// Path to node id, so that a path keeps its node id across a copy-up.
    ids: Mutex<HashMap<PathBuf, u64>>,
    next_id: AtomicU64,
    /// Open files: the fd and its backing id, until RELEASE.
    open: Mutex<HashMap<u64, (File, Arc<BackingId>)>>,
    next_fh: AtomicU64,
}

fn err(e: &io::Error) -> fuser::Errno {
    fuser::Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
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

impl Floor {
    fn rel(&self, ino: INodeNo) -> io::Result<PathBuf> {
        let p = self.paths.lock().map_err(|_| enoent())?;
        p.get(&ino.0).cloned().ok_or_else(enoent)
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

    fn entry(&self, rel: PathBuf) -> io::Result<FileAttr> {
        let (_, m, _) = self.find(&rel)?;
        Ok(attr(self.id(&rel)?, &m))
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

    /// Keeps an open file until its RELEASE (entered before the reply, which the RELEASE
    /// may otherwise overtake).
    fn register(&self, file: File, backing: BackingId) -> (u64, Arc<BackingId>) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let backing = Arc::new(backing);
        if let Ok(mut o) = self.open.lock() {
            o.insert(fh, (file, Arc::clone(&backing)));
        }
        (fh, backing)
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
        match self.rel(parent).and_then(|p| self.entry(p.join(name))) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                reply.entry(&TTL, &negative(), Generation(0))
            }
            Err(e) => reply.error(err(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.rel(ino).and_then(|p| self.find(&p)) {
            Ok((_, m, _)) => reply.attr(&TTL, &attr(ino.0, &m)),
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
        let made = self.rel(parent).and_then(|p| {
            self.copy_up(&p)?;
            let rel = p.join(name);
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(self.upper.join(&rel))?;
            self.entry(rel)
        });
        match made {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
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
        let made = self.rel(parent).and_then(|p| {
            self.copy_up(&p)?;
            let rel = p.join(name);
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode & !umask & 0o7777)
                .open(self.upper.join(&rel))?;
            let m = file.metadata()?;
            let backing = reply.open_backing(&file)?;
            Ok((attr(self.id(&rel)?, &m), file, backing))
        });
        match made {
            Ok((a, file, backing)) => {
                let (fh, backing) = self.register(file, backing);
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

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let opened = self.rel(ino).and_then(|rel| {
            if writes {
                self.copy_up(&rel)?;
            }
            let (path, _, _) = self.find(&rel)?;
            let file = fs::OpenOptions::new()
                .read(!writes || flags.0 & libc::O_ACCMODE == libc::O_RDWR)
                .write(writes)
                .open(path)?;
            let backing = reply.open_backing(&file)?;
            Ok((file, backing))
        });
        match opened {
            Ok((file, backing)) => {
                let (fh, backing) = self.register(file, backing);
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
        let gone = self.open.lock().ok().and_then(|mut o| o.remove(&fh.0));
        drop(gone);
        reply.ok();
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let fsync = args.first().is_some_and(|a| a == "--fsync");
    if fsync {
        args.remove(0);
    }
    if args.len() < 2 {
        eprintln!("usage: fuse_floor [--fsync] UPPER MOUNTPOINT [LOWER...]");
        std::process::exit(2);
    }
    let mut paths = HashMap::new();
    paths.insert(1, PathBuf::new());
    let mut ids = HashMap::new();
    ids.insert(PathBuf::new(), 1);
    let fs = Floor {
        upper: PathBuf::from(&args[0]),
        lowers: args[2..].iter().map(PathBuf::from).collect(),
        fsync,
        paths: Mutex::new(paths),
        ids: Mutex::new(ids),
        next_id: AtomicU64::new(2),
        open: Mutex::new(HashMap::new()),
        next_fh: AtomicU64::new(1),
    };
    let mut cfg = fuser::Config::default();
    // The session shape of layover's default on this machine.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cfg.n_threads = Some((cpus * 2).clamp(8, 32));
    cfg.clone_fd = true;
    cfg.mount_options = vec![
        fuser::MountOption::FSName("fuse_floor".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    if let Err(e) = fuser::Session::new(fs, &args[1], &cfg).and_then(|s| s.run()) {
        eprintln!("fuse_floor: {e}");
        std::process::exit(1);
    }
}
