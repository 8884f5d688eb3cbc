//! A real client: podman (Debian's package) with layover as containers-storage's
//! `overlay.mount_program`, as root and rootless.
//!
//! The scenario: a root file system built here from busybox-static is imported from a tarball
//! (no registry is reachable: `podman import`, `--pull=never`, `--network none`); a container
//! writes a new file, appends to a lower file, deletes one, renames one, deletes a lower
//! directory and makes it again with other contents, makes a symlink. Then `podman diff`,
//! `podman start` (a second mount of the same layer), `podman commit`, `podman diff` of the
//! committed image, a container of it, `podman export`, and the kernel's overlayfs reading the
//! upper layer layover wrote: each must show exactly the changes, and nothing deleted may come
//! back. A second generation, over the committed layer's whiteouts, brings a deleted name back
//! and deletes more; its listing and diff are checked too. With
//! `mount_program` set, containers-storage computes diff and commit by mounting the layer and
//! its parent through layover and walking both with readdir and lstat, so this checks that
//! lookup and readdir agree, on a fresh mount too.
//!
//! Nothing touches the host's podman state: storage, run root, config files, HOME and the
//! XDG directories live in the test's own temporary directory. Every podman command runs in a
//! private mount namespace and a pid namespace of the session's own, so podman's mounts never
//! reach the host's mount table, and what podman leaves running (conmon, layover daemons, the
//! rootless pause process) is reaped by the namespace's init, a shell the test starts, and
//! killed with it (this host's init leaves orphans as zombies for a while). Rootless, the
//! user `podtest` (made by .ci/run) runs podman inside those
//! namespaces, where a 0666 node for the FUSE device is bound over `/dev/fuse` (the host's
//! node, mode 0600 here, is never changed). Teardown (also on failure): `podman system
//! reset`, the namespaces' holder killed (which kills everything in the pid namespace and
//! drops every mount made there), any process still naming the temporary directory killed by
//! pid, the directory removed.
//!
//! Prerequisites (root; podman, runc, busybox-static, uidmap, util-linux; the user `podtest`
//! with subordinate ids) are checked first and a missing one fails loudly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test; `LAYOVER_TEST_BIN` names another one (e.g. a build of a branch).
fn layover_bin() -> PathBuf {
    std::env::var_os("LAYOVER_TEST_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_layover")),
        PathBuf::from,
    )
}

/// The unprivileged user of the rootless run; .ci/run creates it.
const USER: &str = "podtest";
/// How long one podman command may take before `timeout` kills it.
const COMMAND_LIMIT: &str = "240";
const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const BASE_IMAGE: &str = "localhost/layover-base:test";
const COMMITTED_IMAGE: &str = "localhost/layover-committed:test";

// ---------------------------------------------------------------------------------------------
// The scenario's files, the container's script, and what every view must show afterwards
// ---------------------------------------------------------------------------------------------

/// The lower layer's /data: (path, contents); a path ending in '/' is a directory.
const BASE_DATA: &[(&str, &str)] = &[
    ("data/", ""),
    ("data/append.txt", "lower\n"),
    ("data/delete.txt", "gone\n"),
    ("data/rename.txt", "moved\n"),
    ("data/keep.txt", "kept\n"),
    ("data/keepdir/", ""),
    ("data/keepdir/x", "x\n"),
    ("data/olddir/", ""),
    ("data/olddir/a", "old a\n"),
    ("data/olddir/b", "old b\n"),
    ("data/olddir/sub/", ""),
    ("data/olddir/sub/c", "old c\n"),
];

/// The container's changes, made by the first run only (the restarted container and a
/// container of the committed image find /data/new.txt). Every run then lists /data
/// ([`LIST`]), so that all views compare with one expected text.
const CHANGES: &str = r#"set -e
if [ ! -e /data/new.txt ]; then
    echo new > /data/new.txt
    echo more >> /data/append.txt
    rm /data/delete.txt
    mv /data/rename.txt /data/renamed.txt
    rm -r /data/olddir
    mkdir /data/olddir /data/olddir/sub
    echo fresh > /data/olddir/fresh.txt
    ln -s renamed.txt /data/link
