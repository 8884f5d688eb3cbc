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

use crate::mountinfo::{self, MountEntry};
use crate::privilege::{Mode, Privilege};
use crate::sys;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

fn mount_table() -> Vec<MountEntry> {
    mountinfo::read().unwrap_or_default()
}

/// Our mount in `table`: the FUSE mount at `mountpoint` that nothing is mounted over (the
/// last one there, as later mounts stack on earlier ones).
fn find_ours<'a>(table: &'a [MountEntry], mountpoint: &Path) -> Option<&'a MountEntry> {
    table
        .iter()
        .rfind(|m| m.mountpoint == mountpoint)
        .filter(|m| m.fstype == "fuse" || m.fstype.starts_with("fuse."))
}

/// Whether `ours` is still mounted, and nothing covers it at its mount point.
fn still_there(table: &[MountEntry], ours: &MountEntry) -> bool {
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
    let Some(ours) = find_ours(&table, mountpoint).cloned() else {
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
fn exec_watcher(pipe: OwnedFd, ours: &MountEntry, helper: Option<&Path>, quiet: bool) -> ! {
    sys::setsid();
    sys::chdir_root();
    let pipe = sys::keep_only(pipe, PIPE_FD);
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0(NAME)
        .env(ENV_MOUNT, format!("{} {}", ours.id, ours.dev))
        .env(ENV_PATH, &ours.mountpoint)
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
        mountpoint: PathBuf::from(path),
        helper: std::env::var_os(ENV_HELPER).map(PathBuf::from),
    })
}

/// The watcher process's task: the mount to look for, and how to unmount it.
pub struct Watcher {
    id: u64,
    dev: String,
    mountpoint: PathBuf,
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
        let ours = MountEntry {
            id: self.id,
            parent: 0,
            dev: self.dev.clone(),
            mountpoint: self.mountpoint.clone(),
            fstype: String::new(),
            super_opts: String::new(),
        };
        if still_there(&mount_table(), &ours) {
            self.unmount();
        }
        sys::exit_now(0)
    }

    fn unmount(&self) {
        let path = &self.mountpoint;
        match &self.helper {
            Some(helper) => {
                let r = std::process::Command::new(helper)
                    .args(["-u", "-z", "--"])
                    .arg(path)
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
                let Ok(target) = CString::new(path.as_os_str().as_bytes()) else {
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

    #[test]
    fn finds_the_fuse_mount_on_top_at_its_mount_point() {
        let t = mountinfo::parse(TABLE);
        assert_eq!(find_ours(&t, Path::new("/mnt/a b")).map(|m| m.id), Some(41));
        assert_eq!(find_ours(&t, Path::new("/proc")), None, "not a FUSE mount");
        assert_eq!(find_ours(&t, Path::new("/nowhere")), None);
    }

    #[test]
    fn unmounts_only_the_same_mount_and_only_when_uncovered() {
        let t = mountinfo::parse(TABLE);
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
        covered.push(MountEntry {
            id: 50,
            parent: 41,
            dev: "0:60".into(),
            mountpoint: "/mnt/a b".into(),
            fstype: "tmpfs".into(),
            super_opts: String::new(),
        });
        assert!(
            !still_there(&covered, &ours),
            "something is mounted over it"
        );
    }
}
