//! Conversions between the core's values and fuser's: numbers, errnos, attributes, times,
//! device numbers, the caller. The only place that turns one into the other.

use crate::error::Errno;
use crate::handle::Fh;
use crate::inode::Ino;
use crate::overlay::Caller;
use crate::sys::{self, Stat, TimeSpec};
use fuser::{FileAttr, FileHandle, FileType, FopenFlags, INodeNo, Request, TimeOrNow};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Open files: the page cache survives reopening (every change goes through us), and close
/// needs no FLUSH round trip (no locks or write-back state live in the daemon).
pub(super) const FILE_FLAGS: FopenFlags =
    FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

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

pub(super) fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.raw())
}

/// A timestamp from a layer; one that SystemTime cannot hold (a corrupt or hostile layer)
/// becomes the epoch rather than a panic.
pub(super) fn time(t: (i64, i64)) -> SystemTime {
    let (sec, nsec) = t;
    let nsec = Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64);
    let t = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

pub(super) fn timespec(t: TimeOrNow) -> TimeSpec {
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

pub(super) fn file_type(mode: u32) -> FileType {
    dtype(sys::dtype_of_mode(mode))
}

pub(super) fn dtype(d: u8) -> FileType {
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
pub(super) fn encode_dev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

pub(super) fn decode_dev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    sys::makedev(major, minor)
}

pub(super) fn attr(st: &Stat) -> FileAttr {
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
pub(super) fn negative_attr() -> FileAttr {
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

pub(super) fn caller(req: &Request, umask: u32) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask,
    }
}
