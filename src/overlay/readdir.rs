//! Merged directory listings: read each layer's directory once, classify its entries
//! (I/O), then merge them with a pure function.

use super::lookup::Found;
use super::{Overlay, cname};
use crate::error::FsResult;
use crate::handle::{DirEntry, Fh};
use crate::inode::{Ino, Inode, Presence, RealId};
use crate::layer::LayerIdx;
use crate::sys::RawDirEntry;
use crate::sys::{self, Stat};
use crate::whiteout;
use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

/// One entry of one layer's directory, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    pub name: Vec<u8>,
    /// Our inode number for it.
    pub ino: Ino,
    pub d_type: u8,
    /// A whiteout (of any format): hides `name` in the layers below.
    pub whiteout: bool,
}

/// Merges per-layer listings (top first) into the merged view: the first layer that has a
/// name wins; a whiteout hides the name in every layer below it. `.` and `..` are not part
/// of the input.
pub fn merge_layers(layers: &[(LayerIdx, Vec<LayerEntry>)]) -> Vec<DirEntry> {
    let mut out: Vec<DirEntry> = Vec::new();
    let mut seen: HashSet<&[u8]> = HashSet::new();
    for (layer, entries) in layers {
        for e in entries {
            if seen.contains(e.name.as_slice()) {
                continue;
            }
            if !e.whiteout {
                out.push(DirEntry {
                    name: e.name.clone(),
                    ino: e.ino,
                    d_type: e.d_type,
                    layer: *layer,
                });
            }
            // A whiteout or a winner: either way the name is settled for the layers below.
            // Within one layer a name appears once, so inserting after the check is enough.
            seen.insert(e.name.as_slice());
        }
    }
    out
}

/// What a listing is made for.
#[derive(Clone, Copy)]
struct ListFor {
    /// Whether xattr whiteouts (in an `opaque=x` directory) are whiteouts here; the kernel
    /// hides them from listings but counts them when it decides whether a directory is empty
    /// (it checks them only while iterating).
    xwhiteouts_hide: bool,
    /// Whether a regular file gets the type its override_stat attribute shows (readdir's
    /// d_type); readdirplus sends each entry's attributes, which have it, and the emptiness
    /// check needs no types: neither reads the attributes twice.
    shown_types: bool,
}

impl Overlay {
    /// Reads and classifies one layer's copy of directory `dir`.
    fn layer_listing(
        &self,
        dir: &Arc<Inode>,
        p: crate::inode::Presence,
        what: ListFor,
    ) -> FsResult<Vec<LayerEntry>> {
        let dirfd = self.dir_fd(dir, p.layer)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | self.layers.noatime(p.layer);
        let rd = sys::openat(dirfd.as_fd(), sys::DOT, flags, 0)?;
        let raw = sys::read_dir_entries(rd.as_fd())?;
        let layer_dev = self.layers.get(p.layer)?.dev;
        let xwh = p.xwhiteouts && what.xwhiteouts_hide;
        let types = what.shown_types.then_some(p.layer);
        let mut hidden_by_aufs: Vec<Vec<u8>> = Vec::new();
        let mut out = Vec::with_capacity(raw.len());
        for e in raw {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            if whiteout::is_aufs_special(&e.name) {
                if let Some(target) = whiteout::aufs_hidden_name(&e.name) {
                    hidden_by_aufs.push(target.to_vec());
                }
                continue;
            }
            if let Some(entry) = self.classify(dirfd.as_fd(), (types, layer_dev), e, xwh)? {
                out.push(entry);
            }
        }
        // A `.wh.NAME` hides NAME below this layer, like a whiteout at NAME would.
        for name in hidden_by_aufs {
            if !out.iter().any(|e| e.name == name) {
                out.push(LayerEntry {
                    name,
                    ino: Ino(0),
                    d_type: libc::DT_UNKNOWN,
                    whiteout: true,
                });
            }
        }
        Ok(out)
    }

