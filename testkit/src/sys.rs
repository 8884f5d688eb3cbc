//! Syscalls std does not offer, for the tests.

use crate::run::os;
use crate::snapshot::unhex;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// The python3 the syscall helpers run: the system's own when present (a pyenv shim costs
/// ~200 ms per start, the system interpreter ~30 ms).
pub fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Prepended to every helper script: `libc` through ctypes, `chk` turning a -1 return into
/// OSError, and `fs(p)` for a path argument as bytes.
const PY_PRELUDE: &str = r#"
import sys, os, ctypes, errno, mmap, socket
libc = ctypes.CDLL(None, use_errno=True)
def chk(r):
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
def fs(p):
    return os.fsencode(p)
class TS(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
"#;

/// Appended: runs `main(args)` and prints "OK <result>" or "ERRNO <n>".
const PY_EPILOGUE: &str = r#"
try:
    r = main(sys.argv[1:])
    sys.stdout.write("OK" if r is None else "OK " + str(r))
except OSError as e:
    sys.stdout.write("ERRNO %d" % e.errno)
"#;

fn py_command(user: Option<(u32, u32)>, script: &str, args: &[&OsStr]) -> Command {
    let src = format!("{PY_PRELUDE}\n{script}\n{PY_EPILOGUE}");
    let mut c = match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(python3());
            c
        }
        None => Command::new(python3()),
    };
    c.args([os("-I"), os("-S"), os("-c"), os(&src)]).args(args);
    c
}

/// Runs a python3 helper script that defines `main(args)` (args are the strings of `args`);
/// Ok(what main returned, as text; "" for None) or Err(the errno of the OSError it raised).
/// Any other failure of the script fails the test.
pub fn py(script: &str, args: &[&OsStr]) -> io::Result<String> {
    py_run(None, script, args)
}

/// [`py`] as another user (setpriv --reuid/--regid --clear-groups).
pub fn py_as(uid: u32, gid: u32, script: &str, args: &[&OsStr]) -> io::Result<String> {
    py_run(Some((uid, gid)), script, args)
}

