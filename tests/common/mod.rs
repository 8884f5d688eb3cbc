//! Harness for the mounted black-box tests: a guard that owns a temporary directory and every
//! mount made under it, a builder for overlay layers, and a tree snapshot with a readable diff.
//!
//! The kernel's overlayfs is the authority: a test builds one set of layers, copies it twice
//! (`cp -a`, so times, owners, xattrs and hard links are identical), mounts the kernel's overlay
//! on one copy and layover on the other, and compares what the two merged trees show. Raw inode
//! numbers are never compared between the two mounts; only their structure (which names share
//! an inode, d_ino == st_ino) is.
//!
//! Prerequisites (root, /dev/fuse, the `attr` and `fuse3` packages) are checked up front and a
//! missing one fails the test loudly: these tests must never skip silently.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_layover");

/// The binary the tests run: [`BIN`], unless `LAYOVER_TEST_BIN` names another implementation
/// with the same command line (e.g. fuse-overlayfs, to check a test's expectations against it;
/// then set `LAYOVER_TEST_FSTYPE=fuse.fuse-overlayfs` too).
pub fn bin() -> PathBuf {
    std::env::var_os("LAYOVER_TEST_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from)
}

/// The file system type a live mount shows in /proc/self/mounts.
pub fn fstype() -> String {
    std::env::var("LAYOVER_TEST_FSTYPE").unwrap_or_else(|_| "fuse.layover".into())
}

/// How long one test may run before the watchdog aborts its FUSE mounts (so a deadlocked
/// daemon fails the test instead of hanging the whole run).
const WATCHDOG: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Prerequisites and small process helpers
// ---------------------------------------------------------------------------------------------

static PREREQ: Once = Once::new();

/// Fails loudly (never skips) when the machine cannot run these tests.
pub fn require_prerequisites() {
    PREREQ.call_once(|| {
        let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .expect("Uid: line in /proc/self/status");
        assert_eq!(
            euid, "0",
            "PREREQUISITE MISSING: the mounted tests must run as root (euid is {euid})"
        );
        let fuse = fs::metadata("/dev/fuse");
        assert!(
            fuse.as_ref()
                .map(|m| m.file_type().is_char_device())
                .unwrap_or(false),
            "PREREQUISITE MISSING: /dev/fuse is not a character device ({fuse:?})"
        );
        for tool in [
            "mount", "umount", "getfattr", "setfattr", "mknod", "mkfifo", "cp", "ls",
        ] {
            let found = Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                found,
                "PREREQUISITE MISSING: `{tool}` not found (apt-get install -y attr fuse3)"
            );
        }
        assert!(
            bin().exists(),
            "PREREQUISITE MISSING: binary under test {} does not exist",
            bin().display()
        );
    });
}

/// The result of a finished command, with its output as (lossy) text.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

/// Runs a command to completion with a deadline. Output goes through files, not pipes: a
/// daemon that inherits stdout/stderr must not keep us waiting for EOF.
pub fn run_with_timeout(cmd: &mut Command, scratch: &Path, timeout: Duration) -> Run {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let out_path = scratch.join(format!(".cmd-{n}.out"));
    let err_path = scratch.join(format!(".cmd-{n}.err"));
    let out = fs::File::create(&out_path).expect("create stdout file");
    let err = fs::File::create(&err_path).expect("create stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {timeout:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&fs::read(&out_path).unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default()).into_owned();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    Run {
        status,
        stdout,
        stderr,
    }
}

/// Runs a short helper command (no daemon involved) and returns its output.
pub fn cmd(program: &str, args: &[&OsStr]) -> Run {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a helper command and fails the test if it fails.
pub fn cmd_ok(program: &str, args: &[&OsStr]) -> Run {
    let r = cmd(program, args);
    assert!(
        r.ok(),
        "{program} {:?} failed ({}): {}{}",
        args,
        r.status,
        r.stdout,
        r.stderr
    );
    r
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A path built from raw bytes (names need not be UTF-8).
pub fn bpath(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

/// The errno of a failed call, None on success.
pub fn errno<T>(r: io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

pub fn errno_name(e: Option<i32>) -> String {
    match e {
        None => "success".into(),
        Some(n) => format!("{} ({})", io::Error::from_raw_os_error(n), n),
    }
}

/// Escapes a byte path for messages.
pub fn show(b: &[u8]) -> String {
    if b.is_empty() {
        return "<root>".into();
    }
    format!("\"{}\"", b.escape_ascii())
}

// ---------------------------------------------------------------------------------------------
// /proc helpers: mounts and daemon processes
// ---------------------------------------------------------------------------------------------

/// Undoes the octal escapes of /proc/self/mounts fields.
fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// One line of /proc/self/mounts.
#[derive(Clone, Debug)]
pub struct MountEntry {
    pub source: Vec<u8>,
    pub target: PathBuf,
    pub fstype: String,
    pub options: String,
}

pub fn mounts() -> Vec<MountEntry> {
    let raw = fs::read("/proc/self/mounts").expect("read /proc/self/mounts");
    raw.split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let f: Vec<&[u8]> = l.split(|&c| c == b' ').collect();
            if f.len() < 4 {
                return None;
            }
            Some(MountEntry {
                source: unescape_octal(f[0]),
                target: bpath(&unescape_octal(f[1])),
                fstype: String::from_utf8_lossy(f[2]).into_owned(),
                options: String::from_utf8_lossy(f[3]).into_owned(),
            })
        })
        .collect()
}

/// Every mount whose mountpoint is exactly `path` (stacked mounts give several).
pub fn mounts_at(path: &Path) -> Vec<MountEntry> {
    mounts().into_iter().filter(|m| m.target == path).collect()
}

pub fn is_mounted(path: &Path) -> bool {
    !mounts_at(path).is_empty()
}

/// Pids of processes that have `mountpoint` as one of their arguments and run the binary
/// under test (or any binary, when `any_exe`).
pub fn daemon_pids(mountpoint: &Path, any_exe: bool) -> Vec<u32> {
    let me = std::process::id();
    let bin = fs::canonicalize(bin()).unwrap_or_else(|_| bin());
    let want = mountpoint.as_os_str().as_bytes();
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if !cmdline.split(|&c| c == 0).any(|a| a == want) {
            continue;
        }
        if !any_exe {
            let Ok(exe) = fs::read_link(e.path().join("exe")) else {
                continue;
            };
            let exe = exe.as_os_str().as_bytes();
            let exe = exe.strip_suffix(b" (deleted)").unwrap_or(exe);
            if exe != bin.as_os_str().as_bytes() {
                continue;
            }
        }
        if !process_alive(pid) {
            continue;
        }
        pids.push(pid);
    }
    pids
}

/// Processes with an open file, cwd or root under `dir`: "pid N (comm): fd K -> path".
pub fn holders(dir: &Path) -> Vec<String> {
    let want = dir.as_os_str().as_bytes();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let mut links: Vec<(String, PathBuf)> = Vec::new();
        for special in ["cwd", "root"] {
            if let Ok(t) = fs::read_link(e.path().join(special)) {
                links.push((special.to_owned(), t));
            }
        }
        if let Ok(fds) = fs::read_dir(e.path().join("fd")) {
            for fd in fds.flatten() {
                if let Ok(t) = fs::read_link(fd.path()) {
                    links.push((format!("fd {}", fd.file_name().to_string_lossy()), t));
                }
            }
        }
        for (what, t) in links {
            if t.as_os_str().as_bytes().starts_with(want) {
                out.push(format!(
                    "pid {pid} ({}): {what} -> {}",
                    comm.trim(),
                    t.display()
                ));
            }
        }
    }
    out
}

