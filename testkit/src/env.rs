//! The guard every mounted test starts with: [`TestEnv`] owns a unique temporary directory and
//! every mount made under it, unmounts them all when dropped (also after a panic), fails the
//! test when a layover daemon died during it, and runs a watchdog that aborts the test's FUSE
//! mounts when it hangs. [`require_prerequisites`] fails loudly (never skips) on a machine
//! that cannot run the mounted tests.

use crate::compare::give_to_user;
use crate::layer::Layer;
use crate::mode::{Mode, as_root, enter_user, leave_user, mode, test_user};
use crate::procfs::{daemon_pids, is_mounted, mounts, mounts_at, process_alive, umount_retrying};
use crate::run::{Run, cmd, cmd_ok, os, run_with_timeout};
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// The binary the tests run: `$LAYOVER_TEST_BIN` when set (another implementation with the
/// same command line, e.g. fuse-overlayfs, to check a test's expectations against it; then
/// set `LAYOVER_TEST_FSTYPE=fuse.fuse-overlayfs` too), else layover's own binary, which
/// `cargo test` builds for the package's integration tests and names in
/// `$CARGO_BIN_EXE_layover` when it runs them. Without either, [`require_prerequisites`]
/// fails the test.
pub fn bin() -> PathBuf {
    std::env::var_os("LAYOVER_TEST_BIN")
        .or_else(|| std::env::var_os("CARGO_BIN_EXE_layover"))
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The file system type a live mount shows in /proc/self/mounts.
pub fn fstype() -> String {
    std::env::var("LAYOVER_TEST_FSTYPE").unwrap_or_else(|_| "fuse.layover".into())
}

/// How long one test may run before the watchdog aborts its FUSE mounts (so a deadlocked
/// daemon fails the test instead of hanging the whole run).
const WATCHDOG: Duration = Duration::from_secs(300);

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
        let uid_map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        let initial_ns = uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
        assert!(
            mode() != Mode::UserNs || !initial_ns,
            "PREREQUISITE MISSING: LAYOVER_TEST_MODE=userns runs the tests in a user namespace: \
             start them through testkit/scripts/run-mode.sh (cargo's target runner; see \
             scripts/test.sh)"
        );
        let fuse_mode = fs::metadata("/dev/fuse").map(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o777
        });
        assert!(
            mode() != Mode::User || fuse_mode.as_ref().is_ok_and(|m| m & 0o006 == 0o006),
            "PREREQUISITE MISSING: LAYOVER_TEST_MODE=user needs /dev/fuse usable by the test \
             user (here {fuse_mode:?}): start the tests through testkit/scripts/run-mode.sh, \
             which binds a 0666 node over it in a private mount namespace"
        );
        if mode() == Mode::User {
            test_user();
            let found = Command::new("sh")
                .args([
                    "-c",
                    "command -v fusermount3 && command -v nsenter && command -v setpriv",
                ])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "PREREQUISITE MISSING: mode user needs fusermount3 (fuse3), nsenter and setpriv \
                 (util-linux)"
            );
        }
        assert!(
            !bin().as_os_str().is_empty(),
            "PREREQUISITE MISSING: no binary under test: run the tests with cargo test, or set \
             LAYOVER_TEST_BIN"
        );
        assert!(
            bin().exists(),
            "PREREQUISITE MISSING: binary under test {} does not exist",
            bin().display()
        );
    });
}

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

/// [`Mode::User`]: the layer directories a layover `-o` option string names, and the
/// mountpoint, given to the test user ([`give_to_user`]).
fn give_layers_to_user(opts: &str, mnt: &Path) {
    let mut dirs: Vec<PathBuf> = vec![mnt.to_owned()];
    for o in opts.split(',') {
        if let Some((key, value)) = o.split_once('=')
            && ["lowerdir", "upperdir", "workdir"].contains(&key)
        {
            dirs.extend(value.split(':').map(PathBuf::from));
        }
    }
    let dirs: Vec<&Path> = dirs
        .iter()
        .map(PathBuf::as_path)
        .filter(|d| d.exists())
        .collect();
    give_to_user(&dirs);
}

