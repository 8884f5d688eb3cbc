//! A dead daemon's mount goes with it (`auto_unmount`, on by default). Once the mount is live,
//! a small watcher process is forked that holds the read end of a pipe whose write end only
//! the daemon holds. However the daemon ends (umount, a crash, SIGKILL), the kernel closes
//! that end and the watcher wakes. If the mount is still in the mount table then, its daemon
//! is gone and every use of it would fail with ENOTCONN while `stat MNT` and `mountpoint MNT`
//! went on succeeding from cached attributes; the watcher unmounts it (lazily, so that
//! processes with files open under it are not disturbed beyond what the dead daemon already
//! does to them): with umount2 when the daemon mounted it itself, through `fusermount3 -u -z`
//! for an ordinary user. After a normal unmount the mount is gone and the watcher just exits.
//!
//! The mount is recognised by what /proc/self/mountinfo said right after mounting: its mount
//! id, its device number (unique while the FUSE connection exists) and its mount point. The
//! watcher never stats the mount point (that would ask the dead daemon). It unmounts only a
//! mount that nothing else is mounted over at the same place.
//!
//! What it must not touch: the layers. It is forked before any worker thread exists and keeps
//! only its pipe; it holds no layer, no /dev/fuse and no working directory.

use crate::privilege::{Mode, Privilege};
use crate::sys;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// One mount, as /proc/self/mountinfo describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MountLine {
    id: u64,
    parent: u64,
    /// "MAJOR:MINOR" of the mounted filesystem.
    dev: String,
    mountpoint: Vec<u8>,
    fstype: String,
}

/// Parses one line of /proc/PID/mountinfo (proc(5)); None for a line that does not parse.
fn parse_line(line: &[u8]) -> Option<MountLine> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let num = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u64>().ok();
    let sep = fields.iter().position(|f| *f == b"-")?;
    Some(MountLine {
        id: num(fields.first()?)?,
        parent: num(fields.get(1)?)?,
        dev: String::from_utf8_lossy(fields.get(2)?).into_owned(),
        mountpoint: unescape_octal(fields.get(4)?),
        fstype: String::from_utf8_lossy(fields.get(sep + 1)?).into_owned(),
    })
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let digits = s.get(i + 1..i + 4);
        match digits {
            Some(d) if s[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push((v & 0xff) as u8);
                i += 4;
            }
            _ => {
                out.push(s[i]);
                i += 1;
            }
        }
    }
    out
}

fn mount_table() -> Vec<MountLine> {
    let Ok(data) = std::fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    data.split(|b| *b == b'\n').filter_map(parse_line).collect()
}

/// Our mount in `table`: the FUSE mount at `mountpoint` that nothing is mounted over (the
/// last one there, as later mounts stack on earlier ones).
fn find_ours<'a>(table: &'a [MountLine], mountpoint: &[u8]) -> Option<&'a MountLine> {
    table
        .iter()
        .rfind(|m| m.mountpoint == mountpoint)
        .filter(|m| m.fstype == "fuse" || m.fstype.starts_with("fuse."))
}

/// Whether `ours` is still mounted, and nothing covers it at its mount point.
fn still_there(table: &[MountLine], ours: &MountLine) -> bool {
    let present = table
        .iter()
        .any(|m| m.id == ours.id && m.dev == ours.dev && m.mountpoint == ours.mountpoint);
    let covered = table
        .iter()
        .any(|m| m.parent == ours.id && m.mountpoint == ours.mountpoint);
    present && !covered
}

/// The environment the watcher is started with: which mount to watch, and how to unmount it.
const ENV_MOUNT: &str = "LAYOVER_AUTOUNMOUNT_MOUNT";
const ENV_PATH: &str = "LAYOVER_AUTOUNMOUNT_PATH";
const ENV_HELPER: &str = "LAYOVER_AUTOUNMOUNT_HELPER";
/// The watcher's name in `ps` and /proc/PID/cmdline. Its command line names no mount point,
/// so nothing that looks for the daemon by its mount point mistakes the watcher for it.
const NAME: &str = "layover-autounmount";
/// The watcher's end of the pipe (it is started holding nothing else).
const PIPE_FD: i32 = 3;

