//! Comparing snapshots: which fields count ([`Compare`]), a readable report of every
//! difference, the inode rules within one mount, hand-written expected trees, and the
//! normalisations (recent times, the kernel's bookkeeping in an upper) that make two trees
//! comparable.

use crate::run::show;
use crate::snapshot::{Content, Kind, Node, Snapshot};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Which fields a comparison looks at.
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    /// nlink of directories (the kernel reports 1 for merged directories).
    pub dir_nlink: bool,
    pub mtime: bool,
    pub dir_mtime: bool,
    pub xattrs: bool,
    pub owner: bool,
    pub perm: bool,
}

impl Default for Compare {
    fn default() -> Self {
        Compare {
            dir_nlink: false,
            mtime: true,
            dir_mtime: true,
            xattrs: true,
            owner: true,
            perm: true,
        }
    }
}

/// The compared fields of a node, by name, as text.
pub(crate) fn fields(n: &Node, cmp: &Compare) -> Vec<(&'static str, String)> {
    let mut f = vec![("type", format!("{:?}", n.kind))];
    if cmp.perm {
        f.push(("mode", format!("{:04o}", n.perm)));
    }
    if cmp.owner {
        f.push(("owner", format!("{}:{}", n.uid, n.gid)));
    }
    if n.kind != Kind::Dir {
        f.push(("size", n.size.to_string()));
    }
    if n.kind != Kind::Dir || cmp.dir_nlink {
        f.push(("nlink", n.nlink.to_string()));
    }
    if cmp.mtime && (n.kind != Kind::Dir || cmp.dir_mtime) {
        f.push(("mtime", format!("{}.{:09}", n.mtime.0, n.mtime.1)));
    }
    if let Some(c) = &n.content {
        f.push(("content", c.to_string()));
    }
    if let Some(t) = &n.target {
        f.push(("symlink", format!("\"{}\"", t.escape_ascii())));
    }
    if let Some((ma, mi)) = n.rdev {
        f.push(("rdev", format!("{ma}:{mi}")));
    }
    if let Some(dt) = n.dtype {
        f.push(("d_type", format!("{dt:?}")));
    }
    if cmp.xattrs {
        if let Some(x) = &n.xattrs {
            let s: Vec<String> = x
                .iter()
                .map(|(k, v)| format!("{}={}", k.escape_ascii(), v.escape_ascii()))
                .collect();
            f.push(("xattrs", format!("{{{}}}", s.join(", "))));
        }
        if let Some(e) = &n.xattr_error {
            f.push(("xattr error", e.clone()));
        }
    }
    f
}

pub(crate) fn render(lines: &[String]) -> String {
    let mut s = String::new();
    for l in lines.iter().take(80) {
        s.push_str("  ");
        s.push_str(l);
        s.push('\n');
    }
    if lines.len() > 80 {
        writeln!(s, "  ... and {} more", lines.len() - 80).unwrap();
    }
    s
}

/// Asserts that layover's tree shows what the kernel's does, printing every difference
/// otherwise ([`tree_report`], with each mount's inode rules).
pub fn assert_same_tree(kernel: &Snapshot, layover: &Snapshot, cmp: &Compare) {
    let report = tree_report(
        kernel,
        "kernel",
        Some(Who::Kernel),
        layover,
        "layover",
        Some(Who::Layover),
        cmp,
    );
    assert!(report.is_empty(), "\n{report}");
}

/// Whose mount a snapshot shows: the kernel's overlay is allowed one known inconsistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Kernel,
    Layover,
}

/// Inode consistency within ONE mount: d_ino == st_ino and d_type == lstat type for every
/// entry; one st_dev throughout; names sharing an inode are hard links of one non-directory
/// (same type, size, content, and nlink at least the number of names).
///
/// The kernel (6.18, samefs, no xino) reports for a merged directory whose parent is not
/// "impure" the real upper (or top) directory's inode as d_ino but the topmost lower's as
/// st_ino; that is exempted for [`Who::Kernel`] only. layover promises d_ino == st_ino
/// everywhere (docs: semantics, "Readdir").
pub fn inode_problems(s: &Snapshot, who: Who) -> Vec<String> {
    let mut p = Vec::new();
    let root_dev = s.nodes.get(&Vec::new()).map(|n| n.dev);
    for (path, n) in &s.nodes {
        if let Some(d) = n.d_ino {
            let exempt = who == Who::Kernel && n.kind == Kind::Dir;
            if d != n.ino && !exempt {
                p.push(format!("{}: d_ino {d} but st_ino {}", show(path), n.ino));
            }
        }
        if let Some(dt) = n.dtype
            && dt != n.kind
        {
            p.push(format!(
                "{}: d_type {dt:?} but lstat {:?}",
                show(path),
                n.kind
            ));
        }
        if Some(n.dev) != root_dev {
            p.push(format!(
                "{}: st_dev {:#x} differs from the root's {:#x}",
                show(path),
                n.dev,
                root_dev.unwrap_or(0)
            ));
        }
    }
    let mut by_ino: BTreeMap<u64, Vec<&Vec<u8>>> = BTreeMap::new();
    for (path, n) in &s.nodes {
        by_ino.entry(n.ino).or_default().push(path);
    }
    for (ino, paths) in by_ino.iter().filter(|(_, v)| v.len() > 1) {
        let nodes: Vec<&Node> = paths.iter().map(|k| &s.nodes[*k]).collect();
        let names: Vec<String> = paths.iter().map(|k| show(k)).collect();
        let first = nodes[0];
        let alike = nodes.iter().all(|n| {
            n.kind == first.kind
                && n.kind != Kind::Dir
                && n.size == first.size
                && n.content == first.content
                && n.nlink == first.nlink
        });
        if !alike || (first.nlink as usize) < paths.len() {
            p.push(format!(
                "st_ino {ino} is shared by {} which are not hard links of one file \
                 (types {:?}, nlinks {:?})",
                names.join(", "),
                nodes.iter().map(|n| n.kind).collect::<Vec<_>>(),
                nodes.iter().map(|n| n.nlink).collect::<Vec<_>>()
            ));
        }
    }
    p
}