/// What every test directory's path starts with (`/tmp/lyt-PID-N-NAME`).
const ROOT_PREFIX: &str = "/tmp/lyt-";

/// Owns a unique temporary directory and every mount made under it (or registered with it).
/// Dropping it unmounts everything (umount, then umount -l) and removes the directory, also
/// when the test panicked. A layover daemon that died during the test fails it here, too.
pub struct TestEnv {
    pub root: PathBuf,
    mounts: Mutex<Vec<Tracked>>,
    /// [`Mode::User`]: the processes holding the mount namespaces of the kernel's mounts
    /// (the user's user namespace, where the kernel's overlayfs is mounted), with the path
    /// each mount is reached at.
    holders: Mutex<Vec<(Child, PathBuf)>>,
    done: Arc<AtomicBool>,
    watched: Arc<Mutex<Vec<PathBuf>>>,
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
        let root = PathBuf::from(format!("{ROOT_PREFIX}{}-{n}-{safe}", std::process::id()));
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
            holders: Mutex::new(Vec::new()),
            done,
            watched,
        }
    }

    /// A path inside the test directory.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// Creates (if needed) a directory inside the test directory.
    /// (As root: see [`crate::mode`].)
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.root.join(rel);
        as_root(|| fs::create_dir_all(&p)).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
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
    /// In [`Mode::User`], as the test user (`setpriv`; a mount goes through fusermount3).
    /// Its runtime directory (where a daemon puts its stats socket) is `ROOT/run`, so that
    /// no test's daemon writes in /run (the test user's daemon cannot write there: it
    /// serves no figures).
    pub fn run_layover(&self, args: &[&OsStr]) -> Run {
        let run = self.root.join("run");
        let made = std::fs::create_dir(&run).is_ok();
        if mode() == Mode::User {
            // The daemon, as the test user, makes its stats socket's directory in it.
            if made {
                as_root(|| crate::compare::give_to_user(&[&run]));
            }
            let (name, _, _) = test_user();
            let mut c = Command::new("setpriv");
            c.args([
                os("--reuid"),
                os(&name),
                os("--regid"),
                os(&name),
                os("--init-groups"),
                os("--"),
                bin().as_os_str(),
            ]);
            c.args(args).env("XDG_RUNTIME_DIR", &run);
            return as_root(|| run_with_timeout(&mut c, &self.root, Duration::from_secs(30)));
        }
        let mut c = Command::new(bin());
        c.args(args).env("XDG_RUNTIME_DIR", &run);
        run_with_timeout(&mut c, &self.root, Duration::from_secs(30))
    }

    /// Mounts layover with `-o OPTS` at `mnt`; fails the test unless it exits 0 with the
    /// mount live. Returns the run (for its stderr). In [`Mode::User`] the layers `OPTS`
    /// names and the mountpoint are given to the test user first, and the thread takes the
    /// user's credentials once it is mounted (see [`crate::mode`]).
    /// `$LAYOVER_TEST_OPTS` is appended to the options (scripts/test.sh runs the side-by-side
    /// suites once more with `passthrough=off`: the daemon and writeback-cache data path).
    pub fn mount_layover(&self, opts: &str, mnt: &Path) -> Run {
        let opts = match std::env::var("LAYOVER_TEST_OPTS") {
            Ok(extra) if !extra.is_empty() => format!("{opts},{extra}"),
            _ => opts.to_string(),
        };
        let opts = opts.as_str();
        if mode() == Mode::User {
            as_root(|| give_layers_to_user(opts, mnt));
        }
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
        enter_user();
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

    /// Mounts the kernel's overlay the way this run's [`Mode`] does (see
    /// [`crate::mode`]): by root; in [`Mode::User`] by the test user in a user namespace of
    /// its own; in [`Mode::UserNs`] by root of the namespace the tests run in. Returns the
    /// path the mount is reached at (`/proc/PID/root/...` in [`Mode::User`]), or mount(8)'s
    /// complaint. The rootless modes add `userxattr` to `opts`.
    pub fn mount_kernel_in_mode(&self, opts: &str, mnt: &Path) -> Result<PathBuf, String> {
        let opts = if mode().rootless() && !opts.split(',').any(|o| o == "userxattr") {
            format!("{opts},userxattr")
        } else {
            opts.to_string()
        };
        if mode() != Mode::User {
            return self.try_mount_kernel(&opts, mnt).map(|()| mnt.to_owned());
        }
        as_root(|| self.spawn_kernel_holder(&opts, mnt))
    }

    /// [`Mode::User`]: the kernel's overlay mounted at `mnt` by the test user in a user and
    /// mount namespace of its own, kept by a process that waits on its stdin. The namespace
    /// is made from a copy of ours (root's) from which every FUSE mount below any test
    /// directory (this test's and those of the tests running beside it) has been taken away
    /// first, so that it keeps no copy of a layover mount (whose daemon would then outlive
    /// its unmount until this holder ends: "still runs 10 s after its unmount" in another
    /// test, when this one runs long).
    fn spawn_kernel_holder(&self, opts: &str, mnt: &Path) -> Result<PathBuf, String> {
        let (name, _, _) = test_user();
        let inner = "mount -t overlay overlay -o \"$0\" \"$1\" || exit 1; echo ready; exec cat";
        let outer = format!(
            "grep ' - fuse' /proc/self/mountinfo | cut -d' ' -f5 | grep \"^$2\" | sort -r | \
             while read -r m; do umount -l \"$m\"; done
             exec setpriv --reuid {name} --regid {name} --init-groups -- \
                 unshare -Urm -- sh -c '{inner}' \"$0\" \"$1\""
        );
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "--", "sh", "-c", &outer])
            .arg(opts)
            .arg(mnt)
            .arg(ROOT_PREFIX)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("spawn {c:?}: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("holder stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = child.kill();
            let out = child.wait_with_output();
            let err = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
            return Err(format!(
                "mount -t overlay -o {opts} {} in a user namespace of {name}: {err:?}",
                mnt.display()
            ));
        }
        let at = PathBuf::from(format!("/proc/{}/root", child.id()))
            .join(mnt.strip_prefix("/").unwrap_or(mnt));
        self.holders.lock().unwrap().push((child, at.clone()));
        Ok(at)
    }

    /// Ends the kernel's mount reached at `at` ([`TestEnv::mount_kernel_in_mode`]): unmounts
    /// it, or in [`Mode::User`] ends the process holding its namespace.
    pub fn unmount_kernel_in_mode(&self, at: &Path) {
        if mode() != Mode::User {
            umount_retrying(at);
            self.untrack(at);
            return;
        }
        as_root(|| {
            let mut holders = self.holders.lock().unwrap();
            if let Some(i) = holders.iter().position(|(_, p)| p == at) {
                let (mut c, _) = holders.remove(i);
                let _ = c.kill();
                let _ = c.wait();
            }
        });
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
        as_root(|| {
            fs::create_dir_all(&d).expect("mkdir copy");
            let mut src = self.root.join("src").into_os_string();
            src.push("/.");
            cmd_ok("cp", &[os("-a"), &src, d.as_os_str()]);
        });
        d
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
            // A dead daemon first: its mount then goes too (auto_unmount), and "died" is the
            // cause to report, not the disappearance that follows from it.
            if let Some(pid) = t.pid
                && !process_alive(pid)
            {
                problems.push(format!(
                    "layover daemon (pid {pid}) for {} has died",
                    t.path.display()
                ));
                continue;
            }
            if !mounts_at(&t.path).iter().any(|m| m.fstype == fstype()) {
                problems.push(format!(
                    "layover mount at {} has disappeared",
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
        // Root again for the cleanup ([`Mode::User`]); the kernel's mounts' namespaces go
        // with their holders.
        leave_user();
        for (mut c, _) in
            std::mem::take(&mut *self.holders.lock().unwrap_or_else(|e| e.into_inner()))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
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