fn py_run(user: Option<(u32, u32)>, script: &str, args: &[&OsStr]) -> io::Result<String> {
    let out = py_command(user, script, args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", python3()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Some(rest) = stdout.strip_prefix("OK") {
        return Ok(rest.strip_prefix(' ').unwrap_or(rest).to_owned());
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

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// renameat2(AT_FDCWD, from, AT_FDCWD, to, flags).
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    py(
        "def main(a):\n    chk(libc.renameat2(-100, fs(a[0]), -100, fs(a[1]), int(a[2])))",
        &[from.as_os_str(), to.as_os_str(), os(&flags.to_string())],
    )
    .map(drop)
}

/// mknod(path, mode (type and permission bits), makedev(major, minor)).
pub fn mknod(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    py(
        "def main(a):\n    os.mknod(a[0], int(a[1]), os.makedev(int(a[2]), int(a[3])))",
        &[
            path.as_os_str(),
            os(&mode.to_string()),
            os(&major.to_string()),
            os(&minor.to_string()),
        ],
    )
    .map(drop)
}

/// Opens `path` O_RDWR and calls fallocate(fd, mode, offset, len).
pub fn fallocate(path: &Path, mode: i32, offset: i64, len: i64) -> io::Result<()> {
    py(
        "def main(a):\n    fd = os.open(a[0], os.O_RDWR)\n    try:\n        \
         chk(libc.fallocate(fd, int(a[1]), ctypes.c_long(int(a[2])), ctypes.c_long(int(a[3]))))\n    \
         finally:\n        os.close(fd)",
        &[
            path.as_os_str(),
            os(&mode.to_string()),
            os(&offset.to_string()),
            os(&len.to_string()),
        ],
    )
    .map(drop)
}

/// Opens `path` read-only and returns lseek(fd, offset, whence) (SEEK_DATA = 3, SEEK_HOLE = 4).
pub fn lseek(path: &Path, offset: i64, whence: i32) -> io::Result<i64> {
    py(
        "def main(a):\n    fd = os.open(a[0], os.O_RDONLY)\n    try:\n        \
         return os.lseek(fd, int(a[1]), int(a[2]))\n    finally:\n        os.close(fd)",
        &[
            path.as_os_str(),
            os(&offset.to_string()),
            os(&whence.to_string()),
        ],
    )
    .map(|s| s.trim().parse().expect("lseek result"))
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
    py(
        "def main(a):\n    s = os.open(a[0], os.O_RDONLY)\n    d = os.open(a[1], os.O_WRONLY | os.O_CREAT, 0o644)\n    \
         oi, oo, n, t = int(a[2]), int(a[3]), int(a[4]), 0\n    while t < n:\n        \
         r = os.copy_file_range(s, d, n - t, oi + t, oo + t)\n        if r == 0:\n            break\n        \
         t += r\n    os.close(s)\n    os.close(d)\n    return t",
        &[
            src.as_os_str(),
            dst.as_os_str(),
            os(&off_in.to_string()),
            os(&off_out.to_string()),
            os(&len.to_string()),
        ],
    )
    .map(|s| s.trim().parse().expect("copy_file_range result"))
}

/// One timestamp for [`utimensat`].
#[derive(Clone, Copy, Debug)]
pub enum Ts {
    Now,
    Omit,
    At(i64, i64),
}

impl Ts {
    fn pair(self) -> (i64, i64) {
        match self {
            Ts::Now => (0, (1 << 30) - 1),
            Ts::Omit => (0, (1 << 30) - 2),
            Ts::At(s, ns) => (s, ns),
        }
    }
}

/// utimensat(AT_FDCWD, path, [atime, mtime], nofollow ? AT_SYMLINK_NOFOLLOW : 0).
pub fn utimensat(path: &Path, atime: Ts, mtime: Ts, nofollow: bool) -> io::Result<()> {
    let (a, m) = (atime.pair(), mtime.pair());
    py(
        "def main(a):\n    v = [int(x) for x in a[1:6]]\n    \
         ts = (TS * 2)(TS(v[0], v[1]), TS(v[2], v[3]))\n    \
         chk(libc.utimensat(-100, fs(a[0]), ts, 0x100 if v[4] else 0))",
        &[
            path.as_os_str(),
            os(&a.0.to_string()),
            os(&a.1.to_string()),
            os(&m.0.to_string()),
            os(&m.1.to_string()),
            os(if nofollow { "1" } else { "0" }),
        ],
    )
    .map(drop)
}

/// Opens `path` O_RDWR, maps it shared and writable, writes `data` at `offset` through the
/// mapping (within the file's size), msyncs and unmaps.
pub fn mmap_write(path: &Path, offset: usize, data: &[u8]) -> io::Result<()> {
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    py(
        "def main(a):\n    fd = os.open(a[0], os.O_RDWR)\n    \
         m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)\n    \
         d = bytes.fromhex(a[2])\n    o = int(a[1])\n    m[o:o + len(d)] = d\n    m.flush()\n    \
         m.close()\n    os.close(fd)",
        &[path.as_os_str(), os(&offset.to_string()), os(&hex)],
    )
    .map(drop)
}

/// Reads `path` through a shared read-only mapping (the whole file).
pub fn mmap_read(path: &Path) -> io::Result<Vec<u8>> {
    py(
        "def main(a):\n    fd = os.open(a[0], os.O_RDONLY)\n    \
         m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)\n    d = m[:].hex()\n    \
         m.close()\n    os.close(fd)\n    return d",
        &[path.as_os_str()],
    )
    .map(|h| unhex(h.trim().as_bytes()))
}

/// O_TMPFILE in `dir` (O_RDWR, mode 0600): writes `data`, then, when `link_as` is given,
/// gives it that name with linkat(fd, "", AT_FDCWD, link_as, AT_EMPTY_PATH). Returns the
/// file's nlink before the link, as text.
pub fn o_tmpfile(dir: &Path, data: &[u8], link_as: Option<&Path>) -> io::Result<String> {
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let link = link_as.map_or_else(OsString::new, |p| p.as_os_str().to_owned());
    py(
        "def main(a):\n    fd = os.open(a[0], os.O_TMPFILE | os.O_RDWR, 0o600)\n    \
         try:\n        os.write(fd, bytes.fromhex(a[1]))\n        n = os.fstat(fd).st_nlink\n        \
         if a[2]:\n            chk(libc.linkat(fd, b'', -100, fs(a[2]), 0x1000))\n        return n\n    \
         finally:\n        os.close(fd)",
        &[dir.as_os_str(), os(&hex), &link],
    )
}

/// setxattr (not following symlinks); flags 0, XATTR_CREATE (1) or XATTR_REPLACE (2).
pub fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    py(
        "def main(a):\n    os.setxattr(a[0], a[1], bytes.fromhex(a[2]), int(a[3]), follow_symlinks=False)",
        &[path.as_os_str(), os(name), os(&hex), os(&flags.to_string())],
    )
    .map(drop)
}

/// removexattr (not following symlinks).
pub fn removexattr(path: &Path, name: &str) -> io::Result<()> {
    py(
        "def main(a):\n    os.removexattr(a[0], a[1], follow_symlinks=False)",
        &[path.as_os_str(), os(name)],
    )
    .map(drop)
}

/// getxattr (not following symlinks).
pub fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    py(
        "def main(a):\n    return os.getxattr(a[0], a[1], follow_symlinks=False).hex()",
        &[path.as_os_str(), os(name)],
    )
    .map(|h| unhex(h.trim().as_bytes()))
}

/// listxattr (not following symlinks), sorted.
pub fn listxattr(path: &Path) -> io::Result<Vec<String>> {
    py(
        "def main(a):\n    return '\\n'.join(sorted(os.listxattr(a[0], follow_symlinks=False)))",
        &[path.as_os_str()],
    )
    .map(|s| s.lines().map(str::to_owned).collect())
}
