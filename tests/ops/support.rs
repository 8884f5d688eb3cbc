//! Support for the operation-level tests: a scratch directory under the system's temp dir
//! (removed when dropped), builders for layer trees (files, directories, symlinks, xattrs,
//! whiteouts of each format), the layer stacks the core is built from, and snapshots of
//! what is on disk. Syscalls go through rustix; nothing here needs root.

use layover::{Stack, XattrNs};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory of its own under `std::env::temp_dir()` ($TMPDIR), removed with everything
/// in it when dropped.
pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let root =
            std::env::temp_dir().join(format!("layover-ops-{}-{tag}-{n}", std::process::id()));
        if root.exists() {
            remove_tree(&root);
        }
        fs::create_dir(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        Scratch { root }
    }

    /// A new empty directory `name` in the scratch directory.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::create_dir(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_tree(&self.root);
    }
}

/// Removes a tree, first giving its owner access to every directory in it (the work
/// directory's `work` is made with mode 0, as the kernel makes it).
fn remove_tree(p: &Path) {
    fn open_up(p: &Path) {
        let Ok(md) = fs::symlink_metadata(p) else {
            return;
        };
        if md.is_dir() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700)); // best effort
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(p);
    if let Err(e) = fs::remove_dir_all(p)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("could not remove {}: {e}", p.display());
    }
}

/// A layer stack over `lowers` (top first), with upper and work when given, using the
/// `user.overlay.*` markers (what an ordinary user can set).
pub fn stack(lowers: &[&Path], upper_work: Option<(&Path, &Path)>) -> Stack {
    Stack {
        lowerdirs: lowers.iter().map(|p| p.to_path_buf()).collect(),
        upperdir: upper_work.map(|(u, _)| u.to_path_buf()),
        workdir: upper_work.map(|(_, w)| w.to_path_buf()),
        durable: false,
        xattr_ns: XattrNs::User,
        read_only: false,
        whiteout: None,
        ids: layover::idmap::IdMap::identity(),
        static_nlink: false,
        ino32: false,
    }
}

pub fn file(p: &Path, data: &str) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

pub fn file_mode(p: &Path, data: &str, mode: u32) {
    file(p, data);
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

pub fn dir(p: &Path) {
    fs::create_dir(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

pub fn symlink(target: &str, p: &Path) {
    std::os::unix::fs::symlink(target, p)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

pub fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::lgetxattr(p, name, &mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("getxattr {name} on {}: {e}", p.display()),
    }
}

/// Sets a file's atime and mtime to fixed times in the past (seconds since the epoch).
pub fn set_times(p: &Path, atime: u64, mtime: u64) {
    let t = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
    let f = fs::File::options()
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    f.set_times(
        fs::FileTimes::new()
            .set_accessed(t(atime))
            .set_modified(t(mtime)),
    )
    .unwrap_or_else(|e| panic!("utimes {}: {e}", p.display()));
}

/// The whiteout formats a lower layer can hold.
#[derive(Clone, Copy, Debug)]
pub enum Whiteout {
    /// A 0/0 character device (the kernel's; mknod needs CAP_MKNOD).
    Device,
    /// An OCI/AUFS `.wh.NAME` file.
    Aufs,
    /// A zero-size file with `user.overlay.whiteout`, in a directory marked
    /// `user.overlay.opaque=x`.
    Xattr,
}

impl Whiteout {
    /// Every format. All three can be made without privilege: since Linux 5.8, mknod of a
    /// 0/0 character device (and only that device) needs no CAP_MKNOD.
    pub const ALL: [Whiteout; 3] = [Whiteout::Device, Whiteout::Aufs, Whiteout::Xattr];

    /// Makes a whiteout of `name` in layer directory `dir`.
    pub fn make(self, dir: &Path, name: &str) {
        match self {
            Whiteout::Device => mknod_whiteout(&dir.join(name))
                .unwrap_or_else(|e| panic!("mknod 0/0 whiteout {name}: {e}")),
            Whiteout::Aufs => file(&dir.join(format!(".wh.{name}")), ""),
            Whiteout::Xattr => {
                set_xattr(dir, "user.overlay.opaque", b"x");
                let p = dir.join(name);
                file(&p, "");
                set_xattr(&p, "user.overlay.whiteout", b"");
            }
        }
    }
}

fn mknod_whiteout(p: &Path) -> rustix::io::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
}

/// Whether this process may make 0/0 whiteouts in `dir` (tried there): the format layover
/// then writes in an upper on that filesystem, else `.wh.NAME` files.
pub fn device_whiteouts_allowed(dir: &Path) -> bool {
    let p = dir.join("whiteout-probe");
    let ok = mknod_whiteout(&p).is_ok();
    let _ = fs::remove_file(&p); // absent when the probe failed
    ok
}

/// The effective uid and gid of this process, as the owner of a file it creates shows.
pub fn ids() -> (u32, u32) {
    let s = Scratch::new("ids");
    let p = s.root.join("f");
    file(&p, "");
    let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat: {e}"));
    (md.uid(), md.gid())
}

/// The format of the whiteout for `name` in upper directory `dir`: a 0/0 character device
/// (what the kernel writes) or a `.wh.NAME` file; None when there is none.
pub fn upper_whiteout(dir: &Path, name: &str) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(md) = fs::symlink_metadata(dir.join(name))
        && md.file_type().is_char_device()
        && md.rdev() == 0
    {
        return Some("0/0 device");
    }
    if fs::symlink_metadata(dir.join(format!(".wh.{name}"))).is_ok_and(|m| m.is_file()) {
        return Some(".wh. file");
    }
    None
}

/// Every object below `root` (not following symlinks): its relative path and what an
/// access that changes nothing cannot change either (type and mode, size, owner, mtime,
/// ctime, xattr names and values). atime is left out: reading a plain (unmounted) upper
/// may set it, as any reader's does.
pub fn snapshot(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, p: &Path, out: &mut Vec<String>) {
        let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        let mut xattrs: Vec<String> = Vec::new();
        let mut names = vec![0u8; 65536];
        if let Ok(n) = rustix::fs::llistxattr(p, &mut names) {
            for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
                let name = String::from_utf8_lossy(name).into_owned();
                let v = get_xattr(p, &name).unwrap_or_default();
                xattrs.push(format!("{name}={v:?}"));
            }
        }
        xattrs.sort();
        out.push(format!(
            "{} mode={:o} size={} owner={}:{} mtime={}.{} ctime={}.{} xattrs={xattrs:?}",
            p.strip_prefix(root).unwrap_or(p).display(),
            md.mode(),
            if md.is_dir() { 0 } else { md.size() },
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec(),
        ));
        if md.is_dir() {
            let mut entries: Vec<PathBuf> = fs::read_dir(p)
                .unwrap_or_else(|e| panic!("readdir {}: {e}", p.display()))
                .map(|e| e.unwrap_or_else(|e| panic!("readdir: {e}")).path())
                .collect();
            entries.sort();
            for e in entries {
                walk(root, &e, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// The names in a directory on disk, sorted.
pub fn names_on_disk(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", p.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("readdir: {e}"))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}
