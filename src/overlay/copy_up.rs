//! Copy-up: making the upper layer hold an object that so far only a lower holds.
//!
//! Parents first. Each object is built in the work directory — data (reflink, else
//! copy_file_range hole by hole), xattrs (not the overlay's own), owner, mode, times — fsynced
//! unless the mount is volatile, and only then given its name in the upper, so a crash never
//! leaves a partial object there. A regular file is built as an `O_TMPFILE`, which has no name
//! until it is linked into place (a crash before that leaves nothing: the filesystem frees an
//! unlinked inode at its next mount); everything else, and a regular file where the upper's
//! filesystem has no `O_TMPFILE`, is built under a temporary name and renamed into place (a
//! crash may leave that name in the work directory, which the next mount empties). The upper
//! parent's timestamps are put back afterwards. Copy-up is serialised per inode: other files
//! stay usable meanwhile.

use super::owner::AttrValue;
use super::{Overlay, cname};
use crate::error::{Errno, FsResult};
use crate::idmap::stat_xattr::is_stat_xattr;
use crate::inode::{Inode, Presence, RealId};
use crate::layer::LayerIdx;
use crate::sys::{self, Stat, TimeSpec};
use crate::whiteout::is_private_xattr;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Removes a temporary object in the work directory unless disarmed.
pub(super) struct TempGuard<'a> {
    pub dir: BorrowedFd<'a>,
    pub name: CString,
    pub is_dir: bool,
    pub armed: bool,
}

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = sys::unlinkat(self.dir, &self.name, self.is_dir)
        {
            log::warn!(
                "could not remove temporary {:?} from workdir: {e}",
                self.name
            );
        }
    }
}

/// How copy-up makes and places an `O_TMPFILE`, learnt on first use and remembered (as
/// `reflink` is): whether the upper's filesystem has `O_TMPFILE` at all, and whether the
/// daemon may link an open file by its fd (`linkat(AT_EMPTY_PATH)`: root, or Linux >= 6.10),
/// else through `/proc/self/fd`.
pub(super) struct Tmpfile {
    usable: AtomicBool,
    link_by_fd: AtomicBool,
}

impl Default for Tmpfile {
    fn default() -> Self {
        Tmpfile {
            usable: AtomicBool::new(true),
            link_by_fd: AtomicBool::new(true),
        }
    }
}

