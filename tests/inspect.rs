//! The inspection tools against the kernel's overlayfs: `explain` and `diff` must agree with
//! what `mount -t overlay` shows on the same layers (hand-made stacks and random stacks from
//! the differential tester's generator), on layers and on a live layover mount; `check`
//! must find every planted fault and `--fix` must repair the safe ones without touching
//! user data. Needs root (kernel overlay mounts, mknod, trusted.* xattrs) and, for the live
//! test, /dev/fuse: a missing prerequisite fails the test.
//!
//! The kernel reference mounts are read-only: the upper is given as the top lower
//! (`lowerdir=UPPER:L0:...`), which reads whiteouts and opaque directories exactly as an
//! upper is read and writes nothing. The lowers alone are mounted the same way (with an
//! empty bottom layer when there is one lower: the kernel wants two).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

// ---- small helpers (this file's own: tests/common is being restructured) -----------------

/// A temporary directory, removed (after unmounting anything left in it) when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("layover-inspect-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A mount that is always unmounted (lazily as a last resort) when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        for args in [&["umount"][..], &["umount", "-l"]] {
            let st = Command::new(args[0]).args(&args[1..]).arg(&self.0).status();
            if st.is_ok_and(|s| s.success()) {
                return;
            }
        }
    }
}

/// Runs a python script (`python3 -c`); panics with `what` and its stderr unless it exits 0.
/// Returns its stdout.
fn python(what: &str, script: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sh(cmd: &str, args: &[&OsStr]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require_root() {
    let out = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "these tests need root (kernel overlay mounts, mknod, trusted.* xattrs)"
    );
}

/// Escapes a path for an overlay option value (`\`, `,` and `:` are special).
fn opt_path(p: &Path) -> String {
    let s = p.to_str().expect("test layer paths are UTF-8");
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace(':', "\\:")
}

/// A read-only kernel overlay of `layers` (top first) at `mnt`.
fn kernel_mount(layers: &[PathBuf], userxattr: bool, mnt: &Path, spare: &Path) -> Mounted {
    let mut l: Vec<String> = layers.iter().map(|p| opt_path(p)).collect();
    if l.len() == 1 {
        fs::create_dir_all(spare).unwrap();
        l.push(opt_path(spare));
    }
    let mut opts = format!("ro,lowerdir={}", l.join(":"));
    if userxattr {
        opts.push_str(",userxattr");
    }
    fs::create_dir_all(mnt).unwrap();
    sh(
        "mount",
        &[
            "-t".as_ref(),
            "overlay".as_ref(),
            "overlay".as_ref(),
            "-o".as_ref(),
            opts.as_ref(),
            mnt.as_os_str(),
        ],
    );
    Mounted(mnt.to_path_buf())
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn layover(args: &[&OsStr]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_layover"))
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A layer stack on disk.
struct Stack {
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    userxattr: bool,
}

impl Stack {
    fn option(&self, with_work: bool) -> String {
        let l: Vec<String> = self.lowers.iter().map(|p| opt_path(p)).collect();
        let mut o = format!(
            "lowerdir={},upperdir={}",
            l.join(":"),
            opt_path(&self.upper)
        );
        if with_work {
            o.push_str(&format!(",workdir={}", opt_path(&self.work)));
        }
        if self.userxattr {
            o.push_str(",userxattr");
        }
        o
    }

    fn all_layers(&self) -> Vec<PathBuf> {
        std::iter::once(self.upper.clone())
            .chain(self.lowers.iter().cloned())
            .collect()
    }
}

/// Every path (relative, as bytes) below `root`, with its type letter, not following
/// symlinks.
fn walk(root: &Path) -> BTreeMap<Vec<u8>, char> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let Ok(rd) = fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let t = type_letter(&fs::symlink_metadata(root.join(&r)).unwrap());
            if t == 'd' {
                todo.push(r.clone());
            }
            out.insert(r.as_os_str().as_bytes().to_vec(), t);
        }
    }
    out
}

fn type_letter(m: &fs::Metadata) -> char {
    let t = m.file_type();
    if t.is_dir() {
        'd'
    } else if t.is_symlink() {
        'l'
    } else if t.is_file() {
        'f'
    } else if t.is_char_device() {
        'c'
    } else if t.is_block_device() {
        'b'
    } else if t.is_fifo() {
        'p'
    } else {
        's'
    }
}

fn type_word(t: char) -> &'static str {
    match t {
        'd' => "directory",
        'l' => "symlink",
        'f' => "regular file",
        'c' => "character device",
        'b' => "block device",
        'p' => "fifo",
        _ => "socket",
    }
}

/// The value of `"key":"..."` (or a bare value) in one JSON line, as written by layover.
fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let at = line.find(&pat)? + pat.len();
    let rest = &line[at..];
    if let Some(s) = rest.strip_prefix('"') {
        let mut end = 0;
        let b = s.as_bytes();
        while end < b.len() && b[end] != b'"' {
            end += if b[end] == b'\\' { 2 } else { 1 };
        }
        Some(&s[..end])
    } else {
        let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
        Some(&rest[..end])
    }
}

/// A path as layover shows it (`/` + components, non-UTF-8 and controls escaped).
fn shown(rel: &[u8]) -> String {
    let mut s = String::from("/");
    for chunk in rel.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => s.push_str("\\n"),
                '\t' => s.push_str("\\t"),
                '\\' => s.push_str("\\\\"),
                c if c.is_control() => s.push_str(&format!("\\x{:02x}", c as u32)),
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Undoes JSON string escapes for what layover writes (\" \\ \n \t \r \u00XX).
fn unjson(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('u') => {
                let hex: String = it.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
            }
            Some(o) => out.push(o),
            None => {}
        }
    }
    out
}

// ---- explain and diff against the kernel ----------------------------------------------------

/// Runs `layover explain --json` on `paths` (in chunks) and returns one JSON line per path.
fn explain_json(opts: &str, paths: &[Vec<u8>]) -> Vec<String> {
    let mut lines = Vec::new();
    for chunk in paths.chunks(200) {
        let mut args: Vec<OsString> =
            vec!["explain".into(), "--json".into(), "-o".into(), opts.into()];
        args.push("--".into());
        for p in chunk {
            let mut v = b"/".to_vec();
            v.extend_from_slice(p);
            args.push(OsString::from_vec(v));
        }
        let argv: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let r = layover(&argv);
        assert!(r.code == 0 || r.code == 1, "explain failed: {}", r.stderr);
        lines.extend(r.stdout.lines().map(str::to_owned));
    }
    assert_eq!(lines.len(), paths.len(), "one JSON line per path");
    lines
}

/// The (here, role) of each layer in an explain JSON line.
fn explain_layers(line: &str) -> Vec<(String, String)> {
    let start = line.find("\"layers\":[").unwrap() + 10;
    let end = line.find("],\"entries\"").unwrap();
    line[start..end]
        .split("},{")
        .map(|o| {
            (
                unjson(json_field(o, "here").unwrap()),
                unjson(json_field(o, "role").unwrap()),
            )
        })
        .collect()
}

