//! The overlay semantics. Every operation takes kernel-facing inode numbers and names and
//! returns `FsResult<plain data>`; nothing here knows about fuser's types.
//!
//! Submodules: `lookup` (finding a name in the layers, getattr), `readdir` (merged listings),
//! `xattr`, `io` (open, read, write, statfs), `copy_up`, `create`, `remove`, `rename`,
//! `setattr`.

mod copy_up;
mod create;
mod figures;
mod io;
mod lookup;
mod owner;
mod query;
mod readdir;
mod remove;
mod rename;
mod setattr;
mod work;
pub mod xattr;

pub use io::{FileRange, OpenOpts, Opened};
pub use query::{InoOrigin, LayerDir, LayerInfo, LayerObj, Node, OpaqueBy, Query, WhiteoutKind};

pub use crate::idmap::Caller;
pub use create::NewNode;
pub use figures::Figures;
pub use setattr::SetAttr;

use crate::config::{Stack, XattrNs};
use crate::dircache::DirCache;
use crate::error::{Errno, FsResult, StartupError};
use crate::handle::{Fh, HandleTable};
use crate::idmap::{IdMap, Privileges};
use crate::inode::{
    Ino, Inode, InodeState, InodeTable, LinkNames, Numbering, Presence, PresenceList, ROOT_INO,
    RealId,
};
use crate::layer::{LayerIdx, Layers};
use crate::opener::Opener;
use crate::privilege::Privilege;
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
}

impl Caps {
    /// Nothing probed: no work directory to try things in.
    const NONE: Caps = Caps {
        whiteout_dev: false,
        rename_whiteout: false,
    };
}

/// A looked-up object: its inode (one lookup reference taken) and its attributes.
pub struct Entry {
    pub(crate) inode: Arc<Inode>,
    pub attr: Stat,
}

impl Entry {
    /// The object's inode number (what the reference taken is on).
    pub fn ino(&self) -> Ino {
        self.inode.ino
    }
}

/// The kernel's caches of what the core serves, kept by the transport: the core says when
/// they are stale (the real objects changed under an inode without a request for it).
pub trait KernelCache: Send + Sync {
    /// The cached attributes of `ino` are stale.
    fn inval_attr(&self, ino: Ino);
    /// The cached entry `name` in directory `parent` is stale. Must not block: it may be
    /// called while the kernel holds the directory's lock for the request being served.
    fn inval_entry(&self, parent: Ino, name: &[u8]);
}

/// No kernel caches to tell (no transport, as for offline use).
struct NoKernelCache;

impl KernelCache for NoKernelCache {
    fn inval_attr(&self, _ino: Ino) {}
    fn inval_entry(&self, _parent: Ino, _name: &[u8]) {}
}

pub struct Overlay {
    pub(crate) cfg: Stack,
    pub(crate) layers: Layers,
    /// The work directory (O_PATH), when there is an upper.
    work: Option<OwnedFd>,
    pub(crate) inodes: InodeTable,
    pub(crate) handles: HandleTable,
    dirs: DirCache,
    pub(crate) caps: Caps,
    temp_seq: AtomicU64,
    /// What the daemon may do (its ids, root or not).
    privileges: Privileges,
    /// Ids between requests and disk (the identity seam).
    ids: IdMap,
    /// Told when the transport's caches are stale (`with_kernel_cache`).
    kernel_cache: Box<dyn KernelCache>,
    link_names: LinkNames,
    /// The last attributes of detached objects, until the kernel forgets them.
    detached_attrs: dashmap::DashMap<Ino, Stat>,
    /// Copy-up may try a reflink (FICLONE); cleared when the filesystems cannot.
    reflink: std::sync::atomic::AtomicBool,
    /// Copy-up's `O_TMPFILE`: usable? linked by fd or through /proc?
    tmpfile: copy_up::Tmpfile,
    /// "#layover.PID.", the prefix of temporary names in the work directory (made on first
    /// use, after the daemon has forked).
    temp_prefix: std::sync::OnceLock<String>,
    /// Opens the user's own files whatever their mode, for an ordinary user's daemon.
    opener: Option<Opener>,
    /// Work done, for `figures` (`layover stats`).
    counters: figures::Counters,
    /// The override_stat xattrs each layer's objects carry (`owner`).
    stat_xattrs: owner::StatXattrs,
}