/// The state letter of /proc/PID/stat (R, S, D, Z, ...), None if the process is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

/// Whether any thread of the process is still running. A thread-group leader shows 'Z' as
/// soon as its own thread has exited, while its other threads (and so its open files) may
/// still be there; those show in /proc/PID/task.
pub fn process_alive(pid: u32) -> bool {
    match process_state(pid) {
        None | Some('X') => false,
        Some('Z') => fs::read_dir(format!("/proc/{pid}/task"))
            .map(|rd| {
                rd.flatten().any(|t| {
                    fs::read_to_string(t.path().join("stat"))
                        .ok()
                        .and_then(|st| {
                            st.rsplit_once(')')
                                .and_then(|(_, a)| a.trim_start().chars().next())
                        })
                        .is_some_and(|c| c != 'Z' && c != 'X')
                })
            })
            .unwrap_or(false),
        Some(_) => true,
    }
}

/// Unmounts `path` (plain umount, no -l/-f). A transient EBUSY is retried for a moment: in a
/// multi-threaded test binary, a child that another test forks can briefly hold a copy of a
/// file descriptor we have already closed (until its exec).
pub fn umount_retrying(path: &Path) {
    let mut last = None;
    for _ in 0..50 {
        let r = cmd("umount", &[path.as_os_str()]);
        if r.ok() {
            return;
        }
        if !r.stderr.contains("busy") {
            panic!("umount {}: {}", path.display(), r.stderr);
        }
        last = Some(r.stderr);
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("umount {}: still busy after 1 s: {last:?}", path.display());
}

/// Waits until `cond` holds or the deadline passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// The guard
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountKind {
    Kernel,
    Layover,
    Other,
}

#[derive(Clone, Debug)]
struct Tracked {
    path: PathBuf,
    kind: MountKind,
    /// The layover daemon serving it, when known.
    pid: Option<u32>,
}

/// Owns a unique temporary directory and every mount made under it (or registered with it).
/// Dropping it unmounts everything (umount, then umount -l) and removes the directory, also
/// when the test panicked. A layover daemon that died during the test fails it here, too.
pub struct TestEnv {
    pub root: PathBuf,
    mounts: Mutex<Vec<Tracked>>,
    done: Arc<AtomicBool>,
    watched: Arc<Mutex<Vec<PathBuf>>>,
}

/// Both merged views of one set of layers.
pub struct Pair {
    /// The kernel overlay's mountpoint.
    pub kernel: PathBuf,
    /// layover's mountpoint.
    pub layover: PathBuf,
    /// The directories holding each mount's copy of the layers (`<dir>/<layer name>`).
    pub kernel_layers: PathBuf,
    pub layover_layers: PathBuf,
}

impl Pair {
    /// The same relative path under both mounts: (kernel, layover).
    pub fn both(&self, rel: impl AsRef<Path>) -> (PathBuf, PathBuf) {
        (
            self.kernel.join(rel.as_ref()),
            self.layover.join(rel.as_ref()),
        )
    }
}

/// Options for [`TestEnv::mount_pair_with`].
#[derive(Clone, Debug, Default)]
pub struct PairSpec<'a> {
    /// Layer names, top first, as created with [`TestEnv::layer`].
    pub lowers: Vec<&'a str>,
    /// The upper layer's name (its work dir is made beside it); None for a read-only mount.
    pub upper: Option<&'a str>,
    /// Options given to both mounts (e.g. "userxattr").
    pub extra: Vec<&'a str>,
}

impl TestEnv {
    /// A test directory on its own tmpfs: fast to fill and to throw away, and unmounting the
    /// kernel overlay does not have to sync a disk.
    pub fn new(name: &str) -> TestEnv {
        let env = Self::new_on_disk(name);
        cmd_ok(
            "mount",
            &[
                os("-t"),
                os("tmpfs"),
                os("-o"),
                os("size=1g,mode=0755"),
                os("tmpfs"),
                env.root.as_os_str(),
            ],
        );
        env.track(&env.root, MountKind::Other);
        fs::create_dir_all(env.root.join("src")).expect("create src");
        env
    }

