//! `layover diff`: what the upper layer changes against the merged view of the lowers.
//!
//! The upper is walked raw, one directory at a time (`Query::layer_entries`, which
//! classifies each entry with the core's whiteout and opaque rules); the lowers are asked
//! as the merged view of the lowers alone (a second read-only overlay without the upper:
//! `Query::list` per directory, the daemon's own lookup and readdir), so a name "exists
//! below" exactly when a mount of the lowers would show it. Only objects that both sides
//! hold are compared field by field, on the real objects.

use super::output::{Json, show_path, type_name};
use super::{Outcome, io_error, write_error};
use crate::config::{Stack, XattrNs};
use crate::error::{Errno, FsResult, StartupError};
use crate::handle::DirEntry;
use crate::overlay::{LayerDir, LayerObj, OpaqueBy, Overlay, Query, WhiteoutKind};
use crate::sys::Stat;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    /// Data changed (content, link target or device number); `meta` lists metadata that
    /// changed too.
    Data {
        meta: Vec<&'static str>,
    },
    /// Only metadata changed: which of mode, owner, mtime, xattrs.
    Meta(Vec<&'static str>),
    /// Replaced by an object of another type.
    Type {
        from: u32,
        to: u32,
    },
    Deleted(WhiteoutKind),
    /// A directory replaced opaquely; `hidden`: how many lower entries it hides.
    Opaque {
        by: OpaqueBy,
        hidden: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub path: Vec<Vec<u8>>,
    pub change: Change,
}

impl Item {
    pub fn letter(&self) -> char {
        match self.change {
            Change::Added => 'A',
            Change::Data { .. } | Change::Meta(_) | Change::Type { .. } => 'M',
            Change::Deleted(_) => 'D',
            Change::Opaque { .. } => 'O',
        }
    }

    pub fn text(&self) -> String {
        let path = show_path(&self.path);
        let detail = match &self.change {
            Change::Added => String::new(),
            Change::Data { meta } if meta.is_empty() => "  data".into(),
            Change::Data { meta } => format!("  data, metadata: {}", meta.join(", ")),
            Change::Meta(m) => format!("  metadata: {}", m.join(", ")),
            Change::Type { from, to } => {
                format!("  type: {} -> {}", type_name(*from), type_name(*to))
            }
            Change::Deleted(k) => format!("  {}", super::explain::whiteout_kind(*k)),
            Change::Opaque { by, hidden } => {
                let by = match by {
                    OpaqueBy::Xattr => "overlay.opaque=y",
                    OpaqueBy::AufsMarker => ".wh..wh..opq",
                };
                let s = if *hidden == 1 { "entry" } else { "entries" };
                format!("  opaque directory ({by}), hides {hidden} lower {s}")
            }
        };
        format!("{} {path}{detail}", self.letter())
    }

    pub fn json(&self) -> Json {
        let mut o = vec![
            ("change", Json::str(self.letter().to_string())),
            ("path", Json::str(show_path(&self.path))),
        ];
        let list = |m: &[&'static str]| Json::Arr(m.iter().map(|s| Json::str(*s)).collect());
        match &self.change {
            Change::Added => o.push(("what", Json::str("added"))),
            Change::Data { meta } => {
                o.push(("what", Json::str("data")));
                o.push(("metadata", list(meta)));
            }
            Change::Meta(m) => {
                o.push(("what", Json::str("metadata")));
                o.push(("metadata", list(m)));
            }
            Change::Type { from, to } => {
                o.push(("what", Json::str("type")));
                o.push(("from", Json::str(type_name(*from))));
                o.push(("to", Json::str(type_name(*to))));
            }
            Change::Deleted(k) => {
                o.push(("what", Json::str("deleted")));
                let k = match k {
                    WhiteoutKind::CharDev => "chardev",
                    WhiteoutKind::Xattr => "xattr",
                    WhiteoutKind::Aufs => "aufs",
                };
                o.push(("whiteout", Json::str(k)));
            }
            Change::Opaque { by, hidden } => {
                o.push(("what", Json::str("opaque")));
                let by = match by {
                    OpaqueBy::Xattr => "xattr",
                    OpaqueBy::AufsMarker => "aufs",
                };
                o.push(("opaque", Json::str(by)));
                o.push(("hidden", Json::Num(*hidden as u64)));
            }
        }
        Json::Obj(o)
    }
}

/// The two views a diff reads: the upper raw (layer 0 of `up`), the lowers merged (`low`).
struct Differ<'a, 'b> {
    up: Query<'a>,
    low: Query<'a>,
    ns: XattrNs,
    emit: &'b mut dyn FnMut(Item) -> std::io::Result<()>,
    progress: super::progress::Progress,
}

fn rel(comps: &[Vec<u8>]) -> PathBuf {
    comps
        .iter()
        .map(|c| std::ffi::OsStr::from_bytes(c))
        .collect()
}

/// The lower layers' directories at one path, opened when first needed.
struct LowerDirs {
    path: PathBuf,
    dirs: HashMap<usize, Option<LayerDir>>,
}

impl LowerDirs {
    fn get<'s>(&'s mut self, q: &Query<'_>, e: &DirEntry) -> FsResult<Option<&'s LayerDir>> {
        let i = e.layer.index();
        if !self.dirs.contains_key(&i) {
            let d = q.layer_dir(e.layer, &self.path)?;
            self.dirs.insert(i, d);
        }
        Ok(self.dirs.get(&i).and_then(Option::as_ref))
    }
}

impl Differ<'_, '_> {
    fn out(&mut self, comps: &[Vec<u8>], change: Change) -> FsResult<()> {
        let item = Item {
            path: comps.to_vec(),
            change,
        };
        (self.emit)(item).map_err(|_| Errno::EIO)
    }

    /// The merged listing of the lowers at `comps`, by name (empty where the lowers hold no
    /// directory there).
    fn lower_listing(&self, comps: &[Vec<u8>]) -> FsResult<HashMap<Vec<u8>, DirEntry>> {
        match self.low.list(&rel(comps)) {
            Ok(v) => Ok(v.into_iter().map(|e| (e.name.clone(), e)).collect()),
            Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => Ok(HashMap::new()),
            Err(e) => Err(e),
        }
    }

    /// Diffs upper directory `udir` at `comps`; `below`: whether the lowers may hold
    /// anything here (false inside an added or opaque directory: all is added).
    fn dir(&mut self, comps: &mut Vec<Vec<u8>>, udir: &LayerDir, below: bool) -> FsResult<()> {
        let mut entries = self.up.layer_entries(udir)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let lower = if below {
            self.lower_listing(comps)?
        } else {
            HashMap::new()
        };
        let mut ldirs = LowerDirs {
            path: rel(comps),
            dirs: HashMap::new(),
        };
        let live: std::collections::HashSet<&[u8]> = entries
            .iter()
            .filter(|(_, o)| matches!(o, LayerObj::Dir { .. } | LayerObj::Other(_)))
            .map(|(n, _)| n.as_slice())
            .collect();
        let mut deleted: Vec<(Vec<u8>, WhiteoutKind)> = Vec::new();
        for (name, obj) in &entries {
            match obj {
                LayerObj::Whiteout(k, _) if lower.contains_key(name) => {
                    deleted.push((name.clone(), *k));
                }
                LayerObj::AufsWhiteout { hides, .. }
                    if lower.contains_key(hides) && !live.contains(hides.as_slice()) =>
                {
                    deleted.push((hides.clone(), WhiteoutKind::Aufs));
                }
                _ => {}
            }
        }
        deleted.sort();
        let mut deleted = deleted.into_iter().peekable();
        for (name, obj) in &entries {
            self.progress.tick();
            // Deletions are listed in name order with the rest.
            while let Some((d, k)) = deleted.next_if(|(d, _)| d < name) {
                comps.push(d);
                self.out(comps, Change::Deleted(k))?;
                comps.pop();
            }
            comps.push(name.clone());
            let r = self.entry(comps, udir, obj, lower.get(name), &mut ldirs);
            comps.pop();
            r?;
        }
        for (d, k) in deleted {
            comps.push(d);
            self.out(comps, Change::Deleted(k))?;
            comps.pop();
        }
        Ok(())
    }

    /// One live upper entry (the last of `comps`) against what the lowers show there.
    fn entry(
        &mut self,
        comps: &mut Vec<Vec<u8>>,
        udir: &LayerDir,
        obj: &LayerObj,
        lower: Option<&DirEntry>,
        ldirs: &mut LowerDirs,
    ) -> FsResult<()> {
        let name = comps.last().cloned().unwrap_or_default();
        let (ust, opaque) = match obj {
            LayerObj::Dir { stat, opaque, .. } => (*stat, *opaque),
            LayerObj::Other(stat) => (*stat, None),
            _ => return Ok(()), // whiteouts (above) and AUFS metadata
        };
        let Some(le) = lower else {
            self.out(comps, Change::Added)?;
            return self.descend(comps, udir, &name, obj, false);
        };
        let low = match ldirs.get(&self.low, le)? {
            Some(ld) => self.low.layer_object(ld, &name)?,
            None => None,
        };
        let Some(low) = low.filter(|l| matches!(l, LayerObj::Dir { .. } | LayerObj::Other(_)))
        else {
            // Listed below but gone since: nothing to compare against.
            self.out(comps, Change::Added)?;
            return self.descend(comps, udir, &name, obj, false);
        };
        let lst = *low.stat();
        if lst.file_type() != ust.file_type() {
            self.out(
                comps,
                Change::Type {
                    from: lst.mode,
                    to: ust.mode,
                },
            )?;
            return self.descend(comps, udir, &name, obj, false);
        }
        if let Some(by) = opaque {
            let hidden = self.lower_listing(comps)?.len();
            self.out(comps, Change::Opaque { by, hidden })?;
            return self.descend(comps, udir, &name, obj, false);
        }
        let ld = ldirs.get(&self.low, le)?.ok_or(Errno::ENOENT)?;
        let meta = self.meta_changes(udir, ld, &name, &ust, &lst)?;
        let data = !ust.is_dir() && self.data_differs(udir, ld, &name, &ust, &lst)?;
        if data {
            self.out(comps, Change::Data { meta })?;
        } else if !meta.is_empty() {
            self.out(comps, Change::Meta(meta))?;
        }
        self.descend(comps, udir, &name, obj, true)
    }

    fn descend(
        &mut self,
        comps: &mut Vec<Vec<u8>>,
        udir: &LayerDir,
        name: &[u8],
        obj: &LayerObj,
        below: bool,
    ) -> FsResult<()> {
        if !matches!(obj, LayerObj::Dir { .. }) {
            return Ok(());
        }
        let sub = self.up.layer_subdir(udir, name)?;
        self.dir(comps, &sub, below)
    }

    /// Which of mode, owner, mtime and xattrs differ.
    fn meta_changes(
        &self,
        udir: &LayerDir,
        ldir: &LayerDir,
        name: &[u8],
        u: &Stat,
        l: &Stat,
    ) -> FsResult<Vec<&'static str>> {
        let mut m = Vec::new();
        if u.mode & 0o7777 != l.mode & 0o7777 {
            m.push("mode");
        }
        if (u.uid, u.gid) != (l.uid, l.gid) {
            m.push("owner");
        }
        if u.mtime != l.mtime {
            m.push("mtime");
        }
        if self.shown_xattrs(&self.up, udir, name)? != self.shown_xattrs(&self.low, ldir, name)? {
            m.push("xattrs");
        }
        Ok(m)
    }

    /// The xattrs the merged view shows for an object (private markers left out, escaped
    /// names unescaped), sorted.
    fn shown_xattrs(
        &self,
        q: &Query<'_>,
        dir: &LayerDir,
        name: &[u8],
    ) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let all = match q.layer_xattrs(dir, name) {
            Ok(v) => v,
            Err(e) if e == Errno::EOPNOTSUPP => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut v: Vec<(Vec<u8>, Vec<u8>)> = all
            .into_iter()
            .filter_map(|(n, val)| crate::whiteout::from_real_xattr(self.ns, &n).map(|n| (n, val)))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Whether the data differs: content (compared byte by byte when the sizes agree), a
    /// symlink's target, a device's number.
    fn data_differs(
        &self,
        udir: &LayerDir,
        ldir: &LayerDir,
        name: &[u8],
        u: &Stat,
        l: &Stat,
    ) -> FsResult<bool> {
        match u.file_type() {
            libc::S_IFREG => {
                if u.size != l.size {
                    return Ok(true);
                }
                let a = self.up.layer_open(udir, name)?;
                let b = self.low.layer_open(ldir, name)?;
                Ok(!same_content(a, b).map_err(|_| Errno::EIO)?)
            }
            libc::S_IFLNK => {
                Ok(self.up.layer_readlink(udir, name)? != self.low.layer_readlink(ldir, name)?)
            }
            libc::S_IFCHR | libc::S_IFBLK => Ok(u.rdev != l.rdev),
            _ => Ok(false),
        }
    }
}

fn same_content(mut a: std::fs::File, mut b: std::fs::File) -> std::io::Result<bool> {
    let mut x = vec![0u8; 128 * 1024];
    let mut y = vec![0u8; 128 * 1024];
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Diffs a stack's upper against its lowers, calling `emit` for each change in walk order
/// (directories before their contents, names sorted within a directory).
pub fn diff(
    stack: &Stack,
    emit: &mut dyn FnMut(Item) -> std::io::Result<()>,
) -> Result<(), StartupError> {
    let Some(upper) = &stack.upperdir else {
        return Err(StartupError::new(
            "diff needs an upperdir (-o upperdir=DIR)",
        ));
    };
    let up = Overlay::open_read_only(stack)?;
    let lowers = Stack {
        upperdir: None,
        workdir: None,
        ..stack.clone()
    };
    let low = Overlay::open_read_only(&lowers)?;
    let uq = up.query();
    let root = uq
        .layer_dir(uq.layers()[0].index, Path::new(""))
        .map_err(|e| io_error("upperdir", upper, e))?
        .ok_or_else(|| io_error("upperdir", upper, Errno::ENOENT))?;
    let mut d = Differ {
        up: uq,
        low: low.query(),
        ns: stack.xattr_ns,
        emit,
        progress: super::progress::Progress::new("diff"),
    };
    let mut comps = Vec::new();
    d.dir(&mut comps, &root, true)
        .map_err(|e| io_error("diff of upperdir", upper, e))
}

pub fn run(
    stack: &Stack,
    json: bool,
    out: &mut impl std::io::Write,
) -> Result<Outcome, StartupError> {
    let mut failed: Option<std::io::Error> = None;
    let mut emit = |item: Item| -> std::io::Result<()> {
        let mut line = if json {
            item.json().render()
        } else {
            item.text()
        };
        line.push('\n');
        out.write_all(line.as_bytes()).inspect_err(|e| {
            failed = Some(std::io::Error::new(e.kind(), e.to_string()));
        })
    };
    let r = diff(stack, &mut emit);
    if let Some(e) = failed {
        return Err(write_error(e));
    }
    r?;
    out.flush().map_err(write_error)?;
    Ok(Outcome::Clean)
}
