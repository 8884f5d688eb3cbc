//! The overlay semantics. Every operation takes kernel-facing inode numbers and names and
//! returns `FsResult<plain data>`; nothing here knows about fuser's types.
//!
//! Submodules: `lookup` (finding a name in the layers, getattr), `readdir` (merged listings),
//! `xattr`, `io` (open, read, write, statfs), `copy_up`, `create`, `remove`, `rename`,
//! `setattr`.

mod copy_up;
mod create;
mod io;
mod lookup;
mod readdir;
mod remove;
mod rename;
mod setattr;
pub mod xattr;

pub use io::OpenResult;

pub use create::NewNode;
pub use setattr::SetAttr;

use crate::config::{Stack, XattrNs};
use crate::dircache::DirCache;
use crate::error::{Errno, FsResult, StartupError};
use crate::handle::HandleTable;
use crate::inode::{
    Inode, InodeState, InodeTable, LinkNames, Numbering, Presence, PresenceList, ROOT_INO,
};
use crate::layer::{LayerIdx, Layers};
use crate::sys::{self, Stat};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// What the daemon found it may do, probed once at start.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Whiteouts are written as 0/0 character devices and opaque directories marked by xattr
    /// (else `.wh.NAME` files and `.wh..wh..opq` markers): `work::probe` decides.
    pub whiteout_dev: bool,
    /// renameat2(RENAME_WHITEOUT) works in the upper.
    pub rename_whiteout: bool,
    /// Permission bits do not stop the daemon on the upper's objects (CAP_DAC_OVERRIDE: root,
    /// or root in a user namespace over its own files); an ordinary user's daemon works around
    /// them where it owns the object, as the kernel's mounter credentials need not.
    pub overrides_modes: bool,
}

/// Who is asking: the caller's credentials, for ownership of new objects.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The caller's umask: ours to apply (POSIX ACLs are on), unless the parent directory
    /// has a default ACL, which the upper's filesystem then applies instead.
    pub umask: u32,
}

/// A looked-up object: its inode (one lookup reference taken) and its attributes.
pub struct Entry {
    pub inode: Arc<Inode>,
    pub attr: Stat,
}

/// The kernel's caches of what we serve, which we must invalidate when the real objects
/// change under an inode (set once the session exists).
pub trait KernelCache: Send + Sync {
    /// Drop the cached attributes of `ino`.
    fn inval_attr(&self, ino: u64);
    /// Drop the cached entry `name` in directory `parent`. Must not block: it may be called
    /// while the kernel holds the directory's lock for the request we are serving.
    fn inval_entry(&self, parent: u64, name: &[u8]);
}

pub struct Overlay {
    pub cfg: Stack,
    pub layers: Layers,
    /// The work directory (O_PATH), when there is an upper.
    work: Option<OwnedFd>,
    pub inodes: InodeTable,
    pub handles: HandleTable,
    dirs: DirCache,
    pub caps: Caps,
    temp_seq: AtomicU64,
    /// The daemon's euid and egid: what the upper's filesystem gives what we create.
    daemon_ids: (u32, u32),
    kernel_cache: std::sync::OnceLock<Box<dyn KernelCache>>,
    link_names: LinkNames,
    /// The last attributes of detached objects, until the kernel forgets them.
    detached_attrs: dashmap::DashMap<u64, Stat>,
    io_modes: crate::handle::IoModes,
    /// The kernel granted FUSE passthrough (decided at INIT).
    passthrough: std::sync::atomic::AtomicBool,
    /// The kernel's writeback cache is on (decided at INIT).
    writeback: std::sync::atomic::AtomicBool,
    /// Copy-up may try a reflink (FICLONE); cleared when the filesystems cannot.
    reflink: std::sync::atomic::AtomicBool,
    /// "#layover.PID.", the prefix of temporary names in the work directory (made on first
    /// use, after the daemon has forked).
    temp_prefix: std::sync::OnceLock<String>,
    /// Opens the user's own files whatever their mode, for an ordinary user's daemon.
    opener: Option<crate::opener::Opener>,
}

