//! What /proc tells about mounts and processes: the mount table, the daemons serving a
//! mountpoint, who holds files under a directory, and unmounting.

use crate::env::bin;
use crate::run::{bpath, cmd};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Undoes the octal escapes of /proc/self/mounts fields.
pub(crate) fn unescape_octal(s: &[u8]) -> Vec<u8> {
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