/// The whiteout in the work directory that upper whiteouts are hard links to.
const SHARED_WHITEOUT: &CStr = c"#layover-whiteout";

/// Turns a name into a C string (a NUL byte inside is invalid).
pub fn cname(name: &[u8]) -> FsResult<CString> {
    CString::new(name).map_err(|_| Errno::EINVAL)
}

/// The directory-fd cache of an overlay opened by `Overlay::open_read_only` is sized as for
/// this open-file limit (a quarter of it): tools run under the usual soft limit of 1,024 and
/// must not raise it (that would change the process they run in).
const READ_ONLY_NOFILE: u64 = 1024;

impl Overlay {
    /// The daemon's constructor. Opens upper and work (through one private clone of their
    /// mount where permitted) and every lower (through a private read-only, noatime clone);
    /// prepares `WORKDIR/work` (created if missing, emptied of a crashed mount's leftovers)
    /// and probes what the upper allows there (0/0 mknod, `RENAME_WHITEOUT`).
    /// `nofile`: the open-file limit the daemon runs with (bounds the directory fd cache).
    /// `privilege`: the one decision of who the daemon runs as (`Privilege::detect`): whether
    /// the private clones are tried (real root), the `work` directory's mode, and the core's
    /// `Privileges` (its ids, whether permission bits stop it). The whiteout format is
    /// `cfg.whiteout`, else the upper's own, else what the probe finds.
    /// `opener`: an ordinary user's way to read its own unreadable files (see `opener`).
    pub fn new(
        cfg: Stack,
        nofile: u64,
        privilege: &Privilege,
        opener: Option<Opener>,
    ) -> Result<Overlay, StartupError> {
        let clone = privilege.clones_mounts();
        let (upper, work) = match (&cfg.upperdir, &cfg.workdir) {
            (Some(u), Some(w)) => {
                let (ufd, wfd) = crate::layer::open_upper_and_work(u, w, clone).map_err(|e| {
                    StartupError::new(format!("cannot open upperdir '{}': {e}", u.display()))
                })?;
                let volatile = !cfg.durable && !cfg.read_only;
                let work = work::prepare(w, wfd, privilege, volatile)?;
                (Some((u.as_path(), ufd)), Some(work))
            }
            _ => (None, None),
        };
        let layers = Layers::open(upper, &cfg.lowerdirs, clone).map_err(|(p, e)| {
            StartupError::new(format!("cannot open layer '{}': {e}", p.display()))
        })?;
        let caps = match (&work, layers.has_upper) {
            (Some(w), true) => {
                let upper = layers
                    .get(LayerIdx::TOP)
                    .map_err(|_| StartupError::new("no layers"))?;
                work::probe(w.as_fd(), upper.root_fd(), cfg.whiteout)?
            }
            _ => Caps::NONE,
        };
        let privileges = Privileges::of(privilege);
        let ov = Overlay::build(cfg, layers, work, caps, nofile, privileges, opener)?;
        if !ov.read_only() {
            ov.mark_upper_root().map_err(|e| {
                StartupError::new(format!(
                    "cannot mark the upperdir's root for xattr_permissions: {e}"
                ))
            })?;
        }
        Ok(ov)
    }

