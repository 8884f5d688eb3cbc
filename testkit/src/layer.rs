//! Building fixture layers: files, directories, links, special files, whiteouts in the
//! kernel's and the OCI formats, opaque markers, xattrs and times.

use crate::mode::{as_root, marker_prefix};
use crate::sys::{S_IFBLK, S_IFCHR, S_IFIFO, Ts, mknod, record_times, setxattr, utimensat};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// One fixture layer directory. Paths are relative to the layer root; parents are created as
/// needed (mode 0755). Methods return `&Self` so calls chain. They work as root (also on a
/// thread that has the test user's credentials, see [`crate::mode`]).
pub struct Layer {
    pub root: PathBuf,
    /// A short directory on the same file system (for binding sockets).
    pub(crate) scratch: PathBuf,
}

impl Layer {
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    fn parent(&self, rel: &Path) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            as_root(|| fs::create_dir_all(parent))
                .unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
        }
        p
    }

    pub fn dir(&self, rel: impl AsRef<Path>) -> &Self {
        let p = self.root.join(rel.as_ref());
        as_root(|| fs::create_dir_all(&p)).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        self
    }

    pub fn dir_mode(&self, rel: impl AsRef<Path>, mode: u32) -> &Self {
        self.dir(rel.as_ref()).chmod(rel, mode)
    }

    pub fn file(&self, rel: impl AsRef<Path>, content: impl AsRef<[u8]>) -> &Self {
        let p = self.parent(rel.as_ref());
        as_root(|| fs::write(&p, content)).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        self
    }

    pub fn file_mode(&self, rel: impl AsRef<Path>, content: impl AsRef<[u8]>, mode: u32) -> &Self {
        self.file(rel.as_ref(), content).chmod(rel, mode)
    }

    /// File with content, mode and owner.
    pub fn file_owned(
        &self,
        rel: impl AsRef<Path>,
        content: impl AsRef<[u8]>,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> &Self {
        self.file(rel.as_ref(), content)
            .chown(rel.as_ref(), uid, gid)
            .chmod(rel, mode)
    }

    /// chmod (follows symlinks: don't use on one).
    pub fn chmod(&self, rel: impl AsRef<Path>, mode: u32) -> &Self {
        let p = self.root.join(rel);
        as_root(|| fs::set_permissions(&p, fs::Permissions::from_mode(mode)))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        self
    }

    /// lchown.
    pub fn chown(&self, rel: impl AsRef<Path>, uid: u32, gid: u32) -> &Self {
        let p = self.root.join(rel);
        as_root(|| std::os::unix::fs::lchown(&p, Some(uid), Some(gid)))
            .unwrap_or_else(|e| panic!("lchown {}: {e}", p.display()));
        self
    }

    pub fn symlink(&self, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> &Self {
        let p = self.parent(rel.as_ref());
        as_root(|| std::os::unix::fs::symlink(target.as_ref(), &p))
            .unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
        self
    }

    /// A hard link `new` to the existing `existing` (both in this layer).
    pub fn hardlink(&self, existing: impl AsRef<Path>, new: impl AsRef<Path>) -> &Self {
        let p = self.parent(new.as_ref());
        as_root(|| fs::hard_link(self.root.join(existing), &p))
            .unwrap_or_else(|e| panic!("link {}: {e}", p.display()));
        self
    }

    pub fn fifo(&self, rel: impl AsRef<Path>) -> &Self {
        let p = self.parent(rel.as_ref());
        // As mkfifo(1): mode 0666, less the umask.
        as_root(|| mknod(&p, S_IFIFO | 0o666, 0, 0))
            .unwrap_or_else(|e| panic!("mkfifo {}: {e}", p.display()));
        self
    }

    /// A unix socket node. It is bound under a short path on the same file system (sun_path
    /// is 108 bytes) and renamed into place; the listener is closed, the node stays.
    pub fn socket(&self, rel: impl AsRef<Path>) -> &Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let p = self.parent(rel.as_ref());
        let tmp = self
            .scratch
            .join(format!(".s{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        as_root(|| {
            let _ = fs::remove_file(&tmp);
            let l = std::os::unix::net::UnixListener::bind(&tmp)
                .unwrap_or_else(|e| panic!("bind {}: {e}", tmp.display()));
            drop(l);
            fs::rename(&tmp, &p).unwrap_or_else(|e| panic!("rename socket {}: {e}", p.display()));
        });
        self
    }

    /// A device node: kind 'c' or 'b'.
    pub fn device(&self, rel: impl AsRef<Path>, kind: char, major: u32, minor: u32) -> &Self {
        let p = self.parent(rel.as_ref());
        let ftype = match kind {
            'c' => S_IFCHR,
            'b' => S_IFBLK,
            _ => panic!(
                "device {}: kind {kind:?} is neither 'c' nor 'b'",
                p.display()
            ),
        };
        // As mknod(1): mode 0666, less the umask.
        as_root(|| mknod(&p, ftype | 0o666, major, minor))
            .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
        self
    }

    /// [`Layer::device`], but in [`Mode::UserNs`](crate::mode::Mode::UserNs) (where only
    /// root of the initial user namespace may make a device node) checks that mknod fails
    /// with EPERM instead, says so, and goes on without the node.
    pub fn device_or_eperm(
        &self,
        rel: impl AsRef<Path>,
        kind: char,
        major: u32,
        minor: u32,
    ) -> &Self {
        if crate::mode::mode() != crate::mode::Mode::UserNs {
            return self.device(rel, kind, major, minor);
        }
        let r = self.try_device(rel.as_ref(), kind, major, minor);
        assert_eq!(
            r.as_ref().err().and_then(std::io::Error::raw_os_error),
            Some(rustix::io::Errno::PERM.raw_os_error()),
            "premise: mknod {kind} {major}/{minor} in a user namespace: {r:?}"
        );
        eprintln!(
            "mode userns: no device node {} ({kind} {major}/{minor}): mknod gives EPERM",
            rel.as_ref().display()
        );
        self
    }

    /// [`Layer::device`], giving the error (in a user namespace only a 0/0 character device
    /// may be made: EPERM).
    pub fn try_device(
        &self,
        rel: impl AsRef<Path>,
        kind: char,
        major: u32,
        minor: u32,
    ) -> std::io::Result<()> {
        let p = self.parent(rel.as_ref());
        let ftype = if kind == 'b' { S_IFBLK } else { S_IFCHR };
        as_root(|| mknod(&p, ftype | 0o666, major, minor))
    }

    /// The kernel's whiteout: a character device 0/0.
    pub fn whiteout(&self, rel: impl AsRef<Path>) -> &Self {
        self.device(rel, 'c', 0, 0)
    }

    /// An OCI/AUFS whiteout: an empty file `.wh.NAME` beside where NAME would be.
    pub fn wh_file(&self, rel: impl AsRef<Path>) -> &Self {
        let rel = rel.as_ref();
        let name = rel.file_name().expect("whiteout needs a name");
        let mut wh = OsString::from(".wh.");
        wh.push(name);
        let p = match rel.parent() {
            Some(parent) => parent.join(wh),
            None => PathBuf::from(wh),
        };
        self.file(p, b"")
    }

    /// An OCI/AUFS opaque marker: `DIR/.wh..wh..opq`.
    pub fn wh_opaque(&self, dir: impl AsRef<Path>) -> &Self {
        self.dir(dir.as_ref())
            .file(dir.as_ref().join(".wh..wh..opq"), b"")
    }

    /// Sets an xattr on the node itself (not following symlinks). The overlay's own markers
    /// (`trusted.overlay.*`) go where this run's mounts look for them
    /// ([`marker_prefix`]: `user.overlay.*` in the rootless modes).
    pub fn xattr(&self, rel: impl AsRef<Path>, name: &str, value: impl AsRef<[u8]>) -> &Self {
        let p = self.root.join(rel.as_ref());
        self.try_xattr(rel.as_ref(), name, value)
            .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
        self
    }

    /// [`Layer::xattr`], giving the error (a `trusted.*` xattr in a user namespace: EPERM).
    pub fn try_xattr(
        &self,
        rel: impl AsRef<Path>,
        name: &str,
        value: impl AsRef<[u8]>,
    ) -> std::io::Result<()> {
        let p = self.root.join(rel);
        let name = match name.strip_prefix("trusted.overlay.") {
            Some(rest) => format!("{}{rest}", marker_prefix()),
            None => name.to_string(),
        };
        as_root(|| setxattr(&p, &name, value.as_ref(), 0))
    }

    /// Marks a directory opaque the kernel's way (`trusted.overlay.opaque=y`; in the rootless
    /// modes `user.overlay.opaque=y`, see [`Layer::xattr`]).
    pub fn opaque(&self, dir: impl AsRef<Path>) -> &Self {
        self.dir(dir.as_ref())
            .xattr(dir, "trusted.overlay.opaque", b"y")
    }

    /// Marks a directory opaque for userxattr mounts (`user.overlay.opaque=y`).
    pub fn user_opaque(&self, dir: impl AsRef<Path>) -> &Self {
        self.dir(dir.as_ref())
            .xattr(dir, "user.overlay.opaque", b"y")
    }

    /// Sets atime and mtime (seconds and nanoseconds since the epoch), not following symlinks.
    pub fn times(&self, rel: impl AsRef<Path>, secs: i64, nsecs: u32) -> &Self {
        let p = self.root.join(rel);
        let t = Ts::At(secs, i64::from(nsecs));
        as_root(|| utimensat(&p, t, t, true))
            .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
        self
    }
}

/// Sets atime and mtime of everything under `dir` (itself included, symlinks not followed)
/// to `secs`: fixtures get one old, known time, so that a timestamp the overlay must
/// preserve can be told from one it set just now.
pub fn age_tree(dir: &Path, secs: i64) {
    let t = Ts::At(secs, 0);
    for (rel, _, _) in record_times(dir) {
        let p = dir.join(rel);
        utimensat(&p, t, t, true).unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
    }
}