/// The groups of paths that share an st_ino (only groups of two or more).
pub fn ino_groups(s: &Snapshot) -> BTreeSet<Vec<Vec<u8>>> {
    let mut by_ino: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    for (path, n) in &s.nodes {
        by_ino.entry(n.ino).or_default().push(path.clone());
    }
    by_ino.into_values().filter(|v| v.len() > 1).collect()
}

/// A compact description of an expected tree for layouts the kernel cannot mount: path ->
/// (type, content for files / target for symlinks).
pub type Expected = BTreeMap<Vec<u8>, (Kind, Option<Vec<u8>>)>;

/// Asserts that `s` holds exactly the paths of `exp` with their types and contents.
pub fn assert_matches_expected(s: &Snapshot, exp: &Expected) {
    let mut d = Vec::new();
    let keys: BTreeSet<&Vec<u8>> = s.nodes.keys().chain(exp.keys()).collect();
    for k in keys {
        match (exp.get(k), s.nodes.get(k)) {
            (Some((kind, _)), None) => d.push(format!("{}: missing (expected {kind:?})", show(k))),
            (None, Some(n)) => d.push(format!("{}: unexpected {:?}", show(k), n.kind)),
            (Some((kind, data)), Some(n)) => {
                if *kind != n.kind {
                    d.push(format!("{}: expected {kind:?}, got {:?}", show(k), n.kind));
                    continue;
                }
                if let Some(data) = data {
                    let got = match (&n.content, &n.target) {
                        (Some(Content::Bytes(b)), _) => Some(b.clone()),
                        (_, Some(t)) => Some(t.clone()),
                        _ => None,
                    };
                    if got.as_ref() != Some(data) {
                        d.push(format!(
                            "{}: expected \"{}\", got {:?}",
                            show(k),
                            data.escape_ascii(),
                            got.map(|g| g.escape_ascii().to_string())
                        ));
                    }
                }
            }
            (None, None) => {}
        }
    }
    d.extend(s.errors.iter().cloned());
    d.extend(inode_problems(s, Who::Layover));
    assert!(
        d.is_empty(),
        "layover's tree at {} is not the expected one:\n{}",
        s.root.display(),
        render(&d)
    );
}

/// The mtime a snapshot shows for a time at or after the cutoff (see [`blur_recent_times`]).
pub const RECENT: (i64, i64) = (-1, 0);

/// Replaces every mtime at or after `cutoff` (seconds) by [`RECENT`]: two mounts doing the
/// same thing a few milliseconds apart cannot agree on "now", only on "recent" versus a
/// preserved old time.
pub fn blur_recent_times(s: &mut Snapshot, cutoff: i64) {
    for n in s.nodes.values_mut() {
        if n.mtime.0 >= cutoff {
            n.mtime = RECENT;
        }
    }
}

/// The kernel's own bookkeeping xattrs in an upper layer, which layover need not write.
pub const KERNEL_BOOKKEEPING_XATTRS: &[&[u8]] = &[
    b"trusted.overlay.origin",
    b"trusted.overlay.impure",
    b"trusted.overlay.uuid",
    b"trusted.overlay.nlink",
    b"trusted.overlay.upper",
];

/// Normalises a snapshot of an upper directory (not a merged view) for comparison: drops
/// [`KERNEL_BOOKKEEPING_XATTRS`] (and their `user.overlay.*` forms), and makes every whiteout (char 0/0) its own inode with
/// nlink 1 (the kernel hard-links all its whiteouts to one shared inode).
pub fn normalise_upper(s: &mut Snapshot) {
    let mut fake = u64::MAX;
    for n in s.nodes.values_mut() {
        if let Some(x) = n.xattrs.as_mut() {
            // The same names under user.overlay.* on userxattr mounts.
            x.retain(|k, _| {
                let trusted = match k.strip_prefix(b"user.overlay.".as_slice()) {
                    Some(rest) => [b"trusted.overlay.".as_slice(), rest].concat(),
                    None => k.clone(),
                };
                !KERNEL_BOOKKEEPING_XATTRS.contains(&trusted.as_slice())
            });
        }
        if n.kind == Kind::Char && n.rdev == Some((0, 0)) {
            n.nlink = 1;
            n.ino = fake;
            if n.d_ino.is_some() {
                n.d_ino = Some(fake);
            }
            fake -= 1;
        }
    }
}