    /// Opens a layer stack for reading only, for offline tools and tests: the upper (when
    /// `stack` names one) and the lowers are opened as the daemon opens lowers (through
    /// private read-only, noatime clones of their mounts as root, plainly otherwise); the
    /// workdir is neither opened nor emptied nor probed, and nothing is written anywhere.
    /// Every change fails with EROFS (the overlay is read-only whatever `stack` says). Needs
    /// no privilege beyond reading the layers. (Without the clones, that is as an ordinary
    /// user, reading the upper may update its atimes as any reader's does under relatime:
    /// only lowers are read with `O_NOATIME`.)
    /// The tool's process decides who it runs as here (`Privilege::detect`, the same
    /// decision the daemon makes once at start): only whether to try the clones depends on it.
    pub fn open_read_only(stack: &Stack) -> Result<Overlay, StartupError> {
        let privilege = Privilege::detect();
        let cfg = Stack {
            read_only: true,
            ..stack.clone()
        };
        let clone = privilege.clones_mounts();
        let layers = Layers::open_read_only(cfg.upperdir.as_deref(), &cfg.lowerdirs, clone)
            .map_err(|(p, e)| {
                StartupError::new(format!("cannot open layer '{}': {e}", p.display()))
            })?;
        let privileges = Privileges::of(&privilege);
        Overlay::build(
            cfg,
            layers,
            None,
            Caps::NONE,
            READ_ONLY_NOFILE,
            privileges,
            None,
        )
    }

    /// The overlay over opened layers: the root inode (merging every layer's root) and empty
    /// tables. Does no I/O beyond reading the layer roots.
    fn build(
        cfg: Stack,
        layers: Layers,
        work: Option<OwnedFd>,
        caps: Caps,
        nofile: u64,
        privileges: Privileges,
        opener: Option<Opener>,
    ) -> Result<Overlay, StartupError> {
        let devs: Vec<u64> = layers.all.iter().map(|l| l.dev).collect();
        let top = layers
            .get(LayerIdx::TOP)
            .map_err(|_| StartupError::new("no layers"))?;
        let root_stat = sys::fstat(top.root_fd())
            .map_err(|e| StartupError::new(format!("cannot stat '{}': {e}", top.path.display())))?;
        let root_layers: PresenceList = layers
            .indexes()
            .map(|layer| Presence {
                layer,
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
                real: RealId::of(&root_stat),
            },
        );
        let inodes = InodeTable::new(Numbering::new(&devs).fitting_32_bits(cfg.ino32), root);
        let ids = cfg.ids.clone();
        let stat_xattrs = owner::StatXattrs::of_layers(&ids, &layers);
        let ov = Overlay {
            cfg,
            layers,
            work,
            inodes,
            handles: HandleTable::default(),
            dirs: DirCache::new(nofile),
            caps,
            temp_seq: AtomicU64::new(0),
            privileges,
            ids,
            kernel_cache: Box::new(NoKernelCache),
            link_names: LinkNames::default(),
            detached_attrs: dashmap::DashMap::new(),
            reflink: std::sync::atomic::AtomicBool::new(true),
            tmpfile: copy_up::Tmpfile::default(),
            temp_prefix: std::sync::OnceLock::new(),
            opener,
            counters: figures::Counters::default(),
            stat_xattrs,
        };
        ov.refresh_root_layers();
        Ok(ov)
    }

    /// The transport's caches to tell when they are stale (the core alone tells nobody).
    pub fn with_kernel_cache(mut self, k: Box<dyn KernelCache>) -> Overlay {
        self.kernel_cache = k;
        self
    }

    /// Whether the merged view is read-only (`ro`, or no upper layer).
    pub fn read_only(&self) -> bool {
        self.cfg.read_only || !self.layers.has_upper
    }

    /// The kernel's cached attributes of `ino` are stale (its real object changed under it:
    /// copy-up changes nlink and ctime, and a directory's nlink when it becomes merged).
    pub(crate) fn invalidate_attr(&self, ino: Ino) {
        self.kernel_cache.inval_attr(ino);
    }

