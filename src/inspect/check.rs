//! `layover check [--fix]`: a lint for a layer stack. Every layer is walked raw with the
//! core's per-layer helpers (so whiteouts and opaque directories are recognised by the
//! daemon's own rules); what the kernel's overlayfs would refuse, read differently, or what
//! is useless or contradictory, is reported with what it means.
//!
//! `--fix` repairs only what is safe: it removes whiteouts that hide nothing (inside an
//! opaque directory, or with nothing below), an empty `.wh.X` beside a live X, the
//! leftovers of an interrupted mount in `WORKDIR/work` (never `incompat/`), and converts
//! the `.wh.` whiteouts of an upper that mixes formats to the kernel's (0/0 devices, the
//! opaque xattr). It never removes a file with data, never writes a lower, re-checks each
//! object just before changing it, and refuses to run while a kernel overlay or a layover
//! daemon uses the upper or work directory.

use super::output::{Json, layer_label, show, show_path};
use super::{Outcome, write_error};
use crate::config::{Stack, XattrNs};
use crate::error::{Errno, FsResult, StartupError};
use crate::overlay::{LayerDir, LayerInfo, LayerObj, Overlay, Query, WhiteoutKind};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    fn word(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// A repair `--fix` may make (upper or work directory only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fix {
    /// Remove the whiteout or empty `.wh.` file `name` in upper directory `dir`.
    Remove { dir: Vec<Vec<u8>>, name: Vec<u8> },
    /// Replace `.wh.NAME` in `dir` by a 0/0 device at NAME.
    AufsToDev { dir: Vec<Vec<u8>>, hides: Vec<u8> },
    /// Replace `.wh..wh..opq` in `dir` by the opaque xattr on `dir`.
    OpqToXattr { dir: Vec<Vec<u8>> },
    /// Empty `WORKDIR/work` but for `incompat`.
    EmptyWork,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub code: &'static str,
    /// `upper`, `lowerN` or `workdir`.
    pub layer: String,
    pub path: String,
    /// What was found and what it means.
    pub message: String,
    pub fix: Option<Fix>,
    /// After `--fix`: whether the repair was made, or why not.
    pub fixed: Option<Result<(), String>>,
}

impl Finding {
    fn remains(&self) -> bool {
        self.severity != Severity::Info && !matches!(self.fixed, Some(Ok(())))
    }

    pub fn text(&self) -> String {
        let fix = match (&self.fix, &self.fixed) {
            (_, Some(Ok(()))) => " [fixed]".to_string(),
            (_, Some(Err(e))) => format!(" [not fixed: {e}]"),
            (Some(_), None) => " [--fix repairs it]".to_string(),
            (None, None) => String::new(),
        };
        format!(
            "{}: {}:{}: {}: {}{fix}",
            self.severity.word(),
            self.layer,
            self.path,
            self.code,
            self.message
        )
    }

    pub fn json(&self) -> Json {
        let fixed = match &self.fixed {
            None => Json::Null,
            Some(Ok(())) => Json::Bool(true),
            Some(Err(e)) => Json::str(e.clone()),
        };
        Json::Obj(vec![
            ("severity", Json::str(self.severity.word())),
            ("code", Json::str(self.code)),
            ("layer", Json::str(self.layer.clone())),
            ("path", Json::str(self.path.clone())),
            ("message", Json::str(self.message.clone())),
            ("fixable", Json::Bool(self.fix.is_some())),
            ("fixed", fixed),
        ])
    }
}

/// What a layer walk counts and remembers for the per-layer findings.
#[derive(Default)]
struct LayerTally {
    dev_whiteouts: usize,
    aufs: Vec<(Vec<Vec<u8>>, LayerObj, Vec<u8>)>,
}

struct Checker<'a> {
    q: Query<'a>,
    /// The lowers merged without the upper (for "hides nothing"), when there is an upper.
    low: Option<Query<'a>>,
    layers: Vec<LayerInfo>,
    ns: XattrNs,
    out: Vec<Finding>,
    progress: super::progress::Progress,
}

fn other_ns(ns: XattrNs) -> XattrNs {
    match ns {
        XattrNs::Trusted => XattrNs::User,
        XattrNs::User => XattrNs::Trusted,
    }
}