/// explain agrees with the kernel mount `mnt` on every path any layer holds.
fn check_explain(stack: &Stack, mnt: &Path) -> usize {
    let mut names: BTreeSet<Vec<u8>> = BTreeSet::new();
    for l in stack.all_layers() {
        names.extend(walk(&l).into_keys());
    }
    let mut paths: Vec<Vec<u8>> = vec![Vec::new()]; // the root
    paths.extend(names);
    let lines = explain_json(&stack.option(false), &paths);
    for (p, line) in paths.iter().zip(&lines) {
        let path = shown(p);
        assert_eq!(unjson(json_field(line, "path").unwrap()), path);
        let full = mnt.join(OsStr::from_bytes(p));
        let kernel = fs::symlink_metadata(&full).ok();
        let exists = json_field(line, "exists").unwrap() == "true";
        assert_eq!(
            exists,
            kernel.is_some(),
            "{path}: explain exists={exists}, kernel disagrees\n{line}"
        );
        if let Some(m) = &kernel {
            let t = type_letter(m);
            assert_eq!(
                json_field(line, "type").unwrap(),
                type_word(t),
                "{path}: type\n{line}"
            );
            if t == 'd' {
                let kn = fs::read_dir(&full).unwrap().count();
                let start = line.find("\"entries\":[").unwrap();
                let end = line.find("],\"whiteouts\"").unwrap();
                let n = line[start..end].matches("{\"name\":").count();
                assert_eq!(
                    n, kn,
                    "{path}: entries listed vs the kernel's readdir\n{line}"
                );
            }
        }
        // Every object a layer holds that is not used has a reason.
        for (here, role) in explain_layers(line) {
            if here.starts_with('-') {
                continue;
            }
            assert!(
                !role.is_empty() && role != "hidden",
                "{path}: no reason for '{here}': {line}"
            );
        }
    }
    paths.len()
}

/// One line of `diff --json`.
#[derive(Debug)]
struct DiffItem {
    change: char,
    what: String,
    metadata: String,
}

fn diff_json(opts: &str) -> BTreeMap<String, DiffItem> {
    let r = layover(&[
        "diff".as_ref(),
        "--json".as_ref(),
        "-o".as_ref(),
        opts.as_ref(),
    ]);
    assert_eq!(r.code, 0, "diff failed: {}", r.stderr);
    let mut out = BTreeMap::new();
    for line in r.stdout.lines() {
        let path = unjson(json_field(line, "path").unwrap());
        let item = DiffItem {
            change: json_field(line, "change").unwrap().chars().next().unwrap(),
            what: json_field(line, "what").unwrap().to_string(),
            metadata: line.find("\"metadata\":[").map_or(String::new(), |i| {
                line[i..].split(']').next().unwrap().to_string()
            }),
        };
        assert!(
            out.insert(path.clone(), item).is_none(),
            "{path} listed twice"
        );
    }
    out
}

/// The proper ancestors of a shown path, nearest first.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut p = path;
    while let Some(i) = p.rfind('/') {
        if i == 0 {
            break;
        }
        p = &p[..i];
        out.push(p.to_string());
    }
    out
}

/// mode, owner, mtime of a kernel-mounted object that differ between two.
fn meta_diff(a: &fs::Metadata, b: &fs::Metadata) -> Vec<&'static str> {
    let mut v = Vec::new();
    if a.mode() & 0o7777 != b.mode() & 0o7777 {
        v.push("mode");
    }
    if (a.uid(), a.gid()) != (b.uid(), b.gid()) {
        v.push("owner");
    }
    if (a.mtime(), a.mtime_nsec()) != (b.mtime(), b.mtime_nsec()) {
        v.push("mtime");
    }
    v
}

fn data_differs(a: &Path, b: &Path, t: char) -> bool {
    match t {
        'f' => fs::read(a).unwrap() != fs::read(b).unwrap(),
        'l' => fs::read_link(a).unwrap() != fs::read_link(b).unwrap(),
        'c' | 'b' => {
            fs::symlink_metadata(a).unwrap().rdev() != fs::symlink_metadata(b).unwrap().rdev()
        }
        _ => false,
    }
}

/// diff agrees with the kernel: `merged` mounts upper and lowers, `lower` the lowers alone.
fn check_diff(stack: &Stack, merged: &Path, lower: &Path) -> usize {
    let items = diff_json(&stack.option(false));
    let m: BTreeMap<String, (Vec<u8>, char)> = walk(merged)
        .into_iter()
        .map(|(p, t)| (shown(&p), (p, t)))
        .collect();
    let l: BTreeMap<String, (Vec<u8>, char)> = walk(lower)
        .into_iter()
        .map(|(p, t)| (shown(&p), (p, t)))
        .collect();
    let covered = |p: &str| {
        ancestors(p).iter().any(|a| {
            items
                .get(a)
                .is_some_and(|i| matches!(i.change, 'A' | 'D' | 'O') || i.what == "type")
        })
    };
    // What diff says is so.
    for (p, i) in &items {
        let (inm, inl) = (m.get(p), l.get(p));
        match i.change {
            'A' => assert!(
                inm.is_some() && (inl.is_none() || covered(p)),
                "{p}: added? {i:?}"
            ),
            'D' => assert!(inm.is_none() && inl.is_some(), "{p}: deleted? {i:?}"),
            'O' => assert!(
                inm.is_some_and(|x| x.1 == 'd') && inl.is_some_and(|x| x.1 == 'd'),
                "{p}: opaque? {i:?}"
            ),
            'M' => {
                let (Some(a), Some(b)) = (inm, inl) else {
                    panic!("{p}: modified but not on both sides")
                };
                if i.what == "type" {
                    assert_ne!(a.1, b.1, "{p}: type change?");
                    continue;
                }
                assert_eq!(a.1, b.1, "{p}: same type expected for {i:?}");
            }
            c => panic!("{p}: unknown change {c}"),
        }
    }
    // Everything the kernel shows is accounted for.
    for (p, (raw, t)) in &m {
        let item = items.get(p);
        let Some((_, lt)) = l.get(p) else {
            assert!(
                item.is_some_and(|i| i.change == 'A'),
                "{p}: only in the merged view, not listed as added: {item:?}"
            );
            continue;
        };
        if covered(p) {
            assert!(
                item.is_some_and(|i| i.change == 'A'),
                "{p}: inside a replaced directory, not added: {item:?}"
            );
            continue;
        }
        if lt != t {
            assert!(
                item.is_some_and(|i| i.what == "type"),
                "{p}: type changed, not listed: {item:?}"
            );
            continue;
        }
        let (a, b) = (
            merged.join(OsStr::from_bytes(raw)),
            lower.join(OsStr::from_bytes(raw)),
        );
        let data = data_differs(&a, &b, *t);
        let meta = meta_diff(
            &fs::symlink_metadata(&a).unwrap(),
            &fs::symlink_metadata(&b).unwrap(),
        );
        match item {
            Some(i) if i.change == 'O' => {}
            Some(i) => {
                assert_eq!(i.change, 'M', "{p}: {i:?}");
                assert_eq!(i.what == "data", data, "{p}: data differs={data}: {i:?}");
                for f in ["mode", "owner", "mtime"] {
                    assert_eq!(
                        i.metadata.contains(f),
                        meta.contains(&f),
                        "{p}: {f} (kernel: {meta:?}): {i:?}"
                    );
                }
            }
            None => assert!(
                !data && meta.is_empty(),
                "{p}: changed (data {data}, {meta:?}) but not listed"
            ),
        }
    }
    for p in l.keys() {
        if !m.contains_key(p) {
            let listed = items.get(p).is_some_and(|i| i.change == 'D') || covered(p);
            assert!(
                listed,
                "{p}: gone from the merged view, not listed as deleted"
            );
        }
    }
    items.len()
}

fn check_stack_against_kernel(s: &Scratch, stack: &Stack) -> (usize, usize) {
    let merged = kernel_mount(
        &stack.all_layers(),
        stack.userxattr,
        &s.path("k-merged"),
        &s.path("k-spare"),
    );
    let lower = kernel_mount(
        &stack.lowers,
        stack.userxattr,
        &s.path("k-lower"),
        &s.path("k-spare"),
    );
    let n = check_explain(stack, &merged.0);
    let d = check_diff(stack, &merged.0, &lower.0);
    (n, d)
}