    /// After `inode`, a lower file with several links, was copied up through one name: the
    /// other names the kernel knows (it may use any of them for the same inode, and FUSE does
    /// not tell us which) are linked to the copy in the upper, so that whatever name was
    /// written shows the write, as with the kernel's index=on. A name that cannot be linked
    /// is dropped from the kernel's cache and then shows the lower file again (index=off).
    fn link_lower_names(&self, inode: &Arc<Inode>) {
        let names = self.link_names.names(inode.ino);
        let st = inode.state();
        let copied = (st.parent_ino(), &*st.name);
        for (p, n) in names.iter().filter(|(p, n)| (*p, &**n) != copied) {
            let linked = self
                .inode(*p)
                .and_then(|parent| self.link_into_upper(inode, &parent, n));
            if let Err(e) = linked {
                log::debug!(
                    "copy-up: hard link {n:?} in {p} not kept ({e}); it shows the lower file"
                );
                self.kernel_cache.inval_entry(*p, n);
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
        let (a, m) = copy_up::times(&before);
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

    pub(crate) fn inode(&self, ino: Ino) -> FsResult<Arc<Inode>> {
        self.inodes.get(ino).ok_or(Errno::ESTALE)
    }

    /// The `O_PATH` fd of directory `dir` in `layer` (which must hold it). Goes up to the
    /// nearest directory whose fd is known, then opens (and caches) each one down to `dir`,
    /// in a loop: a tree may be deeper than any thread's stack.
    pub(crate) fn dir_fd(&self, dir: &Arc<Inode>, layer: LayerIdx) -> FsResult<Arc<OwnedFd>> {
        let mut below: Vec<(Ino, CString)> = Vec::new();
        let mut cur = Arc::clone(dir);
        let mut fd = loop {
            if cur.ino == ROOT_INO {
                break Arc::clone(&self.layers.get(layer)?.root);
            }
            if let Some(fd) = self.dirs.get(cur.ino, layer) {
                break fd;
            }
            let (parent, name) = cur.with_state(|s| (s.parent.clone(), cname(&s.name)));
            below.push((cur.ino, name?));
            cur = parent.ok_or(Errno::ESTALE)?;
        };
        for (ino, name) in below.iter().rev() {
            let next = Arc::new(sys::open_dir_at(fd.as_fd(), name)?);
            self.dirs.insert(*ino, layer, Arc::clone(&next));
            fd = next;
        }
        Ok(fd)
    }

    /// Where the top object of `inode` is: (its directory's fd in the top layer, its name,
    /// the top layer). The root is (layer root, ".").
    pub(crate) fn locate(&self, inode: &Arc<Inode>) -> FsResult<(Arc<OwnedFd>, CString, Presence)> {
        // Only what is needed is copied out of the state (this runs on every getattr).
        let (detached, top, parent, name) = inode.with_state(|s| {
            (
                inode.is_detached(),
                s.top(),
                s.parent.clone(),
                cname(&s.name),
            )
        });
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
    pub(super) fn name_removed(&self, inode: &Inode, parent: Ino, name: &[u8], last: Option<Stat>) {
        let other = self.link_names.unlink(inode.ino, parent, name);
        let st = inode.state();
        let was_ours = st.parent_ino() == parent && *st.name == *name;
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
                inode.set_detached(true);
                // That was its last link: the filesystem may give its inode number to a new
                // object before the kernel forgets this inode, and the new object must not be
                // taken for this one (it would inherit a detached state and stale names).
                if last.is_some_and(|l| l.is_dir() || l.nlink <= 1) {
                    s.real = RealId::tombstone(inode.ino);
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
            inode.set_detached(false);
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

    /// The upper object `st` lost a name (removed, or replaced by a rename): once it has no
    /// other link, its identity may be reused by the filesystem and no longer names the
    /// inode it was copied up for.
    pub(super) fn upper_name_gone(&self, st: &Stat) {
        if st.nlink <= 1 || st.is_dir() {
            self.inodes.numbers.unalias(RealId::of(st));
        }
    }

    /// Forgets cached directory fds of `ino` (its real directories changed).
    pub(crate) fn invalidate_dir(&self, ino: Ino) {
        self.dirs.invalidate(ino, self.layers.indexes());
    }

    /// The root merges every layer's root, stopping below an opaque root.
    fn refresh_root_layers(&self) {
        let Ok(root) = self.inode(ROOT_INO) else {
            return;
        };
        let mut layers = Vec::new();
        for (layer, l) in self.layers.iter() {
            let marks = self.dir_marks(l.root.as_fd(), sys::DOT);
            layers.push(Presence {
                layer,
                xwhiteouts: marks.xwhiteouts,
            });
            if marks.opaque {
                break;
            }
        }
        root.update(|s| s.layers = layers.into());
    }

    /// Attributes as the merged view reports them: the top object's, with the owner and
    /// mode of its override_stat xattr where its layer's objects carry one (`owner`), our
    /// number, the ids shown (`IdMap::to_shown`), and nlink 1 for a directory merged from
    /// several layers (as the kernel does) or for every directory with `static_nlink`.
    /// Every attribute the core returns comes through here.
    pub(crate) fn present_attr(&self, inode: &Arc<Inode>, st: Stat) -> Stat {
        let top = self.any_stat_xattrs().then(|| inode.top()).flatten();
        let st = match top {
            Some(top) if self.overridable(top.layer, &st) => match self.reach(inode) {
                Ok((dir, name)) => self.with_override(top.layer, dir.as_fd(), &name, st),
                Err(_) => st,
            },
            _ => st,
        };
        self.merged_layout(inode, self.ids.to_shown(st))
    }

    /// The merged view's number and link count for `inode` (ids untouched).
    fn merged_layout(&self, inode: &Inode, mut st: Stat) -> Stat {
        st.ino = inode.ino.0;
        if st.is_dir() && (self.cfg.static_nlink || inode.with_state(|s| s.layers.len()) > 1) {
            st.nlink = 1;
        }
        st
    }

    /// getattr; through the caller's open file when the kernel names one (fstat), or through
    /// any open handle when the object has no name any more.
    pub fn getattr(&self, ino: Ino, fh: Option<Fh>) -> FsResult<Stat> {
        let inode = self.inode(ino)?;
        if let Some(fh) = fh.filter(|fh| self.handles.file(*fh).is_some()) {
            let (_, fd) = self.handle_fd(fh)?;
            return Ok(self.present_attr(&inode, sys::fstat(fd.as_fd())?));
        }
        let st = match self.locate(&inode) {
            Ok((dir, name, _)) => sys::fstatat(dir.as_fd(), &name)?,
            Err(e) => match self.any_open_fd(&inode) {
                Some(fd) => sys::fstat(fd.as_fd())?,
                // Kept as shown: its ids are not mapped again.
                None => {
                    let shown = *self.detached_attrs.get(&ino).ok_or(e)?;
                    return Ok(self.merged_layout(&inode, shown));
                }
            },
        };
        Ok(self.present_attr(&inode, st))
    }

    pub fn forget(&self, ino: Ino, n: u64) {
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

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
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
            if !self.cfg.durable && !self.read_only() {
                self.end_volatile(work);
            }
        }
    }

    /// A volatile mount that ends cleanly syncs the upper's filesystem and removes its mark
    /// (`work/incompat/volatile`), so that the next mount, the kernel's too, takes the upper.
    /// If the sync fails the mark stays: the writes may not all be on disk.
    fn end_volatile(&self, work: std::os::fd::BorrowedFd<'_>) {
        let upper = self.layers.get(LayerIdx::TOP).map(|l| l.root_fd());
        let r = upper.and_then(|u| work::unmark_volatile(work, u));
        if let Err(e) = r {
            log::warn!(
                "volatile mount: the upper could not be synced or its mark removed ({e}): \
                 the next mount will refuse this work directory"
            );
        }
    }

    /// Fails with EROFS unless the mount can be written.
    pub(crate) fn check_writable(&self) -> FsResult<()> {
        if self.read_only() {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    fn opaque_name(&self) -> &'static CStr {
        crate::whiteout::xattr_names(self.xattr_ns()).opaque
    }
}