    /// One entry of a layer's directory `dir` (on device `layer_dev`): its number and type,
    /// and whether it is a whiteout (`xwh`: xattr whiteouts count). A stat is made only when
    /// getdents cannot tell (a character device may be a whiteout, an unknown type, a regular
    /// file that may be an xattr whiteout). With `types` (the layer), a regular file's type
    /// is the one its override_stat xattr shows, where the layer's objects carry them (a
    /// device kept in a file: `listed_reg_dtype`). None: it vanished since getdents.
    fn classify(
        &self,
        dir: BorrowedFd<'_>,
        (types, layer_dev): (Option<LayerIdx>, u64),
        e: RawDirEntry,
        xwh: bool,
    ) -> FsResult<Option<LayerEntry>> {
        let (mut d_type, mut id, mut whiteout) = (e.d_type, RealId::new(layer_dev, e.ino), false);
        let needs_stat =
            d_type == libc::DT_CHR || d_type == libc::DT_UNKNOWN || (xwh && d_type == libc::DT_REG);
        if needs_stat {
            let cn = cname(&e.name)?;
            let Ok(st) = sys::fstatat(dir, &cn) else {
                return Ok(None);
            };
            d_type = sys::dtype_of_mode(st.mode);
            id = RealId::of(&st);
            whiteout = self.is_whiteout(dir, &cn, &st, xwh);
        }
        if let Some(layer) = types
            && d_type == libc::DT_REG
            && !whiteout
        {
            d_type = self.listed_reg_dtype(layer, dir, &e.name);
        }
        let ino = if whiteout {
            Ino(0)
        } else {
            self.inodes.numbers.number(id)
        };
        Ok(Some(LayerEntry {
            name: e.name,
            ino,
            d_type,
            whiteout,
        }))
    }

    /// The merged listing of directory `ino`, with `.` and `..` first; `shown_types`: see
    /// `ListFor`.
    pub(crate) fn list_dir(&self, dir: &Arc<Inode>, shown_types: bool) -> FsResult<Vec<DirEntry>> {
        let what = ListFor {
            xwhiteouts_hide: true,
            shown_types,
        };
        self.list_dir_with(dir, what)
    }

    /// Whether a directory is empty in the merged view, as rmdir and rename judge it: like
    /// a listing, except that xattr whiteouts count as entries (the kernel's check does
    /// not look at them).
    pub(super) fn merged_empty(&self, dir: &Arc<Inode>) -> FsResult<bool> {
        let what = ListFor {
            xwhiteouts_hide: false,
            shown_types: false,
        };
        Ok(self.list_dir_with(dir, what)?.len() <= 2)
    }

    fn list_dir_with(&self, dir: &Arc<Inode>, what: ListFor) -> FsResult<Vec<DirEntry>> {
        let st = dir.state();
        let mut per_layer = Vec::with_capacity(st.layers.len());
        for p in st.layers.iter() {
            per_layer.push((p.layer, self.layer_listing(dir, *p, what)?));
        }
        let merged = merge_layers(&per_layer);
        let parent_ino = st.parent_ino();
        let mut out = Vec::with_capacity(merged.len() + 2);
        out.push(DirEntry {
            name: b".".to_vec(),
            ino: dir.ino,
            d_type: libc::DT_DIR,
            layer: LayerIdx::TOP,
        });
        out.push(DirEntry {
            name: b"..".to_vec(),
            ino: parent_ino,
            d_type: libc::DT_DIR,
            layer: LayerIdx::TOP,
        });
        out.extend(merged);
        Ok(out)
    }

    pub fn opendir(&self, ino: Ino) -> FsResult<Fh> {
        let inode = self.inode(ino)?;
        if !inode.is_dir() {
            return Err(crate::error::Errno::ENOTDIR);
        }
        Ok(self.handles.add_dir(crate::handle::DirHandle {
            inode,
            entries: parking_lot::Mutex::new(None),
        }))
    }

    /// The listing of an open directory, each entry with the type stat shows.
    pub fn readdir(&self, fh: Fh, offset: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        self.listing(fh, offset, true)
    }

