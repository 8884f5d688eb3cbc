//! `layover explain PATH...`: why a path of the merged view looks as it does. For each
//! layer it says what stands at the path there (read with the core's per-layer helpers), and
//! for each object not shown, what hides it (a whiteout, an opaque directory, a
//! non-directory above); which layer supplies the object and which are merged into it (the
//! core's own lookup, `Query::resolve`); whether an upper object was copied up or created
//! there; where its inode number comes from; for a directory, which layer each entry comes
//! from and which whiteouts in it hide what.

use super::output::{Json, layer_label, show, show_path, type_name};
use crate::error::{Errno, FsResult};
use crate::overlay::{InoOrigin, LayerInfo, LayerObj, Node, OpaqueBy, Query, WhiteoutKind};
use crate::sys::Stat;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// What one layer holds at one component of the path.
#[derive(Clone, Debug)]
pub enum State {
    /// The layer's directory above exists; nothing at this name.
    Absent,
    /// A component above is missing or not a directory in this layer.
    NoParent,
    Obj(LayerObj),
}

/// The explanation of one path.
pub struct Explanation {
    pub comps: Vec<Vec<u8>>,
    pub layers: Vec<LayerInfo>,
    /// What the merged view has there (the core's lookup), or why not.
    pub node: Result<Node, Errno>,
    /// `states[layer][k]`: what the layer holds at the first k+1 components.
    pub states: Vec<Vec<State>>,
    /// Per layer: what it holds at the path (the last component; its root for `/`).
    pub here: Vec<String>,
    /// Per layer: its role (supplies, merged, hidden by ..., hides ...).
    pub role: Vec<String>,
    pub origin: Option<String>,
    pub ino_origin: Option<String>,
    /// For a directory: (name, layer index) of each merged entry.
    pub entries: Vec<(Vec<u8>, usize)>,
    /// For a directory: (name hidden, whiteout kind, layer index) of whiteouts in it.
    pub whiteouts: Vec<(Vec<u8>, String, usize)>,
}

/// The path's components below the merged root (`..` and `.` resolved lexically).
pub fn components(path: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.as_bytes().to_vec()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn rel_path(comps: &[Vec<u8>]) -> PathBuf {
    let mut p = PathBuf::new();
    for c in comps {
        p.push(std::ffi::OsStr::from_bytes(c));
    }
    p
}

/// What each component of `comps` is in layer `layer`.
fn layer_states(q: &Query<'_>, layer: usize, comps: &[Vec<u8>]) -> FsResult<Vec<State>> {
    let idx = q.layers()[layer].index;
    let mut out = Vec::with_capacity(comps.len());
    let mut dir = q.layer_dir(idx, Path::new(""))?;
    for c in comps {
        let Some(d) = dir.take() else {
            out.push(State::NoParent);
            continue;
        };
        match q.layer_object(&d, c)? {
            None => out.push(State::Absent),
            Some(obj) => {
                if matches!(obj, LayerObj::Dir { .. }) {
                    dir = Some(q.layer_subdir(&d, c)?);
                }
                out.push(State::Obj(obj));
            }
        }
    }
    Ok(out)
}

pub fn whiteout_kind(k: WhiteoutKind) -> &'static str {
    match k {
        WhiteoutKind::CharDev => "whiteout (char 0/0)",
        WhiteoutKind::Xattr => "whiteout (xattr, in an opaque=x directory)",
        WhiteoutKind::Aufs => "whiteout (.wh. file)",
    }
}

pub fn opaque_by(b: OpaqueBy, ns: crate::config::XattrNs) -> String {
    match b {
        OpaqueBy::Xattr => format!("{}opaque=y", show(crate::whiteout::xattr_names(ns).prefix)),
        OpaqueBy::AufsMarker => ".wh..wh..opq inside".into(),
    }
}