/// Starts the watcher for the live mount at `mountpoint` (absolute and canonical, as in the
/// mount table). Returns the pipe end the daemon must keep open for as long as it serves;
/// None (with a warning) when the mount cannot be found or the watcher not started. Must be
/// called while the process has a single thread. `quiet`: the daemon's output goes to
/// /dev/null once it runs in the background; the watcher's goes there from the start, so
/// that it never holds the pipes of whoever started the mount (they would wait for it).
pub fn start(mountpoint: &Path, privilege: &Privilege, quiet: bool) -> Option<OwnedFd> {
    let table = mount_table();
    let Some(ours) = find_ours(&table, mountpoint.as_os_str().as_bytes()).cloned() else {
        log::warn!(
            "auto_unmount: the mount at {} is not in /proc/self/mountinfo; a dead daemon will \
             leave it mounted",
            mountpoint.display()
        );
        return None;
    };
    let helper = match privilege.mode {
        Mode::User => crate::privilege::find_fusermount3(),
        Mode::Root | Mode::UserNamespaceRoot => None,
    };
    let (rd, wr) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => {
            log::warn!("auto_unmount: no pipe ({e}): a dead daemon will leave its mount");
            return None;
        }
    };
    match sys::fork() {
        Ok(sys::Fork::Child) => {
            drop(wr);
            exec_watcher(rd, &ours, helper.as_deref(), quiet)
        }
        Ok(sys::Fork::Parent) => {
            drop(rd);
            log::debug!(
                "auto_unmount: watching mount {} ({}) at {}",
                ours.id,
                ours.dev,
                mountpoint.display()
            );
            Some(wr)
        }
        Err(e) => {
            log::warn!(
                "auto_unmount: cannot fork a watcher ({e}): a dead daemon will leave its mount"
            );
            None
        }
    }
}

/// In the forked child: leaves the daemon's session (a ^C meant for `layover -f` must not end
/// the watcher first) and every directory, keeps only the pipe (as fd 3), and becomes the
/// watcher by executing this program again under its own name. Never returns.
fn exec_watcher(pipe: OwnedFd, ours: &MountLine, helper: Option<&Path>, quiet: bool) -> ! {
    sys::setsid();
    sys::chdir_root();
    let pipe = sys::keep_only(pipe, PIPE_FD);
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0(NAME)
        .env(ENV_MOUNT, format!("{} {}", ours.id, ours.dev))
        .env(ENV_PATH, std::ffi::OsStr::from_bytes(&ours.mountpoint))
        .env_remove(ENV_HELPER)
        .stdin(std::process::Stdio::null());
    if quiet {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }
    if let Some(h) = helper {
        cmd.env(ENV_HELPER, h);
    }
    let e = cmd.exec();
    drop(pipe);
    eprintln!("layover: auto_unmount: cannot start the watcher: {e}");
    sys::exit_now(1)
}

/// The watcher, when this process was started as one (by `start`); None otherwise. `main`
/// asks this first.
pub fn watcher_from_env() -> Option<Watcher> {
    let mount = std::env::var(ENV_MOUNT).ok()?;
    let path = std::env::var_os(ENV_PATH)?;
    let (id, dev) = mount.split_once(' ')?;
    Some(Watcher {
        id: id.parse().ok()?,
        dev: dev.to_string(),
        mountpoint: path.as_bytes().to_vec(),
        helper: std::env::var_os(ENV_HELPER).map(PathBuf::from),
    })
}

/// The watcher process's task: the mount to look for, and how to unmount it.
pub struct Watcher {
    id: u64,
    dev: String,
    mountpoint: Vec<u8>,
    helper: Option<PathBuf>,
}