    /// The listing of an open directory; built on the first call (offset 0) and kept for
    /// the life of the handle, so that offsets stay meaningful (rewinddir rebuilds it).
    /// `shown_types`: see `ListFor` (the kernel lists one handle either with READDIR or with
    /// READDIRPLUS).
    fn listing(&self, fh: Fh, offset: u64, shown_types: bool) -> FsResult<Arc<Vec<DirEntry>>> {
        let h = self.handles.dir(fh).ok_or(crate::error::Errno::EBADF)?;
        if offset != 0
            && let Some(e) = h.entries.lock().as_ref()
        {
            return Ok(Arc::clone(e));
        }
        let list = Arc::new(self.list_dir(&h.inode, shown_types)?);
        *h.entries.lock() = Some(Arc::clone(&list));
        Ok(list)
    }

    /// readdirplus: like readdir, but each entry (except `.` and `..`) comes with its
    /// attributes and a lookup reference, as if looked up. `emit(entry, next_offset, attr)`
    /// returns true when the reply is full; the entry it refused gets its reference back.
    pub fn readdirplus(
        &self,
        fh: Fh,
        offset: u64,
        mut emit: impl FnMut(&DirEntry, u64, &Stat) -> bool,
    ) -> FsResult<()> {
        let h = self.handles.dir(fh).ok_or(crate::error::Errno::EBADF)?;
        let list = self.listing(fh, offset, false)?;
        for (i, e) in list.iter().enumerate().skip(offset as usize) {
            let next = (i + 1) as u64;
            if e.name == b"." || e.name == b".." {
                let st = Stat {
                    ino: e.ino.0,
                    mode: libc::S_IFDIR,
                    ..Stat::default()
                };
                if emit(e, next, &st) {
                    break;
                }
                continue;
            }
            let Some(found) = self.found_from_listing(&h.inode, e)? else {
                continue; // vanished since the listing was made
            };
            let entry = self.enter(&h.inode, &e.name, found);
            let shown = DirEntry {
                ino: entry.inode.ino,
                ..e.clone()
            };
            if emit(&shown, next, &entry.attr) {
                self.forget(entry.inode.ino, 1);
                break;
            }
        }
        Ok(())
    }

    /// What a lookup of listed entry `e` would find, using what the listing already knows:
    /// a non-directory is settled by one stat in the layer that won.
    fn found_from_listing(&self, dir: &Arc<Inode>, e: &DirEntry) -> FsResult<Option<Found>> {
        if e.d_type != libc::DT_DIR {
            let dirfd = self.dir_fd(dir, e.layer)?;
            match sys::fstatat(dirfd.as_fd(), &cname(&e.name)?) {
                Ok(st) if !st.is_dir() => {
                    let layers = vec![Presence {
                        layer: e.layer,
                        xwhiteouts: false,
                    }];
                    return Ok(Some(Found { layers, stat: st }));
                }
                Ok(_) => {}
                Err(err) if err == crate::error::Errno::ENOENT => return Ok(None),
                Err(err) => return Err(err),
            }
        }
        self.resolve(dir, &e.name)
    }

    pub fn releasedir(&self, fh: Fh) {
        self.handles.remove_dir(fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, ino: u64, whiteout: bool) -> LayerEntry {
        LayerEntry {
            name: name.into(),
            ino: Ino(ino),
            d_type: libc::DT_REG,
            whiteout,
        }
    }

    #[test]
    fn top_wins_and_whiteouts_hide_below() {
        let upper = vec![e("a", 1, false), e("gone", 0, true)];
        let mid = vec![
            e("a", 2, false),
            e("b", 3, false),
            e("gone", 4, false),
            e("c", 0, true),
        ];
        let low = vec![e("c", 5, false), e("d", 6, false), e("b", 7, false)];
        let l = LayerIdx::new;
        let m = merge_layers(&[(l(0), upper), (l(1), mid), (l(2), low)]);
        let names: Vec<(String, u64)> = m
            .iter()
            .map(|d| (String::from_utf8_lossy(&d.name).into_owned(), d.ino.0))
            .collect();
        assert_eq!(
            names,
            vec![("a".into(), 1), ("b".into(), 3), ("d".into(), 6)]
        );
    }

    #[test]
    fn whiteout_in_same_layer_as_nothing_is_invisible() {
        let m = merge_layers(&[(LayerIdx::TOP, vec![e("x", 0, true)])]);
        assert!(m.is_empty());
    }
}