/// The whiteout in the work directory that upper whiteouts are hard links to.
const SHARED_WHITEOUT: &CStr = c"#layover-whiteout";

/// Turns a name into a C string (a NUL byte inside is invalid).
pub fn cname(name: &[u8]) -> FsResult<CString> {
    CString::new(name).map_err(|_| Errno::EINVAL)
}

impl Overlay {
    /// `nofile`: the open-file limit the daemon runs with (bounds the directory fd cache).
    /// `opener`: an ordinary user's way to read its own unreadable files (see `opener`).
    pub fn new(
        cfg: Stack,
        nofile: u64,
        privilege: &crate::privilege::Privilege,
        opener: Option<crate::opener::Opener>,
    ) -> Result<Overlay, StartupError> {
        let clone = privilege.clones_mounts();
        let (upper, work) = match (&cfg.upperdir, &cfg.workdir) {
            (Some(u), Some(w)) => {
                let (ufd, wfd) = crate::layer::open_upper_and_work(u, w, clone).map_err(|e| {
                    StartupError::new(format!("cannot open upperdir '{}': {e}", u.display()))
                })?;
                let work = work::prepare(w, wfd, privilege)?;
                (Some((u.as_path(), ufd)), Some(work))
            }
            _ => (None, None),
        };
        let layers = Layers::open(upper, &cfg.lowerdirs, clone).map_err(|(p, e)| {
            StartupError::new(format!("cannot open layer '{}': {e}", p.display()))
        })?;
        let devs: Vec<u64> = layers.all.iter().map(|l| l.dev).collect();
        let top = layers.get(0).map_err(|_| StartupError::new("no layers"))?;
        let root_stat = sys::fstat(top.root_fd())
            .map_err(|e| StartupError::new(format!("cannot stat '{}': {e}", top.path.display())))?;
        let caps = match (&work, layers.has_upper) {
            (Some(w), true) => work::probe(w.as_fd(), top.root_fd(), cfg.whiteout, privilege)?,
            _ => Caps {
                whiteout_dev: false,
                rename_whiteout: false,
                overrides_modes: privilege.overrides_modes(),
            },
        };
        let root_layers: PresenceList = (0..layers.len())
            .map(|l| Presence {
                layer: l as LayerIdx,
                xwhiteouts: false,
            })
            .collect::<Vec<_>>()
            .into();
        let root = Inode::new(
            ROOT_INO,
            libc::S_IFDIR,
            InodeState {
                parent: None,
                name: Box::new([]),
                layers: root_layers,
                real: (root_stat.dev, root_stat.ino),
                detached: false,
            },
        );
        let inodes = InodeTable::new(Numbering::new(&devs), root);
        let ov = Overlay {
            cfg,
            layers,
            work,
            inodes,
            handles: HandleTable::default(),
            dirs: DirCache::new(nofile),
            caps,
            temp_seq: AtomicU64::new(0),
            daemon_ids: (sys::geteuid(), sys::getegid()),
            kernel_cache: std::sync::OnceLock::new(),
            link_names: LinkNames::default(),
            detached_attrs: dashmap::DashMap::new(),
            io_modes: crate::handle::IoModes::default(),
            passthrough: std::sync::atomic::AtomicBool::new(false),
            reflink: std::sync::atomic::AtomicBool::new(true),
            writeback: std::sync::atomic::AtomicBool::new(false),
            temp_prefix: std::sync::OnceLock::new(),
            opener,
        };
        ov.refresh_root_layers();
        Ok(ov)
    }