impl Watcher {
    /// Waits for the daemon to end (EOF on the pipe: nothing is ever written to it), then
    /// unmounts its mount if it is still there. Never returns.
    pub fn run(self) -> ! {
        if let Some(pipe) = sys::inherited_fd(PIPE_FD) {
            let mut buf = Vec::new();
            let _ = sys::read_all(pipe.as_fd(), &mut buf);
        }
        let ours = MountLine {
            id: self.id,
            parent: 0,
            dev: self.dev.clone(),
            mountpoint: self.mountpoint.clone(),
            fstype: String::new(),
        };
        if still_there(&mount_table(), &ours) {
            self.unmount();
        }
        sys::exit_now(0)
    }

    fn unmount(&self) {
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&self.mountpoint));
        match &self.helper {
            Some(helper) => {
                let r = std::process::Command::new(helper)
                    .args(["-u", "-z", "--"])
                    .arg(&path)
                    .stdin(std::process::Stdio::null())
                    .status();
                if !r.is_ok_and(|s| s.success()) {
                    eprintln!(
                        "layover: auto_unmount: {} -u -z {} failed: the dead mount stays",
                        helper.display(),
                        path.display()
                    );
                }
            }
            None => {
                let Ok(target) = CString::new(self.mountpoint.clone()) else {
                    return;
                };
                if let Err(e) = sys::umount(&target, true) {
                    eprintln!(
                        "layover: auto_unmount: cannot unmount {} ({e}): the dead mount stays",
                        path.display()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[u8] = b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
        30 22 8:1 / /mnt/a\\040b rw - ext4 /dev/sda1 rw\n\
        41 30 0:50 / /mnt/a\\040b rw,nosuid,nodev - fuse.layover layover rw,user_id=0\n\
        42 41 0:51 / /mnt/a\\040b/proc rw - proc proc rw\n";

    fn table() -> Vec<MountLine> {
        TABLE
            .split(|b| *b == b'\n')
            .filter_map(parse_line)
            .collect()
    }

    #[test]
    fn parses_mountinfo_lines_with_escaped_paths() {
        let t = table();
        assert_eq!(t.len(), 4);
        assert_eq!(t[2].id, 41);
        assert_eq!(t[2].parent, 30);
        assert_eq!(t[2].dev, "0:50");
        assert_eq!(t[2].mountpoint, b"/mnt/a b");
        assert_eq!(t[2].fstype, "fuse.layover");
        assert_eq!(parse_line(b"garbage"), None);
        assert_eq!(parse_line(b""), None);
    }

    #[test]
    fn finds_the_fuse_mount_on_top_at_its_mount_point() {
        let t = table();
        assert_eq!(find_ours(&t, b"/mnt/a b").map(|m| m.id), Some(41));
        assert_eq!(find_ours(&t, b"/proc"), None, "not a FUSE mount");
        assert_eq!(find_ours(&t, b"/nowhere"), None);
    }

    #[test]
    fn unmounts_only_the_same_mount_and_only_when_uncovered() {
        let t = table();
        let ours = t[2].clone();
        assert!(
            still_there(&t, &ours),
            "a submount elsewhere does not cover it"
        );
        let gone: Vec<_> = t.iter().filter(|m| m.id != 41).cloned().collect();
        assert!(!still_there(&gone, &ours), "unmounted");
        let mut reused = t.clone();
        reused[2].dev = "0:99".into();
        assert!(
            !still_there(&reused, &ours),
            "a new mount that got the same id"
        );
        let mut covered = t.clone();
        covered.push(MountLine {
            id: 50,
            parent: 41,
            dev: "0:60".into(),
            mountpoint: b"/mnt/a b".to_vec(),
            fstype: "tmpfs".into(),
        });
        assert!(
            !still_there(&covered, &ours),
            "something is mounted over it"
        );
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape_octal(b"a\\040b\\011c\\134d"), b"a b\tc\\d");
        assert_eq!(unescape_octal(b"x\\9y\\04"), b"x\\9y\\04");
    }
}