/// A short description of a layer object.
pub fn describe(obj: &LayerObj, ns: crate::config::XattrNs) -> String {
    match obj {
        LayerObj::Whiteout(k, _) => whiteout_kind(*k).into(),
        LayerObj::Dir {
            opaque: Some(b), ..
        } => format!("opaque directory ({})", opaque_by(*b, ns)),
        LayerObj::Dir {
            xwhiteouts: true, ..
        } => "directory (opaque=x: holds xattr whiteouts)".into(),
        LayerObj::Dir { .. } => "directory".into(),
        LayerObj::AufsWhiteout { .. } | LayerObj::AufsOpaque(_) | LayerObj::AufsMeta(_) => {
            "AUFS metadata (hidden)".into()
        }
        LayerObj::Other(st) => type_name(st.mode).into(),
    }
}

/// Why layer `i`'s object at the path is not part of the merged object: the first thing
/// met walking the path from the root, in the layers above `i`, that cuts `i` off.
fn why_hidden(x: &Explanation, i: usize, ns: crate::config::XattrNs) -> Option<String> {
    let n = x.comps.len();
    let mine_is_dir = matches!(x.states[i].last(), Some(State::Obj(LayerObj::Dir { .. })));
    for k in 0..n {
        let prefix = show_path(&x.comps[..=k]);
        for j in 0..i {
            let label = layer_label(&x.layers, j);
            let last = k + 1 == n;
            match &x.states[j][k] {
                State::Obj(LayerObj::Whiteout(kind, _)) => {
                    return Some(format!("{} {prefix} in {label}", whiteout_kind(*kind)));
                }
                State::Obj(LayerObj::Dir {
                    opaque: Some(b), ..
                }) => {
                    return Some(format!(
                        "opaque directory {prefix} in {label} ({})",
                        opaque_by(*b, ns)
                    ));
                }
                State::Obj(LayerObj::Dir { .. }) if last && !mine_is_dir => {
                    return Some(format!(
                        "the directory {prefix} in {label} lies above it (only directories merge)"
                    ));
                }
                State::Obj(obj @ LayerObj::Other(_)) => {
                    let what = describe(obj, ns);
                    return Some(if last {
                        format!("the {what} {prefix} in {label} lies above it")
                    } else {
                        format!("{prefix} is a {what} in {label}, which ends the merge there")
                    });
                }
                _ => {}
            }
        }
    }
    None
}

/// Explains `path` (relative to the merged root; a leading `/` is allowed).
pub fn explain(q: &Query<'_>, path: &Path) -> FsResult<Explanation> {
    let comps = components(path);
    let layers = q.layers();
    let mut states = Vec::with_capacity(layers.len());
    for i in 0..layers.len() {
        states.push(layer_states(q, i, &comps)?);
    }
    let node = q.resolve(&rel_path(&comps));
    let mut x = Explanation {
        comps,
        layers,
        node,
        states,
        here: Vec::new(),
        role: Vec::new(),
        origin: None,
        ino_origin: None,
        entries: Vec::new(),
        whiteouts: Vec::new(),
    };
    fill_roles(q, &mut x)?;
    if let Ok(node) = x.node.clone() {
        fill_node(q, &mut x, &node)?;
    }
    Ok(x)
}

/// What stands at the path in layer `i`, as an object (the layer root for `/`).
fn object_at(q: &Query<'_>, x: &Explanation, i: usize) -> FsResult<Option<LayerObj>> {
    match x.states[i].last() {
        Some(State::Obj(o)) => Ok(Some(o.clone())),
        Some(_) => Ok(None),
        None => {
            // The root: the layer's root directory as its parent lists it is not at hand;
            // its attributes and markers are read through the layer helpers.
            let idx = x.layers[i].index;
            let Some(d) = q.layer_dir(idx, Path::new(""))? else {
                return Ok(None);
            };
            let stat = crate::sys::fstatat(
                std::os::fd::AsFd::as_fd(&q.layer_open(&d, b".")?),
                crate::sys::EMPTY,
            )?;
            Ok(Some(LayerObj::Dir {
                stat,
                opaque: None,
                xwhiteouts: d.xwhiteouts,
            }))
        }
    }
}