/// The overlay marker names (after the prefix) an object carries in namespace `ns`;
/// escaped names (`overlay.overlay.*`, user data of a nested overlay) are not markers.
fn markers(xattrs: &[(Vec<u8>, Vec<u8>)], ns: XattrNs) -> Vec<(Vec<u8>, Vec<u8>)> {
    let prefix = crate::whiteout::xattr_names(ns).prefix;
    xattrs
        .iter()
        .filter(|(n, _)| crate::whiteout::is_private_xattr(ns, n))
        .filter_map(|(n, v)| n.strip_prefix(prefix).map(|r| (r.to_vec(), v.clone())))
        .collect()
}

impl Checker<'_> {
    fn is_upper(&self, layer: usize) -> bool {
        self.layers[layer].upper
    }

    #[allow(clippy::too_many_arguments)]
    fn find(
        &mut self,
        severity: Severity,
        code: &'static str,
        layer: usize,
        path: &[Vec<u8>],
        message: String,
        fix: Option<Fix>,
    ) {
        self.out.push(Finding {
            severity,
            code,
            layer: layer_label(&self.layers, layer),
            path: show_path(path),
            message,
            fix,
            fixed: None,
        });
    }

    fn layer(&mut self, i: usize) -> FsResult<()> {
        let idx = self.layers[i].index;
        let Some(root) = self.q.layer_dir(idx, Path::new(""))? else {
            return Err(Errno::ENOENT);
        };
        let mut tally = LayerTally::default();
        let mut comps = Vec::new();
        self.object_markers(i, &root, b".", &comps, None)?;
        self.dir(i, &root, &mut comps, false, &mut tally)?;
        self.layer_formats(i, tally);
        Ok(())
    }

    /// Walks one directory of layer `i`; `opaque`: the directory is opaque.
    fn dir(
        &mut self,
        i: usize,
        d: &LayerDir,
        comps: &mut Vec<Vec<u8>>,
        opaque: bool,
        tally: &mut LayerTally,
    ) -> FsResult<()> {
        let mut entries = self.q.layer_entries(d)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let live: Vec<Vec<u8>> = entries
            .iter()
            .filter(|(_, o)| matches!(o, LayerObj::Dir { .. } | LayerObj::Other(_)))
            .map(|(n, _)| n.clone())
            .collect();
        for (name, obj) in &entries {
            self.progress.tick();
            comps.push(name.clone());
            let r = self.entry(i, d, comps, obj, opaque, &live, tally);
            comps.pop();
            r?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        i: usize,
        d: &LayerDir,
        comps: &mut Vec<Vec<u8>>,
        obj: &LayerObj,
        opaque: bool,
        live: &[Vec<u8>],
        tally: &mut LayerTally,
    ) -> FsResult<()> {
        let name = comps.last().cloned().unwrap_or_default();
        let dir_comps = comps[..comps.len() - 1].to_vec();
        let upper = self.is_upper(i);
        self.object_markers(i, d, &name, comps, Some(obj))?;
        match obj {
            LayerObj::Whiteout(kind, _) => {
                if *kind == WhiteoutKind::CharDev {
                    tally.dev_whiteouts += 1;
                }
                let fix = upper.then(|| Fix::Remove {
                    dir: dir_comps,
                    name: name.clone(),
                });
                self.useless_whiteout(i, comps, comps, &name, opaque, fix)?;
            }
            LayerObj::AufsWhiteout { hides, stat } => {
                tally
                    .aufs
                    .push((dir_comps.clone(), obj.clone(), name.clone()));
                let empty = stat.is_reg() && stat.size == 0;
                let fix = (upper && empty).then(|| Fix::Remove {
                    dir: dir_comps.clone(),
                    name: name.clone(),
                });
                self.aufs_whiteout(i, comps, hides, opaque, live.contains(hides), fix)?;
            }
            LayerObj::AufsOpaque(_) => {
                tally.aufs.push((dir_comps, obj.clone(), name.clone()));
            }
            LayerObj::Dir { opaque: op, .. } => {
                let sub = self.q.layer_subdir(d, &name)?;
                self.dir(i, &sub, comps, opaque || op.is_some(), tally)?;
            }
            LayerObj::AufsMeta(_) | LayerObj::Other(_) => {}
        }
        Ok(())
    }

    /// A `.wh.HIDES` file (the last of `comps`): beside a live HIDES, or hiding nothing.
    fn aufs_whiteout(
        &mut self,
        i: usize,
        comps: &[Vec<u8>],
        hides: &[u8],
        opaque: bool,
        beside_live: bool,
        fix: Option<Fix>,
    ) -> FsResult<()> {
        let name = comps.last().cloned().unwrap_or_default();
        if !beside_live {
            let mut hidden = comps[..comps.len() - 1].to_vec();
            hidden.push(hides.to_vec());
            return self.useless_whiteout(i, comps, &hidden, hides, opaque, fix);
        }
        let msg = format!(
            "{} stands beside a live {h} in the same layer: layover shows {h} (a directory \
             there merges with the lowers), the kernel shows both names, and OCI tools \
             applying this layer delete the lower {h} first",
            show(&name),
            h = show(hides),
        );
        self.find(
            Severity::Warning,
            "aufs-whiteout-beside-entry",
            i,
            comps,
            msg,
            fix,
        );
        Ok(())
    }

    /// A whiteout that hides nothing: inside an opaque directory (every layer), or, in the
    /// upper, over a name the lowers do not show.
    /// `comps`: the whiteout's own path (reported); `hidden`: the path it hides.
    fn useless_whiteout(
        &mut self,
        i: usize,
        comps: &[Vec<u8>],
        hidden: &[Vec<u8>],
        name: &[u8],
        opaque: bool,
        fix: Option<Fix>,
    ) -> FsResult<()> {
        if opaque {
            self.find(
                Severity::Warning,
                "whiteout-in-opaque-dir",
                i,
                comps,
                "a whiteout inside an opaque directory hides nothing: the directory already \
                 hides every lower entry"
                    .into(),
                fix,
            );
            return Ok(());
        }
        if !self.is_upper(i) {
            return Ok(());
        }
        let Some(low) = &self.low else { return Ok(()) };
        let rel: PathBuf = hidden
            .iter()
            .map(|c| std::ffi::OsStr::from_bytes(c))
            .collect();
        match low.resolve(&rel) {
            Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => {
                let what = format!(
                    "the whiteout for {} hides nothing: no lower layer shows that name",
                    show(name)
                );
                self.find(Severity::Info, "useless-whiteout", i, comps, what, fix);
                Ok(())
            }
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }
}

impl Checker<'_> {
    /// Findings from an object's overlay xattrs. `obj`: None for the layer root.
    fn object_markers(
        &mut self,
        i: usize,
        d: &LayerDir,
        name: &[u8],
        comps: &[Vec<u8>],
        obj: Option<&LayerObj>,
    ) -> FsResult<()> {
        let xattrs = match self.q.layer_xattrs(d, name) {
            Ok(v) => v,
            Err(e) if e == Errno::EOPNOTSUPP => return Ok(()),
            Err(e) => return Err(e),
        };
        if xattrs.is_empty() {
            return Ok(());
        }
        let mine = markers(&xattrs, self.ns);
        let theirs = markers(&xattrs, other_ns(self.ns));
        let prefix = show(crate::whiteout::xattr_names(self.ns).prefix);
        if !mine.is_empty() && !theirs.is_empty() {
            let other = show(crate::whiteout::xattr_names(other_ns(self.ns)).prefix);
            let msg = format!(
                "overlay markers in both namespaces ({prefix}* read now, {other}* too): which \
                 are read depends on the userxattr option, and they {}",
                if mine == theirs { "agree" } else { "disagree" }
            );
            self.find(
                Severity::Warning,
                "markers-in-both-namespaces",
                i,
                comps,
                msg,
                None,
            );
        }
        for (m, v) in &mine {
            self.one_marker(i, comps, obj, &prefix, m, v, d.xwhiteouts);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn one_marker(
        &mut self,
        i: usize,
        comps: &[Vec<u8>],
        obj: Option<&LayerObj>,
        prefix: &str,
        m: &[u8],
        v: &[u8],
        parent_x: bool,
    ) {
        let (sev, code, msg) = match m {
            b"redirect" => (
                Severity::Error,
                "redirect-marker",
                format!(
                    "{prefix}redirect={}: a directory renamed by the kernel with redirect_dir=on; \
                     layover does not follow redirects and shows it without its lower contents",
                    show(v)
                ),
            ),
            b"metacopy" => (
                Severity::Error,
                "metacopy-marker",
                format!(
                    "{prefix}metacopy: a metadata-only copy-up (metacopy=on) whose data stays in \
                     a lower; layover shows the upper file's own (empty or sparse) data"
                ),
            ),
            b"opaque" if !matches!(v, b"y" | b"x") => (
                Severity::Warning,
                "bad-opaque-value",
                format!(
                    "{prefix}opaque={}: neither y nor x, so ignored (the directory is not opaque)",
                    show(v)
                ),
            ),
            b"whiteout"
                if !parent_x
                    && matches!(obj, Some(LayerObj::Other(st)) if st.is_reg() && st.size == 0) =>
            {
                (
                    Severity::Warning,
                    "stray-xattr-whiteout",
                    format!(
                        "an empty file marked {prefix}whiteout outside a directory marked \
                         {prefix}opaque=x: read as a plain empty file, not a whiteout"
                    ),
                )
            }
            _ => return,
        };
        self.find(sev, code, i, comps, msg, None);
    }

    /// Per-layer findings: whiteout formats.
    fn layer_formats(&mut self, i: usize, tally: LayerTally) {
        if tally.aufs.is_empty() {
            return;
        }
        let n = tally.aufs.len();
        if tally.dev_whiteouts == 0 {
            let msg = format!(
                "{n} AUFS/OCI whiteout file(s) (.wh.*): layover reads them; the kernel's \
                 overlayfs does not (it shows them as files, and the names they hide)"
            );
            self.find(Severity::Info, "aufs-whiteouts", i, &[], msg, None);
            return;
        }
        let upper = self.is_upper(i);
        for (dir, obj, name) in tally.aufs {
            let removed = Fix::Remove {
                dir: dir.clone(),
                name: name.clone(),
            };
            let removed = self.out.iter().any(|f| f.fix.as_ref() == Some(&removed));
            let mut path = dir.clone();
            path.push(name);
            let fix = match obj {
                _ if removed => None,
                LayerObj::AufsWhiteout { hides, stat }
                    if upper && stat.is_reg() && stat.size == 0 =>
                {
                    Some(Fix::AufsToDev { dir, hides })
                }
                LayerObj::AufsOpaque(_) if upper => Some(Fix::OpqToXattr { dir }),
                _ => None,
            };
            let msg = format!(
                "an AUFS/OCI whiteout in a layer that also holds {} 0/0 whiteout(s): the \
                 kernel's overlayfs reads only the latter",
                tally.dev_whiteouts
            );
            self.find(
                Severity::Warning,
                "mixed-whiteout-formats",
                i,
                &path,
                msg,
                fix,
            );
        }
    }
}

/// Whether an entry of `WORKDIR/work` is what a mount removes: everything but the volatile
/// mark (`incompat`, reported apart) and the note of an upper's whiteout format, which a
/// mount keeps (`#layover-whiteout-format`, written by a mount that writes `.wh.` files).
fn is_leftover(name: &std::ffi::OsStr) -> bool {
    name != "incompat" && name.as_bytes() != crate::whiteout::FORMAT_NOTE.to_bytes()
}

/// The leftovers in `WORKDIR/work` (`wk`), as names to show.
fn workdir_leftovers(wk: &Path) -> Vec<String> {
    std::fs::read_dir(wk)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name())
                .filter(|n| is_leftover(n))
                .map(|n| show(n.as_bytes()))
                .collect()
        })
        .unwrap_or_default()
}