/// Every path only one snapshot holds, and every compared field that differs, one line each.
fn field_differences(a: &Snapshot, la: &str, b: &Snapshot, lb: &str, cmp: &Compare) -> Vec<String> {
    let mut d = Vec::new();
    let keys: BTreeSet<&Vec<u8>> = a.nodes.keys().chain(b.nodes.keys()).collect();
    for k in keys {
        match (a.nodes.get(k), b.nodes.get(k)) {
            (Some(x), None) => d.push(format!("{}: only in {la} ({:?})", show(k), x.kind)),
            (None, Some(y)) => d.push(format!("{}: only in {lb} ({:?})", show(k), y.kind)),
            (Some(x), Some(y)) => {
                let mx: BTreeMap<_, _> = fields(x, cmp).into_iter().collect();
                let my: BTreeMap<_, _> = fields(y, cmp).into_iter().collect();
                let names: BTreeSet<&str> = mx.keys().chain(my.keys()).copied().collect();
                for name in names {
                    let vx = mx.get(name).map_or("-", String::as_str);
                    let vy = my.get(name).map_or("-", String::as_str);
                    if vx != vy {
                        d.push(format!("{}: {name}: {la} {vx} | {lb} {vy}", show(k)));
                    }
                }
            }
            (None, None) => {}
        }
    }
    d
}

/// Compares two snapshots: "" when they agree, else a readable account naming them `la` and
/// `lb`: errors met while walking either, every field that differs ([`Compare`] says which
/// count), each one's inode problems ([`inode_problems`]), and which names share an inode.
/// `who_*` says whose inode rules apply (None: no inode consistency check, e.g. for the
/// kernel's overlay over layers on several file systems, where it reports several st_dev by
/// design).
pub fn tree_report(
    a: &Snapshot,
    la: &str,
    who_a: Option<Who>,
    b: &Snapshot,
    lb: &str,
    who_b: Option<Who>,
    cmp: &Compare,
) -> String {
    let mut report = String::new();
    // In the rootless modes the walk runs as the user, whom some fixtures shut out (a
    // directory of another owner, mode 0750): the same refusals on both sides are part of
    // what both show, not a failure.
    let refused = |s: &Snapshot| -> Vec<String> {
        let root = s.root.display().to_string();
        s.errors
            .iter()
            .map(|e| e.replace(&root, "<root>"))
            .collect()
    };
    let same_refusals = crate::mode::mode().rootless() && refused(a) == refused(b);
    for (s, l) in [(a, la), (b, lb)] {
        if !s.errors.is_empty() && !same_refusals {
            writeln!(
                report,
                "walking {l} ({}):\n{}",
                s.root.display(),
                render(&s.errors)
            )
            .unwrap();
        }
    }
    let d = field_differences(a, la, b, lb, cmp);
    if !d.is_empty() {
        writeln!(
            report,
            "trees differ: {la} ({}) and {lb} ({}), in {} place(s):\n{}",
            a.root.display(),
            b.root.display(),
            d.len(),
            render(&d)
        )
        .unwrap();
    }
    for (s, l, w) in [(a, la, who_a), (b, lb, who_b)] {
        let Some(w) = w else {
            continue;
        };
        let p = inode_problems(s, w);
        if !p.is_empty() {
            writeln!(report, "inode inconsistencies in {l}:\n{}", render(&p)).unwrap();
        }
    }
    let (ga, gb) = (ino_groups(a), ino_groups(b));
    // The kernel's userxattr mount in a user namespace writes an empty origin (no file
    // handle there) and finds a copied-up file's lower by its name alone: the name it was
    // copied up under shows the lower file's inode number, a hard link made to it later the
    // upper's. Layover keeps such names one inode, as POSIX wants: in the rootless modes the
    // second tree may join names the first splits (never split names the first joins).
    let coarser = || {
        ga.iter()
            .all(|g| gb.iter().any(|h| g.iter().all(|p| h.contains(p))))
    };
    if ga != gb && !(crate::mode::mode().rootless() && coarser()) {
        let fmt = |g: &BTreeSet<Vec<Vec<u8>>>| -> Vec<String> {
            g.iter()
                .map(|grp| grp.iter().map(|p| show(p)).collect::<Vec<_>>().join(" = "))
                .collect()
        };
        writeln!(
            report,
            "names sharing an inode differ:\n {la}:\n{} {lb}:\n{}",
            render(&fmt(&ga)),
            render(&fmt(&gb))
        )
        .unwrap();
    }
    report
}