fn fill_roles(q: &Query<'_>, x: &mut Explanation) -> FsResult<()> {
    let ns = q.xattr_ns();
    let used: Vec<usize> = match &x.node {
        Ok(n) => n.layers.iter().map(|l| l.index()).collect(),
        Err(_) => Vec::new(),
    };
    for i in 0..x.layers.len() {
        let obj = object_at(q, x, i)?;
        let here = match (&obj, x.states[i].last()) {
            (Some(o), _) => describe(o, ns),
            (None, Some(State::NoParent)) => "- (no parent directory here)".into(),
            (None, _) => "-".into(),
        };
        let role = if used.first() == Some(&i) {
            "supplies it".to_string()
        } else if used.contains(&i) {
            "merged into it".to_string()
        } else {
            match &obj {
                Some(
                    LayerObj::AufsWhiteout { .. } | LayerObj::AufsOpaque(_) | LayerObj::AufsMeta(_),
                ) => "never shown: a .wh. name is AUFS/OCI metadata".to_string(),
                Some(LayerObj::Whiteout(..)) => match why_hidden(x, i, ns) {
                    Some(w) => format!("inactive, hidden: {w}"),
                    None => hides_below(x, i),
                },
                Some(_) => match why_hidden(x, i, ns) {
                    Some(w) => format!("hidden: {w}"),
                    None => "hidden".into(),
                },
                None => String::new(),
            }
        };
        x.here.push(here);
        x.role.push(role);
    }
    Ok(())
}

/// The role of an active whiteout in layer `i`: which layers below it hides the name in.
fn hides_below(x: &Explanation, i: usize) -> String {
    let below: Vec<String> = (i + 1..x.layers.len())
        .filter(|&j| matches!(x.states[j].last(), Some(State::Obj(o)) if !matches!(o, LayerObj::Whiteout(..))))
        .map(|j| layer_label(&x.layers, j))
        .collect();
    if below.is_empty() {
        "hides the name (no layer below holds it)".into()
    } else {
        format!("hides the name in {}", below.join(", "))
    }
}

fn fill_node(q: &Query<'_>, x: &mut Explanation, node: &Node) -> FsResult<()> {
    let Some(top) = node.layers.first().map(|l| l.index()) else {
        return Ok(());
    };
    let top_obj = object_at(q, x, top)?;
    if let Some(obj) = &top_obj {
        x.ino_origin = Some(ino_words(q, x, obj.stat(), node, top));
    }
    let is_upper = x.layers[top].upper;
    if is_upper && !x.comps.is_empty() {
        x.origin = Some(upper_origin(q, x, top, top_obj.as_ref())?);
    }
    if node.attr.is_dir() {
        let rel = rel_path(&x.comps);
        for e in q.list(&rel)? {
            x.entries.push((e.name, e.layer.index()));
        }
        x.entries.sort();
        for l in &node.layers {
            let Some(d) = q.layer_dir(*l, &rel)? else {
                continue;
            };
            for (name, obj) in q.layer_entries(&d)? {
                match obj {
                    LayerObj::Whiteout(k, _) => {
                        x.whiteouts.push((name, whiteout_kind(k).into(), l.index()));
                    }
                    LayerObj::AufsWhiteout { hides, .. } => {
                        x.whiteouts.push((
                            hides,
                            whiteout_kind(WhiteoutKind::Aufs).into(),
                            l.index(),
                        ));
                    }
                    _ => {}
                }
            }
        }
        x.whiteouts.sort();
    }
    Ok(())
}