/// A hand-made stack with every class: copy-ups changed in data or metadata only, added
/// files and directories, both whiteout formats the kernel reads, an opaque directory, a
/// type change, xattr whiteouts in an opaque=x directory.
fn handmade(s: &Scratch) -> Stack {
    let (l0, l1, u, w) = (s.path("l0"), s.path("l1"), s.path("u"), s.path("w"));
    for d in [&l0, &l1, &u, &w] {
        fs::create_dir_all(d).unwrap();
    }
    let write = |p: PathBuf, data: &str| {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    write(l1.join("etc/hosts"), "127.0.0.1 localhost\n");
    write(l1.join("etc/passwd"), "root:x:0:0\n");
    write(l1.join("etc/motd"), "hello\n");
    write(l1.join("etc/group"), "root:x:0:\n");
    write(l1.join("opt/app/bin"), "old app\n");
    write(l1.join("var/log/old.log"), "log\n");
    write(l1.join("srv/file-or-dir"), "a file below\n");
    write(l0.join("etc/issue"), "top lower\n");
    write(l0.join("x/keep"), "k\n");
    write(l0.join("x/drop"), "d\n");
    // The upper: copy-ups (cp -a keeps times), then changes.
    sh(
        "cp",
        &["-a".as_ref(), l1.join("etc").as_os_str(), u.as_os_str()],
    );
    fs::remove_file(u.join("etc/motd")).unwrap();
    fs::write(u.join("etc/passwd"), "root:x:0:0\nnew:x:1:1\n").unwrap(); // data
    sh("chmod", &["600".as_ref(), u.join("etc/hosts").as_os_str()]); // metadata only
    setfattr(&u.join("etc/group"), "user.note", "changed"); // an xattr only
    sh(
        "mknod",
        &[
            u.join("etc/motd").as_os_str(),
            "c".as_ref(),
            "0".as_ref(),
            "0".as_ref(),
        ],
    );
    write(u.join("opt/app/run"), "new app\n");
    sh(
        "setfattr",
        &[
            "-n".as_ref(),
            "trusted.overlay.opaque".as_ref(),
            "-v".as_ref(),
            "y".as_ref(),
            u.join("opt/app").as_os_str(),
        ],
    );
    write(u.join("new/dir/file"), "added\n");
    fs::create_dir_all(u.join("var")).unwrap();
    sh(
        "mknod",
        &[
            u.join("var/log").as_os_str(),
            "c".as_ref(),
            "0".as_ref(),
            "0".as_ref(),
        ],
    );
    write(u.join("srv/file-or-dir/inside"), "now a directory\n");
    // An opaque=x directory with an xattr whiteout for x/drop.
    fs::create_dir_all(u.join("x")).unwrap();
    sh(
        "setfattr",
        &[
            "-n".as_ref(),
            "trusted.overlay.opaque".as_ref(),
            "-v".as_ref(),
            "x".as_ref(),
            u.join("x").as_os_str(),
        ],
    );
    fs::write(u.join("x/drop"), "").unwrap();
    sh(
        "setfattr",
        &[
            "-n".as_ref(),
            "trusted.overlay.whiteout".as_ref(),
            "-v".as_ref(),
            "y".as_ref(),
            u.join("x/drop").as_os_str(),
        ],
    );
    Stack {
        lowers: vec![l0, l1],
        upper: u,
        work: w,
        userxattr: false,
    }
}

#[test]
fn explain_and_diff_agree_with_the_kernel_on_a_handmade_stack() {
    require_root();
    let s = Scratch::new("hand");
    let stack = handmade(&s);
    let (n, d) = check_stack_against_kernel(&s, &stack);
    assert!(
        n > 15 && d >= 10,
        "too little was compared: {n} paths, {d} changes"
    );
    // The classes, exactly.
    let items = diff_json(&stack.option(false));
    let get = |p: &str| {
        items
            .get(p)
            .unwrap_or_else(|| panic!("{p} not in the diff: {items:?}"))
    };
    assert_eq!(
        (get("/etc/passwd").change, get("/etc/passwd").what.as_str()),
        ('M', "data")
    );
    let h = get("/etc/hosts");
    assert_eq!((h.change, h.what.as_str()), ('M', "metadata"));
    assert!(
        h.metadata.contains("mode") && !h.metadata.contains("mtime"),
        "{h:?}"
    );
    assert!(!items.contains_key("/etc/issue") && !items.contains_key("/x/keep"));
    let g = get("/etc/group");
    assert_eq!((g.change, g.what.as_str()), ('M', "metadata"));
    assert!(
        g.metadata.contains("xattrs") && !g.metadata.contains("mtime"),
        "{g:?}"
    );
    assert_eq!(get("/etc/motd").change, 'D');
    assert_eq!(get("/var/log").change, 'D');
    assert_eq!(get("/x/drop").change, 'D');
    assert_eq!(get("/opt/app").change, 'O');
    assert_eq!(get("/opt/app/run").change, 'A');
    assert_eq!(get("/new/dir/file").change, 'A');
    assert_eq!(get("/srv/file-or-dir").what, "type");
    // explain names the whiteout that hides a deleted file, and the opaque directory.
    let r = layover(&[
        "explain".as_ref(),
        "-o".as_ref(),
        stack.option(false).as_ref(),
        "/var/log/old.log".as_ref(),
        "/opt/app/bin".as_ref(),
        "/etc/hosts".as_ref(),
    ]);
    assert_eq!(
        r.code, 1,
        "a path that does not exist gives 1: {}",
        r.stderr
    );
    assert!(
        r.stdout.contains("/var/log/old.log: does not exist"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("hidden: whiteout (char 0/0) /var/log in upper"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("hidden: opaque directory /opt/app in upper (trusted.overlay.opaque=y)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("copied up from lower1"), "{}", r.stdout);
}

/// Builds the differential tester's random stack for `seed` under `base`.
fn random_stack(base: &Path, seed: u32) -> Stack {
    let script = format!(
        "import sys, random, json\n\
         sys.path.insert(0, {dir:?})\n\
         import layers\n\
         spec = layers.gen_spec(random.Random('layers:{seed}'))\n\
         p = layers.build_stack(spec, {base:?})\n\
         print(json.dumps({{'userxattr': spec['userxattr'], 'lowers': p['lowers'], 'upper': p['upper'], 'work': p['work']}}))\n",
        dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/difftest"),
        base = base.to_str().unwrap(),
    );
    let j = python("layers.py", &script);
    let list = |k: &str| -> Vec<PathBuf> {
        let at = j.find(&format!("\"{k}\": [")).unwrap() + k.len() + 5;
        let end = at + j[at..].find(']').unwrap();
        j[at..end]
            .split(", ")
            .map(|s| PathBuf::from(s.trim_matches('"')))
            .collect()
    };
    let one = |k: &str| PathBuf::from(unjson(json_field(&j.replace("\": ", "\":"), k).unwrap()));
    Stack {
        lowers: list("lowers"),
        upper: one("upper"),
        work: one("work"),
        userxattr: j.contains("\"userxattr\": true"),
    }
}

#[test]
fn explain_and_diff_agree_with_the_kernel_on_random_stacks() {
    require_root();
    let (mut paths, mut changes) = (0, 0);
    for seed in 1..=40 {
        let s = Scratch::new(&format!("seed{seed}"));
        let stack = random_stack(&s.path("stack"), seed);
        let (n, d) = check_stack_against_kernel(&s, &stack);
        paths += n;
        changes += d;
    }
    eprintln!("compared {paths} paths, {changes} changes");
    assert!(
        paths > 200 && changes > 20,
        "too little compared: {paths} paths, {changes} changes"
    );
}

// ---- check ------------------------------------------------------------------------------------

fn setfattr(p: &Path, name: &str, value: &str) {
    sh(
        "setfattr",
        &[
            "-n".as_ref(),
            name.as_ref(),
            "-v".as_ref(),
            value.as_ref(),
            p.as_os_str(),
        ],
    );
}

fn mknod_whiteout(p: &Path) {
    sh(
        "mknod",
        &[p.as_os_str(), "c".as_ref(), "0".as_ref(), "0".as_ref()],
    );
}

/// (code, path, fixable, fixed) of each finding.
fn check_json(opts: &str, fix: bool) -> (i32, Vec<(String, String, bool, String)>) {
    let mut args: Vec<&OsStr> = vec![
        "check".as_ref(),
        "--json".as_ref(),
        "-o".as_ref(),
        opts.as_ref(),
    ];
    if fix {
        args.push("--fix".as_ref());
    }
    let r = layover(&args);
    assert!(
        r.code == 0 || r.code == 1,
        "check failed ({}): {}",
        r.code,
        r.stderr
    );
    let v = r
        .stdout
        .lines()
        .map(|l| {
            (
                json_field(l, "code").unwrap().to_string(),
                unjson(json_field(l, "path").unwrap()),
                json_field(l, "fixable").unwrap() == "true",
                json_field(l, "fixed").unwrap().to_string(),
            )
        })
        .collect();
    (r.code, v)
}

/// Every file below `root` with its content (or link target, or type and rdev): what must
/// not change where --fix has nothing to do.
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    walk(root)
        .into_iter()
        .map(|(p, t)| {
            let full = root.join(OsStr::from_bytes(&p));
            let v = match t {
                'f' => fs::read(&full).unwrap(),
                'l' => fs::read_link(&full).unwrap().into_os_string().into_vec(),
                t => format!("{t}{}", fs::symlink_metadata(&full).unwrap().rdev()).into_bytes(),
            };
            (p, v)
        })
        .collect()
}

/// Plants every fault check knows in a fresh stack.
fn faulty(s: &Scratch) -> Stack {
    let (l0, u, w) = (s.path("l0"), s.path("u"), s.path("w"));
    for d in [
        "l0/op",
        "l0/dir",
        "u/op",
        "u/both",
        "u/aufsop",
        "u/redir",
        "u/xdir",
        "w/work/sub",
        "w/work/incompat/volatile",
    ] {
        fs::create_dir_all(s.path(d)).unwrap();
    }
    for f in [
        "l0/op/a",
        "l0/gone",
        "l0/dev-gone",
        "l0/keep",
        "l0/data",
        "l0/aufsop/x",
    ] {
        fs::create_dir_all(s.path(f).parent().unwrap()).unwrap();
        fs::write(s.path(f), "lower data\n").unwrap();
    }
    // A whiteout inside an opaque directory.
    setfattr(&u.join("op"), "trusted.overlay.opaque", "y");
    mknod_whiteout(&u.join("op/a"));
    // .wh.X beside a live X: an empty marker (fixable) and one with data (never removed).
    fs::write(u.join("keep"), "user data\n").unwrap();
    fs::write(u.join(".wh.keep"), "").unwrap();
    fs::write(u.join("data"), "user data\n").unwrap();
    fs::write(u.join(".wh.data"), "precious\n").unwrap();
    // Markers in both namespaces.
    setfattr(&u.join("both"), "trusted.overlay.opaque", "y");
    setfattr(&u.join("both"), "user.overlay.opaque", "y");
    // Mixed whiteout formats in one upper: a 0/0 device, a .wh. file, an opaque marker.
    mknod_whiteout(&u.join("dev-gone"));
    fs::write(u.join(".wh.gone"), "").unwrap();
    fs::write(u.join("aufsop/.wh..wh..opq"), "").unwrap();
    // Leftovers in the workdir, and a volatile mount's marker.
    fs::write(w.join("work/#1a2b"), "staged").unwrap();
    fs::write(w.join("work/sub/f"), "staged").unwrap();
    // Redirect and metacopy markers.
    setfattr(&u.join("redir"), "trusted.overlay.redirect", "/dir");
    fs::write(u.join("meta"), "").unwrap();
    setfattr(&u.join("meta"), "trusted.overlay.metacopy", "");
    // An xattr whiteout outside an opaque=x directory, an unknown opaque value, a whiteout
    // that hides nothing.
    fs::write(u.join("stray"), "").unwrap();
    setfattr(&u.join("stray"), "trusted.overlay.whiteout", "y");
    setfattr(&u.join("xdir"), "trusted.overlay.opaque", "n");
    mknod_whiteout(&u.join("nothing"));
    fs::write(u.join(".wh.ghost"), "").unwrap();
    Stack {
        lowers: vec![l0],
        upper: u,
        work: w,
        userxattr: false,
    }
}

#[test]
fn check_finds_every_planted_fault_and_fix_repairs_the_safe_ones() {
    require_root();
    let s = Scratch::new("check");
    let stack = faulty(&s);
    let opts = stack.option(true);
    let lower_before = snapshot(&stack.lowers[0]);
    let (code, found) = check_json(&opts, false);
    assert_eq!(code, 1);
    let has = |code: &str, path: &str| found.iter().find(|f| f.0 == code && f.1 == path);
    let expect = [
        ("whiteout-in-opaque-dir", "/op/a", true),
        ("aufs-whiteout-beside-entry", "/.wh.keep", true),
        ("aufs-whiteout-beside-entry", "/.wh.data", false),
        ("markers-in-both-namespaces", "/both", false),
        ("mixed-whiteout-formats", "/.wh.gone", true),
        ("mixed-whiteout-formats", "/aufsop/.wh..wh..opq", true),
        ("workdir-leftovers", "/work", true),
        ("workdir-volatile", "/work/incompat/volatile", false),
        ("redirect-marker", "/redir", false),
        ("metacopy-marker", "/meta", false),
        ("stray-xattr-whiteout", "/stray", false),
        ("bad-opaque-value", "/xdir", false),
        ("useless-whiteout", "/nothing", true),
        ("useless-whiteout", "/.wh.ghost", true),
    ];
    for (code, path, fixable) in expect {
        let f = has(code, path).unwrap_or_else(|| panic!("{code} at {path} not found: {found:#?}"));
        assert_eq!(f.2, fixable, "{code} at {path}: fixable");
    }
    // A clean layer has no findings: the lower here is clean.
    assert!(
        found
            .iter()
            .all(|f| f.1 != "/" || f.0 == "workdir-leftovers"),
        "{found:#?}"
    );

    let (code, fixed) = check_json(&opts, true);
    assert_eq!(code, 1, "errors that cannot be fixed remain");
    for (code, path, fixable) in expect {
        let f = fixed.iter().find(|f| f.0 == code && f.1 == path).unwrap();
        assert_eq!(f.3 == "true", fixable, "{code} at {path}: fixed = {}", f.3);
    }
    let u = &stack.upper;
    // Repaired on disk.
    assert!(fs::symlink_metadata(u.join("op/a")).is_err());
    assert!(fs::symlink_metadata(u.join(".wh.keep")).is_err());
    assert!(fs::symlink_metadata(u.join("nothing")).is_err());
    let gone = fs::symlink_metadata(u.join("gone")).unwrap();
    assert!(
        gone.file_type().is_char_device() && gone.rdev() == 0,
        ".wh.gone became a 0/0 device"
    );
    assert!(fs::symlink_metadata(u.join(".wh.gone")).is_err());
    assert!(fs::symlink_metadata(u.join("aufsop/.wh..wh..opq")).is_err());
    let v = Command::new("getfattr")
        .args(["--only-values", "-n", "trusted.overlay.opaque"])
        .arg(u.join("aufsop"))
        .output()
        .unwrap();
    assert_eq!(v.stdout, b"y", "the opaque marker became the xattr");
    let left: Vec<_> = fs::read_dir(stack.work.join("work"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![OsString::from("incompat")],
        "leftovers removed, incompat kept"
    );
    assert!(stack.work.join("work/incompat/volatile").exists());
    // User data untouched, the lower untouched.
    assert_eq!(fs::read(u.join("keep")).unwrap(), b"user data\n");
    assert_eq!(fs::read(u.join(".wh.data")).unwrap(), b"precious\n");
    assert_eq!(fs::read(u.join("data")).unwrap(), b"user data\n");
    assert!(u.join("meta").exists() && u.join("redir").exists() && u.join("stray").exists());
    assert_eq!(snapshot(&stack.lowers[0]), lower_before);
    // What was fixed is gone from a new check; what was not is still there.
    let (_, again) = check_json(&opts, false);
    for (code, path, fixable) in expect {
        let present = again.iter().any(|f| f.0 == code && f.1 == path);
        assert_eq!(
            present, !fixable,
            "{code} at {path} after --fix: {again:#?}"
        );
    }
}

#[test]
fn check_fix_is_refused_while_the_layers_are_mounted() {
    require_root();
    let s = Scratch::new("busy");
    let (l, u, w, m) = (s.path("l"), s.path("u"), s.path("w"), s.path("m"));
    for d in [&l, &u, &w, &m] {
        fs::create_dir_all(d).unwrap();
    }
    mknod_whiteout(&u.join("nothing")); // a fixable finding
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        opt_path(&l),
        opt_path(&u),
        opt_path(&w)
    );
    sh(
        "mount",
        &[
            "-t".as_ref(),
            "overlay".as_ref(),
            "overlay".as_ref(),
            "-o".as_ref(),
            opts.as_ref(),
            m.as_os_str(),
        ],
    );
    let guard = Mounted(m.clone());
    let r = layover(&[
        "check".as_ref(),
        "--fix".as_ref(),
        "-o".as_ref(),
        opts.as_ref(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("--fix refused") && r.stderr.contains("kernel overlay"),
        "{}",
        r.stderr
    );
    assert!(
        fs::symlink_metadata(u.join("nothing")).is_ok(),
        "nothing was changed"
    );
    drop(guard);
    let (_, fixed) = check_json(&opts, true);
    assert!(
        fixed
            .iter()
            .any(|f| f.0 == "useless-whiteout" && f.3 == "true"),
        "{fixed:?}"
    );
}

// ---- a live layover mount --------------------------------------------------------------------

#[test]
fn tools_on_a_live_layover_mount_read_the_daemons_layers() {
    require_root();
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is needed");
    let s = Scratch::new("live");
    let stack = handmade(&s);
    let mnt = s.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let opts = stack.option(true);
    let r = layover(&["-o".as_ref(), opts.as_ref(), mnt.as_os_str()]);
    assert_eq!(r.code, 0, "mount: {}", r.stderr);
    let _guard = Mounted(mnt.clone());
    let offline = stack.option(false);
    // explain, given paths inside the mount, as offline with -o.
    let live = layover(&[
        "explain".as_ref(),
        mnt.join("etc/hosts").as_os_str(),
        mnt.join("var/log").as_os_str(),
    ]);
    let off = layover(&[
        "explain".as_ref(),
        "-o".as_ref(),
        offline.as_ref(),
        "/etc/hosts".as_ref(),
        "/var/log".as_ref(),
    ]);
    assert_eq!(
        (live.code, &live.stdout),
        (off.code, &off.stdout),
        "{}",
        live.stderr
    );
    assert!(
        live.stdout.contains("/etc/hosts: regular file"),
        "{}",
        live.stdout
    );
    // diff and check, given the mountpoint.
    let live = layover(&["diff".as_ref(), mnt.as_os_str()]);
    let off = layover(&["diff".as_ref(), "-o".as_ref(), offline.as_ref()]);
    assert_eq!(live.code, 0, "{}", live.stderr);
    assert_eq!(live.stdout, off.stdout);
    assert!(live.stdout.contains("D /var/log"), "{}", live.stdout);
    let r = layover(&["check".as_ref(), mnt.as_os_str()]);
    assert!(r.code == 0 || r.code == 1, "{}", r.stderr);
    let r = layover(&["check".as_ref(), "--fix".as_ref(), mnt.as_os_str()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    // A path outside any layover mount, and a directory that is not one.
    let r = layover(&["explain".as_ref(), s.0.as_os_str()]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("not inside a layover mount"),
        "{}",
        r.stderr
    );
    let r = layover(&["diff".as_ref(), s.0.as_os_str()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("is not a layover mount"), "{}", r.stderr);
}

#[test]
fn usage_errors_and_help() {
    for args in [
        &["explain"][..],
        &["diff"],
        &["check"],
        &["diff", "-o", "lowerdir=/nonexistent-layer"],
    ] {
        let argv: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let r = layover(&argv);
        assert_eq!(r.code, 2, "{args:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("layover: "), "{args:?}: {}", r.stderr);
    }
    for tool in ["explain", "diff", "check", "stats"] {
        let r = layover(&[tool.as_ref(), "--help".as_ref()]);
        assert_eq!(r.code, 0);
        assert!(
            r.stdout.contains("Exit status") && r.stdout.contains("--json"),
            "{}",
            r.stdout
        );
    }
    let r = layover(&["stats".as_ref()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("MOUNTPOINT"), "{}", r.stderr);
    // export needs an upper, and never writes a tar to a terminal (not testable here: no
    // terminal) or anywhere when the command line is wrong.
    let s = Scratch::new("usage");
    let opts = format!("lowerdir={}", opt_path(&s.0));
    let r = layover(&["export".as_ref(), "-o".as_ref(), opts.as_ref()]);
    assert_eq!((r.code, r.stdout.as_str()), (2, ""));
    assert!(r.stderr.contains("needs an upperdir"), "{}", r.stderr);
}

// ---- export ------------------------------------------------------------------------------------

/// Turns an applied OCI layer's `.wh.` markers into the overlay format (what an image
/// store on overlayfs does when it applies a layer), keeping the directories' times.
fn oci_to_overlay(dir: &Path, userxattr: bool) {
    let ns = if userxattr { "user" } else { "trusted" };
    let script = format!(
        "import os, stat\n\
         root = {root:?}\n\
         for d, subdirs, files in os.walk(root, topdown=False):\n\
         \x20   for f in files:\n\
         \x20       if not f.startswith('.wh.'): continue\n\
         \x20       st = os.lstat(d)\n\
         \x20       os.unlink(os.path.join(d, f))\n\
         \x20       if f == '.wh..wh..opq':\n\
         \x20           os.setxattr(d, '{ns}.overlay.opaque', b'y')\n\
         \x20       elif not os.path.lexists(os.path.join(d, f[4:])):\n\
         \x20           os.mknod(os.path.join(d, f[4:]), stat.S_IFCHR, 0)\n\
         \x20       os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))\n",
        root = dir.to_str().unwrap(),
    );
    python("oci_to_overlay", &script);
}

/// Everything the merged view shows of a tree, one line per object: type, mode, owner,
/// mtime, size and content hash, link target, device number, link count, and every xattr.
fn describe_tree(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    for (p, t) in walk(root) {
        let full = root.join(OsStr::from_bytes(&p));
        let m = fs::symlink_metadata(&full).unwrap();
        let mut d = format!(
            "{t} {:o} {}:{} {}.{}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec()
        );
        match t {
            'f' => {
                let data = fs::read(&full).unwrap();
                let h = data.iter().fold(0u64, |h, b| {
                    h.wrapping_mul(1_000_003).wrapping_add(u64::from(*b))
                });
                d.push_str(&format!(
                    " size={} hash={h:x} nlink={}",
                    data.len(),
                    m.nlink()
                ));
            }
            'l' => d.push_str(&format!(" -> {:?}", fs::read_link(&full).unwrap())),
            'c' | 'b' => d.push_str(&format!(" rdev={}", m.rdev())),
            _ => {}
        }
        let x = Command::new("getfattr")
            .args(["-d", "-m", "-", "-h", "-e", "hex", "--absolute-names"])
            .arg(&full)
            .output()
            .unwrap();
        let attrs: Vec<String> = String::from_utf8_lossy(&x.stdout)
            .lines()
            .filter(|l| l.contains('='))
            .map(str::to_owned)
            .collect();
        d.push_str(&format!(" xattrs={attrs:?}"));
        out.insert(p, d);
    }
    out
}

/// Exports the stack's upper, applies it to an empty directory with GNU tar, and checks
/// that the lowers plus the applied layer show the same tree as the lowers plus the upper
/// (both read through the kernel's overlayfs). Returns the number of objects compared.
fn check_export(s: &Scratch, stack: &Stack, tag: &str) -> usize {
    let tar = s.path(&format!("{tag}.tar"));
    let r = layover(&[
        "export".as_ref(),
        "-o".as_ref(),
        stack.option(false).as_ref(),
        "--output".as_ref(),
        tar.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "export: {}", r.stderr);
    // The same upper gives the same bytes: again, and from a copy elsewhere.
    let again = layover(&[
        "export".as_ref(),
        "-o".as_ref(),
        stack.option(false).as_ref(),
        "--output".as_ref(),
        s.path(&format!("{tag}-2.tar")).as_os_str(),
    ]);
    assert_eq!(again.code, 0);
    let bytes = fs::read(&tar).unwrap();
    assert_eq!(
        bytes,
        fs::read(s.path(&format!("{tag}-2.tar"))).unwrap(),
        "not deterministic"
    );
    let applied = s.path(&format!("{tag}-applied"));
    fs::create_dir_all(&applied).unwrap();
    sh(
        "tar",
        &[
            "--xattrs".as_ref(),
            "--xattrs-include=*".as_ref(),
            "--numeric-owner".as_ref(),
            "-xpf".as_ref(),
            tar.as_os_str(),
            "-C".as_ref(),
            applied.as_os_str(),
        ],
    );
    oci_to_overlay(&applied, stack.userxattr);
    let mut with_applied = vec![applied];
    with_applied.extend(stack.lowers.iter().cloned());
    let a = kernel_mount(
        &stack.all_layers(),
        stack.userxattr,
        &s.path(&format!("{tag}-ka")),
        &s.path("k-spare"),
    );
    let b = kernel_mount(
        &with_applied,
        stack.userxattr,
        &s.path(&format!("{tag}-kb")),
        &s.path("k-spare"),
    );
    let (ta, tb) = (describe_tree(&a.0), describe_tree(&b.0));
    for (p, d) in &ta {
        assert_eq!(
            Some(d),
            tb.get(p),
            "{}: differs after export and apply",
            shown(p)
        );
    }
    assert_eq!(
        ta.len(),
        tb.len(),
        "extra objects after apply: {:?}",
        tb.keys()
            .filter(|k| !ta.contains_key(*k))
            .map(|k| shown(k))
            .collect::<Vec<_>>()
    );
    ta.len()
}

#[test]
fn export_then_apply_reproduces_the_merged_view() {
    require_root();
    let s = Scratch::new("export");
    let stack = handmade_for_export(&s);
    let n = check_export(&s, &stack, "hand");
    for f in ["new/sparse", "new/hole"] {
        let m = fs::metadata(s.path("hand-applied").join(f)).unwrap();
        assert!(
            m.blocks() * 512 < m.len() / 2,
            "{f}: not sparse after apply ({} blocks)",
            m.blocks()
        );
    }
    let tar_size = fs::metadata(s.path("hand.tar")).unwrap().len();
    assert!(
        tar_size < 1 << 20,
        "the holes were written out: {tar_size} bytes"
    );
    assert!(n > 15, "{n} objects compared");
    let list = Command::new("tar")
        .arg("-tvf")
        .arg(s.path("hand.tar"))
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for needle in [
        "etc/.wh.motd",
        "var/.wh.log",
        "x/.wh.drop",
        "opt/app/.wh..wh..opq",
        "new/link link to new/dir/file",
        " 4194304 ", // the sparse file listed with its real size and name
        "new/sparse\n",
    ] {
        assert!(list.contains(needle), "{needle} missing:\n{list}");
    }
    // Compressed: deterministic, and the same tar inside.
    for how in ["gzip", "zstd"] {
        let mut outs = Vec::new();
        for i in 0..2 {
            let f = s.path(&format!("hand-{i}.tar.{how}"));
            let r = layover(&[
                "export".as_ref(),
                "--compress".as_ref(),
                how.as_ref(),
                "-o".as_ref(),
                stack.option(false).as_ref(),
                "--output".as_ref(),
                f.as_os_str(),
            ]);
            assert_eq!(r.code, 0, "{how}: {}", r.stderr);
            outs.push(fs::read(&f).unwrap());
        }
        assert_eq!(outs[0], outs[1], "{how}: not deterministic");
        // gzip(1) is on every Debian system; the zstd command is not, so the reference
        // library decodes (through the zstd crate, which binds it).
        let plain = if how == "gzip" {
            let out = Command::new("gzip")
                .args(["-d", "-c"])
                .arg(s.path("hand-0.tar.gzip"))
                .output()
                .unwrap();
            assert!(out.status.success(), "gzip -d");
            out.stdout
        } else {
            zstd::decode_all(&outs[0][..]).unwrap()
        };
        assert_eq!(
            plain,
            fs::read(s.path("hand.tar")).unwrap(),
            "{how}: another tar inside"
        );
    }
    // From a copy of the upper elsewhere: the same bytes.
    let copy = s.path("u-copy");
    sh(
        "cp",
        &["-a".as_ref(), stack.upper.as_os_str(), copy.as_os_str()],
    );
    let moved = Stack {
        upper: copy,
        lowers: stack.lowers.clone(),
        work: stack.work.clone(),
        userxattr: false,
    };
    let r = layover(&[
        "export".as_ref(),
        "-o".as_ref(),
        moved.option(false).as_ref(),
        "--output".as_ref(),
        s.path("copy.tar").as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        fs::read(s.path("copy.tar")).unwrap(),
        fs::read(s.path("hand.tar")).unwrap(),
        "a copy of the upper exports differently"
    );
}

#[test]
fn export_then_apply_on_random_stacks() {
    require_root();
    let mut n = 0;
    for seed in 1..=40 {
        let s = Scratch::new(&format!("export{seed}"));
        let stack = random_stack(&s.path("stack"), seed);
        n += check_export(&s, &stack, "r");
    }
    assert!(n > 200, "{n} objects compared");
}

/// The progress line: drawn on a terminal (through script(1)'s pseudo-terminal), cleared
/// at the end; nothing on stderr otherwise.
#[test]
fn progress_only_on_a_terminal() {
    require_root();
    let s = Scratch::new("progress");
    let stack = handmade(&s);
    let opts = stack.option(false);
    for tool in ["diff", "check", "export"] {
        let r = layover(&[tool.as_ref(), "-o".as_ref(), opts.as_ref(), "--".as_ref()]);
        assert!(r.code == 0 || r.code == 1, "{tool}: {}", r.stderr);
        assert_eq!(r.stderr, "", "{tool}: stderr is not a terminal");
    }
    let line = format!(
        "{} diff -o '{}' > /dev/null",
        env!("CARGO_BIN_EXE_layover"),
        opts
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(
        tty.contains("diff: ") && tty.contains(" entries"),
        "{tty:?}"
    );
    assert!(
        tty.trim_end().ends_with("\u{1b}[2K"),
        "the line is cleared at the end: {tty:?}"
    );
}

// ---- export applied by podman ------------------------------------------------------------------

/// A podman of its own: storage, run root, config files and temporary files in `dir`,
/// every command in a private mount namespace (held by a `sleep` started with `unshare -m`)
/// so that its mounts never reach the host's table; they go when the holder is killed.
/// Configured as tests/podman.rs explains (runc, cgroupfs, events and locks in files).
struct Podman {
    dir: PathBuf,
    holder: std::process::Child,
}

impl Podman {
    fn new(dir: PathBuf) -> Podman {
        for d in ["config", "home", "run", "tmp", "storage", "cni"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        let p = |d: &str| dir.join(d).display().to_string();
        let containers_conf = layover_testkit::podman_containers_conf(&dir);
        // The kernel's overlayfs (no mount_program): podman applies the layer's .wh.
        // entries itself, as 0/0 devices and opaque xattrs in its own layer directory.
        let storage_conf = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            p("storage"),
            p("run/storage")
        );
        fs::write(dir.join("config/containers.conf"), containers_conf).unwrap();
        fs::write(dir.join("config/storage.conf"), storage_conf).unwrap();
        assert!(
            Command::new("podman")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "PREREQUISITE MISSING: podman (apt-get install podman runc)"
        );
        let holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sleep", "3600"])
            .spawn()
            .unwrap();
        // Wait until the holder is in its own namespace.
        let mine = fs::read_link("/proc/self/ns/mnt").unwrap();
        let ns = format!("/proc/{}/ns/mnt", holder.id());
        let ready = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            fs::read_link(&ns).is_ok_and(|n| n != mine)
        });
        assert!(ready, "unshare -m did not start");
        Podman { dir, holder }
    }

    /// `podman ARGS` in the namespace with a clean environment pointing into `dir`.
    fn run(&self, args: &[&str]) -> String {
        let h = |d: &str| self.dir.join(d).display().to_string();
        let out = Command::new("timeout")
            .args(["-k", "10", "240", "nsenter"])
            .arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .args(["--", "env", "-i"])
            .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .arg(format!("HOME={}", h("home")))
            .arg(format!("XDG_CONFIG_HOME={}", h("home/.config")))
            .arg(format!("XDG_DATA_HOME={}", h("home/.local/share")))
            .arg(format!("XDG_RUNTIME_DIR={}", h("run")))
            .arg(format!("TMPDIR={}", h("tmp")))
            .arg(format!("CONTAINERS_CONF={}", h("config/containers.conf")))
            .arg(format!(
                "CONTAINERS_STORAGE_CONF={}",
                h("config/storage.conf")
            ))
            .arg("podman")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A path in the namespace, as this process reaches it.
    fn seen(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.holder.id()))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // The namespace and every mount podman made in it go with the holder.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A docker-archive (what `podman load` reads) of one image whose layers are the given
/// uncompressed tars, bottom first, tagged `tag`.
fn docker_archive(out: &Path, layers: &[PathBuf], tag: &str) {
    let script = format!(
        "import hashlib, json, tarfile, io\n\
         layers = {layers:?}\n\
         diff_ids = []\n\
         for l in layers:\n\
         \x20   h = hashlib.sha256()\n\
         \x20   with open(l, 'rb') as f:\n\
         \x20       for b in iter(lambda: f.read(1 << 20), b''): h.update(b)\n\
         \x20   diff_ids.append('sha256:' + h.hexdigest())\n\
         config = json.dumps({{'architecture': 'amd64', 'os': 'linux', 'config': {{}},\n\
         \x20   'rootfs': {{'type': 'layers', 'diff_ids': diff_ids}}}}).encode()\n\
         cname = hashlib.sha256(config).hexdigest() + '.json'\n\
         names = ['layer%d.tar' % i for i in range(len(layers))]\n\
         manifest = json.dumps([{{'Config': cname, 'RepoTags': [{tag:?}], 'Layers': names}}]).encode()\n\
         with tarfile.open({out:?}, 'w', format=tarfile.PAX_FORMAT) as t:\n\
         \x20   for name, data in ((cname, config), ('manifest.json', manifest)):\n\
         \x20       i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))\n\
         \x20   for name, l in zip(names, layers):\n\
         \x20       t.add(l, arcname=name)\n",
        layers = layers
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect::<Vec<_>>(),
        out = out.to_str().unwrap(),
    );
    python("docker archive", &script);
}

/// Podman applies `layover export`'s layer itself: an image of two layers (the lowers
/// flattened — the kernel's overlay of them, written by GNU tar — then the exported upper)
/// is loaded, mounted with `podman image mount` (the kernel's overlay of podman's own
/// layer directories, where it turned `.wh.` entries into its whiteouts and opaque
/// markers), and must show the tree the kernel shows for the lowers plus the upper.
/// What podman does not keep, and is left out of the comparison: xattrs with an empty
/// value. The export writes them as PAX records with an empty value (`SCHILY.xattr.NAME=`),
/// as GNU tar does and reads back; but POSIX says an empty PAX value deletes the keyword,
/// and Go's archive/tar, which podman (containers/storage) reads layers with, follows it,
/// so no such xattr survives any Go tool. Not compared because `describe_tree` does not
/// look at it: holes. Go's archive/tar reads a GNU sparse member as its data with the
/// holes as zeros, and containers/storage writes them out (the handmade stack's 4 MiB
/// file with one 6-byte island takes 8,192 blocks in podman's layer; GNU tar keeps it
/// sparse, which `export_then_apply_reproduces_the_merged_view` checks); the data is the
/// same. Returns the number of objects compared.
fn check_export_with_podman(s: &Scratch, podman: &Podman, stack: &Stack, tag: &str) -> usize {
    let (base, layer) = image_layers(s, stack, tag);
    let archive = s.path(&format!("{tag}-image.tar"));
    let image = format!("localhost/layover-export-{tag}:test");
    docker_archive(&archive, &[base, layer], &image);
    podman.run(&["load", "-q", "-i", archive.to_str().unwrap()]);
    let mounted = podman.run(&["image", "mount", &image]);
    let got = describe_tree(&podman.seen(mounted.trim()));
    podman.run(&["image", "unmount", &image]);
    podman.run(&["rmi", &image]);
    compare_applied(s, stack, tag, "podman", &got)
}

/// The two layers of the test image: the lowers flattened (GNU tar of the kernel's
/// read-only overlay of them) and `layover export`'s tar of the upper.
fn image_layers(s: &Scratch, stack: &Stack, tag: &str) -> (PathBuf, PathBuf) {
    let layer = s.path(&format!("{tag}.tar"));
    let r = layover(&[
        "export".as_ref(),
        "-o".as_ref(),
        stack.option(false).as_ref(),
        "--output".as_ref(),
        layer.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "export: {}", r.stderr);
    let lowers = kernel_mount(
        &stack.lowers,
        stack.userxattr,
        &s.path(&format!("{tag}-kl")),
        &s.path("k-spare"),
    );
    let base = s.path(&format!("{tag}-base.tar"));
    sh(
        "tar",
        &[
            "--xattrs".as_ref(),
            "--xattrs-include=*".as_ref(),
            "--numeric-owner".as_ref(),
            "--sparse".as_ref(),
            "-cf".as_ref(),
            base.as_os_str(),
            "-C".as_ref(),
            lowers.0.as_os_str(),
            ".".as_ref(),
        ],
    );
    (base, layer)
}

/// Compares a tool's tree of the applied image (`got`) with the kernel's overlay of the
/// stack, leaving out xattrs with an empty value (see `check_export_with_podman`).
/// Returns the number of objects compared.
fn compare_applied(
    s: &Scratch,
    stack: &Stack,
    tag: &str,
    who: &str,
    got: &BTreeMap<Vec<u8>, String>,
) -> usize {
    let reference = kernel_mount(
        &stack.all_layers(),
        stack.userxattr,
        &s.path(&format!("{tag}-{who}-ka")),
        &s.path("k-spare"),
    );
    let mut want = describe_tree(&reference.0);
    for d in want.values_mut() {
        *d = without_empty_xattrs(d);
    }
    if who == "umoci" {
        visible_link_counts(&reference.0, &mut want);
    }
    let differs: Vec<String> = want
        .iter()
        .filter(|(p, d)| got.get(*p) != Some(*d))
        .map(|(p, d)| format!("{}:\n  kernel {d}\n  {who} {:?}", shown(p), got.get(p)))
        .chain(
            got.keys()
                .filter(|p| !want.contains_key(*p))
                .map(|p| format!("{}: only in {who}'s view", shown(p))),
        )
        .collect();
    assert!(
        differs.is_empty(),
        "{tag}: {who}'s view differs:\n{}",
        differs.join("\n")
    );
    want.len()
}

/// In a tree written out file by file (umoci's rootfs) a file has as many links as it has
/// names there; the kernel's overlay shows a lower file's own link count, which counts names
/// the upper hides with whiteouts. `want`'s `nlink=` become the names that the view at
/// `root` shows for each file (grouped by inode number).
fn visible_link_counts(root: &Path, want: &mut BTreeMap<Vec<u8>, String>) {
    let mut names: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    for (p, t) in walk(root) {
        if t == 'f' {
            let m = fs::symlink_metadata(root.join(OsStr::from_bytes(&p))).unwrap();
            names.entry((m.dev(), m.ino())).or_default().push(p);
        }
    }
    for group in names.values() {
        for p in group {
            let d = want.get_mut(p).unwrap();
            let at = d.find(" nlink=").unwrap();
            let end = at + 1 + d[at + 1..].find(' ').unwrap();
            d.replace_range(at..end, &format!(" nlink={}", group.len()));
        }
    }
}

/// An OCI image layout in `dir` (what umoci reads) of one image whose layers are the given
/// uncompressed tars, bottom first, tagged `tag`.
fn oci_layout(dir: &Path, layers: &[PathBuf], tag: &str) {
    let script = format!(
        "import hashlib, json, os, shutil\n\
         d = {dir:?}\n\
         os.makedirs(d + '/blobs/sha256')\n\
         def blob(data=None, path=None):\n\
         \x20   h = hashlib.sha256()\n\
         \x20   if path:\n\
         \x20       with open(path, 'rb') as f:\n\
         \x20           for b in iter(lambda: f.read(1 << 20), b''): h.update(b)\n\
         \x20       shutil.copyfile(path, d + '/blobs/sha256/' + h.hexdigest())\n\
         \x20       size = os.path.getsize(path)\n\
         \x20   else:\n\
         \x20       h.update(data)\n\
         \x20       open(d + '/blobs/sha256/' + h.hexdigest(), 'wb').write(data)\n\
         \x20       size = len(data)\n\
         \x20   return 'sha256:' + h.hexdigest(), size\n\
         layers = [blob(path=l) for l in {layers:?}]\n\
         config = json.dumps({{'architecture': 'amd64', 'os': 'linux', 'config': {{}},\n\
         \x20   'rootfs': {{'type': 'layers', 'diff_ids': [l[0] for l in layers]}}}}).encode()\n\
         c = blob(config)\n\
         manifest = json.dumps({{'schemaVersion': 2,\n\
         \x20   'mediaType': 'application/vnd.oci.image.manifest.v1+json',\n\
         \x20   'config': {{'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': c[0], 'size': c[1]}},\n\
         \x20   'layers': [{{'mediaType': 'application/vnd.oci.image.layer.v1.tar', 'digest': l[0], 'size': l[1]}} for l in layers]}}).encode()\n\
         m = blob(manifest)\n\
         index = {{'schemaVersion': 2, 'manifests': [{{'mediaType': 'application/vnd.oci.image.manifest.v1+json',\n\
         \x20   'digest': m[0], 'size': m[1], 'annotations': {{'org.opencontainers.image.ref.name': {tag:?}}}}}]}}\n\
         open(d + '/index.json', 'w').write(json.dumps(index))\n\
         open(d + '/oci-layout', 'w').write(json.dumps({{'imageLayoutVersion': '1.0.0'}}))\n",
        dir = dir.to_str().unwrap(),
        layers = layers
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect::<Vec<_>>(),
    );
    python("OCI layout", &script);
}

/// umoci (Debian's package) applies the same image itself: `umoci unpack` of an OCI layout
/// of the two layers, its bundle's rootfs compared as podman's view is. umoci writes the
/// files out (no overlay), applying each `.wh.` entry by deleting what it names and
/// `.wh..wh..opq` by emptying the directory. What differs from the kernel's view for a
/// reason, and is compared accordingly: a file's link count is its names in the tree
/// (`visible_link_counts`); xattrs with an empty value and holes, as for podman.
/// Returns the number of objects compared.
fn check_export_with_umoci(s: &Scratch, stack: &Stack, tag: &str) -> usize {
    let (base, layer) = image_layers(s, stack, tag);
    let layout = s.path(&format!("{tag}-oci"));
    oci_layout(&layout, &[base, layer], "test");
    let bundle = s.path(&format!("{tag}-bundle"));
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle)
        .output()
        .expect("PREREQUISITE MISSING: umoci (apt-get install -y umoci; scripts/test.sh does)");
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = describe_tree(&bundle.join("rootfs"));
    compare_applied(s, stack, tag, "umoci", &got)
}

/// A `describe_tree` line without the xattrs whose value is empty (`NAME=0x`).
fn without_empty_xattrs(d: &str) -> String {
    let Some((head, list)) = d.split_once(" xattrs=[") else {
        return d.to_string();
    };
    let list = list.strip_suffix(']').unwrap_or(list);
    let kept: Vec<&str> = list
        .split(", ")
        .filter(|x| !x.is_empty() && !x.ends_with("=0x\""))
        .collect();
    format!("{head} xattrs=[{}]", kept.join(", "))
}

/// The handmade stack with what an OCI layer must carry besides: a hard link, xattrs, a
/// sparse file and one that is a hole only (the stack has 0/0 and xattr whiteouts, a `y`
/// and an `x` opaque directory already).
fn handmade_for_export(s: &Scratch) -> Stack {
    let stack = handmade(s);
    fs::hard_link(
        stack.upper.join("new/dir/file"),
        stack.upper.join("new/link"),
    )
    .unwrap();
    setfattr(&stack.upper.join("new/dir/file"), "user.origin", "test");
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(stack.upper.join("new/sparse")).unwrap();
    f.set_len(4 << 20).unwrap();
    f.write_all_at(b"island", 1 << 20).unwrap();
    fs::File::create(stack.upper.join("new/hole"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    stack
}

#[test]
fn export_applied_by_podman_reproduces_the_merged_view() {
    require_root();
    let s = Scratch::new("podman");
    let podman = Podman::new(s.path("podman"));
    let stack = handmade_for_export(&s);
    let mut n = check_export_with_podman(&s, &podman, &stack, "hand");
    for seed in [3, 7, 11, 19, 23, 29, 31, 37] {
        let stack = random_stack(&s.path(&format!("stack{seed}")), seed);
        n += check_export_with_podman(&s, &podman, &stack, &format!("r{seed}"));
    }
    assert!(n > 60, "{n} objects compared");
}

#[test]
fn export_applied_by_umoci_reproduces_the_merged_view() {
    require_root();
    let s = Scratch::new("umoci");
    let stack = handmade_for_export(&s);
    let mut n = check_export_with_umoci(&s, &stack, "hand");
    for seed in [3, 7, 11, 19, 23, 29, 31, 37] {
        let stack = random_stack(&s.path(&format!("stack{seed}")), seed);
        n += check_export_with_umoci(&s, &stack, &format!("r{seed}"));
    }
    assert!(n > 60, "{n} objects compared");
}