    /// Called once at INIT when the kernel grants passthrough.
    pub fn enable_passthrough(&self) {
        self.passthrough
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The kernel caches writes (FUSE_WRITEBACK_CACHE, negotiated at INIT without
    /// passthrough): it may read through a write-only open to fill a page, so files are
    /// opened for reading too.
    pub fn enable_writeback(&self) {
        self.writeback
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_kernel_cache(&self, k: Box<dyn KernelCache>) {
        let _ = self.kernel_cache.set(k); // set once, at mount
    }

    /// The kernel's cached attributes of `ino` are stale (its real object changed under it:
    /// copy-up changes nlink and ctime, and a directory's nlink when it becomes merged).
    pub fn invalidate_attr(&self, ino: u64) {
        if let Some(k) = self.kernel_cache.get() {
            k.inval_attr(ino);
        }
    }

    /// After `inode`, a lower file with several links, was copied up through one name: the
    /// other names the kernel knows (it may use any of them for the same inode, and FUSE does
    /// not tell us which) are linked to the copy in the upper, so that whatever name was
    /// written shows the write, as with the kernel's index=on. A name that cannot be linked
    /// is dropped from the kernel's cache and then shows the lower file again (index=off).
    fn link_lower_names(&self, inode: &Arc<Inode>) {
        let names = self.link_names.names(inode.ino);
        let st = inode.state();
        let copied = (st.parent.as_ref().map_or(ROOT_INO, |p| p.ino), &*st.name);
        for (p, n) in names.iter().filter(|(p, n)| (*p, &**n) != copied) {
            let linked = self
                .inode(*p)
                .and_then(|parent| self.link_into_upper(inode, &parent, n));
            if let Err(e) = linked {
                log::debug!(
                    "copy-up: hard link {n:?} in {p} not kept ({e}); it shows the lower file"
                );
                if let Some(k) = self.kernel_cache.get() {
                    k.inval_entry(*p, n);
                }
            }
        }
    }

    /// Links the upper copy of `inode` as `name` in `parent` (copied up first).
    fn link_into_upper(
        &self,
        inode: &Arc<Inode>,
        parent: &Arc<Inode>,
        name: &[u8],
    ) -> FsResult<()> {
        self.copy_up(parent)?;
        let (sdir, sname, _) = self.locate(inode)?;
        let udir = self.dir_fd(parent, self.layers.upper_idx()?)?;
        self.keeping_times(parent, || {
            sys::linkat(sdir.as_fd(), &sname, udir.as_fd(), &cname(name)?)
        })
    }

    /// Runs `f`, which adds a name to directory `dir` as a side effect of copy-up, and puts
    /// the directory's timestamps back: copy-up must not disturb them. The kernel's cached
    /// attributes of `dir` are dropped only when its size, blocks or link count changed.
    fn keeping_times<T>(&self, dir: &Arc<Inode>, f: impl FnOnce() -> FsResult<T>) -> FsResult<T> {
        let (pdir, pname, _) = self.locate(dir)?;
        let before = sys::fstatat(pdir.as_fd(), &pname)?;
        let r = f()?;
        let (a, m) = (
            sys::TimeSpec::Set(before.atime.0, before.atime.1),
            sys::TimeSpec::Set(before.mtime.0, before.mtime.1),
        );
        if let Err(e) = sys::utimensat(pdir.as_fd(), &pname, a, m) {
            log::warn!("copy-up: could not restore a directory's times: {e}");
        }
        let changed = sys::fstatat(pdir.as_fd(), &pname).map_or(true, |after| {
            (after.size, after.blocks, after.nlink) != (before.size, before.blocks, before.nlink)
        });
        if changed {
            self.invalidate_attr(dir.ino);
        }
        Ok(r)
    }

    pub fn xattr_ns(&self) -> XattrNs {
        self.cfg.xattr_ns
    }

    pub fn inode(&self, ino: u64) -> FsResult<Arc<Inode>> {
        self.inodes.get(ino).ok_or(Errno::ESTALE)
    }

    /// The `O_PATH` fd of directory `dir` in `layer` (which must hold it).
    pub fn dir_fd(&self, dir: &Arc<Inode>, layer: LayerIdx) -> FsResult<Arc<OwnedFd>> {
        if dir.ino == ROOT_INO {
            return Ok(Arc::clone(&self.layers.get(layer)?.root));
        }
        if let Some(fd) = self.dirs.get(dir.ino, layer) {
            return Ok(fd);
        }
        let (parent, name) = dir.with_state(|s| (s.parent.clone(), cname(&s.name)));
        let parent = parent.ok_or(Errno::ESTALE)?;
        let pfd = self.dir_fd(&parent, layer)?;
        let fd = Arc::new(sys::openat(
            pfd.as_fd(),
            &name?,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?);
        self.dirs.insert(dir.ino, layer, Arc::clone(&fd));
        Ok(fd)
    }

    /// Where the top object of `inode` is: (its directory's fd in the top layer, its name,
    /// the top layer). The root is (layer root, ".").
    pub fn locate(&self, inode: &Arc<Inode>) -> FsResult<(Arc<OwnedFd>, CString, Presence)> {
        // Only what is needed is copied out of the state (this runs on every getattr).
        let (detached, top, parent, name) =
            inode.with_state(|s| (s.detached, s.top(), s.parent.clone(), cname(&s.name)));
        if detached {
            return Err(Errno::ENOENT);
        }
        let top = top.ok_or(Errno::ESTALE)?;
        match parent {
            None => Ok((
                Arc::clone(&self.layers.get(top.layer)?.root),
                CString::from(sys::DOT),
                top,
            )),
            Some(parent) => Ok((self.dir_fd(&parent, top.layer)?, name?, top)),
        }
    }

    /// The name `name` in `parent` of `inode` is gone (unlink, rmdir, rename over it): if the
    /// inode was reached by that name, it moves to another name it is known by, or is
    /// detached (reachable only through its open handles).
    /// `last`: the object's attributes just before, kept for a detached object that nothing
    /// open can be asked about any more (an open directory or fifo: neither has a handle here).
    pub(super) fn name_removed(&self, inode: &Inode, parent: u64, name: &[u8], last: Option<Stat>) {
        let other = self.link_names.unlink(inode.ino, parent, name);
        let st = inode.state();
        let was_ours =
            st.parent.as_ref().map_or(ROOT_INO, |p| p.ino) == parent && *st.name == *name;
        if !was_ours {
            return;
        }
        let moved = other.and_then(|(p, n)| self.inode(p).ok().map(|pi| (pi, n)));
        inode.update(|s| match moved {
            Some((pi, n)) => {
                s.parent = Some(pi);
                s.name = n;
            }
            None => {
                s.detached = true;
                // That was its last link: the filesystem may give its inode number to a new
                // object before the kernel forgets this inode, and the new object must not be
                // taken for this one (it would inherit a detached state and stale names).
                if last.is_some_and(|l| l.is_dir() || l.nlink <= 1) {
                    s.real = (u64::MAX, inode.ino);
                }
            }
        });
        if inode.is_detached()
            && let Some(last) = last
        {
            self.detached_attrs
                .insert(inode.ino, Stat { nlink: 0, ..last });
        }
    }

    /// The name of `inode` changed from (`parent`, `name`) to (`newparent`, `newname`).
    pub(super) fn name_moved(
        &self,
        inode: &Arc<Inode>,
        from: (&Arc<Inode>, &[u8]),
        to: (&Arc<Inode>, &[u8]),
    ) {
        if !inode.is_dir() && !self.link_names.names(inode.ino).is_empty() {
            self.link_names.unlink(inode.ino, from.0.ino, from.1);
            self.link_names.note(inode.ino, to.0.ino, to.1);
        }
        inode.update(|s| {
            s.parent = Some(Arc::clone(to.0));
            s.name = to.1.into();
            s.detached = false;
        });
    }

    /// Before a name of `inode` goes: handles opened before a copy-up still hold the lower
    /// file and re-open the upper one by name on their next use; with the name gone they could
    /// not, so they are re-opened now.
    pub(super) fn refresh_open_handles(&self, inode: &Inode) {
        if inode.data_gen.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return; // never copied up by us: no handle can be stale
        }
        for fh in self.handles.files_of(inode.ino) {
            if let Err(e) = self.handle_fd(fh) {
                log::debug!("could not re-open handle {fh} of inode {}: {e}", inode.ino);
            }
        }
    }

    /// An open handle's real file for `inode`, if any is open (for an inode that lost its
    /// name, or an operation the kernel sent with a handle).
    pub(super) fn any_open_fd(&self, inode: &Inode) -> Option<Arc<OwnedFd>> {
        let fh = self.handles.any_file_of(inode.ino)?;
        self.handle_fd(fh).ok().map(|(_, fd)| fd)
    }

    /// Before a change: copy-up; an object that lost its name can only be changed if it is
    /// already in the upper (a nameless lower file cannot be copied up, and the lower itself
    /// is never written).
    pub(super) fn copy_up_or_upper(&self, inode: &Arc<Inode>) -> FsResult<()> {
        if !inode.is_detached() {
            return self.copy_up(inode);
        }
        match inode.top() {
            Some(t) if self.layers.is_upper(t.layer) => Ok(()),
            _ => Err(Errno::ENOENT),
        }
    }

    /// (fd, name) for the `*at` calls on `inode`'s top object: its directory and name, or,
    /// for an object that lost its name, an open handle's file and "".
    pub(super) fn reach(&self, inode: &Arc<Inode>) -> FsResult<(Arc<OwnedFd>, CString)> {
        match self.locate(inode) {
            Ok((dir, name, _)) => Ok((dir, name)),
            Err(e) => Ok((self.any_open_fd(inode).ok_or(e)?, CString::default())),
        }
    }

    /// Forgets cached directory fds of `ino` (its real directories changed).
    pub fn invalidate_dir(&self, ino: u64) {
        self.dirs.invalidate(ino, self.layers.len());
    }

    /// The root merges every layer's root, stopping below an opaque root.
    fn refresh_root_layers(&self) {
        let Ok(root) = self.inode(ROOT_INO) else {
            return;
        };
        let mut layers = Vec::new();
        for (i, l) in self.layers.all.iter().enumerate() {
            let op = self.opacity(l.root.as_fd(), sys::DOT);
            layers.push(Presence {
                layer: i as LayerIdx,
                xwhiteouts: op == crate::whiteout::Opacity::XWhiteouts,
            });
            if op == crate::whiteout::Opacity::Opaque {
                break;
            }
        }
        root.update(|s| s.layers = layers.into());
    }

    /// Attributes as the merged view reports them: the top object's, with our number, and
    /// nlink 1 for a directory merged from several layers (as the kernel does).
    pub fn present_attr(&self, inode: &Inode, mut st: Stat) -> Stat {
        st.ino = inode.ino;
        if st.is_dir() && inode.with_state(|s| s.layers.len()) > 1 {
            st.nlink = 1;
        }
        st
    }

    /// getattr; through the caller's open file when the kernel names one (fstat), or through
    /// any open handle when the object has no name any more.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> FsResult<Stat> {
        let inode = self.inode(ino)?;
        if let Some(fh) = fh.filter(|fh| self.handles.file(*fh).is_some()) {
            let (_, fd) = self.handle_fd(fh)?;
            return Ok(self.present_attr(&inode, sys::fstat(fd.as_fd())?));
        }
        let st = match self.locate(&inode) {
            Ok((dir, name, _)) => sys::fstatat(dir.as_fd(), &name)?,
            Err(e) => match self.any_open_fd(&inode) {
                Some(fd) => sys::fstat(fd.as_fd())?,
                None => *self.detached_attrs.get(&ino).ok_or(e)?,
            },
        };
        Ok(self.present_attr(&inode, st))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        let is_dir = self.inodes.get(ino).is_some_and(|i| i.is_dir());
        self.inodes.forget(ino, n);
        if self.inodes.get(ino).is_none() {
            if is_dir {
                self.invalidate_dir(ino);
            }
            self.link_names.forget(ino);
            self.detached_attrs.remove(&ino);
        }
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let inode = self.inode(ino)?;
        let (dir, name, _) = self.locate(&inode)?;
        sys::readlinkat(dir.as_fd(), &name)
    }

    /// A unique name for a temporary object in the work directory.
    fn temp_name(&self) -> CString {
        let n = self
            .temp_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = self
            .temp_prefix
            .get_or_init(|| format!("#layover.{}.", std::process::id()));
        CString::new(format!("{prefix}{n}")).unwrap_or_default()
    }

    fn work_fd(&self) -> FsResult<std::os::fd::BorrowedFd<'_>> {
        self.work.as_ref().map(|w| w.as_fd()).ok_or(Errno::EROFS)
    }

    /// Does `inode` live only in the upper layer (no lower layer merged into it)?
    pub(super) fn pure_upper(&self, inode: &Inode) -> bool {
        inode.with_state(|s| matches!(&*s.layers, [one] if self.layers.is_upper(one.layer)))
    }

    /// Leaves the work directory empty (called as the mount ends).
    pub fn cleanup_work(&self) {
        if let Ok(work) = self.work_fd() {
            let _ = sys::unlinkat(work, SHARED_WHITEOUT, false); // absent when never made
        }
    }

    /// Fails with EROFS unless the mount can be written.
    pub fn check_writable(&self) -> FsResult<()> {
        if self.cfg.read_only || !self.layers.has_upper {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    fn opaque_name(&self) -> &'static CStr {
        crate::whiteout::xattr_names(self.xattr_ns()).opaque
    }
}

/// The work directory: prepared at mount (leftovers of a crash removed), probed for what the
/// upper's filesystem allows.
mod work {
    use super::Caps;
    use crate::error::StartupError;
    use crate::sys;
    use crate::whiteout::Format;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::path::Path;

    /// Opens the work directory and its `work` subdirectory (as the kernel lays it out),
    /// emptying the latter of anything a crashed mount left. The kernel makes `work` mode 0,
    /// which only a daemon that overrides permission bits can use; an ordinary user's is
    /// 0700 (only its owner, and root, may enter it), set again on one made mode 0 earlier.
    pub fn prepare(
        w: &Path,
        top: OwnedFd,
        privilege: &crate::privilege::Privilege,
    ) -> Result<OwnedFd, StartupError> {
        let err = |e| StartupError::new(format!("workdir '{}': {e}", w.display()));
        let mode = if privilege.overrides_modes() {
            0o000
        } else {
            0o700
        };
        match sys::mkdirat(top.as_fd(), c"work", mode) {
            Ok(()) => {}
            Err(e) if e == crate::error::Errno::EEXIST => {
                if !privilege.overrides_modes() {
                    sys::fchmodat(top.as_fd(), c"work", mode).map_err(|e| {
                        StartupError::new(format!(
                            "workdir '{}': cannot make its 'work' directory usable ({e}): it \
                             belongs to another user; remove it, or use another workdir",
                            w.display()
                        ))
                    })?;
                }
            }
            Err(e) => return Err(err(e)),
        }
        let work =
            sys::openat(top.as_fd(), c"work", libc::O_PATH | libc::O_DIRECTORY, 0).map_err(err)?;
        empty_dir_keeping(work.as_fd(), Some(FORMAT_RECORD.to_bytes())).map_err(err)?;
        Ok(work)
    }

    /// Removes everything inside a directory (not following symlinks).
    pub fn empty_dir(dir: BorrowedFd<'_>) -> crate::error::FsResult<()> {
        empty_dir_keeping(dir, None)
    }

    /// Removes everything inside a directory but the entry `keep`.
    fn empty_dir_keeping(dir: BorrowedFd<'_>, keep: Option<&[u8]>) -> crate::error::FsResult<()> {
        let rd = sys::openat(dir, sys::DOT, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        for e in sys::read_dir_entries(rd.as_fd())? {
            if e.name == b"." || e.name == b".." || Some(&*e.name) == keep {
                continue;
            }
            let name = super::cname(&e.name)?;
            let st = sys::fstatat(dir, &name)?;
            if st.is_dir() {
                let sub = sys::openat(dir, &name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                empty_dir(sub.as_fd())?;
                sys::unlinkat(dir, &name, true)?;
            } else {
                sys::unlinkat(dir, &name, false)?;
            }
        }
        Ok(())
    }

    /// Where a mount that writes `.wh.` files notes it, so that later mounts keep that
    /// format even where 0/0 devices could be made: one upper never mixes formats by
    /// accident. (The kernel's format needs no note: it is what the probe picks anyway, and
    /// a clean unmount leaves `work/` empty then, as the kernel's does.) It lives in `work/`
    /// (kept when that is emptied at mount) so that a failed first start, which removes
    /// `work/`, leaves nothing behind.
    const FORMAT_RECORD: &std::ffi::CStr = c"#layover-whiteout-format";

    fn recorded_format(work: BorrowedFd<'_>) -> Option<Format> {
        let fd = sys::openat(work, FORMAT_RECORD, libc::O_RDONLY, 0).ok()?;
        let mut v = Vec::new();
        sys::read_all(fd.as_fd(), &mut v).ok()?;
        Format::parse(v.trim_ascii())
    }

    fn record_format(work: BorrowedFd<'_>, f: Format) -> Result<(), StartupError> {
        if f == Format::Chardev {
            let _ = sys::unlinkat(work, FORMAT_RECORD, false); // usually absent
            return Ok(());
        }
        let tmp = c"#layover-whiteout-format.new";
        let write = || -> crate::error::FsResult<()> {
            let flags = libc::O_CREAT | libc::O_TRUNC | libc::O_WRONLY;
            let fd = sys::openat(work, tmp, flags, 0o600)?;
            sys::write_all(fd.as_fd(), format!("{}\n", f.name()).as_bytes());
            sys::renameat2(work, tmp, work, FORMAT_RECORD, 0)
        };
        write().map_err(|e| {
            StartupError::new(format!("workdir: cannot note the whiteout format: {e}"))
        })
    }

    /// Without a note, the upper's root tells what it was written with: `.wh.` names (an
    /// OCI layer, an older rootless mount) or 0/0 devices. (Read without touching its atime,
    /// which the kernel's mount leaves alone.)
    fn format_in_upper_root(upper: BorrowedFd<'_>) -> Option<Format> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOATIME;
        let rd = sys::openat(upper, sys::DOT, flags, 0).ok()?;
        let entries = sys::read_dir_entries(rd.as_fd()).ok()?;
        if entries
            .iter()
            .any(|e| crate::whiteout::aufs_hidden_name(&e.name).is_some())
        {
            return Some(Format::File);
        }
        entries
            .iter()
            .filter(|e| e.d_type == libc::DT_CHR || e.d_type == libc::DT_UNKNOWN)
            .filter_map(|e| super::cname(&e.name).ok())
            .any(|n| sys::fstatat(upper, &n).is_ok_and(|st| crate::whiteout::is_whiteout_dev(&st)))
            .then_some(Format::Chardev)
    }

    /// What the upper's filesystem lets us do, tried in the work directory, and the whiteout
    /// format: `forced` by the option, else the one this upper was written with, else 0/0
    /// devices where they can be made (Linux >= 5.8 lets an ordinary user make them), else
    /// `.wh.` files.
    pub fn probe(
        work: BorrowedFd<'_>,
        upper: BorrowedFd<'_>,
        forced: Option<Format>,
        privilege: &crate::privilege::Privilege,
    ) -> Result<Caps, StartupError> {
        let name = c"#layover-probe";
        let can_mknod = sys::mknodat(work, name, libc::S_IFCHR, 0).is_ok();
        let _ = sys::unlinkat(work, name, false); // only cleans up the probe
        let recorded = recorded_format(work);
        let found = recorded.or_else(|| format_in_upper_root(upper));
        let format = match Format::choose(forced, found, can_mknod) {
            Ok((f, mixing)) => {
                if let Some(was) = mixing {
                    log::warn!(
                        "this upper holds {} whiteouts; whiteout={} writes the other format too",
                        was.name(),
                        f.name()
                    );
                }
                f
            }
            Err(why) => return Err(StartupError::new(why)),
        };
        record_format(work, format)?;
        let a = c"#layover-probe-a";
        let rename_whiteout = format == Format::Chardev
            && sys::mknodat(work, a, libc::S_IFREG | 0o600, 0).is_ok()
            && sys::renameat2(work, a, work, name, sys::RENAME_WHITEOUT).is_ok();
        let _ = sys::unlinkat(work, a, false); // probe cleanup: the whiteout left at `a`
        let _ = sys::unlinkat(work, name, false); // probe cleanup: the renamed file
        Ok(Caps {
            whiteout_dev: format == Format::Chardev,
            rename_whiteout,
            overrides_modes: privilege.overrides_modes(),
        })
    }
}