fn ino_words(q: &Query<'_>, x: &Explanation, real: &Stat, node: &Node, top: usize) -> String {
    let label = layer_label(&x.layers, top);
    if node.ino == crate::inode::ROOT_INO {
        return "1, the root's fixed number (as for every FUSE filesystem)".into();
    }
    match q.ino_origin(real, node.ino) {
        InoOrigin::Real => format!("the real inode number of the object in {label}"),
        InoOrigin::FsIndex(i) => format!(
            "real inode number {} of the object in {label}, with filesystem index {i} in \
             bits 56 and up (the layers span several filesystems)",
            real.ino
        ),
        InoOrigin::Allocated => format!(
            "allocated by layover: the real number {} (in {label}) does not fit beside a \
             filesystem index",
            real.ino
        ),
    }
}

/// How an upper object came to be: the kernel's copy-up records (`overlay.origin`,
/// `metacopy`, `redirect`), or what the lowers hold at the same path.
fn upper_origin(
    q: &Query<'_>,
    x: &Explanation,
    top: usize,
    obj: Option<&LayerObj>,
) -> FsResult<String> {
    let marks = copy_up_records(q, x, top)?;
    if !marks.is_empty() {
        return Ok(format!(
            "copied up by the kernel's overlayfs (it recorded {})",
            marks.join(", ")
        ));
    }
    let below = (top + 1..x.layers.len()).find_map(|j| match x.states[j].last() {
        Some(State::Obj(o)) if !matches!(o, LayerObj::Whiteout(..)) => Some((j, o.stat())),
        _ => None,
    });
    Ok(match (below, obj.map(LayerObj::stat)) {
        (None, _) => "created in the upper: no lower layer holds this path".into(),
        (Some((j, low)), Some(me)) if me.is_dir() && low.is_dir() => upper_dir_origin(x, j),
        (Some((j, low)), Some(me)) if me.file_type() == low.file_type() => {
            let label = layer_label(&x.layers, j);
            if me.mtime == low.mtime && me.size == low.size {
                format!(
                    "copied up from {label} (same type, size and mtime; copy-up keeps them; \
                     layover records no origin)"
                )
            } else {
                format!(
                    "replaces {label}'s {}: copied up and changed since, or written anew \
                     (layover records no origin)",
                    type_name(low.mode)
                )
            }
        }
        (Some((j, low)), _) => format!(
            "replaces {}'s {} with an object of another type (made in the upper)",
            layer_label(&x.layers, j),
            type_name(low.mode)
        ),
    })
}

/// The kernel's copy-up records on the upper object (`origin`, `metacopy`, `redirect` in
/// the overlay's xattr namespace), as names to show.
fn copy_up_records(q: &Query<'_>, x: &Explanation, top: usize) -> FsResult<Vec<String>> {
    let prefix = crate::whiteout::xattr_names(q.xattr_ns()).prefix;
    let parent = rel_path(&x.comps[..x.comps.len() - 1]);
    let mut marks = Vec::new();
    if let Some(d) = q.layer_dir(x.layers[top].index, &parent)? {
        let name = &x.comps[x.comps.len() - 1];
        for (n, _) in q.layer_xattrs(&d, name).unwrap_or_default() {
            if let Some(rest) = n.strip_prefix(prefix)
                && matches!(rest, b"origin" | b"metacopy" | b"redirect")
            {
                marks.push(show(&n));
            }
        }
    }
    Ok(marks)
}

/// An upper directory over a lower directory (layer `j`): merged with the lowers, or opaque.
fn upper_dir_origin(x: &Explanation, j: usize) -> String {
    let merged: Vec<String> = match &x.node {
        Ok(n) => n
            .layers
            .iter()
            .skip(1)
            .map(|l| layer_label(&x.layers, l.index()))
            .collect(),
        Err(_) => Vec::new(),
    };
    if merged.is_empty() {
        format!(
            "made in the upper over {}'s directory, which it hides (opaque)",
            layer_label(&x.layers, j)
        )
    } else {
        format!(
            "a directory of the upper merged with {} (copied up, or made there and merged)",
            merged.join(", ")
        )
    }
}