fi
"#;

/// Lists /data in the form [`listing`] gives (the shell's part of every container's script).
const LIST: &str = r#"find /data | while read -r p; do
    if [ -L "$p" ]; then echo "l $p -> $(readlink "$p")"
    elif [ -d "$p" ]; then echo "d $(stat -c %a "$p") $p"
    else echo "f $(stat -c %a "$p") $p $(tr '\n' '|' < "$p")"; fi
done
"#;

/// A second generation, a container of the committed image, whose lowers now hold whiteouts
/// and an opaque directory: it brings back a deleted name, deletes a file the committed
/// layer added, and removes the recreated directory's subdirectory (the first run only).
const SECOND_SCRIPT: &str = r#"set -e
if [ -e /data/renamed.txt ]; then
    echo back > /data/delete.txt
    rm /data/renamed.txt
    rmdir /data/olddir/sub
fi
"#;

/// /data after [`SECOND_SCRIPT`] (lines sorted when compared).
const SECOND_DATA: &str = "\
d 755 /data
f 644 /data/append.txt lower|more|
f 644 /data/delete.txt back|
f 644 /data/keep.txt kept|
d 755 /data/keepdir
f 644 /data/keepdir/x x|
l /data/link -> renamed.txt
f 644 /data/new.txt new|
d 755 /data/olddir
f 644 /data/olddir/fresh.txt fresh|
";

/// `podman diff` of the second container under /data: against the committed image.
const SECOND_DIFF: &str = "\
A /data/delete.txt
C /data
C /data/olddir
D /data/olddir/sub
D /data/renamed.txt
";

/// /data after the script, as [`listing`] and the script print it (lines sorted).
const EXPECTED_DATA: &str = "\
d 755 /data
f 644 /data/append.txt lower|more|
f 644 /data/keep.txt kept|
d 755 /data/keepdir
f 644 /data/keepdir/x x|
l /data/link -> renamed.txt
f 644 /data/new.txt new|
d 755 /data/olddir
f 644 /data/olddir/fresh.txt fresh|
d 755 /data/olddir/sub
f 644 /data/renamed.txt moved|
";

/// `podman diff` under /data (sorted). A deleted directory is one line: the walk does not
/// descend into what is gone. The new olddir is opaque, so everything the lower olddir held
/// is deleted, and its sub (a directory again) is changed rather than added.
const EXPECTED_DIFF: &str = "\
A /data/link
A /data/new.txt
A /data/olddir/fresh.txt
A /data/renamed.txt
C /data
C /data/append.txt
C /data/olddir
C /data/olddir/sub
D /data/delete.txt
D /data/olddir/a
D /data/olddir/b
D /data/olddir/sub/c
D /data/rename.txt
";

/// Paths podman itself creates in a container's root (mount targets for /etc/hosts and the
/// like): diff lines outside /data may name only these, and never delete anything.
const PODMAN_OWN: &[&str] = &["/etc", "/run", "/dev", "/proc", "/sys"];

