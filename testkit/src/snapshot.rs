//! Tree snapshots: what every path under a root shows (lstat, content, link target, device
//! numbers, xattrs, and the parent's d_type and d_ino), walked without following symlinks;
//! and smaller walks (names, types, times).

use crate::procfs::unescape_octal;
use crate::run::{cmd_ok, errno_name, os, show};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
    Unknown,
}

impl Kind {
    pub fn of(ft: fs::FileType) -> Kind {
        if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else {
            Kind::Unknown
        }
    }
}

/// File content: kept verbatim when small, else its length and a hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    Hashed { len: u64, hash: u64 },
    Error(String),
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Bytes(b) if b.len() <= 64 => write!(f, "\"{}\"", b.escape_ascii()),
            Content::Bytes(b) => write!(
                f,
                "\"{}\"... ({} bytes, hash {:016x})",
                b[..64].escape_ascii(),
                b.len(),
                hash(b)
            ),
            Content::Hashed { len, hash } => write!(f, "{len} bytes, hash {hash:016x}"),
            Content::Error(e) => write!(f, "read error: {e}"),
        }
    }
}

fn hash(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(b);
    h.finish()
}

/// What a merged tree shows for one path.
#[derive(Clone, Debug)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits (mode & 0o7777).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub ino: u64,
    pub dev: u64,
    pub mtime: (i64, i64),
    pub content: Option<Content>,
    pub target: Option<Vec<u8>>,
    pub rdev: Option<(u64, u64)>,
    /// All xattrs getfattr lists (name -> value); None when not collected.
    pub xattrs: Option<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// getfattr's complaint about this path, if any.
    pub xattr_error: Option<String>,
    /// d_type and d_ino from the parent's readdir (None for the root).
    pub dtype: Option<Kind>,
    pub d_ino: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub root: PathBuf,
    pub nodes: BTreeMap<Vec<u8>, Node>,
    /// Anomalies met while walking (duplicate names, I/O errors).
    pub errors: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
pub struct SnapOpts {
    pub xattrs: bool,
    pub content: bool,
}

impl Default for SnapOpts {
    fn default() -> Self {
        SnapOpts {
            xattrs: true,
            content: true,
        }
    }
}

fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        let mut v = parent.to_vec();
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

fn read_content(p: &Path) -> Content {
    let mut f = match fs::File::open(p) {
        Ok(f) => f,
        Err(e) => return Content::Error(errno_name(e.raw_os_error())),
    };
    let mut buf = Vec::new();
    if let Err(e) = f.read_to_end(&mut buf) {
        return Content::Error(errno_name(e.raw_os_error()));
    }
    if buf.len() <= 4096 {
        Content::Bytes(buf)
    } else {
        Content::Hashed {
            len: buf.len() as u64,
            hash: hash(&buf),
        }
    }
}

fn node_from(md: &fs::Metadata, p: &Path, opts: &SnapOpts) -> Node {
    let kind = Kind::of(md.file_type());
    let content = (kind == Kind::File && opts.content).then(|| read_content(p));
    let target = (kind == Kind::Symlink).then(|| {
        fs::read_link(p)
            .map(|t| t.into_os_string().into_vec())
            .unwrap_or_else(|e| format!("<readlink error {e}>").into_bytes())
    });
    let rdev = matches!(kind, Kind::Char | Kind::Block).then(|| {
        let r = md.rdev();
        (
            ((r >> 32) & 0xffff_f000) | ((r >> 8) & 0xfff),
            ((r >> 12) & 0xffff_ff00) | (r & 0xff),
        )
    });
    Node {
        kind,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        nlink: md.nlink(),
        ino: md.ino(),
        dev: md.dev(),
        mtime: (md.mtime(), md.mtime_nsec()),
        content,
        target,
        rdev,
        xattrs: None,
        xattr_error: None,
        dtype: None,
        d_ino: None,
    }
}

/// Walks a tree without following symlinks and records what every path shows.
pub fn snapshot(root: &Path) -> Snapshot {
    snapshot_with(root, SnapOpts::default())
}

pub fn snapshot_with(root: &Path, opts: SnapOpts) -> Snapshot {
    let mut nodes = BTreeMap::new();
    let mut errors = Vec::new();
    let md = fs::symlink_metadata(root).unwrap_or_else(|e| panic!("lstat {}: {e}", root.display()));
    nodes.insert(Vec::new(), node_from(&md, root, &opts));
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(OsStr::from_bytes(&rel));
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                errors.push(format!("readdir {}: {e}", show(&rel)));
                continue;
            }
        };
        let mut seen = BTreeSet::new();
        for ent in rd {
            let ent = match ent {
                Ok(e) => e,
                Err(e) => {
                    errors.push(format!("readdir {}: {e}", show(&rel)));
                    break;
                }
            };
            let name = ent.file_name().into_vec();
            if !seen.insert(name.clone()) {
                errors.push(format!(
                    "readdir {} lists {} more than once",
                    show(&rel),
                    show(&name)
                ));
                continue;
            }
            let child = join_rel(&rel, &name);
            let p = ent.path();
            let md = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(format!(
                        "readdir {} lists {} but lstat fails: {e}",
                        show(&rel),
                        show(&name)
                    ));
                    continue;
                }
            };
            let mut node = node_from(&md, &p, &opts);
            node.dtype = Some(ent.file_type().map(Kind::of).unwrap_or(Kind::Unknown));
            node.d_ino = Some(ent.ino());
            if node.kind == Kind::Dir {
                stack.push(child.clone());
            }
            nodes.insert(child, node);
        }
    }
    if opts.xattrs {
        collect_xattrs(root, &mut nodes, &mut errors);
    }
    Snapshot {
        root: root.to_owned(),
        nodes,
        errors,
    }
}