/// The layer's label and path, for output.
fn layer_name(x: &Explanation, i: usize) -> String {
    format!(
        "{} ({})",
        layer_label(&x.layers, i),
        show(x.layers[i].path.as_os_str().as_bytes())
    )
}

/// The human-readable explanation.
pub fn render_text(x: &Explanation) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let path = show_path(&x.comps);
    match &x.node {
        Ok(n) => {
            let _ = writeln!(s, "{path}: {}, st_ino {}", type_name(n.attr.mode), n.ino.0);
            if let Some(top) = n.layers.first() {
                let _ = writeln!(s, "  supplied by {}", layer_name(x, top.index()));
            }
            if n.layers.len() > 1 {
                let merged: Vec<String> = n
                    .layers
                    .iter()
                    .map(|l| layer_label(&x.layers, l.index()))
                    .collect();
                let _ = writeln!(s, "  merged from {}", merged.join(", "));
            }
            if let Some(o) = &x.origin {
                let _ = writeln!(s, "  origin: {o}");
            }
            if let Some(o) = &x.ino_origin {
                let _ = writeln!(s, "  inode number: {o}");
            }
        }
        Err(e) if *e == Errno::ENOENT => {
            let _ = writeln!(s, "{path}: does not exist in the merged view");
        }
        Err(e) => {
            let _ = writeln!(s, "{path}: not reachable in the merged view ({e})");
        }
    }
    let _ = writeln!(s, "  layers (top first):");
    let width = x.here.iter().map(String::len).max().unwrap_or(0);
    for i in 0..x.layers.len() {
        let _ = writeln!(
            s,
            "    {:<7} {:<width$}  {}",
            layer_label(&x.layers, i),
            x.here[i],
            x.role[i]
        );
    }
    if !x.entries.is_empty() || !x.whiteouts.is_empty() {
        render_entries(x, &mut s);
    }
    s
}

/// A directory's entries grouped by the layer they come from, and its whiteouts.
fn render_entries(x: &Explanation, s: &mut String) {
    use std::fmt::Write as _;
    const SHOWN: usize = 20;
    let _ = writeln!(s, "  entries: {}", x.entries.len());
    for i in 0..x.layers.len() {
        let names: Vec<String> = x
            .entries
            .iter()
            .filter(|(_, l)| *l == i)
            .map(|(n, _)| show(n))
            .collect();
        if names.is_empty() {
            continue;
        }
        let more = names.len().saturating_sub(SHOWN);
        let mut line = names[..names.len().min(SHOWN)].join(" ");
        if more > 0 {
            let _ = write!(line, " ... and {more} more");
        }
        let _ = writeln!(s, "    from {:<7} {line}", layer_label(&x.layers, i));
    }
    for (name, kind, l) in &x.whiteouts {
        let _ = writeln!(
            s,
            "    hidden  {} by a {kind} in {}",
            show(name),
            layer_label(&x.layers, *l)
        );
    }
}

