//! Live layover mounts: which one a path lies in, and the layer stack it serves.
//!
//! The kernel's mount table (`/proc/self/mountinfo`) names a layover mount (type
//! `fuse.layover`) but not its layers: a FUSE mount's options there are the kernel's
//! (`user_id=`, `group_id=`, ...). The layers are in the daemon's command line. So the daemon
//! is found by scanning `/proc/PID/cmdline` for a layover process (argv[0]'s file name
//! starts with `layover`) whose mount syntax names that mountpoint, and its `-o` options are
//! read as a mount would read them. This needs permission to read the daemon's cmdline
//! (any user can, unless /proc is mounted with `hidepid`), and layer paths in it that are
//! absolute (as mount(8), fstab and container engines give them): a relative one is taken
//! relative to the daemon's working directory (`/proc/PID/cwd`, readable by its owner and
//! root), which a daemon may have changed since.

use crate::cli::{self, Command};
use crate::config::Stack;
use crate::error::StartupError;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

pub use crate::mountinfo::MountEntry;

pub fn mounts() -> Result<Vec<MountEntry>, StartupError> {
    crate::mountinfo::read()
        .map_err(|e| StartupError::new(format!("cannot read /proc/self/mountinfo: {e}")))
}

/// The layover mount that `path` (absolute, canonical) lies in: the deepest one, and the
/// last mounted there when several are stacked. Returns its mountpoint.
pub fn layover_mount_of(path: &Path) -> Result<Option<PathBuf>, StartupError> {
    let all = mounts()?;
    let mut best: Option<&MountEntry> = None;
    for m in &all {
        if !path.starts_with(&m.mountpoint) {
            continue;
        }
        // A later mount at or below the best one covers it, whatever its type.
        if best.is_none_or(|b| m.mountpoint.starts_with(&b.mountpoint)) {
            best = Some(m);
        }
    }
    Ok(best
        .filter(|m| m.fstype == "fuse.layover")
        .map(|m| m.mountpoint.clone()))
}

/// A process's command line, argument by argument.
fn cmdline(pid: &str) -> Option<Vec<OsString>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args: Vec<OsString> = raw
        .split(|b| *b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    if args.last().is_some_and(|a| a.is_empty()) {
        args.pop();
    }
    Some(args)
}

/// `p` made absolute against directory `cwd`.
fn absolute(p: &Path, cwd: Option<&Path>) -> PathBuf {
    match cwd {
        Some(c) if p.is_relative() => c.join(p),
        _ => p.to_path_buf(),
    }
}

/// Every layover daemon: (pid, its mount arguments, its working directory).
fn daemons() -> Vec<(String, cli::MountArgs, Option<PathBuf>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Some(args) = cmdline(&pid) else { continue };
        let Some(argv0) = args.first() else { continue };
        let base = Path::new(argv0).file_name().map(|n| n.as_bytes().to_vec());
        if !base.is_some_and(|b| b.starts_with(b"layover")) {
            continue;
        }
        if let Ok(Command::Mount(m)) = cli::parse(&args[1..]) {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
            out.push((pid, m, cwd));
        }
    }
    out.sort_by_key(|(pid, _, _)| pid.parse::<u64>().unwrap_or(0));
    out
}

/// The daemon serving the live layover mount at `mountpoint`: (pid, its mount arguments,
/// its working directory). `why`: what the daemon is needed for, for the error message.
pub fn daemon_of_mount(
    mountpoint: &Path,
    why: &str,
) -> Result<(String, cli::MountArgs, Option<PathBuf>), StartupError> {
    // A dead daemon's mount answers ENOTCONN to the stat canonicalize makes: it is then
    // found by its path as given (made absolute).
    let want = match std::fs::canonicalize(mountpoint) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => std::path::absolute(mountpoint)
            .map_err(|e| StartupError::new(format!("'{}': {e}", mountpoint.display())))?,
        Err(e) => {
            return Err(StartupError::new(format!(
                "mountpoint '{}': {e}",
                mountpoint.display()
            )));
        }
    };
    if !mounts()?
        .iter()
        .any(|m| m.mountpoint == want && m.fstype == "fuse.layover")
    {
        return Err(StartupError::new(format!(
            "'{}' is not a layover mount (no fuse.layover mount there in /proc/self/mountinfo)",
            want.display()
        )));
    }
    // The newest daemon naming it: a stacked mount's daemon starts after the one below.
    let found = daemons().into_iter().rev().find(|(_, m, cwd)| {
        let p = absolute(Path::new(&m.mountpoint), cwd.as_deref());
        std::fs::canonicalize(&p).is_ok_and(|c| c == want) || p == want
    });
    found.ok_or_else(|| {
        let dead =
            std::fs::metadata(&want).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
        StartupError::new(if dead {
            format!(
                "the layover daemon of '{}' is gone (the mount answers ENOTCONN): unmount it \
                 (umount '{0}')",
                want.display()
            )
        } else {
            format!(
                "no layover daemon for '{}' found in /proc ({why})",
                want.display()
            )
        })
    })
}

/// The layer stack a live layover mount at `mountpoint` serves (see the module comment).
pub fn stack_of_mount(mountpoint: &Path) -> Result<Stack, StartupError> {
    let (pid, m, cwd) = daemon_of_mount(
        mountpoint,
        "its command line is needed for the layers; give them with -o instead",
    )?;
    let want = std::fs::canonicalize(mountpoint)
        .map_err(|e| StartupError::new(format!("mountpoint '{}': {e}", mountpoint.display())))?;
    let mut opts = crate::config::parse_options(&m.options)?.layers;
    let fix = |p: &str| -> String {
        absolute(Path::new(p), cwd.as_deref())
            .to_string_lossy()
            .into_owned()
    };
    opts.lowerdirs = opts.lowerdirs.iter().map(|l| fix(l)).collect();
    opts.upperdir = opts.upperdir.as_deref().map(fix);
    opts.workdir = opts.workdir.as_deref().map(fix);
    log::debug!("layers of {} from daemon {pid}", want.display());
    Stack::from_layer_options(&opts, &crate::privilege::Privilege::detect())
}

/// Live mounts that use `dir` as a layer or work directory: kernel overlays (their options
/// name it) and layover daemons (their command lines do). Descriptions, for messages.
pub fn users_of(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let s = dir.to_string_lossy();
    if let Ok(all) = mounts() {
        for m in all.iter().filter(|m| m.fstype == "overlay") {
            let names_it = m.super_opts.split([',', ':', '=']).any(|p| p == s);
            if names_it {
                out.push(format!("kernel overlay at {}", m.mountpoint.display()));
            }
        }
    }
    for (pid, m, cwd) in daemons() {
        let Ok(o) = crate::config::parse_options(&m.options) else {
            continue;
        };
        let l = o.layers;
        let uses = l
            .lowerdirs
            .iter()
            .chain(l.upperdir.iter())
            .chain(l.workdir.iter())
            .any(|p| {
                let p = absolute(Path::new(p), cwd.as_deref());
                std::fs::canonicalize(&p).is_ok_and(|c| c == dir)
            });
        if uses {
            out.push(format!(
                "layover daemon {pid} at {}",
                m.mountpoint.to_string_lossy()
            ));
        }
    }
    out
}
