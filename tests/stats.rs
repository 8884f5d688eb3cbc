//! `layover stats`: a live mount's figures move as the work done says they must (copy-ups
//! and bytes copied exactly, requests at least the operations made), as root and as the
//! ordinary user `podtest` (through fusermount3, in a private mount namespace with a 0666
//! /dev/fuse: see tests/rootless/support.rs); the socket's modes and its removal at exit;
//! a stale socket, a dead daemon, a path that is no layover mount and a peer of another
//! uid each get a clear answer.
//!
//! Runs as root. Every daemon gets `XDG_RUNTIME_DIR` inside the test's own directory, so
//! the sockets stay there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "rootless/support.rs"]
mod support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_layover");

/// A root-owned scratch directory with l/, u/, w/, m/ and run/; unmounted and removed when
/// dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let out = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "these tests need root (mounting, becoming podtest)"
        );
        let p = std::env::temp_dir().join(format!("layover-stats-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        for d in ["l", "u", "w", "m", "run"] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
        Dir(p)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn mount(&self) {
        self.mount_with("");
    }

    /// Mounts with more options (`,noauto_unmount`).
    fn mount_with(&self, extra: &str) {
        let d = self.0.display();
        let st = Command::new(BIN)
            .arg("-o")
            .arg(format!(
                "lowerdir={d}/l,upperdir={d}/u,workdir={d}/w{extra}"
            ))
            .arg(self.path("m"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .status()
            .unwrap();
        assert!(st.success(), "mount failed");
    }

    fn umount(&self) {
        let st = Command::new("umount").arg(self.path("m")).status().unwrap();
        assert!(st.success(), "umount failed");
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let m = self.path("m");
        if Command::new("mountpoint")
            .arg("-q")
            .arg(&m)
            .status()
            .is_ok_and(|s| s.success())
            || fs::metadata(&m).is_err()
        {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn stats(args: &[&OsStr]) -> Run {
    let out = Command::new(BIN).arg("stats").args(args).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The number after `"key":` in a JSON text (the first one).
fn num(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} missing in {json}"))
        + pat.len();
    let digits: String = json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// The object of operation `op` in the requests array, or None if it was never served.
fn op<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    let at = json.find(&format!("{{\"op\":\"{name}\","))?;
    let end = json[at..].find('}')? + at;
    Some(&json[at..=end])
}

/// Requests of operation `name` (0 if never served).
fn count(json: &str, name: &str) -> u64 {
    op(json, name).map_or(0, |o| num(o, "count"))
}

/// Every operation's percentiles are ordered and within its maximum.
fn check_percentiles(json: &str) {
    let mut rest = json;
    let mut seen = 0;
    while let Some(at) = rest.find("{\"op\":") {
        let end = rest[at..].find('}').unwrap() + at;
        let o = &rest[at..=end];
        let p: Vec<u64> = ["p50_ns", "p90_ns", "p99_ns", "max_ns"]
            .iter()
            .map(|k| num(o, k))
            .collect();
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{o}");
        assert!(num(o, "count") > 0 && num(o, "total_ns") >= p[3], "{o}");
        seen += 1;
        rest = &rest[end..];
    }
    assert!(seen > 3, "too few operations in {json}");
}

const SIZES: [usize; 3] = [1000, 70_000, (1 << 20) + 7];
const NEW_FILES: usize = 50;

fn plant_lowers(l: &Path) -> u64 {
    for (i, n) in SIZES.iter().enumerate() {
        fs::write(l.join(format!("low{i}")), vec![b'a' + i as u8; *n]).unwrap();
    }
    SIZES.iter().sum::<usize>() as u64
}

#[test]
fn figures_follow_the_work_done_as_root() {
    let d = Dir::new("root");
    let total = plant_lowers(&d.path("l"));
    d.mount();
    let m = d.path("m");
    // The socket: RUNTIME/layover/PID.sock, 0600 in a 0700 directory.
    let dir = d.path("run/layover");
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
    let socks: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(socks.len(), 1, "{socks:?}");
    assert_eq!(fs::metadata(&socks[0]).unwrap().mode() & 0o7777, 0o600);

    let before = stats(&["--json".as_ref(), m.as_os_str()]);
    assert_eq!(before.code, 0, "{}", before.stderr);
    assert_eq!(num(&before.stdout, "copy_up_bytes"), 0);
    assert_eq!(num(&before.stdout, "files"), 0);

    for i in 0..NEW_FILES {
        fs::write(m.join(format!("new{i}")), b"x").unwrap();
    }
    for (i, size) in SIZES.iter().enumerate() {
        let p = m.join(format!("low{i}"));
        let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut f, b"!").unwrap();
        drop(f);
        assert_eq!(fs::read(&p).unwrap().len(), size + 1);
    }
    let held = fs::File::open(m.join("new0")).unwrap();
    let after = stats(&["--json".as_ref(), m.as_os_str()]);
    assert_eq!(after.code, 0, "{}", after.stderr);
    let j = &after.stdout;
    // Exact: three files copied up with their data, nothing else.
    assert_eq!(num(j, "files"), SIZES.len() as u64, "{j}");
    assert_eq!(num(j, "dirs"), 0, "{j}");
    assert_eq!(num(j, "copy_up_bytes"), total, "{j}");
    // At least the operations made.
    assert!(count(j, "create") >= NEW_FILES as u64, "{j}");
    // Writes are passthrough here (root): the kernel makes them, the daemon sees none.
    assert!(count(j, "open") >= 2 * SIZES.len() as u64, "{j}");
    assert!(
        count(j, "lookup") >= (NEW_FILES + SIZES.len()) as u64,
        "{j}"
    );
    assert!(count(j, "release") >= NEW_FILES as u64, "{j}");
    assert!(num(j, "inodes") > (NEW_FILES + SIZES.len()) as u64, "{j}");
    assert!(num(j, "open_files") >= 1, "{j}");
    assert!(num(j, "fds") >= 5, "{j}");
    check_percentiles(j);
    drop(held);
    // As root the kernel grants passthrough on this host (Linux >= 6.9): the reason is said.
    assert!(j.contains("\"mode\":\"passthrough\""), "{j}");
    assert!(j.contains("FUSE passthrough granted"), "{j}");

    let human = stats(&[m.as_os_str()]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    for needle in [
        "copy-ups           3 files, 0 directories, 0 others",
        &format!("copied up          {} bytes", thousands(total)),
        "data path          passthrough",
        "requests",
        "create",
    ] {
        assert!(human.stdout.contains(needle), "{needle}:\n{}", human.stdout);
    }

    d.umount();
    // Removed at a clean exit (the daemon exits as the umount returns; allow it a moment).
    let gone = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        !socks[0].exists()
    });
    assert!(gone, "{} left behind", socks[0].display());
}

/// SIGKILL to daemon `pid`, and wait until it is gone.
fn kill(pid: u32) {
    let st = Command::new("kill").args(["-9", &pid.to_string()]).status();
    assert!(st.unwrap().success());
    let dead = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(dead, "daemon {pid} still running");
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The pid of the one socket in `dir`.
fn socket_pid(dir: &Path) -> u32 {
    let names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].strip_suffix(".sock").unwrap().parse().unwrap()
}

#[test]
fn dead_daemon_stale_socket_and_wrong_paths() {
    let d = Dir::new("stale");
    fs::write(d.path("l/f"), b"lower").unwrap();
    let m = d.path("m");
    let dir = d.path("run/layover");
    // A killed daemon leaves its socket. With noauto_unmount its mount stays, dead
    // (ENOTCONN); with auto_unmount (the default) the mount goes too.
    let mut last = None;
    for extra in [",noauto_unmount", ""] {
        d.mount_with(extra);
        let pid = socket_pid(&dir);
        assert_ne!(
            Some(pid),
            last,
            "the previous daemon's socket is still there"
        );
        let r = stats(&[m.as_os_str()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        kill(pid);
        let r = stats(&[m.as_os_str()]);
        assert_eq!(r.code, 2, "{}", r.stdout);
        assert!(dir.join(format!("{pid}.sock")).exists());
        if extra.is_empty() {
            let gone = (0..100).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                stats(&[m.as_os_str()])
                    .stderr
                    .contains("is not a layover mount")
            });
            assert!(gone, "the dead mount was not unmounted");
        } else {
            assert!(
                r.stderr.contains("is gone") && r.stderr.contains("umount"),
                "{}",
                r.stderr
            );
            let st = Command::new("umount").arg("-l").arg(&m).status().unwrap();
            assert!(st.success());
        }
        last = Some(pid);
    }
    // The next daemon there removes the dead one's socket (socket_pid: only its own is
    // left) and serves its figures.
    d.mount();
    let second = socket_pid(&dir);
    let r = stats(&[m.as_os_str()]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // A stale socket file under a live daemon's name (nobody listens): a clear error.
    let sock = dir.join(format!("{second}.sock"));
    fs::remove_file(&sock).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let r = stats(&[m.as_os_str()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("stale"), "{}", r.stderr);
    // No socket at all.
    fs::remove_file(&sock).unwrap();
    let r = stats(&[m.as_os_str()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no stats socket"), "{}", r.stderr);
    d.umount();

    // Not a layover mount; no such path; usage.
    let r = stats(&[d.path("l").as_os_str()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("is not a layover mount"), "{}", r.stderr);
    let r = stats(&[d.path("nope").as_os_str()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
    let r = stats(&[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = stats(&["--help".as_ref()]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("Exit status") && r.stdout.contains("SO_PEERCRED"));
}

#[test]
fn another_uid_is_refused_by_the_daemon() {
    let d = Dir::new("peer");
    // A runtime directory others may enter, and the socket opened up, so that only the
    // daemon's own check (SO_PEERCRED) stands between podtest and the figures.
    fs::create_dir(d.path("run/layover")).unwrap();
    fs::set_permissions(d.path("run/layover"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&d.0, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(d.path("run"), fs::Permissions::from_mode(0o755)).unwrap();
    d.mount();
    let pid = socket_pid(&d.path("run/layover"));
    let sock = d.path(&format!("run/layover/{pid}.sock"));
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
    let py = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect('{}'); \
         print(s.makefile().read(), end='')",
        sock.display()
    );
    let out = Command::new("setpriv")
        .env("PATH", "/usr/bin:/bin")
        .args([
            "--reuid=podtest",
            "--regid=podtest",
            "--init-groups",
            "/usr/bin/python3",
            "-c",
            &py,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("error uid ") && text.contains("may not read"),
        "{text}"
    );
    assert!(!text.contains("inodes"), "{text}");
    // Root may.
    let r = stats(&["--json".as_ref(), d.path("m").as_os_str()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    d.umount();
}

#[test]
fn figures_follow_the_work_done_as_an_ordinary_user() {
    let s = support::Scratch::new("stats");
    let out = s.user_ok(
        "export XDG_RUNTIME_DIR=$PWD/run
         mkdir -m 700 run && mkdir l u w m
         head -c 5000 /dev/zero > l/a && head -c 123457 /dev/zero > l/b
         $LAYOVER -o lowerdir=$PWD/l,upperdir=$PWD/u,workdir=$PWD/w $PWD/m
         for i in $(seq 1 20); do echo x > m/n$i; done
         echo y >> m/a && echo y >> m/b && cat m/a m/b > /dev/null
         ls -ln run/layover
         $LAYOVER stats --json $PWD/m
         $LAYOVER stats $PWD/m > human
         $OPS unmount $PWD/m
         sleep 0.5; ls run/layover | wc -l",
    );
    let lines: Vec<&str> = out.lines().collect();
    let uid = String::from_utf8_lossy(
        &Command::new("id")
            .args(["-u", "podtest"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    let listing = lines.iter().find(|l| l.contains(".sock")).expect(&out);
    assert!(listing.starts_with("srw-------"), "{listing}");
    assert!(
        listing.split_whitespace().nth(2) == Some(uid.as_str()),
        "{listing}"
    );
    let j = lines.iter().find(|l| l.starts_with('{')).expect(&out);
    assert_eq!(num(j, "files"), 2, "{j}");
    assert_eq!(num(j, "copy_up_bytes"), 5000 + 123_457, "{j}");
    assert!(count(j, "create") >= 20, "{j}");
    assert!(count(j, "write") >= 22, "{j}");
    check_percentiles(j);
    // No passthrough for an ordinary user, and the reason is said.
    assert!(j.contains("\"mode\":\"writeback cache\""), "{j}");
    assert!(j.contains("not real root"), "{j}");
    let human = s.read("human");
    assert!(human.contains("copy-ups           2 files"), "{human}");
    // The socket went with the daemon.
    assert_eq!(lines.last().map(|l| l.trim()), Some("0"), "{out}");
}
