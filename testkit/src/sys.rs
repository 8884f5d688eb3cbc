//! Syscalls std does not offer, called directly through safe APIs (rustix; nix for
//! truncate(2) by path and unshare(CLONE_FS)), and calls made as another user or under another
//! umask, on a thread of their own.
//!
//! mmap is the exception: every mmap API in Rust is `unsafe` (a mapping of a file that
//! changes underneath is not memory-safe), and unsafe code is forbidden here, so
//! [`mmap_write`] and [`mmap_read`] run a short python3 child that maps the file.

use crate::run::os;
use crate::snapshot::unhex;
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, SeekFrom, Timespec, Timestamps};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// File types for [`mknod`]'s mode.
pub const S_IFIFO: u32 = 0o010_000;
pub const S_IFCHR: u32 = 0o020_000;
pub const S_IFBLK: u32 = 0o060_000;
pub const S_IFREG: u32 = 0o100_000;

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// renameat2(AT_FDCWD, from, AT_FDCWD, to, flags).
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let flags = rustix::fs::RenameFlags::from_bits_retain(flags);
    Ok(rustix::fs::renameat_with(CWD, from, CWD, to, flags)?)
}

/// mknod(path, mode (type and permission bits), makedev(major, minor)).
pub fn mknod(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let dev = rustix::fs::makedev(major, minor);
    Ok(rustix::fs::mknodat(
        CWD,
        path,
        FileType::from_raw_mode(mode),
        Mode::from_raw_mode(mode),
        dev,
    )?)
}

/// truncate(2): `path` to `len` bytes, by name (no open file).
pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    Ok(nix::unistd::truncate(path, len as i64)?)
}

/// Opens `path` O_RDWR and calls fallocate(fd, mode, offset, len).
pub fn fallocate(path: &Path, mode: i32, offset: i64, len: i64) -> io::Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
    Ok(rustix::fs::fallocate(&f, flags, offset as u64, len as u64)?)
}

/// Opens `path` read-only and returns lseek(fd, offset, whence) (SEEK_DATA = 3, SEEK_HOLE = 4).
pub fn lseek(path: &Path, offset: i64, whence: i32) -> io::Result<i64> {
    let f = File::open(path)?;
    let pos = match whence {
        0 => SeekFrom::Start(offset as u64),
        1 => SeekFrom::Current(offset),
        2 => SeekFrom::End(offset),
        3 => SeekFrom::Data(offset as u64),
        4 => SeekFrom::Hole(offset as u64),
        _ => panic!("lseek: unknown whence {whence}"),
    };
    Ok(rustix::fs::seek(&f, pos)? as i64)
}