/// Findings in the work directory (read with plain path calls: it is not a layer).
fn check_workdir(work: &Path, out: &mut Vec<Finding>) {
    let mut push = |severity, code, path: String, message: String, fix| {
        out.push(Finding {
            severity,
            code,
            layer: "workdir".into(),
            path,
            message,
            fix,
            fixed: None,
        })
    };
    let wk = work.join("work");
    if wk.join("incompat").join("volatile").exists() {
        push(
            Severity::Error,
            "workdir-volatile",
            "/work/incompat/volatile".into(),
            "a volatile mount did not end cleanly: the upper may be inconsistent; the \
             kernel's overlayfs refuses to mount until this is removed by hand"
                .into(),
            None,
        );
    }
    let left = workdir_leftovers(&wk);
    if !left.is_empty() {
        let mut names = left.clone();
        names.sort();
        names.truncate(10);
        push(
            Severity::Warning,
            "workdir-leftovers",
            "/work".into(),
            format!(
                "{} entr{} left by an interrupted mount ({}): staged copy-ups and whiteouts, \
                 never part of the merged view; a mount removes them",
                left.len(),
                if left.len() == 1 { "y" } else { "ies" },
                names.join(", ")
            ),
            Some(Fix::EmptyWork),
        );
    }
    let index = work.join("index");
    if std::fs::read_dir(&index).is_ok_and(|mut rd| rd.next().is_some()) {
        push(
            Severity::Info,
            "workdir-index",
            "/index".into(),
            "the kernel's inode index (index=on) is populated: layover does not use it; \
             mounting with the kernel and index=off, or other layers, is refused"
                .into(),
            None,
        );
    }
}