    /// A test directory on the disk file system that holds /tmp (ext4 here).
    pub fn new_on_disk(name: &str) -> TestEnv {
        require_prerequisites();
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(40)
            .collect();
        let root = PathBuf::from(format!("/tmp/lyt-{}-{n}-{safe}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root).expect("remove stale test dir");
        }
        fs::create_dir_all(root.join("src")).expect("create test dir");
        let done = Arc::new(AtomicBool::new(false));
        let watched: Arc<Mutex<Vec<PathBuf>>> = Arc::new(Mutex::new(Vec::new()));
        {
            let done = done.clone();
            let watched = watched.clone();
            let name = name.to_owned();
            std::thread::spawn(move || {
                let start = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    if start.elapsed() > WATCHDOG {
                        eprintln!(
                            "WATCHDOG: test {name} ran longer than {WATCHDOG:?}; aborting its \
                             FUSE mounts so that blocked calls fail"
                        );
                        for p in watched.lock().map(|v| v.clone()).unwrap_or_default() {
                            let _ = Command::new("umount")
                                .args([os("-f"), os("-c"), p.as_os_str()])
                                .status();
                        }
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
        TestEnv {
            root,
            mounts: Mutex::new(Vec::new()),
            done,
            watched,
        }
    }

    /// A path inside the test directory.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// Creates (if needed) a directory inside the test directory.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// The fixture layer `name` (created empty under `src/`).
    pub fn layer(&self, name: &str) -> Layer {
        let root = self.root.join("src").join(name);
        fs::create_dir_all(&root).expect("create layer");
        Layer {
            root,
            scratch: self.root.clone(),
        }
    }

    /// Registers a mount made by the test itself so that Drop unmounts it.
    pub fn track(&self, path: &Path, kind: MountKind) {
        let pid = if kind == MountKind::Layover {
            daemon_pids(path, false).first().copied()
        } else {
            None
        };
        if kind == MountKind::Layover {
            self.watched.lock().unwrap().push(path.to_owned());
        }
        self.mounts.lock().unwrap().push(Tracked {
            path: path.to_owned(),
            kind,
            pid,
        });
    }

    /// Forgets a mount the test has unmounted itself.
    pub fn untrack(&self, path: &Path) {
        self.mounts.lock().unwrap().retain(|t| t.path != path);
        self.watched.lock().unwrap().retain(|p| p != path);
    }

    /// Mounts a tmpfs (registered for cleanup).
    pub fn mount_tmpfs(&self, rel: &str, size: &str) -> PathBuf {
        let p = self.mkdir(rel);
        cmd_ok(
            "mount",
            &[
                os("-t"),
                os("tmpfs"),
                os("-o"),
                os(&format!("size={size}")),
                os("tmpfs"),
                p.as_os_str(),
            ],
        );
        self.track(&p, MountKind::Other);
        p
    }

    /// Runs the binary under test with `args`; waits for the launching process only.
    pub fn run_layover(&self, args: &[&OsStr]) -> Run {
        let mut c = Command::new(bin());
        c.args(args);
        run_with_timeout(&mut c, &self.root, Duration::from_secs(30))
    }

    /// Mounts layover with `-o OPTS` at `mnt`; fails the test unless it exits 0 with the
    /// mount live. Returns the run (for its stderr).
    /// `$LAYOVER_TEST_OPTS` is appended to the options (scripts/test.sh runs the side-by-side
    /// suites once more with `passthrough=off`: the daemon and writeback-cache data path).
    pub fn mount_layover(&self, opts: &str, mnt: &Path) -> Run {
        let opts = match std::env::var("LAYOVER_TEST_OPTS") {
            Ok(extra) if !extra.is_empty() => format!("{opts},{extra}"),
            _ => opts.to_string(),
        };
        let opts = opts.as_str();
        let r = self.run_layover(&[os("-o"), os(opts), mnt.as_os_str()]);
        if is_mounted(mnt) {
            self.track(mnt, MountKind::Layover);
        }
        assert!(
            r.ok(),
            "layover -o {opts} {} failed ({}):\nstdout: {}\nstderr: {}",
            mnt.display(),
            r.status,
            r.stdout,
            r.stderr
        );
        self.expect_layover_mounted(mnt);
        r
    }

    /// Asserts that a live layover mount is at `mnt`.
    pub fn expect_layover_mounted(&self, mnt: &Path) {
        let at = mounts_at(mnt);
        assert!(
            at.iter().any(|m| m.fstype == fstype()),
            "layover exited 0 but no {} mount is at {} (found {:?})",
            fstype(),
            mnt.display(),
            at
        );
    }

    /// Mounts the kernel's overlay; Err(stderr) if mount(8) refuses.
    pub fn try_mount_kernel(&self, opts: &str, mnt: &Path) -> Result<(), String> {
        let r = cmd(
            "mount",
            &[
                os("-t"),
                os("overlay"),
                os("overlay"),
                os("-o"),
                os(opts),
                mnt.as_os_str(),
            ],
        );
        if r.ok() {
            self.track(mnt, MountKind::Kernel);
            Ok(())
        } else {
            Err(format!(
                "mount -t overlay -o {opts}: {}{}",
                r.stdout, r.stderr
            ))
        }
    }

    pub fn mount_kernel(&self, opts: &str, mnt: &Path) {
        if let Err(e) = self.try_mount_kernel(opts, mnt) {
            panic!("{e}");
        }
    }

    /// Copies the fixture layers (`src/`) to `dest` with `cp -a`.
    pub fn copy_layers(&self, dest: &str) -> PathBuf {
        let d = self.root.join(dest);
        assert!(!d.exists(), "{} already exists", d.display());
        fs::create_dir_all(&d).expect("mkdir copy");
        let mut src = self.root.join("src").into_os_string();
        src.push("/.");
        cmd_ok("cp", &[os("-a"), &src, d.as_os_str()]);
        d
    }

    /// The overlay options for layers that live in `dir`.
    pub fn overlay_opts(dir: &Path, spec: &PairSpec) -> String {
        let lowers: Vec<String> = spec
            .lowers
            .iter()
            .map(|l| dir.join(l).display().to_string())
            .collect();
        let mut o = format!("lowerdir={}", lowers.join(":"));
        if let Some(u) = spec.upper {
            let work = dir.join(format!("{u}.work"));
            fs::create_dir_all(&work).expect("mkdir work");
            write!(
                o,
                ",upperdir={},workdir={}",
                dir.join(u).display(),
                work.display()
            )
            .unwrap();
        }
        for e in &spec.extra {
            o.push(',');
            o.push_str(e);
        }
        o
    }

    /// Mounts the kernel overlay and layover on two identical copies of the fixture.
    pub fn mount_pair(&self, lowers: &[&str], upper: Option<&str>) -> Pair {
        self.mount_pair_with(&PairSpec {
            lowers: lowers.to_vec(),
            upper,
            extra: vec![],
        })
    }

    pub fn mount_pair_with(&self, spec: &PairSpec) -> Pair {
        if let Some(u) = spec.upper {
            fs::create_dir_all(self.root.join("src").join(u)).expect("mkdir upper");
        }
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let kdir = self.copy_layers(&format!("k{n}"));
        let fdir = self.copy_layers(&format!("f{n}"));
        let kmnt = self.mkdir(format!("k{n}.mnt"));
        let fmnt = self.mkdir(format!("f{n}.mnt"));
        self.mount_kernel(&Self::overlay_opts(&kdir, spec), &kmnt);
        self.mount_layover(&Self::overlay_opts(&fdir, spec), &fmnt);
        Pair {
            kernel: kmnt,
            layover: fmnt,
            kernel_layers: kdir,
            layover_layers: fdir,
        }
    }

    /// Fails the test if a layover daemon of this test has died or its mount is gone.
    pub fn assert_alive(&self) {
        let problems = self.liveness_problems();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    fn liveness_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let tracked = self.mounts.lock().map(|v| v.clone()).unwrap_or_default();
        for t in tracked.iter().filter(|t| t.kind == MountKind::Layover) {
            if !mounts_at(&t.path).iter().any(|m| m.fstype == fstype()) {
                problems.push(format!(
                    "layover mount at {} has disappeared",
                    t.path.display()
                ));
                continue;
            }
            if let Some(pid) = t.pid
                && !process_alive(pid)
            {
                problems.push(format!(
                    "layover daemon (pid {pid}) for {} has died",
                    t.path.display()
                ));
                continue;
            }
            if let Err(e) = fs::symlink_metadata(&t.path) {
                problems.push(format!(
                    "layover mount at {} is not answering: {e}",
                    t.path.display()
                ));
            }
        }
        problems
    }

    fn unmount_all(&self) -> Vec<String> {
        let mut leftovers = Vec::new();
        let tracked: Vec<Tracked> = self
            .mounts
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let tracked_paths: Vec<PathBuf> = tracked.iter().rev().map(|t| t.path.clone()).collect();
        // Anything else still mounted below our directory goes first, deepest first; then
        // what we tracked, newest first (the test directory's own tmpfs last).
        let mut paths: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|m| m.target)
            .filter(|t| t.starts_with(&self.root) && !tracked_paths.contains(t))
            .collect();
        paths.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        paths.dedup();
        paths.extend(tracked_paths);
        for p in paths {
            for attempt in [&["-c"][..], &["-c", "-f"], &["-c", "-l"]] {
                if !is_mounted(&p) {
                    break;
                }
                let mut a: Vec<&OsStr> = attempt.iter().map(|s| os(s)).collect();
                a.push(p.as_os_str());
                let _ = cmd("umount", &a);
            }
            // Stacked mounts on one point: keep going until none is left.
            let mut tries = 0;
            while is_mounted(&p) && tries < 5 {
                let _ = cmd("umount", &[os("-c"), os("-l"), p.as_os_str()]);
                tries += 1;
            }
            if is_mounted(&p) {
                leftovers.push(p.display().to_string());
            }
        }
        leftovers
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let problems = if panicking {
            Vec::new()
        } else {
            self.liveness_problems()
        };
        let leftovers = self.unmount_all();
        self.done.store(true, Ordering::Relaxed);
        if leftovers.is_empty() {
            let _ = fs::remove_dir_all(&self.root);
        } else {
            eprintln!(
                "could not unmount {leftovers:?}; leaving {} in place",
                self.root.display()
            );
        }
        if !panicking {
            assert!(
                problems.is_empty(),
                "layover failed during the test:\n{}",
                problems.join("\n")
            );
            assert!(leftovers.is_empty(), "mounts left behind: {leftovers:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layer builder
// ---------------------------------------------------------------------------------------------

/// One fixture layer directory. Paths are relative to the layer root; parents are created as
/// needed (mode 0755). Methods return `&Self` so calls chain.
pub struct Layer {
    pub root: PathBuf,
    /// A short directory on the same file system (for binding sockets).
    scratch: PathBuf,
}

impl Layer {
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    fn parent(&self, rel: &Path) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
        }
        p
    }

    pub fn dir(&self, rel: impl AsRef<Path>) -> &Self {
        let p = self.root.join(rel.as_ref());
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        self
    }

    pub fn dir_mode(&self, rel: impl AsRef<Path>, mode: u32) -> &Self {
        self.dir(rel.as_ref()).chmod(rel, mode)
    }

    pub fn file(&self, rel: impl AsRef<Path>, content: impl AsRef<[u8]>) -> &Self {
        let p = self.parent(rel.as_ref());
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        self
    }

    pub fn file_mode(&self, rel: impl AsRef<Path>, content: impl AsRef<[u8]>, mode: u32) -> &Self {
        self.file(rel.as_ref(), content).chmod(rel, mode)
    }

    /// File with content, mode and owner.
    pub fn file_owned(
        &self,
        rel: impl AsRef<Path>,
        content: impl AsRef<[u8]>,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> &Self {
        self.file(rel.as_ref(), content)
            .chown(rel.as_ref(), uid, gid)
            .chmod(rel, mode)
    }

    /// chmod (follows symlinks: don't use on one).
    pub fn chmod(&self, rel: impl AsRef<Path>, mode: u32) -> &Self {
        let p = self.root.join(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        self
    }

    /// lchown.
    pub fn chown(&self, rel: impl AsRef<Path>, uid: u32, gid: u32) -> &Self {
        let p = self.root.join(rel);
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("lchown {}: {e}", p.display()));
        self
    }

    pub fn symlink(&self, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> &Self {
        let p = self.parent(rel.as_ref());
        std::os::unix::fs::symlink(target.as_ref(), &p)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
        self
    }

    /// A hard link `new` to the existing `existing` (both in this layer).
    pub fn hardlink(&self, existing: impl AsRef<Path>, new: impl AsRef<Path>) -> &Self {
        let p = self.parent(new.as_ref());
        fs::hard_link(self.root.join(existing), &p)
            .unwrap_or_else(|e| panic!("link {}: {e}", p.display()));
        self
    }

    pub fn fifo(&self, rel: impl AsRef<Path>) -> &Self {
        let p = self.parent(rel.as_ref());
        cmd_ok("mkfifo", &[p.as_os_str()]);
        self
    }

    /// A unix socket node. It is bound under a short path on the same file system (sun_path
    /// is 108 bytes) and renamed into place; the listener is closed, the node stays.
    pub fn socket(&self, rel: impl AsRef<Path>) -> &Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let p = self.parent(rel.as_ref());
        let tmp = self
            .scratch
            .join(format!(".s{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_file(&tmp);
        let l = std::os::unix::net::UnixListener::bind(&tmp)
            .unwrap_or_else(|e| panic!("bind {}: {e}", tmp.display()));
        drop(l);
        fs::rename(&tmp, &p).unwrap_or_else(|e| panic!("rename socket {}: {e}", p.display()));
        self
    }

    /// A device node: kind 'c' or 'b'.
    pub fn device(&self, rel: impl AsRef<Path>, kind: char, major: u32, minor: u32) -> &Self {
        let p = self.parent(rel.as_ref());
        cmd_ok(
            "mknod",
            &[
                p.as_os_str(),
                os(&kind.to_string()),
                os(&major.to_string()),
                os(&minor.to_string()),
            ],
        );
        self
    }

    /// The kernel's whiteout: a character device 0/0.
    pub fn whiteout(&self, rel: impl AsRef<Path>) -> &Self {
        self.device(rel, 'c', 0, 0)
    }

    /// An OCI/AUFS whiteout: an empty file `.wh.NAME` beside where NAME would be.
    pub fn wh_file(&self, rel: impl AsRef<Path>) -> &Self {
        let rel = rel.as_ref();
        let name = rel.file_name().expect("whiteout needs a name");
        let mut wh = OsString::from(".wh.");
        wh.push(name);
        let p = match rel.parent() {
            Some(parent) => parent.join(wh),
            None => PathBuf::from(wh),
        };
        self.file(p, b"")
    }

    /// An OCI/AUFS opaque marker: `DIR/.wh..wh..opq`.
    pub fn wh_opaque(&self, dir: impl AsRef<Path>) -> &Self {
        self.dir(dir.as_ref())
            .file(dir.as_ref().join(".wh..wh..opq"), b"")
    }

    /// Sets an xattr on the node itself (not following symlinks).
    pub fn xattr(&self, rel: impl AsRef<Path>, name: &str, value: impl AsRef<[u8]>) -> &Self {
        let p = self.root.join(rel);
        let mut hex = String::from("0x");
        for b in value.as_ref() {
            write!(hex, "{b:02x}").unwrap();
        }
        cmd_ok(
            "setfattr",
            &[
                os("-h"),
                os("-n"),
                os(name),
                os("-v"),
                os(&hex),
                p.as_os_str(),
            ],
        );
        self
    }

    /// Marks a directory opaque the kernel's way (`trusted.overlay.opaque=y`).
    pub fn opaque(&self, dir: impl AsRef<Path>) -> &Self {
        self.dir(dir.as_ref())
            .xattr(dir, "trusted.overlay.opaque", b"y")
    }

    /// Marks a directory opaque for userxattr mounts (`user.overlay.opaque=y`).
    pub fn user_opaque(&self, dir: impl AsRef<Path>) -> &Self {
        self.dir(dir.as_ref())
            .xattr(dir, "user.overlay.opaque", b"y")
    }

    /// Sets atime and mtime (seconds and nanoseconds since the epoch), not following symlinks.
    pub fn times(&self, rel: impl AsRef<Path>, secs: i64, nsecs: u32) -> &Self {
        let p = self.root.join(rel);
        cmd_ok(
            "touch",
            &[
                os("-h"),
                os("-d"),
                os(&format!("@{secs}.{nsecs:09}")),
                p.as_os_str(),
            ],
        );
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------

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

fn unhex(s: &[u8]) -> Vec<u8> {
    let s = s.strip_prefix(b"0x").unwrap_or(s);
    s.chunks(2)
        .filter_map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect()
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
    // Lines look like "getfattr: /abs/path: Message".
    for line in out.stderr.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
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
fn fields(n: &Node, cmp: &Compare) -> Vec<(&'static str, String)> {
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

/// Differences between two snapshots, one readable line each.
pub fn diff(a: &Snapshot, b: &Snapshot, cmp: &Compare) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&Vec<u8>> = a.nodes.keys().chain(b.nodes.keys()).collect();
    for k in keys {
        match (a.nodes.get(k), b.nodes.get(k)) {
            (Some(x), None) => out.push(format!("{}: only in kernel ({:?})", show(k), x.kind)),
            (None, Some(y)) => out.push(format!("{}: only in layover ({:?})", show(k), y.kind)),
            (Some(x), Some(y)) => {
                let fx = fields(x, cmp);
                let fy = fields(y, cmp);
                let mx: BTreeMap<_, _> = fx.iter().cloned().collect();
                let my: BTreeMap<_, _> = fy.iter().cloned().collect();
                let names: BTreeSet<&str> = mx.keys().chain(my.keys()).copied().collect();
                for name in names {
                    let vx = mx.get(name).map_or("-", String::as_str);
                    let vy = my.get(name).map_or("-", String::as_str);
                    if vx != vy {
                        out.push(format!("{}: {name}: kernel {vx} | layover {vy}", show(k)));
                    }
                }
            }
            (None, None) => {}
        }
    }
    out
}

fn render(lines: &[String]) -> String {
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

/// Asserts that layover's tree shows what the kernel's does, printing a diff otherwise. Also
/// checks each mount's inode consistency and that both group names into inodes alike.
pub fn assert_same_tree(kernel: &Snapshot, layover: &Snapshot, cmp: &Compare) {
    let mut report = String::new();
    if !kernel.errors.is_empty() {
        writeln!(
            report,
            "walking the KERNEL mount:\n{}",
            render(&kernel.errors)
        )
        .unwrap();
    }
    if !layover.errors.is_empty() {
        writeln!(
            report,
            "walking the LAYOVER mount:\n{}",
            render(&layover.errors)
        )
        .unwrap();
    }
    let d = diff(kernel, layover, cmp);
    if !d.is_empty() {
        writeln!(
            report,
            "trees differ (kernel {} vs layover {}), {} difference(s):\n{}",
            kernel.root.display(),
            layover.root.display(),
            d.len(),
            render(&d)
        )
        .unwrap();
    }
    let ki = inode_problems(kernel, Who::Kernel);
    if !ki.is_empty() {
        writeln!(
            report,
            "inode inconsistencies in the KERNEL mount (the test's premise is wrong):\n{}",
            render(&ki)
        )
        .unwrap();
    }
    let li = inode_problems(layover, Who::Layover);
    if !li.is_empty() {
        writeln!(report, "inode inconsistencies in layover:\n{}", render(&li)).unwrap();
    }
    let kg = ino_groups(kernel);
    let lg = ino_groups(layover);
    if kg != lg {
        let fmt = |g: &BTreeSet<Vec<Vec<u8>>>| -> Vec<String> {
            g.iter()
                .map(|grp| grp.iter().map(|p| show(p)).collect::<Vec<_>>().join(" = "))
                .collect()
        };
        writeln!(
            report,
            "names sharing an inode differ:\n kernel:\n{} layover:\n{}",
            render(&fmt(&kg)),
            render(&fmt(&lg))
        )
        .unwrap();
    }
    assert!(report.is_empty(), "\n{report}");
}

/// Snapshots both mounts of a pair and asserts they agree.
pub fn compare_pair(pair: &Pair, cmp: &Compare) -> (Snapshot, Snapshot) {
    let k = snapshot(&pair.kernel);
    let l = snapshot(&pair.layover);
    assert_same_tree(&k, &l, cmp);
    (k, l)
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

// ---------------------------------------------------------------------------------------------
// Write-side helpers: syscalls std does not offer (through python3, since test code may not
// use `unsafe`), other users, timestamps, the upper on disk, and the kernel's view of an upper
// ---------------------------------------------------------------------------------------------

/// The python3 the syscall helpers run: the system's own when present (a pyenv shim costs
/// ~200 ms per start, the system interpreter ~30 ms).
pub fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Prepended to every helper script: `libc` through ctypes, `chk` turning a -1 return into
/// OSError, and `fs(p)` for a path argument as bytes.
const PY_PRELUDE: &str = r#"
import sys, os, ctypes, errno, mmap, socket
libc = ctypes.CDLL(None, use_errno=True)
def chk(r):
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
def fs(p):
    return os.fsencode(p)
class TS(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
"#;

/// Appended: runs `main(args)` and prints "OK <result>" or "ERRNO <n>".
const PY_EPILOGUE: &str = r#"
try:
    r = main(sys.argv[1:])
    sys.stdout.write("OK" if r is None else "OK " + str(r))
except OSError as e:
    sys.stdout.write("ERRNO %d" % e.errno)
"#;

fn py_command(user: Option<(u32, u32)>, script: &str, args: &[&OsStr]) -> Command {
    let src = format!("{PY_PRELUDE}\n{script}\n{PY_EPILOGUE}");
    let mut c = match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(python3());
            c
        }
        None => Command::new(python3()),
    };
    c.args([os("-I"), os("-S"), os("-c"), os(&src)]).args(args);
    c
}

/// Runs a python3 helper script that defines `main(args)` (args are the strings of `args`);
/// Ok(what main returned, as text; "" for None) or Err(the errno of the OSError it raised).
/// Any other failure of the script fails the test.
pub fn py(script: &str, args: &[&OsStr]) -> io::Result<String> {
    py_run(None, script, args)
}

/// [`py`] as another user (setpriv --reuid/--regid --clear-groups).
pub fn py_as(uid: u32, gid: u32, script: &str, args: &[&OsStr]) -> io::Result<String> {
    py_run(Some((uid, gid)), script, args)
}

fn py_run(user: Option<(u32, u32)>, script: &str, args: &[&OsStr]) -> io::Result<String> {
    let out = py_command(user, script, args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", python3()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Some(rest) = stdout.strip_prefix("OK") {
        return Ok(rest.strip_prefix(' ').unwrap_or(rest).to_owned());
    }
    if let Some(n) = stdout
        .strip_prefix("ERRNO ")
        .and_then(|n| n.trim().parse::<i32>().ok())
    {
        return Err(io::Error::from_raw_os_error(n));
    }
    panic!(
        "python helper failed ({}):\nscript:\n{script}\nargs: {args:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// renameat2(AT_FDCWD, from, AT_FDCWD, to, flags).
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    py(
        "def main(a):\n    chk(libc.renameat2(-100, fs(a[0]), -100, fs(a[1]), int(a[2])))",
        &[from.as_os_str(), to.as_os_str(), os(&flags.to_string())],
    )
    .map(drop)
}

/// mknod(path, mode (type and permission bits), makedev(major, minor)).
pub fn mknod(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    py(
        "def main(a):\n    os.mknod(a[0], int(a[1]), os.makedev(int(a[2]), int(a[3])))",
        &[
            path.as_os_str(),
            os(&mode.to_string()),
            os(&major.to_string()),
            os(&minor.to_string()),
        ],
    )
    .map(drop)
}

/// Opens `path` O_RDWR and calls fallocate(fd, mode, offset, len).
pub fn fallocate(path: &Path, mode: i32, offset: i64, len: i64) -> io::Result<()> {
    py(
        "def main(a):\n    fd = os.open(a[0], os.O_RDWR)\n    try:\n        \
         chk(libc.fallocate(fd, int(a[1]), ctypes.c_long(int(a[2])), ctypes.c_long(int(a[3]))))\n    \
         finally:\n        os.close(fd)",
        &[
            path.as_os_str(),
            os(&mode.to_string()),
            os(&offset.to_string()),
            os(&len.to_string()),
        ],
    )
    .map(drop)
}

/// Opens `path` read-only and returns lseek(fd, offset, whence) (SEEK_DATA = 3, SEEK_HOLE = 4).
pub fn lseek(path: &Path, offset: i64, whence: i32) -> io::Result<i64> {
    py(
        "def main(a):\n    fd = os.open(a[0], os.O_RDONLY)\n    try:\n        \
         return os.lseek(fd, int(a[1]), int(a[2]))\n    finally:\n        os.close(fd)",
        &[
            path.as_os_str(),
            os(&offset.to_string()),
            os(&whence.to_string()),
        ],
    )
    .map(|s| s.trim().parse().expect("lseek result"))
}

/// copy_file_range from `src` at `off_in` to `dst` (opened O_WRONLY|O_CREAT, 0644) at
/// `off_out`, `len` bytes, looping until done or a 0 return; the bytes copied.
pub fn copy_file_range(
    src: &Path,
    off_in: u64,
    dst: &Path,
    off_out: u64,
    len: u64,
) -> io::Result<u64> {
    py(
        "def main(a):\n    s = os.open(a[0], os.O_RDONLY)\n    d = os.open(a[1], os.O_WRONLY | os.O_CREAT, 0o644)\n    \
         oi, oo, n, t = int(a[2]), int(a[3]), int(a[4]), 0\n    while t < n:\n        \
         r = os.copy_file_range(s, d, n - t, oi + t, oo + t)\n        if r == 0:\n            break\n        \
         t += r\n    os.close(s)\n    os.close(d)\n    return t",
        &[
            src.as_os_str(),
            dst.as_os_str(),
            os(&off_in.to_string()),
            os(&off_out.to_string()),
            os(&len.to_string()),
        ],
    )
    .map(|s| s.trim().parse().expect("copy_file_range result"))
}

/// One timestamp for [`utimensat`].
#[derive(Clone, Copy, Debug)]
pub enum Ts {
    Now,
    Omit,
    At(i64, i64),
}

impl Ts {
    fn pair(self) -> (i64, i64) {
        match self {
            Ts::Now => (0, (1 << 30) - 1),
            Ts::Omit => (0, (1 << 30) - 2),
            Ts::At(s, ns) => (s, ns),
        }
    }
}

/// utimensat(AT_FDCWD, path, [atime, mtime], nofollow ? AT_SYMLINK_NOFOLLOW : 0).
pub fn utimensat(path: &Path, atime: Ts, mtime: Ts, nofollow: bool) -> io::Result<()> {
    let (a, m) = (atime.pair(), mtime.pair());
    py(
        "def main(a):\n    v = [int(x) for x in a[1:6]]\n    \
         ts = (TS * 2)(TS(v[0], v[1]), TS(v[2], v[3]))\n    \
         chk(libc.utimensat(-100, fs(a[0]), ts, 0x100 if v[4] else 0))",
        &[
            path.as_os_str(),
            os(&a.0.to_string()),
            os(&a.1.to_string()),
            os(&m.0.to_string()),
            os(&m.1.to_string()),
            os(if nofollow { "1" } else { "0" }),
        ],
    )
    .map(drop)
}

/// Opens `path` O_RDWR, maps it shared and writable, writes `data` at `offset` through the
/// mapping (within the file's size), msyncs and unmaps.
pub fn mmap_write(path: &Path, offset: usize, data: &[u8]) -> io::Result<()> {
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    py(
        "def main(a):\n    fd = os.open(a[0], os.O_RDWR)\n    \
         m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)\n    \
         d = bytes.fromhex(a[2])\n    o = int(a[1])\n    m[o:o + len(d)] = d\n    m.flush()\n    \
         m.close()\n    os.close(fd)",
        &[path.as_os_str(), os(&offset.to_string()), os(&hex)],
    )
    .map(drop)
}

/// Reads `path` through a shared read-only mapping (the whole file).
pub fn mmap_read(path: &Path) -> io::Result<Vec<u8>> {
    py(
        "def main(a):\n    fd = os.open(a[0], os.O_RDONLY)\n    \
         m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)\n    d = m[:].hex()\n    \
         m.close()\n    os.close(fd)\n    return d",
        &[path.as_os_str()],
    )
    .map(|h| unhex(h.trim().as_bytes()))
}

/// O_TMPFILE in `dir` (O_RDWR, mode 0600): writes `data`, then, when `link_as` is given,
/// gives it that name with linkat(fd, "", AT_FDCWD, link_as, AT_EMPTY_PATH). Returns the
/// file's nlink before the link, as text.
pub fn o_tmpfile(dir: &Path, data: &[u8], link_as: Option<&Path>) -> io::Result<String> {
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let link = link_as.map_or_else(OsString::new, |p| p.as_os_str().to_owned());
    py(
        "def main(a):\n    fd = os.open(a[0], os.O_TMPFILE | os.O_RDWR, 0o600)\n    \
         try:\n        os.write(fd, bytes.fromhex(a[1]))\n        n = os.fstat(fd).st_nlink\n        \
         if a[2]:\n            chk(libc.linkat(fd, b'', -100, fs(a[2]), 0x1000))\n        return n\n    \
         finally:\n        os.close(fd)",
        &[dir.as_os_str(), os(&hex), &link],
    )
}

/// setxattr (not following symlinks); flags 0, XATTR_CREATE (1) or XATTR_REPLACE (2).
pub fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    py(
        "def main(a):\n    os.setxattr(a[0], a[1], bytes.fromhex(a[2]), int(a[3]), follow_symlinks=False)",
        &[path.as_os_str(), os(name), os(&hex), os(&flags.to_string())],
    )
    .map(drop)
}

/// removexattr (not following symlinks).
pub fn removexattr(path: &Path, name: &str) -> io::Result<()> {
    py(
        "def main(a):\n    os.removexattr(a[0], a[1], follow_symlinks=False)",
        &[path.as_os_str(), os(name)],
    )
    .map(drop)
}

/// getxattr (not following symlinks).
pub fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    py(
        "def main(a):\n    return os.getxattr(a[0], a[1], follow_symlinks=False).hex()",
        &[path.as_os_str(), os(name)],
    )
    .map(|h| unhex(h.trim().as_bytes()))
}

/// listxattr (not following symlinks), sorted.
pub fn listxattr(path: &Path) -> io::Result<Vec<String>> {
    py(
        "def main(a):\n    return '\\n'.join(sorted(os.listxattr(a[0], follow_symlinks=False)))",
        &[path.as_os_str()],
    )
    .map(|s| s.lines().map(str::to_owned).collect())
}

/// Sets atime and mtime of everything under `dir` (itself included, symlinks not followed)
/// to `secs`: fixtures get one old, known time, so that a timestamp the overlay must
/// preserve can be told from one it set just now.
pub fn age_tree(dir: &Path, secs: i64) {
    cmd_ok(
        "find",
        &[
            dir.as_os_str(),
            os("-exec"),
            os("touch"),
            os("-h"),
            os("-d"),
            os(&format!("@{secs}")),
            os("{}"),
            os("+"),
        ],
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
/// [`KERNEL_BOOKKEEPING_XATTRS`], and makes every whiteout (char 0/0) its own inode with
/// nlink 1 (the kernel hard-links all its whiteouts to one shared inode).
pub fn normalise_upper(s: &mut Snapshot) {
    let mut fake = u64::MAX;
    for n in s.nodes.values_mut() {
        if let Some(x) = n.xattrs.as_mut() {
            x.retain(|k, _| !KERNEL_BOOKKEEPING_XATTRS.contains(&k.as_slice()));
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

/// Like [`assert_same_tree`]'s report, for any two snapshots: "" when they agree, else a
/// readable account naming them `la` and `lb`. `who_*` says whose inode rules apply (None:
/// no inode consistency check, e.g. for the kernel's overlay over layers on several file
/// systems, where it reports several st_dev by design).
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
    for (s, l) in [(a, la), (b, lb)] {
        if !s.errors.is_empty() {
            writeln!(
                report,
                "walking {l} ({}):\n{}",
                s.root.display(),
                render(&s.errors)
            )
            .unwrap();
        }
    }
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
    if !d.is_empty() {
        writeln!(
            report,
            "{la} ({}) and {lb} ({}) differ in {} place(s):\n{}",
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
    if ga != gb {
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

/// Copies the fixture layers (`src/`) to each of `dests` with `cp -a`, then gives every copy
/// exactly the atimes and mtimes the fixture had before any copying: `cp` reads the fixture,
/// which moves its atimes (relatime, old fixture times), so a second plain copy would not
/// match the first.
pub fn copy_layers_exact(env: &TestEnv, dests: &[&str]) -> Vec<PathBuf> {
    let src = env.root.join("src");
    let dirs: Vec<PathBuf> = dests.iter().map(|d| env.root.join(d)).collect();
    let mut args: Vec<&OsStr> = vec![src.as_os_str()];
    args.extend(dirs.iter().map(|d| d.as_os_str()));
    let r = py(
        "import stat, subprocess\n\
         def main(a):\n    src = fs(a[0])\n    rec = {}\n    todo = [b'']\n    \
         while todo:\n        rel = todo.pop()\n        p = os.path.join(src, rel) if rel else src\n        \
         st = os.lstat(p)\n        rec[rel] = (st.st_atime_ns, st.st_mtime_ns)\n        \
         if stat.S_ISDIR(st.st_mode):\n            \
         todo.extend(os.path.join(rel, n) if rel else n for n in os.listdir(p))\n    \
         for d in a[1:]:\n        d = fs(d)\n        os.makedirs(d)\n        \
         subprocess.run(['cp', '-a', os.path.join(src, b'.'), d], check=True)\n        \
         for rel, (at, mt) in rec.items():\n            \
         os.utime(os.path.join(d, rel) if rel else d, ns=(at, mt), follow_symlinks=False)",
        &args,
    );
    if let Err(e) = r {
        panic!("copying the fixture layers to {dests:?}: {e}");
    }
    dirs
}

impl TestEnv {
    /// [`TestEnv::mount_pair_with`], with the two copies of the layers made by
    /// [`copy_layers_exact`] (identical atimes too).
    pub fn mount_pair_exact(&self, spec: &PairSpec) -> Pair {
        if let Some(u) = spec.upper {
            fs::create_dir_all(self.root.join("src").join(u)).expect("mkdir upper");
        }
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let (kname, fname) = (format!("xk{n}"), format!("xf{n}"));
        let dirs = copy_layers_exact(self, &[&kname, &fname]);
        let kmnt = self.mkdir(format!("xk{n}.mnt"));
        let fmnt = self.mkdir(format!("xf{n}.mnt"));
        self.mount_kernel(&Self::overlay_opts(&dirs[0], spec), &kmnt);
        self.mount_layover(&Self::overlay_opts(&dirs[1], spec), &fmnt);
        Pair {
            kernel: kmnt,
            layover: fmnt,
            kernel_layers: dirs[0].clone(),
            layover_layers: dirs[1].clone(),
        }
    }
}