// ---------------------------------------------------------------------------------------------
// Small helpers: commands with output through files and a deadline, prerequisites
// ---------------------------------------------------------------------------------------------

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs a command to completion. Output goes through files, not pipes: a daemon podman
/// starts (conmon, layover) must not keep us waiting for EOF on an inherited pipe.
fn run(cmd: &mut Command, scratch: &Path) -> Out {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let (out_path, err_path) = (
        scratch.join(format!("cmd-{n}.out")),
        scratch.join(format!("cmd-{n}.err")),
    );
    let status = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"))
        .status()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    let out = Out {
        ok: status.success(),
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    out
}

fn run_ok(cmd: &mut Command, scratch: &Path) -> String {
    let out = run(cmd, scratch);
    assert!(
        out.ok,
        "{cmd:?} failed\n--- stdout\n{}--- stderr\n{}",
        out.stdout, out.stderr
    );
    out.stdout
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An ELF file without a program interpreter (PT_INTERP) is statically linked.
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = fs::read(path) else { return false };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false; // not a 64-bit little-endian ELF
    }
    let word = |at: usize, n: usize| {
        b.get(at..at + n).map_or(0, |s| {
            s.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x))
        })
    };
    let (phoff, phentsize, phnum) = (word(0x20, 8), word(0x36, 2), word(0x38, 2));
    !(0..phnum).any(|i| word((phoff + i * phentsize) as usize, 4) == 3)
}

/// (uid, gid) of a user from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.split(':').next() == Some(name))?;
    let f: Vec<&str> = line.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// The number of subordinate ids `name` has in /etc/subuid or /etc/subgid.
fn subordinate_count(file: &str, name: &str) -> u64 {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && f[0] == name).then(|| f[2].parse::<u64>().unwrap_or(0))
        })
        .sum()
}

const PACKAGES: &str = "apt-get install podman runc busybox-static uidmap (.ci/run does)";

