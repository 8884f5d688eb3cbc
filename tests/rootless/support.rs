//! Harness of the rootless side-by-side tests: prerequisites (checked loudly, never
//! skipped), a scratch directory owned by the test user, and running shell scripts as that
//! user in a private mount namespace where a 0666 node is bound over /dev/fuse (the host's
//! node, mode 0600, is never changed; fusermount3 opens /dev/fuse itself and sees the same
//! node, as it runs in that namespace too).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The ordinary user the tests run as (.ci/run creates it, with subordinate id ranges).
pub const USER: &str = "podtest";
/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_layover");
/// The operations and tree dumps, run as the user (python3).
const OPS: &str = include_str!("ops.py");

static PREREQ: Once = Once::new();

fn sh_ok(script: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails loudly when the machine cannot run these tests.
pub fn require() {
    PREREQ.call_once(|| {
        assert!(
            sh_ok("[ \"$(id -u)\" = 0 ]"),
            "PREREQUISITE MISSING: the rootless tests start as root (to bind a 0666 /dev/fuse \
             in a private mount namespace and become {USER}); run them as root"
        );
        assert!(
            sh_ok(&format!("id -u {USER} >/dev/null 2>&1")),
            "PREREQUISITE MISSING: user {USER} does not exist: useradd -m {USER} (.ci/run does)"
        );
        for f in ["/etc/subuid", "/etc/subgid"] {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{USER}:"))),
                "PREREQUISITE MISSING: no {f} range for {USER} (useradd makes one)"
            );
        }
        let fm = std::fs::metadata("/usr/bin/fusermount3")
            .or_else(|_| std::fs::metadata("/bin/fusermount3"));
        assert!(
            fm.as_ref()
                .is_ok_and(|m| m.uid() == 0 && m.mode() & 0o4000 != 0),
            "PREREQUISITE MISSING: a set-uid root fusermount3 (apt-get install fuse3): {fm:?}"
        );
        assert!(
            std::fs::metadata("/dev/fuse").is_ok_and(|m| m.file_type().is_char_device()),
            "PREREQUISITE MISSING: /dev/fuse (modprobe fuse)"
        );
        for tool in ["unshare", "setpriv", "newuidmap", "python3", "mknod", "cp"] {
            assert!(
                sh_ok(&format!("command -v {tool} >/dev/null")),
                "PREREQUISITE MISSING: {tool} (util-linux, uidmap, python3, coreutils)"
            );
        }
    });
}

/// A scratch directory owned by the test user, removed (after ending any process of the
/// test still using it, by pid) when dropped.
pub struct Scratch {
    pub dir: PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Scratch {
    pub fn new(case: &str) -> Scratch {
        require();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "layover-rootless-{}-{n}-{case}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let d = dir.display();
        let made = sh_ok(&format!(
            "chmod 755 {d} && mknod -m 666 {d}/fuse c 10 229 && chown {USER}: {d}"
        ));
        assert!(made, "cannot prepare {d}");
        std::fs::write(dir.join("ops.py"), OPS).unwrap();
        // The binary under test, where the user can run it: the build directory may be
        // closed to them (a checkout in /root).
        std::fs::copy(BIN, dir.join("layover")).unwrap();
        Scratch { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Runs `script` (sh) as the test user, in a private mount namespace whose /dev/fuse
    /// is a 0666 node, with the scratch directory as the current directory and `$OPS`,
    /// `$LAYOVER` set. Returns (success, stdout, stderr).
    pub fn user(&self, script: &str) -> (bool, String, String) {
        self.user_with(script, true)
    }

    /// Like `user`; `fuse`: whether /dev/fuse is usable (a 0666 node bound over it), else
    /// the host's own node (mode 0600: the user cannot open it).
    pub fn user_with(&self, script: &str, fuse: bool) -> (bool, String, String) {
        let d = self.dir.display().to_string();
        let inner = format!(
            "cd {d} && OPS='python3 {d}/ops.py' LAYOVER={d}/layover \
             PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME={d} sh -ec '{}'",
            script.replace('\'', "'\\''")
        );
        let bind = if fuse {
            format!("mount --bind {d}/fuse /dev/fuse && ")
        } else {
            String::new()
        };
        let outer = format!(
            "mount --make-rprivate / && {bind}\
             exec setpriv --reuid={USER} --regid={USER} --init-groups -- sh -c \"$0\""
        );
        let out = unshare_sh(&outer, &inner);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `script` (sh) as root in a private mount namespace where /dev/fuse is a 0666
    /// node and /etc/fuse.conf says `user_allow_other` (bound over the host's, which is not
    /// changed), so that a mount the test user makes with `allow_root` serves root: `$U CMD`
    /// runs CMD as the test user. Same directory and variables as `user`; must succeed.
    #[allow(dead_code)] // only tests/idmap.rs uses it
    pub fn root_beside_user_ok(&self, script: &str) -> String {
        let d = self.dir.display().to_string();
        std::fs::write(self.dir.join("fuse.conf"), "user_allow_other\n").unwrap();
        let inner = format!(
            "cd {d} && OPS='python3 {d}/ops.py' LAYOVER={d}/layover \
             U='setpriv --reuid={USER} --regid={USER} --init-groups --' \
             PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME={d} sh -ec '{}'",
            script.replace('\'', "'\\''")
        );
        let outer = format!(
            "mount --make-rprivate / && mount --bind {d}/fuse /dev/fuse && \
             mount --bind {d}/fuse.conf /etc/fuse.conf && exec sh -c \"$0\""
        );
        let out = unshare_sh(&outer, &inner);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "script failed (root beside {USER}):\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        stdout
    }

    /// Like `user`, and the script must succeed.
    pub fn user_ok(&self, script: &str) -> String {
        let (ok, out, err) = self.user(script);
        assert!(
            ok,
            "script failed as {USER}:\n{script}\nstdout:\n{out}\nstderr:\n{err}"
        );
        out
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel))
            .unwrap_or_else(|e| panic!("{}: {e}", self.path(rel).display()))
    }
}

/// Pids of processes whose command line names `dir` (daemons a failed test left).
fn processes_using(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline.windows(needle.len()).any(|w| w == needle) && pid != std::process::id() {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Each daemon lives in a private mount namespace that goes with it: ending it
        // (by pid) unmounts everything the test made.
        for pid in processes_using(&self.dir) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `sh -c OUTER INNER` (OUTER ends by running `$0`, the inner script) in a mount
/// namespace of its own, with a clean environment, for at most 120 s.
fn unshare_sh(outer: &str, inner: &str) -> std::process::Output {
    Command::new("timeout")
        .args(["120", "unshare", "-m", "--", "sh", "-c", outer, inner])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .output()
        .unwrap()
}