/// copy_file_range from `src` at `off_in` to `dst` (opened O_WRONLY|O_CREAT, 0644) at
/// `off_out`, `len` bytes, looping until done or a 0 return; the bytes copied.
pub fn copy_file_range(
    src: &Path,
    off_in: u64,
    dst: &Path,
    off_out: u64,
    len: u64,
) -> io::Result<u64> {
    let s = File::open(src)?;
    let d = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(dst)?;
    let (mut oi, mut oo, mut done) = (off_in, off_out, 0u64);
    while done < len {
        let n = rustix::fs::copy_file_range(
            &s,
            Some(&mut oi),
            &d,
            Some(&mut oo),
            (len - done) as usize,
        )?;
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(done)
}

/// One timestamp for [`utimensat`].
#[derive(Clone, Copy, Debug)]
pub enum Ts {
    Now,
    Omit,
    At(i64, i64),
}

impl Ts {
    fn timespec(self) -> Timespec {
        let (tv_sec, tv_nsec) = match self {
            Ts::Now => (0, rustix::fs::UTIME_NOW),
            Ts::Omit => (0, rustix::fs::UTIME_OMIT),
            Ts::At(s, ns) => (s, ns),
        };
        Timespec { tv_sec, tv_nsec }
    }
}

/// utimensat(AT_FDCWD, path, [atime, mtime], nofollow ? AT_SYMLINK_NOFOLLOW : 0).
pub fn utimensat(path: &Path, atime: Ts, mtime: Ts, nofollow: bool) -> io::Result<()> {
    let times = Timestamps {
        last_access: atime.timespec(),
        last_modification: mtime.timespec(),
    };
    let flags = if nofollow {
        AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::empty()
    };
    Ok(rustix::fs::utimensat(CWD, path, &times, flags)?)
}

/// O_TMPFILE in `dir` (O_RDWR, mode 0600): writes `data`, then, when `link_as` is given,
/// gives it that name with linkat(fd, "", AT_FDCWD, link_as, AT_EMPTY_PATH). Returns the
/// file's nlink before the link.
pub fn o_tmpfile(dir: &Path, data: &[u8], link_as: Option<&Path>) -> io::Result<u64> {
    let fd = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut f = File::from(fd);
    f.write_all(data)?;
    let nlink = f
        .metadata()
        .map(|m| std::os::unix::fs::MetadataExt::nlink(&m))?;
    if let Some(to) = link_as {
        rustix::fs::linkat(&f, "", CWD, to, AtFlags::EMPTY_PATH)?;
    }
    Ok(nlink)
}

/// setxattr (not following symlinks); flags 0, XATTR_CREATE (1) or XATTR_REPLACE (2).
pub fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
    Ok(rustix::fs::lsetxattr(path, name, value, flags)?)
}

/// removexattr (not following symlinks).
pub fn removexattr(path: &Path, name: &str) -> io::Result<()> {
    Ok(rustix::fs::lremovexattr(path, name)?)
}