impl Tmpfile {
    /// A new unnamed file in `work`, open for writing, of permission bits `mode`; None when
    /// the filesystem has no `O_TMPFILE` (then never asked again).
    fn open(&self, work: BorrowedFd<'_>, mode: u32) -> FsResult<Option<OwnedFd>> {
        if !self.usable.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match sys::openat(work, sys::DOT, libc::O_TMPFILE | libc::O_WRONLY, mode) {
            Ok(fd) => Ok(Some(fd)),
            // EOPNOTSUPP: the filesystem has none; EISDIR, EINVAL: the kernel has none.
            Err(e) if [libc::EOPNOTSUPP, libc::EISDIR, libc::EINVAL].contains(&e.raw()) => {
                if self.usable.swap(false, Ordering::Relaxed) {
                    log::debug!(
                        "copy-up: no O_TMPFILE in the work directory ({e}): regular files \
                         are built under a temporary name and renamed"
                    );
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Links the file open at `fd` as `name` in `dir` (EEXIST if the name is taken). By its
    /// fd first; when that is refused (ENOENT, EPERM) and the link through `/proc/self/fd`
    /// works instead, the latter from then on. False when neither way is allowed here (the
    /// proc link refused too, or no /proc): `O_TMPFILE` is then not used again, and the
    /// caller builds this copy under a name.
    fn link(&self, fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> FsResult<bool> {
        if self.link_by_fd.load(Ordering::Relaxed) {
            match sys::link_open_file(fd, dir, name) {
                Err(e) if e == Errno::ENOENT || e == Errno::EPERM => {}
                other => return other.map(|()| true),
            }
        }
        match sys::link_open_file_by_proc(fd, dir, name) {
            Ok(()) => {
                if self.link_by_fd.swap(false, Ordering::Relaxed) {
                    log::debug!(
                        "copy-up: linkat(AT_EMPTY_PATH) refused: copies are linked into \
                         place through /proc/self/fd"
                    );
                }
                Ok(true)
            }
            // ENOENT is also what a vanished `dir` gives: only a missing /proc counts.
            Err(e)
                if e == Errno::EPERM
                    || e == Errno::EACCES
                    || (e == Errno::ENOENT && !std::path::Path::new("/proc/self/fd").is_dir()) =>
            {
                if self.usable.swap(false, Ordering::Relaxed) {
                    log::debug!(
                        "copy-up: an O_TMPFILE cannot be linked into place ({e}): regular \
                         files are built under a temporary name and renamed"
                    );
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Xattrs whose loss changes meaning: a failure to copy them fails the copy-up.
fn must_copy_xattr(name: &[u8]) -> bool {
    name.starts_with(b"system.posix_acl") || name == b"security.capability"
}

/// The atime and mtime of `st`, to set on another object.
pub(super) fn times(st: &Stat) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::Set(st.atime.0, st.atime.1),
        TimeSpec::Set(st.mtime.0, st.mtime.1),
    )
}

/// Copies file data from `src` to `dst`, keeping holes: reflink when the filesystem can
/// (`reflink` is cleared the first time it cannot, so later copies do not try again), else
/// copy_file_range over each data extent, else read/write. A file whose blocks cover its size
/// has no holes and is copied in one range, without asking for extents. `durable`: the copy
/// will be fsynced, so its writeback is started chunk by chunk as the copy goes (the disk
/// writes while the next chunk is copied, and the fsync has only the tail left to wait for).
fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    st: &Stat,
    reflink: &AtomicBool,
    durable: bool,
) -> FsResult<()> {
    let size = st.size as u64;
    if size == 0 {
        return Ok(());
    }
    if reflink.load(Ordering::Relaxed) {
        match sys::ficlone(dst, src) {
            Ok(()) => return Ok(()),
            Err(e)
                if [
                    libc::EOPNOTSUPP,
                    libc::EXDEV,
                    libc::EINVAL,
                    libc::ENOTTY,
                    libc::ENOSYS,
                ]
                .contains(&e.raw()) =>
            {
                reflink.store(false, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
    if (st.blocks as u64).saturating_mul(512) >= size {
        let copied = copy_range(src, dst, 0, size, durable)?;
        return if copied == size {
            Ok(())
        } else {
            sys::ftruncate(dst, size)
        };
    }
    let mut off = 0u64;
    while off < size {
        let data = match sys::lseek(src, off as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            Err(e) if e == Errno::ENXIO => break,
            Err(_) => off, // SEEK_DATA unsupported: treat everything as data
        };
        let end = match sys::lseek(src, data as i64, libc::SEEK_HOLE) {
            Ok(h) => (h as u64).min(size),
            Err(_) => size,
        };
        copy_range(src, dst, data, end, durable)?;
        off = end;
    }
    sys::ftruncate(dst, size)
}

/// How much is copied before its writeback is started, for a copy that will be fsynced.
const WRITEBACK_CHUNK: usize = 8 << 20;

/// Copies bytes [pos, end); returns where it stopped (before `end` if the source shrank).
/// `writeback`: start writing each chunk to disk once it is copied.
fn copy_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mut pos: u64,
    end: u64,
    writeback: bool,
) -> FsResult<u64> {
    let chunk = if writeback { WRITEBACK_CHUNK } else { 1 << 30 };
    while pos < end {
        let want = ((end - pos) as usize).min(chunk);
        match sys::copy_file_range(src, pos, dst, pos, want) {
            Ok(0) => return Ok(pos), // the source shrank underneath: stop at its end
            Ok(n) => {
                // Only a head start for the fsync, which reports any write error.
                if writeback && end - pos > n as u64 {
                    let _ = sys::start_writeback(dst, pos, n as u64);
                }
                pos += n as u64;
            }
            Err(e)
                if [libc::EXDEV, libc::EINVAL, libc::ENOSYS, libc::EOPNOTSUPP]
                    .contains(&e.raw()) =>
            {
                return copy_by_reading(src, dst, pos, end);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(pos)
}

fn copy_by_reading(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mut pos: u64,
    end: u64,
) -> FsResult<u64> {
    let mut buf = vec![0u8; 1 << 20];
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = sys::pread(src, &mut buf[..want], pos)?;
        if n == 0 {
            return Ok(pos);
        }
        let mut w = 0;
        while w < n {
            w += sys::pwrite(dst, &buf[w..n], pos + w as u64)?;
        }
        pos += n as u64;
    }
    Ok(pos)
}

impl Overlay {
    /// Copies the xattrs of `src` (name in dir), except ours, with `set` (name, value) on the
    /// copy.
    pub(super) fn copy_xattrs(
        &self,
        sdir: BorrowedFd<'_>,
        sname: &CStr,
        set: impl Fn(&CStr, &[u8]) -> FsResult<()>,
    ) -> FsResult<()> {
        let names = match sys::listxattr_names(sdir, sname) {
            Ok(n) => n,
            Err(e) if e == Errno::EOPNOTSUPP => return Ok(()),
            Err(e) => return Err(e),
        };
        for n in names {
            if is_private_xattr(self.xattr_ns(), &n)
                || (self.writes_stat_xattrs() && is_stat_xattr(&n))
            {
                continue;
            }
            let cn = cname(&n)?;
            let v = match self.source_xattr(sdir, sname, &cn) {
                Ok(v) => v,
                Err(e) if e == Errno::ENODATA => continue,
                Err(e) => return Err(e),
            };
            match set(&cn, &v) {
                Ok(()) => {}
                Err(e) if e == Errno::EOPNOTSUPP && !must_copy_xattr(&n) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Makes sure `inode` lives in the upper layer, copying it (and its parents) up.
    pub(crate) fn copy_up(&self, inode: &Arc<Inode>) -> FsResult<()> {
        self.copy_up_with(inode, true)
    }

    /// Copy-up for an open with O_TRUNC: the data would be thrown away at once, so it is not
    /// copied (the kernel does the same).
    pub(crate) fn copy_up_truncated(&self, inode: &Arc<Inode>) -> FsResult<()> {
        self.copy_up_with(inode, false)
    }

    /// The parents not yet in the upper are copied first, from the top down, in a loop: a
    /// tree may be deeper than any thread's stack (a recursion per level overflowed the
    /// daemon's 2 MiB worker stacks at 20,000 levels).
    fn copy_up_with(&self, inode: &Arc<Inode>, with_data: bool) -> FsResult<()> {
        let upper = self.layers.upper_idx()?;
        // (object, the parent it is copied into), nearest first.
        let mut pending: Vec<(Arc<Inode>, Arc<Inode>)> = Vec::new();
        let mut cur = Arc::clone(inode);
        while cur.top().is_none_or(|t| t.layer != upper) {
            let parent = cur.parent().ok_or(Errno::EIO)?;
            pending.push((cur, Arc::clone(&parent)));
            cur = parent;
        }
        for (node, parent) in pending.iter().rev() {
            let data = with_data || !Arc::ptr_eq(node, inode);
            self.copy_up_one(node, parent, upper, data)?;
        }
        Ok(())
    }

    /// Copies `inode` up into `parent`, which is in the upper already.
    fn copy_up_one(
        &self,
        inode: &Arc<Inode>,
        parent: &Arc<Inode>,
        upper: LayerIdx,
        with_data: bool,
    ) -> FsResult<()> {
        let _serial = inode.copy_up_lock.lock();
        let Some(top) = inode.top() else {
            return Err(Errno::ESTALE);
        };
        if top.layer == upper {
            return Ok(()); // another thread did it while we waited
        }
        let (sdir, sname, _) = self.locate(inode)?;
        let raw = sys::fstatat(sdir.as_fd(), &sname)?;
        // `src`: the source with the owner and mode its copy's inode gets.
        let (src, stat_xattr) = self.copy_up_attrs(top.layer, (sdir.as_fd(), &sname), raw)?;
        let udir = self.dir_fd(parent, upper)?;

        let work = self.work_fd()?;
        let made = self.keeping_times(parent, || {
            let src = if with_data {
                src
            } else {
                Stat { size: 0, ..src }
            };
            let from = (sdir.as_fd(), sname.as_c_str());
            let to = (udir.as_fd(), sname.as_c_str());
            if src.is_reg()
                && let Some(made) = self.copy_anonymous(from, &src, &stat_xattr, work, to)?
            {
                return Ok(made);
            }
            self.copy_named(from, &src, &stat_xattr, work, to)
        })?;
        self.copied_up(inode, upper, &src, &made, with_data);
        Ok(())
    }

    /// After `inode`'s object `src` was copied up as `made` (in layer `upper`): the inode
    /// now names the copy (keeping its number), open handles re-open it, and the kernel's
    /// caches hear of what changed.
    fn copied_up(
        &self,
        inode: &Arc<Inode>,
        upper: LayerIdx,
        src: &Stat,
        made: &Stat,
        with_data: bool,
    ) {
        let bytes = if with_data && src.file_type() == libc::S_IFREG {
            src.size as u64
        } else {
            0
        };
        self.counters.copied_up(src.file_type(), bytes);
        self.inodes.numbers.alias(RealId::of(made), inode.ino);
        inode.update(|s| {
            let mut layers = vec![Presence {
                layer: upper,
                xwhiteouts: false,
            }];
            if src.is_dir() {
                layers.extend(s.layers.iter().copied());
            }
            s.layers = layers.into();
            s.real = RealId::of(made);
        });
        if src.is_dir() {
            self.invalidate_dir(inode.ino);
        }
        inode.data_gen.fetch_add(1, Ordering::AcqRel);
        // The copy's attributes are the original's but for its ctime, except when the data
        // was left out (a truncating open), the original had other links (the copy has one),
        // or a directory became merged (presented with one link).
        if !with_data || src.nlink > 1 || src.is_dir() {
            self.invalidate_attr(inode.ino);
        }
        if src.nlink > 1 && !src.is_dir() {
            self.link_lower_names(inode);
        }
    }

    /// Builds the copy of `src` (at `from`) under a temporary name in the work directory,
    /// guarded so that a failure removes it, and renames it into place at `to`; returns the
    /// copy's attributes as made (its device and inode number are what count).
    fn copy_named(
        &self,
        (sdir, sname): (BorrowedFd<'_>, &CStr),
        src: &Stat,
        stat_xattr: &Option<AttrValue>,
        work: BorrowedFd<'_>,
        to: (BorrowedFd<'_>, &CStr),
    ) -> FsResult<Stat> {
        let tmp = self.temp_name();
        let mut guard = TempGuard {
            dir: work,
            name: tmp.clone(),
            is_dir: src.is_dir(),
            armed: false,
        };
        let made = if src.is_reg() {
            let create = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
            let dfd = sys::openat(work, &tmp, create, self.first_mode(src))?;
            guard.armed = true;
            self.copy_regular((sdir, sname), src, stat_xattr, dfd.as_fd())?
        } else {
            let made = self.build_copy(sdir, sname, src, work, &tmp, &mut guard)?;
            if let Some((x, v)) = stat_xattr {
                sys::setxattrat(work, &tmp, x.name(), v, 0)?;
            }
            made
        };
        self.place_copy(src, (work, &tmp), to)?;
        guard.armed = false;
        Ok(made)
    }

    /// Renames the finished copy of `src` from the work directory into the upper directory,
    /// never over anything; a directory copied without owner write gets its mode now.
    fn place_copy(
        &self,
        src: &Stat,
        (work, tmp): (BorrowedFd<'_>, &CStr),
        (udir, name): (BorrowedFd<'_>, &CStr),
    ) -> FsResult<()> {
        self.lending_owner_write(udir, || {
            sys::renameat2(work, tmp, udir, name, sys::RENAME_NOREPLACE)
        })?;
        if src.is_dir() && self.dir_mode_deferred(src.mode) {
            sys::fchmodat(udir, name, src.mode & 0o7777)?;
        }
        Ok(())
    }

    /// Builds the copy of the regular file `src` (at `from`) as an `O_TMPFILE` in the work
    /// directory and links it into place at `to`, never over anything (EEXIST, as the rename
    /// of a named one). Nothing to remove on a failure: the file goes with its last fd. None
    /// when the upper's filesystem has no `O_TMPFILE`, or the daemon may not link one (the
    /// copy is then built under a name).
    fn copy_anonymous(
        &self,
        from: (BorrowedFd<'_>, &CStr),
        src: &Stat,
        stat_xattr: &Option<AttrValue>,
        work: BorrowedFd<'_>,
        (udir, name): (BorrowedFd<'_>, &CStr),
    ) -> FsResult<Option<Stat>> {
        let Some(dfd) = self.tmpfile.open(work, self.first_mode(src))? else {
            return Ok(None);
        };
        let made = self.copy_regular(from, src, stat_xattr, dfd.as_fd())?;
        let linked =
            self.lending_owner_write(udir, || self.tmpfile.link(dfd.as_fd(), udir, name))?;
        Ok(linked.then_some(made))
    }

    /// Builds the copy of a directory, symlink or special file `src` as `tmp` in the work
    /// directory (the guard removes it on failure once armed); returns the copy's attributes
    /// as made.
    fn build_copy(
        &self,
        sdir: BorrowedFd<'_>,
        sname: &CStr,
        src: &Stat,
        work: BorrowedFd<'_>,
        tmp: &CStr,
        guard: &mut TempGuard<'_>,
    ) -> FsResult<Stat> {
        match src.file_type() {
            libc::S_IFDIR => sys::mkdirat(work, tmp, 0o700)?,
            libc::S_IFLNK => {
                let target = sys::readlinkat(sdir, sname)?;
                sys::symlinkat(&cname(&target)?, work, tmp)?;
            }
            _ => sys::mknodat(work, tmp, src.file_type() | 0o600, src.rdev)?,
        }
        guard.armed = true;
        self.finish_attrs(sdir, sname, src, work, tmp)?;
        sys::fstatat(work, tmp)
    }

    /// The permission bits a regular file's copy is created with. Nobody else can open it
    /// before it is in place (it has no name, or one in the work directory, which only the
    /// daemon may enter), so it is made with its final permissions (the daemon's umask is 0),
    /// and needs no chmod later; set-id bits come after the chown, which clears them. Without
    /// root, a mode without owner write is made 0600 instead: setting a `user.*` xattr needs
    /// write permission on the inode (even through an fd), and the daemon has no
    /// CAP_DAC_OVERRIDE to do without it.
    fn first_mode(&self, src: &Stat) -> u32 {
        let perm = src.mode & 0o1777;
        if self.privileges.any_owner() || perm & 0o200 != 0 {
            perm
        } else {
            0o600
        }
    }

    /// Fills `dfd`, the new copy of the regular file `src` (at `from`): data, owner, xattrs,
    /// the override_stat xattr, mode, times, all through the fd; fsynced when the mount is
    /// durable. Returns the copy's attributes as made.
    fn copy_regular(
        &self,
        (sdir, sname): (BorrowedFd<'_>, &CStr),
        src: &Stat,
        stat_xattr: &Option<AttrValue>,
        dfd: BorrowedFd<'_>,
    ) -> FsResult<Stat> {
        let perm = src.mode & 0o7777;
        // The source is a lower file: reading it leaves its atime alone (`open_source`).
        let sfd = self.open_source(sdir, sname)?;
        let made = sys::fstat(dfd)?;
        let durable = self.cfg.durable;
        copy_data(sfd.as_fd(), dfd, src, &self.reflink, durable)?;
        // The owner before the xattrs: chown(2) removes `security.capability` (the kernel's
        // copy-up sets the owner without that). Only a daemon that may chown sets another
        // owner here, and it may then set the xattrs of another's file too.
        let owner = self.ids.copy_up_owner(src);
        if (made.uid, made.gid) != (owner.uid, owner.gid) {
            sys::fchownat(dfd, sys::EMPTY, owner.uid, owner.gid)?;
        }
        self.copy_xattrs(sdir, sname, |a, v| sys::fsetxattr(dfd, a, v, 0))?;
        if let Some((x, v)) = stat_xattr {
            sys::fsetxattr(dfd, x.name(), v, 0)?;
        }
        if perm & 0o6000 != 0 || made.mode & 0o7777 != perm {
            sys::fchmod(dfd, perm)?;
        }
        let (a, m) = times(src);
        sys::utimensat(dfd, sys::EMPTY, a, m)?;
        if durable {
            sys::fsync(dfd, false)?;
        }
        Ok(made)
    }

    /// An ordinary user's daemon has no CAP_DAC_OVERRIDE, which the kernel's mounter
    /// credentials have over the user's own files in a user namespace: a directory copied up
    /// without owner write and search permission (0500) could not be renamed into place (its
    /// `..` changes) nor receive its children. It is built 0700 and gets its own mode once in
    /// place (`dir_mode_deferred`), and a directory without them lends itself u+wx to its
    /// owner for the one rename copy-up makes in it (`lending_owner_write`).
    pub(super) fn dir_mode_deferred(&self, mode: u32) -> bool {
        !self.privileges.overrides_modes && mode & 0o700 != 0o700
    }

    /// Runs `f`, which adds a name to the upper directory `dir` or sets its opaque xattr,
    /// with owner write and search permission lent to `dir` when the daemon needs it and owns
    /// `dir` (see above). Copy-ups
    /// into one directory are not serialised, so the mode put back is the one read before; a
    /// chmod of `dir` racing with such a copy-up may be undone (documented in semantics.md).
    pub(super) fn lending_owner_write<T>(
        &self,
        dir: BorrowedFd<'_>,
        f: impl FnOnce() -> FsResult<T>,
    ) -> FsResult<T> {
        if self.privileges.overrides_modes {
            return f();
        }
        let st = sys::fstat(dir)?;
        if st.mode & 0o300 == 0o300 || st.uid != self.privileges.ids.uid {
            return f();
        }
        if let Err(e) = sys::fchmodat(dir, sys::EMPTY, (st.mode & 0o7777) | 0o300) {
            // (fchmodat2 with AT_EMPTY_PATH needs Linux 6.6: f then fails as it would have.)
            log::debug!("copy-up: cannot lend owner write to a directory: {e}");
            return f();
        }
        let r = f();
        if let Err(e) = sys::fchmodat(dir, sys::EMPTY, st.mode & 0o7777) {
            log::warn!("copy-up: could not put a directory's mode back: {e}");
        }
        r
    }

    /// The file to copy, opened for reading; one whose mode denies the daemon (a 0000 file of
    /// an ordinary user) through the opener, as the kernel's mounter credentials would.
    fn open_source(&self, dir: BorrowedFd<'_>, name: &CStr) -> FsResult<OwnedFd> {
        match sys::openat(dir, name, libc::O_RDONLY | libc::O_NOATIME, 0) {
            Err(e) if e == Errno::EACCES => match &self.opener {
                Some(o) => o.open_read(dir, name),
                None => Err(e),
            },
            other => other,
        }
    }

    /// An xattr of the object to copy; through the opener when its mode denies the daemon
    /// reading a `user.*` one (as for its data, see `open_source`).
    fn source_xattr(&self, dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> FsResult<Vec<u8>> {
        match sys::getxattr_vec(dir, name, attr) {
            Err(e) if e == Errno::EACCES => match &self.opener {
                Some(o) => o.getxattr(dir, name, attr),
                None => Err(e),
            },
            other => other,
        }
    }

    /// xattrs, owner, mode (not a symlink's: it has none of its own) and times of a
    /// directory, symlink or special file, by name.
    fn finish_attrs(
        &self,
        sdir: BorrowedFd<'_>,
        sname: &CStr,
        src: &Stat,
        work: BorrowedFd<'_>,
        tmp: &CStr,
    ) -> FsResult<()> {
        self.copy_xattrs(sdir, sname, |a, v| sys::setxattrat(work, tmp, a, v, 0))?;
        let owner = self.ids.copy_up_owner(src);
        sys::fchownat(work, tmp, owner.uid, owner.gid)?;
        if src.file_type() != libc::S_IFLNK {
            let mut mode = src.mode & 0o7777;
            if src.is_dir() && self.dir_mode_deferred(mode) {
                mode |= 0o700; // its own mode once in place (`place_copy`)
            }
            sys::fchmodat(work, tmp, mode)?;
        }
        let (a, m) = times(src);
        sys::utimensat(work, tmp, a, m)
    }
}