fn require_prerequisites(rootless: bool) {
    let euid = fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().nth(1).map(str::to_owned))
        })
        .flatten()
        .unwrap();
    assert_eq!(
        euid, "0",
        "PREREQUISITE MISSING: tests/podman.rs runs as root"
    );
    for tool in [
        "podman", "runc", "conmon", "unshare", "nsenter", "timeout", "tar", "mknod",
    ] {
        assert!(
            have(tool),
            "PREREQUISITE MISSING: `{tool}` not found: {PACKAGES}"
        );
    }
    assert!(
        is_static_elf(Path::new("/bin/busybox")),
        "PREREQUISITE MISSING: /bin/busybox is not a static busybox: {PACKAGES}"
    );
    assert!(
        fs::metadata("/dev/fuse").is_ok_and(|m| m.file_type().is_char_device()),
        "PREREQUISITE MISSING: /dev/fuse is not a character device (modprobe fuse)"
    );
    assert!(
        layover_bin().exists(),
        "PREREQUISITE MISSING: {} does not exist",
        layover_bin().display()
    );
    if rootless {
        for tool in ["setpriv", "newuidmap", "newgidmap"] {
            assert!(
                have(tool),
                "PREREQUISITE MISSING: `{tool}` not found: {PACKAGES}"
            );
        }
        assert!(
            user_ids(USER).is_some(),
            "PREREQUISITE MISSING: no user `{USER}` (useradd -m {USER}; .ci/run makes it)"
        );
        for file in ["/etc/subuid", "/etc/subgid"] {
            assert!(
                subordinate_count(file, USER) >= 65536,
                "PREREQUISITE MISSING: `{USER}` has fewer than 65536 ids in {file} \
                 (usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {USER})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Views of /data in one text form
// ---------------------------------------------------------------------------------------------

/// Lists `root`/data as the container script does: a line per object, sorted, with type,
/// permission bits, the path as the container sees it, and a file's contents ('\n' as '|').
fn listing(root: &Path) -> String {
    tree(&root.join("data"), "/data")
}

/// Lists the tree at `dir`, shown as `shown`, in [`listing`]'s form; the contents of a file
/// that is long or not UTF-8 (busybox) are given as its length and a hash.
fn tree(dir: &Path, shown: &str) -> String {
    fn walk(dir: &Path, shown: &str, lines: &mut Vec<String>) {
        let meta = fs::symlink_metadata(dir).unwrap_or_else(|e| panic!("lstat {dir:?}: {e}"));
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(dir).unwrap();
            lines.push(format!("l {shown} -> {}", target.display()));
        } else if meta.is_dir() {
            lines.push(format!("d {mode:o} {shown}"));
            for entry in fs::read_dir(dir).unwrap() {
                let name = entry.unwrap().file_name();
                let name = name.to_str().unwrap();
                walk(&dir.join(name), &format!("{shown}/{name}"), lines);
            }
        } else if meta.is_file() {
            let bytes = fs::read(dir).unwrap_or_else(|e| panic!("read {dir:?}: {e}"));
            let text = match std::str::from_utf8(&bytes) {
                Ok(text) if bytes.len() <= 256 => text.replace('\n', "|"),
                _ => {
                    let mut h = DefaultHasher::new();
                    h.write(&bytes);
                    format!("#{} bytes, hash {:016x}", bytes.len(), h.finish())
                }
            };
            lines.push(format!("f {mode:o} {shown} {text}"));
        } else {
            lines.push(format!("? {:?} {shown}", meta.file_type()));
        }
    }
    let mut lines = Vec::new();
    walk(dir, shown, &mut lines);
    sorted_lines(&lines.join("\n"))
}

/// The lines of `text`, sorted, each ending in '\n'.
fn sorted_lines(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    lines.sort_unstable();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// A [`tree`] listing without the line of the tree's root directory (shown as "").
fn without_root(listing: &str) -> String {
    let lines: Vec<&str> = listing
        .lines()
        .filter(|l| !(l.starts_with("d ") && l.split(' ').nth(2) == Some("")))
        .collect();
    sorted_lines(&lines.join("\n"))
}

fn assert_view(what: &str, got: &str) {
    assert_listing(what, got, EXPECTED_DATA);
}

fn assert_listing(what: &str, got: &str, expected: &str) {
    let (got, expected) = (sorted_lines(got), sorted_lines(expected));
    assert_eq!(
        got, expected,
        "{what}: /data differs from what the container left\n--- got\n{got}--- expected\n{expected}"
    );
}

/// Checks `podman diff`: exactly [`EXPECTED_DIFF`] under /data, and outside it only
/// additions or changes of podman's own mount targets.
fn assert_diff(what: &str, diff: &str, expected: &str) {
    let (data, other): (Vec<&str>, Vec<&str>) =
        diff.lines().filter(|l| !l.is_empty()).partition(|l| {
            l.get(2..)
                .is_some_and(|p| p == "/data" || p.starts_with("/data/"))
        });
    assert_eq!(
        sorted_lines(&data.join("\n")),
        sorted_lines(expected),
        "{what}: podman diff under /data\n--- whole diff\n{diff}"
    );
    for line in other {
        let path = line.get(2..).unwrap_or("");
        let own = PODMAN_OWN
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")));
        assert!(
            own && !line.starts_with('D'),
            "{what}: podman diff names an unexpected change `{line}`\n--- whole diff\n{diff}"
        );
    }
}

/// A new directory with a short path, /tmp/lpm-LABEL-N. Short on purpose: with the session's
/// directory 50 characters long, every container of this podman (4.3.1, conmon 2.1.6) took
/// 20 s more to be seen as exited, with or without layover (podman's debug log: "Exceeded
/// conmon timeout waiting for container to exit"; conmon had written the exit file, and its
/// exit command, `podman container cleanup`, exited with 125; the path whose length matters
/// was not pinned down). With 8 to 17 characters a container takes a fraction of a second.
/// $TMPDIR is not used for the same reason.
fn short_temp_dir(label: &str) -> PathBuf {
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_micros();
    for n in 0..1000 {
        let dir = PathBuf::from(format!("/tmp/lpm-{label}-{}", (start + n) % 1_000_000));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("mkdir {}: {e}", dir.display()),
        }
    }
    panic!("no free /tmp/lpm-{label}-N directory");
}

// ---------------------------------------------------------------------------------------------
// A podman session: a temporary directory, a private mount namespace, podman's config
// ---------------------------------------------------------------------------------------------

struct Session {
    /// The temporary directory; everything lives in it.
    dir: PathBuf,
    /// What the user owns (rootless) or root: config, storage, run root, HOME.
    home: PathBuf,
    /// `unshare --mount --pid --fork --kill-child sh`: its mount namespace and its children's
    /// pid namespace are where podman runs; the shell is that namespace's init and reaps.
    holder: Child,
    /// (uid, gid) of the rootless user; None as root.
    user: Option<(u32, u32)>,
    /// Scratch for command output (root's, outside what podman sees).
    scratch: PathBuf,
    /// More lines for storage.conf's `[storage.options.overlay]`.
    overlay_options: &'static str,
}

impl Session {
    fn new(rootless: bool) -> Session {
        Session::with_overlay_options(rootless, "")
    }

    /// A session whose storage.conf has `overlay_options` added to its overlay section.
    fn with_overlay_options(rootless: bool, overlay_options: &'static str) -> Session {
        let dir = short_temp_dir(if rootless { "u" } else { "r" });
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let scratch = dir.join("scratch");
        fs::create_dir(&scratch).unwrap();
        // The shell waits in a loop: `wait` reaps every child, orphans reparented to it too.
        let holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                "--kill-child",
            ])
            .args([
                "--mount-proc",
                "sh",
                "-c",
                "while :; do sleep 3600 & wait; done",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let mut s = Session {
            home: dir.join("u"),
            dir,
            holder,
            user: rootless.then(|| user_ids(USER).unwrap()),
            scratch,
            overlay_options,
        };
        s.wait_for_namespace();
        s.configure();
        s
    }

    /// Waits until the namespaces' init runs: then the namespace's own /proc (what the
    /// holder's mount namespace shows at /proc) has a pid 1 that is the shell.
    fn wait_for_namespace(&mut self) {
        let init = format!("/proc/{}/root/proc/1/cmdline", self.holder.id());
        let start = Instant::now();
        while !fs::read(&init).unwrap_or_default().starts_with(b"sh\0-c\0") {
            if let Ok(Some(status)) = self.holder.try_wait() {
                panic!("unshare --mount --pid exited: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "unshare --mount --pid did not start its shell"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A command run as root in the session's namespaces.
    fn in_namespace(&self, program: &str) -> Command {
        let ns = format!("/proc/{}/ns", self.holder.id());
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "10", COMMAND_LIMIT, "nsenter"])
            .arg(format!("--mount={ns}/mnt"))
            .arg(format!("--pid={ns}/pid_for_children"))
            .args(["--", program]);
        cmd
    }

    /// Writes the config files, copies layover where the user may run it, and (rootless)
    /// binds a 0666 FUSE node over /dev/fuse in the namespace.
    fn configure(&self) {
        let h = &self.home;
        for d in ["", "config", "home", "run", "tmp", "storage", "cni"] {
            fs::create_dir_all(h.join(d)).unwrap();
        }
        fs::set_permissions(h.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
        let bin = self.dir.join("layover");
        fs::copy(layover_bin(), &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let p = |d: &str| h.join(d).display().to_string();
        let containers_conf = layover_testkit::podman_containers_conf(h);
        // Rootless, containers-storage ignores graphroot: rootless_storage_path.
        let storage_conf = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{st}\"\nrunroot = \"{run}\"\n\
             rootless_storage_path = \"{st}\"\n\n[storage.options.overlay]\n\
             mount_program = \"{bin}\"\n{more}",
            st = p("storage"),
            run = p("run/storage"),
            bin = bin.display(),
            more = self.overlay_options
        );
        fs::write(h.join("config/containers.conf"), containers_conf).unwrap();
        fs::write(h.join("config/storage.conf"), storage_conf).unwrap();
        if let Some((uid, gid)) = self.user {
            run_ok(
                Command::new("chown")
                    .args(["-R", &format!("{uid}:{gid}")])
                    .arg(h),
                &self.scratch,
            );
            let node = self.dir.join("fuse");
            run_ok(
                Command::new("mknod")
                    .args(["-m", "666"])
                    .arg(&node)
                    .args(["c", "10", "229"]),
                &self.scratch,
            );
            run_ok(
                self.in_namespace("mount")
                    .arg("--bind")
                    .arg(&node)
                    .arg("/dev/fuse"),
                &self.scratch,
            );
            // A bind mount keeps the flags of the mount its source is on: where /tmp is
            // nodev (a tmpfs often is), the node would open with EACCES.
            run_ok(
                self.in_namespace("mount")
                    .args(["-o", "remount,bind,dev", "/dev/fuse"]),
                &self.scratch,
            );
        }
    }

    /// `podman ARGS` in the namespace, as root or as the user, with a clean environment
    /// that points every config and state path into the session's directory.
    fn podman_cmd(&self, args: &[&str]) -> Command {
        let (mut cmd, user) = match self.user {
            Some((uid, gid)) => {
                let mut cmd = self.in_namespace("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--init-groups", "env"]);
                (cmd, USER)
            }
            None => (self.in_namespace("env"), "root"),
        };
        let h = |d: &str| self.home.join(d).display().to_string();
        cmd.arg("-i")
            .arg(format!("PATH={PATH_ENV}"))
            .arg(format!("USER={user}"))
            .arg(format!("LOGNAME={user}"))
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
            .args(args);
        cmd
    }

    /// Runs `podman ARGS`, fails the test if it fails, and logs how long it took.
    fn podman(&self, args: &[&str]) -> String {
        let start = Instant::now();
        let out = run_ok(&mut self.podman_cmd(args), &self.scratch);
        eprintln!(
            "podman {} ({:.1?})",
            args.first().unwrap_or(&""),
            start.elapsed()
        );
        out
    }

    /// A path as the namespace sees it (podman's mounts are only there).
    fn seen_in_namespace(&self, path: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(path.strip_prefix("/").unwrap())
    }

    /// Builds the busybox root file system and its tarball; returns the tarball.
    fn base_tarball(&self) -> PathBuf {
        let root = self.dir.join("rootfs");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "find", "stat", "readlink", "tr", "cat", "echo", "rm", "mv", "mkdir", "ln", "ls",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        for (path, text) in BASE_DATA {
            match path.strip_suffix('/') {
                Some(d) => fs::create_dir(root.join(d)).unwrap(),
                None => fs::write(root.join(path), text).unwrap(),
            }
        }
        let tarball = self.home.join("base.tar");
        run_ok(
            Command::new("tar")
                .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
                .arg(&root)
                .arg("-cf")
                .arg(&tarball)
                .arg("."),
            &self.scratch,
        );
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(&tarball, Some(uid), Some(gid)).unwrap();
        }
        tarball
    }

    /// Mounts the kernel's overlayfs read-only on the container's layer over its parents
    /// (what layover wrote, read by the kernel) and lists the whole tree.
    fn kernel_view(&self, container: &str) -> String {
        let dirs = self.podman(&[
            "inspect",
            "--format",
            "{{.GraphDriver.Data.UpperDir}}|{{.GraphDriver.Data.LowerDir}}",
            container,
        ]);
        let (upper, lower) = dirs.trim().split_once('|').expect("UpperDir|LowerDir");
        let mnt = self.dir.join("kernel");
        fs::create_dir(&mnt).unwrap();
        // Rootless, layover keeps its marks in user.overlay.* (the kernel's userxattr).
        let xattrs = if self.user.is_some() {
            ",userxattr"
        } else {
            ""
        };
        let opts = format!("ro,lowerdir={upper}:{lower}{xattrs}");
        run_ok(
            self.in_namespace("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(&mnt),
            &self.scratch,
        );
        let view = tree(&self.seen_in_namespace(&mnt), "");
        run_ok(self.in_namespace("umount").arg(&mnt), &self.scratch);
        view
    }
}

/// Pids of processes whose command line names `dir`: what podman left of this session
/// (a layover daemon, conmon). Only ours can name our fresh temporary directory.
fn processes_naming(dir: &Path) -> Vec<i32> {
    // "DIR/": /tmp/lpm-r-12 must not match /tmp/lpm-r-123's processes.
    let mut needle = dir.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if pid != me
            && cmdline
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
        {
            pids.push(pid);
        }
    }
    pids
}

fn kill(pid: i32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Session {
    fn drop(&mut self) {
        let reset = run(
            &mut self.podman_cmd(&["system", "reset", "--force"]),
            &self.scratch,
        );
        if !reset.ok {
            eprintln!("teardown: podman system reset failed: {}", reset.stderr);
        }
        // SIGKILL to unshare kills the namespace's init (--kill-child), so the kernel kills
        // everything in the pid namespace; with its last process gone the mount namespace
        // and every mount in it go too.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // Nothing should be left; whatever still names the directory is ours: kill it.
        for _ in 0..50 {
            let left = processes_naming(&self.dir);
            if left.is_empty() {
                break;
            }
            for pid in left {
                eprintln!("teardown: pid {pid} still runs from the session: killed");
                kill(pid, "KILL");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("teardown: rm -r {}: {e}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

fn scenario(label: &str, rootless: bool) {
    require_prerequisites(rootless);
    let start = Instant::now();
    let s = Session::new(rootless);
    let tarball = s.base_tarball();
    let tarball = tarball.to_str().unwrap();
    s.podman(&[
        "import",
        "--change",
        "CMD [\"/bin/sh\"]",
        tarball,
        BASE_IMAGE,
    ]);
    let script = format!("{CHANGES}{LIST}");
    let run = |name: &str, image: &str, script: &str| {
        let mut args = vec!["run", "--pull=never", "--network", "none"];
        args.extend(["--name", name, image, "/bin/sh", "-c", script]);
        s.podman(&args)
    };

    // The changes, made through layover by the container, and /data as it saw it after.
    let first = run("work", BASE_IMAGE, &script);
    assert_view("the container that made the changes", &first);

    // containers-storage mounts the layer and its parent through layover and walks both.
    let diff = s.podman(&["diff", "work"]);
    assert_diff("podman diff", &diff, EXPECTED_DIFF);

    // A second mount of the same layer: the script only lists this time.
    let again = s.podman(&["start", "--attach", "work"]);
    assert_view("the same container started again", &again);
    let diff = s.podman(&["diff", "work"]);
    assert_diff("podman diff after the restart", &diff, EXPECTED_DIFF);

    s.podman(&["commit", "work", COMMITTED_IMAGE]);
    // The new image's layer against its parent: both mounted read-only (lowers only), the
    // new one as containers-storage wrote it from the diff.
    let diff = s.podman(&["diff", COMMITTED_IMAGE]);
    assert_diff("podman diff of the committed image", &diff, EXPECTED_DIFF);
    let committed = run("committed", COMMITTED_IMAGE, &script);
    assert_view("a container of the committed image", &committed);

    let export = s.home.join("export.tar");
    s.podman(&["export", "--output", export.to_str().unwrap(), "work"]);
    let unpacked = s.dir.join("export");
    fs::create_dir(&unpacked).unwrap();
    let mut untar = Command::new("tar");
    untar.arg("-C").arg(&unpacked).arg("-xf").arg(&export);
    run_ok(&mut untar, &s.scratch);
    assert_view("podman export", &listing(&unpacked));

    // The whole tree, not only /data: what layover showed podman (the export) against what
    // the kernel's overlayfs makes of the same layers. The root directory's own line is left
    // out: unpacked it is 0755, in the layers (and in the container) 0555.
    let kernel = without_root(&s.kernel_view("work"));
    let exported = without_root(&tree(&unpacked, ""));
    assert_eq!(
        exported, kernel,
        "podman export (through layover) and the kernel's overlayfs on the same layers differ"
    );

    // A second generation over the committed layer's whiteouts and opaque directory.
    let second = run("second", COMMITTED_IMAGE, &format!("{SECOND_SCRIPT}{LIST}"));
    assert_listing("the second generation's container", &second, SECOND_DATA);
    let diff = s.podman(&["diff", "second"]);
    assert_diff("podman diff of the second generation", &diff, SECOND_DIFF);
    let again = s.podman(&["start", "--attach", "second"]);
    assert_listing("the second generation started again", &again, SECOND_DATA);
    eprintln!("podman scenario ({label}) took {:.1?}", start.elapsed());
}

#[test]
fn podman_as_root() {
    scenario("root", false);
}

#[test]
fn podman_rootless() {
    scenario("rootless", true);
}

/// Rootless with `force_mask = "shared"`: containers-storage extracts every layer file with
/// mode 0755 and the user's ids, keeps the real owner and mode in
/// `user.containers.override_stat` (and marks the layer's root), and mounts its mount
/// program with `xattr_permissions=2`. Through layover the container sees the image's own
/// modes, its chown and chmod land in `user.fuseoverlayfs.override_stat` of the container's
/// layer (the files stay the user's), and a commit keeps them. (fuse-overlayfs 1.10 in this
/// place shows the committed files as 0:0 with their chmod undone, and new files 0755.)
#[test]
fn podman_rootless_force_mask() {
    require_prerequisites(true);
    let s = Session::with_overlay_options(true, "force_mask = \"shared\"\n");
    let tarball = s.base_tarball();
    let tarball = tarball.to_str().unwrap();
    s.podman(&[
        "import",
        "--change",
        "CMD [\"/bin/sh\"]",
        tarball,
        BASE_IMAGE,
    ]);
    let stat = "stat -c '%n %u:%g %a' /data/keep.txt /data/keepdir /data/keepdir/x /x /x/f";
    let script = format!(
        "mkdir /x && echo n > /x/f && chown 5:6 /x/f && chmod 640 /x/f && chown 7:8 /x && \
         chmod 600 /data/keep.txt && {stat}"
    );
    let want = "/data/keep.txt 0:0 600\n/data/keepdir 0:0 755\n/data/keepdir/x 0:0 644\n\
                /x 7:8 755\n/x/f 5:6 640\n";
    let args = ["run", "--pull=never", "--network", "none", "--name", "fm"];
    let first = s.podman(&[&args[..], &[BASE_IMAGE, "/bin/sh", "-c", &script]].concat());
    assert_eq!(first, want, "the container's own view");
    let upper = s.podman(&[
        "inspect",
        "--format",
        "{{.GraphDriver.Data.UpperDir}}",
        "fm",
    ]);
    let upper = Path::new(upper.trim());
    let (uid, gid) = s.user.unwrap();
    for (rel, value) in [
        ("x/f", "5:6:100640"),
        ("x", "7:8:40755"),
        ("data/keep.txt", "0:0:100600"),
    ] {
        let p = upper.join(rel);
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (uid, gid),
            "{rel}: the file stays the user's"
        );
        let out = run_ok(
            Command::new("getfattr")
                .args(["--only-values", "-n", "user.fuseoverlayfs.override_stat"])
                .arg(&p),
            &s.scratch,
        );
        assert_eq!(out, value, "{rel}");
    }
    s.podman(&["commit", "fm", COMMITTED_IMAGE]);
    let args = ["run", "--pull=never", "--network", "none", "--rm"];
    let committed = s.podman(&[&args[..], &[COMMITTED_IMAGE, "/bin/sh", "-c", stat]].concat());
    assert_eq!(committed, want, "a container of the committed image");
}