/// getxattr (not following symlinks).
pub fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    loop {
        let size = rustix::fs::lgetxattr_query(path, name)?;
        // One byte more than asked for tells a value that grew in between from one that fits.
        let mut buf = vec![0u8; size + 1];
        let n = rustix::fs::lgetxattr(path, name, &mut buf[..])?;
        if n <= size {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// listxattr (not following symlinks), sorted.
pub fn listxattr(path: &Path) -> io::Result<Vec<String>> {
    loop {
        let size = rustix::fs::llistxattr_query(path)?;
        let mut buf = vec![0u8; size + 1];
        let n = rustix::fs::llistxattr(path, &mut buf[..])?;
        if n <= size {
            let mut names: Vec<String> = buf[..n]
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            names.sort();
            return Ok(names);
        }
    }
}

/// Runs `f` on a thread of its own, with its own umask and working directory
/// (unshare(CLONE_FS): the process's umask is never touched), and, given `user` (uid, gid),
/// as that user with no supplementary groups: the kernel's setresuid/setresgid/setgroups
/// change one thread's credentials (glibc's change every thread's; rustix calls the
/// kernel's). The thread then ends: it cannot become root again.
fn on_own_thread<R: Send>(user: Option<(u32, u32)>, umask: u32, f: impl FnOnce() -> R + Send) -> R {
    // A thread started by one with the test user's credentials has them too; to become
    // another user it becomes root again first (see crate::mode).
    let from_user = crate::mode::is_user() && user.is_some();
    std::thread::scope(|s| {
        let t = s.spawn(move || {
            if from_user {
                crate::mode::leave_user_inherited();
            }
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                .unwrap_or_else(|e| panic!("unshare(CLONE_FS): {e}"));
            rustix::process::umask(Mode::from_raw_mode(umask));
            if let Some((uid, gid)) = user {
                let (uid, gid) = (
                    rustix::process::Uid::from_raw(uid),
                    rustix::process::Gid::from_raw(gid),
                );
                rustix::thread::set_thread_groups(&[])
                    .unwrap_or_else(|e| panic!("setgroups([]): {e}"));
                rustix::thread::set_thread_res_gid(gid, gid, gid)
                    .unwrap_or_else(|e| panic!("setresgid({gid:?}): {e}"));
                rustix::thread::set_thread_res_uid(uid, uid, uid)
                    .unwrap_or_else(|e| panic!("setresuid({uid:?}): {e}"));
            }
            f()
        });
        t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Runs `f` as uid/gid (no supplementary groups) under `umask`, on a thread of its own (see
/// [`with_umask`]): what `setpriv --reuid --regid --clear-groups` does for a process.
pub fn as_user<R: Send>(uid: u32, gid: u32, umask: u32, f: impl FnOnce() -> R + Send) -> R {
    on_own_thread(Some((uid, gid)), umask, f)
}

/// Runs `f` under `umask` on a thread of its own, so that the process's umask (which every
/// other test shares) is not touched.
pub fn with_umask<R: Send>(umask: u32, f: impl FnOnce() -> R + Send) -> R {
    on_own_thread(None, umask, f)
}

/// The python3 the mmap helpers run: the system's own when present (a pyenv shim costs
/// ~200 ms per start, the system interpreter ~30 ms).
fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Runs a python3 `script` on `args`; it prints "OK <result>" or "ERRNO <n>". Any other
/// outcome fails the test.
fn python(script: &str, args: &[&OsStr]) -> io::Result<String> {
    let out = Command::new(python3())
        .args([os("-I"), os("-S"), os("-c"), os(script)])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", python3()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Some(rest) = stdout.strip_prefix("OK") {
        return Ok(rest.trim().to_owned());
    }
    if let Some(n) = stdout
        .strip_prefix("ERRNO ")
        .and_then(|n| n.trim().parse::<i32>().ok())
    {
        return Err(io::Error::from_raw_os_error(n));
    }
    panic!(
        "python helper failed ({}):\nscript:\n{script}\nargs: {args:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The mmap helper: `python3 -c MMAP_PY write PATH OFFSET HEX` or `... read PATH`.
const MMAP_PY: &str = r#"
import sys, os, mmap
def main(a):
    if a[0] == "write":
        fd = os.open(a[1], os.O_RDWR)
        m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        d = bytes.fromhex(a[3])
        o = int(a[2])
        m[o:o + len(d)] = d
        m.flush()
        m.close()
        os.close(fd)
        return ""
    fd = os.open(a[1], os.O_RDONLY)
    m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
    d = m[:].hex()
    m.close()
    os.close(fd)
    return d
try:
    sys.stdout.write("OK " + main(sys.argv[1:]))
except OSError as e:
    sys.stdout.write("ERRNO %d" % e.errno)
"#;

/// Opens `path` O_RDWR, maps it shared and writable, writes `data` at `offset` through the
/// mapping (within the file's size), msyncs and unmaps (in a python3 child: see the module
/// comment).
pub fn mmap_write(path: &Path, offset: usize, data: &[u8]) -> io::Result<()> {
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    python(
        MMAP_PY,
        &[
            os("write"),
            path.as_os_str(),
            os(&offset.to_string()),
            os(&hex),
        ],
    )
    .map(drop)
}

/// Reads `path` through a shared read-only mapping (the whole file), in a python3 child.
pub fn mmap_read(path: &Path) -> io::Result<Vec<u8>> {
    python(MMAP_PY, &[os("read"), path.as_os_str()]).map(|h| unhex(h.as_bytes()))
}

/// (atime, mtime) in nanoseconds since the epoch of `path` and of everything below it
/// (relative paths; "" is `path` itself), not following symlinks.
pub(crate) fn record_times(root: &Path) -> Vec<(PathBuf, Ts, Ts)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let p = root.join(&rel);
        let md =
            std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        out.push((
            rel.clone(),
            Ts::At(md.atime(), md.atime_nsec()),
            Ts::At(md.mtime(), md.mtime_nsec()),
        ));
        if md.is_dir() {
            let rd =
                std::fs::read_dir(&p).unwrap_or_else(|e| panic!("readdir {}: {e}", p.display()));
            todo.extend(rd.map(|e| rel.join(e.expect("readdir entry").file_name())));
        }
    }
    out
}