/// Checks a stack; the findings in walk order (layers top first, then the workdir).
pub fn check(stack: &Stack) -> Result<Vec<Finding>, StartupError> {
    let ov = Overlay::open_read_only(stack)?;
    let lowers = Stack {
        upperdir: None,
        workdir: None,
        ..stack.clone()
    };
    let low_ov = match stack.upperdir {
        Some(_) => Some(Overlay::open_read_only(&lowers)?),
        None => None,
    };
    let q = ov.query();
    let layers = q.layers();
    let mut c = Checker {
        q,
        low: low_ov.as_ref().map(Overlay::query),
        layers: layers.clone(),
        ns: stack.xattr_ns,
        out: Vec::new(),
        progress: super::progress::Progress::new("check"),
    };
    for (i, l) in layers.iter().enumerate() {
        c.layer(i)
            .map_err(|e| super::io_error("checking layer", &l.path, e))?;
    }
    let mut out = c.out;
    if let Some(w) = &stack.workdir {
        check_workdir(w, &mut out);
    }
    Ok(out)
}

/// Makes the repairs: on the upper through fds from its root, one component at a time.
struct Fixer {
    upper: Option<OwnedFd>,
    ns: XattrNs,
    work: Option<PathBuf>,
}

fn changed() -> String {
    "changed since the check; left alone".into()
}