/// The explanation as one JSON object.
pub fn render_json(x: &Explanation) -> Json {
    let layers = (0..x.layers.len())
        .map(|i| {
            Json::Obj(vec![
                ("layer", Json::str(layer_label(&x.layers, i))),
                (
                    "path",
                    Json::str(show(x.layers[i].path.as_os_str().as_bytes())),
                ),
                ("here", Json::str(x.here[i].clone())),
                ("role", Json::str(x.role[i].clone())),
            ])
        })
        .collect();
    let mut obj = vec![
        ("path", Json::str(show_path(&x.comps))),
        ("exists", Json::Bool(x.node.is_ok())),
    ];
    match &x.node {
        Ok(n) => {
            obj.push(("type", Json::str(type_name(n.attr.mode))));
            obj.push(("ino", Json::Num(n.ino.0)));
            let from: Vec<Json> = n
                .layers
                .iter()
                .map(|l| Json::str(layer_label(&x.layers, l.index())))
                .collect();
            obj.push(("from", Json::Arr(from)));
        }
        Err(e) => obj.push(("error", Json::str(e.to_string()))),
    }
    let opt = |v: &Option<String>| v.clone().map_or(Json::Null, Json::Str);
    obj.push(("origin", opt(&x.origin)));
    obj.push(("ino_origin", opt(&x.ino_origin)));
    obj.push(("layers", Json::Arr(layers)));
    let entries = x
        .entries
        .iter()
        .map(|(n, l)| {
            Json::Obj(vec![
                ("name", Json::str(show(n))),
                ("layer", Json::str(layer_label(&x.layers, *l))),
            ])
        })
        .collect();
    obj.push(("entries", Json::Arr(entries)));
    let whiteouts = x
        .whiteouts
        .iter()
        .map(|(n, k, l)| {
            Json::Obj(vec![
                ("name", Json::str(show(n))),
                ("kind", Json::str(k.clone())),
                ("layer", Json::str(layer_label(&x.layers, *l))),
            ])
        })
        .collect();
    obj.push(("whiteouts", Json::Arr(whiteouts)));
    Json::Obj(obj)
}

/// Where a PATH given without `-o` lies: (the layover mount, the path below its root).
fn in_live_mount(p: &Path) -> Result<(PathBuf, PathBuf), crate::error::StartupError> {
    use crate::error::StartupError;
    let abs =
        std::path::absolute(p).map_err(|e| StartupError::new(format!("'{}': {e}", p.display())))?;
    // Symlinks in the part above the merged path are resolved; the last component is not
    // followed (it is what is explained).
    let canon = match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or_else(|_| abs.clone()),
        _ => abs.clone(),
    };
    let Some(mnt) = super::live::layover_mount_of(&canon)? else {
        return Err(StartupError::new(format!(
            "'{}' is not inside a layover mount (give the layers with -o to explain a path \
             of the merged view offline)",
            p.display()
        )));
    };
    let rel = canon
        .strip_prefix(&mnt)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok((mnt, rel))
}

pub fn run(
    a: &crate::cli::ExplainArgs,
    out: &mut impl std::io::Write,
) -> Result<super::Outcome, crate::error::StartupError> {
    // Group the paths by the stack they are explained in.
    let mut jobs: Vec<(super::Source, Vec<PathBuf>)> = Vec::new();
    for p in &a.paths {
        let (src, rel) = if a.stack.options.is_empty() {
            let (mnt, rel) = in_live_mount(Path::new(p))?;
            (
                super::Source {
                    options: Vec::new(),
                    mountpoint: Some(mnt),
                },
                rel,
            )
        } else {
            (
                super::Source {
                    options: a.stack.options.clone(),
                    mountpoint: None,
                },
                PathBuf::from(p),
            )
        };
        match jobs.iter_mut().find(|(s, _)| *s == src) {
            Some((_, v)) => v.push(rel),
            None => jobs.push((src, vec![rel])),
        }
    }
    let mut outcome = super::Outcome::Clean;
    for (src, paths) in jobs {
        let stack = src.stack()?;
        let ov = crate::overlay::Overlay::open_read_only(&stack)?;
        let q = ov.query();
        for p in paths {
            let x = explain(&q, &p).map_err(|e| super::io_error("explain", &p, e))?;
            if x.node.is_err() {
                outcome = super::Outcome::Findings;
            }
            let text = if a.stack.json {
                x_json_line(&x)
            } else {
                render_text(&x)
            };
            out.write_all(text.as_bytes()).map_err(super::write_error)?;
        }
    }
    Ok(outcome)
}

fn x_json_line(x: &Explanation) -> String {
    let mut s = render_json(x).render();
    s.push('\n');
    s
}