pub(crate) fn unhex(s: &[u8]) -> Vec<u8> {
    let s = s.strip_prefix(b"0x").unwrap_or(s);
    s.chunks(2)
        .filter_map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect()
}

/// getfattr's complaints (lines "getfattr: /abs/path: Message") go to the node they name,
/// else to the snapshot's errors.
fn record_getfattr_errors(
    stderr: &[u8],
    rel_of: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
    nodes: &mut BTreeMap<Vec<u8>, Node>,
    errors: &mut Vec<String>,
) {
    for line in stderr.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let body = line.strip_prefix(b"getfattr: ").unwrap_or(line);
        let located = body
            .windows(2)
            .rposition(|w| w == b": ")
            .and_then(|i| Some((rel_of(&unescape_octal(&body[..i]))?, &body[i + 2..])));
        match located.and_then(|(rel, msg)| Some((nodes.get_mut(&rel)?, msg))) {
            Some((n, msg)) => n.xattr_error = Some(String::from_utf8_lossy(msg).into_owned()),
            None => errors.push(format!("getfattr: {}", String::from_utf8_lossy(body))),
        }
    }
}

/// Fills in every node's xattrs with one recursive getfattr call.
fn collect_xattrs(root: &Path, nodes: &mut BTreeMap<Vec<u8>, Node>, errors: &mut Vec<String>) {
    for n in nodes.values_mut() {
        n.xattrs = Some(BTreeMap::new());
    }
    let out = Command::new("getfattr")
        .args([
            os("-R"),
            os("-P"),
            os("-h"),
            os("-d"),
            os("-m"),
            os("-"),
            os("--absolute-names"),
            os("-e"),
            os("hex"),
            root.as_os_str(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run getfattr");
    let prefix = root.as_os_str().as_bytes();
    let rel_of = |abs: &[u8]| -> Option<Vec<u8>> {
        let rest = abs.strip_prefix(prefix)?;
        if rest.is_empty() {
            Some(Vec::new())
        } else {
            rest.strip_prefix(b"/").map(<[u8]>::to_vec)
        }
    };
    let mut current: Option<Vec<u8>> = None;
    for line in out.stdout.split(|&c| c == b'\n') {
        if let Some(f) = line.strip_prefix(b"# file: ") {
            current = rel_of(&unescape_octal(f));
            if current.is_none() {
                errors.push(format!("getfattr reported unexpected path {}", show(f)));
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let Some(rel) = current.as_ref() else {
            continue;
        };
        let (name, value) = match line.iter().position(|&c| c == b'=') {
            Some(i) => (unescape_octal(&line[..i]), unhex(&line[i + 1..])),
            None => (unescape_octal(line), Vec::new()),
        };
        match nodes.get_mut(rel) {
            Some(n) => {
                n.xattrs
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, value);
            }
            None => errors.push(format!(
                "getfattr lists xattrs of unknown path {}",
                show(rel)
            )),
        }
    }
    record_getfattr_errors(&out.stderr, &rel_of, nodes, errors);
}

/// How many times `.` and `..` appear in a raw listing of `dir` (via `ls -f`, which, unlike
/// std::fs::read_dir, shows them).
pub fn dot_counts(dir: &Path) -> (usize, usize) {
    let r = cmd_ok("ls", &[os("-f"), os("-1"), os("-b"), dir.as_os_str()]);
    let dot = r.stdout.lines().filter(|l| *l == ".").count();
    let dotdot = r.stdout.lines().filter(|l| *l == "..").count();
    (dot, dotdot)
}

/// The names in `dir` as std::fs::read_dir reports them (raw order, duplicates kept).
pub fn list(dir: &Path) -> io::Result<Vec<Vec<u8>>> {
    fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().into_vec()))
        .collect()
}

/// Every path below `dir` (recursively, relative, with its type), for checking that a work
/// directory holds nothing but what it should.
pub fn list_tree(dir: &Path) -> Vec<(PathBuf, Kind)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            let kind = e.file_type().map(Kind::of).unwrap_or(Kind::Unknown);
            if kind == Kind::Dir {
                stack.push(r.clone());
            }
            out.push((r, kind));
        }
    }
    out.sort();
    out
}

/// (type, atime, mtime) of one path; see [`walk_times`].
pub type Times = (Kind, (i64, i64), (i64, i64));

/// (type, atime, mtime) of every path under `dir`, itself included; each directory is
/// lstat-ed before it is listed, so the walk does not see its own atime updates.
pub fn walk_times(dir: &Path) -> BTreeMap<PathBuf, Times> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = dir.join(&rel);
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        let kind = Kind::of(m.file_type());
        out.insert(
            rel.clone(),
            (
                kind,
                (m.atime(), m.atime_nsec()),
                (m.mtime(), m.mtime_nsec()),
            ),
        );
        if kind == Kind::Dir
            && let Ok(rd) = fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| rel.join(e.file_name())));
        }
    }
    out
}