impl Fixer {
    fn dir(&self, comps: &[Vec<u8>]) -> Result<OwnedFd, String> {
        let root = self.upper.as_ref().ok_or("no upper")?;
        let mut fd =
            crate::sys::open_dir_at(root.as_fd(), crate::sys::DOT).map_err(|e| e.to_string())?;
        for c in comps {
            let cn = crate::overlay::cname(c).map_err(|e| e.to_string())?;
            fd = crate::sys::open_dir_at(fd.as_fd(), &cn).map_err(|e| e.to_string())?;
        }
        Ok(fd)
    }

    fn apply(&self, fix: &Fix) -> Result<(), String> {
        use crate::sys;
        let err = |e: Errno| e.to_string();
        let cn = |n: &[u8]| crate::overlay::cname(n).map_err(err);
        match fix {
            Fix::Remove { dir, name } => {
                let d = self.dir(dir)?;
                let st = sys::fstatat(d.as_fd(), &cn(name)?).map_err(err)?;
                let marker = (st.is_chr() && st.rdev == 0) || (st.is_reg() && st.size == 0);
                if !marker {
                    return Err(changed());
                }
                sys::unlinkat(d.as_fd(), &cn(name)?, false).map_err(err)
            }
            Fix::AufsToDev { dir, hides } => {
                let d = self.dir(dir)?;
                let wh = crate::whiteout::aufs_whiteout_for(hides).ok_or_else(changed)?;
                let st = sys::fstatat(d.as_fd(), &cn(&wh)?).map_err(err)?;
                let free = sys::fstatat(d.as_fd(), &cn(hides)?) == Err(Errno::ENOENT);
                if !(st.is_reg() && st.size == 0 && free) {
                    return Err(changed());
                }
                sys::mknodat(d.as_fd(), &cn(hides)?, libc::S_IFCHR, 0).map_err(err)?;
                sys::unlinkat(d.as_fd(), &cn(&wh)?, false).map_err(err)
            }
            Fix::OpqToXattr { dir } => {
                let d = self.dir(dir)?;
                let marker = cn(crate::whiteout::OPAQUE_MARKER)?;
                sys::fstatat(d.as_fd(), &marker).map_err(|_| changed())?;
                let name = crate::whiteout::xattr_names(self.ns).opaque;
                sys::setxattrat(d.as_fd(), sys::DOT, name, b"y", 0).map_err(err)?;
                sys::unlinkat(d.as_fd(), &marker, false).map_err(err)
            }
            Fix::EmptyWork => self.empty_work(),
        }
    }

    fn empty_work(&self) -> Result<(), String> {
        let wk = self.work.as_ref().ok_or("no workdir")?.join("work");
        let rd = std::fs::read_dir(&wk).map_err(|e| e.to_string())?;
        for e in rd.flatten() {
            if !is_leftover(&e.file_name()) {
                continue;
            }
            let p = e.path();
            let r = match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
                Ok(_) => std::fs::remove_file(&p),
                Err(e) => Err(e),
            };
            r.map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(())
    }
}

/// Refuses `--fix` while anything uses the upper or work directory.
fn fix_allowed(stack: &Stack) -> Result<(), StartupError> {
    for d in stack.upperdir.iter().chain(stack.workdir.iter()) {
        let users = super::live::users_of(d);
        if !users.is_empty() {
            return Err(StartupError::new(format!(
                "--fix refused: '{}' is in use ({}); unmount first",
                d.display(),
                users.join("; ")
            )));
        }
    }
    Ok(())
}

/// Applies the fixes of `findings` (each re-checks what it changes first).
pub fn fix(stack: &Stack, findings: &mut [Finding]) -> Result<(), StartupError> {
    if !findings.iter().any(|f| f.fix.is_some()) {
        return Ok(());
    }
    fix_allowed(stack)?;
    let upper = match &stack.upperdir {
        Some(u) => {
            let c = crate::overlay::cname(u.as_os_str().as_bytes())
                .map_err(|e| super::io_error("upperdir", u, e))?;
            Some(crate::sys::open_dir(&c).map_err(|e| super::io_error("upperdir", u, e))?)
        }
        None => None,
    };
    let fixer = Fixer {
        upper,
        ns: stack.xattr_ns,
        work: stack.workdir.clone(),
    };
    for f in findings.iter_mut() {
        if let Some(x) = &f.fix {
            f.fixed = Some(fixer.apply(x));
        }
    }
    // Another finding about an object a repair removed is settled with it.
    let removed: Vec<(String, String)> = findings
        .iter()
        .filter(|f| matches!(f.fix, Some(Fix::Remove { .. })) && f.fixed == Some(Ok(())))
        .map(|f| (f.layer.clone(), f.path.clone()))
        .collect();
    for f in findings.iter_mut().filter(|f| f.fix.is_none()) {
        if removed.contains(&(f.layer.clone(), f.path.clone())) {
            f.fixed = Some(Ok(()));
        }
    }
    Ok(())
}

pub fn run(
    stack: &Stack,
    do_fix: bool,
    json: bool,
    out: &mut impl std::io::Write,
) -> Result<Outcome, StartupError> {
    let mut findings = check(stack)?;
    if do_fix {
        fix(stack, &mut findings)?;
    }
    let mut text = String::new();
    for f in &findings {
        text.push_str(&if json { f.json().render() } else { f.text() });
        text.push('\n');
    }
    if !json {
        let count = |s| findings.iter().filter(|f| f.severity == s).count();
        let fixed = findings
            .iter()
            .filter(|f| matches!(f.fixed, Some(Ok(()))))
            .count();
        text.push_str(&format!(
            "{} finding(s): {} error(s), {} warning(s), {} info; {fixed} fixed\n",
            findings.len(),
            count(Severity::Error),
            count(Severity::Warning),
            count(Severity::Info)
        ));
    }
    out.write_all(text.as_bytes()).map_err(write_error)?;
    Ok(if findings.iter().any(Finding::remains) {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}
