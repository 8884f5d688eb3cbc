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

/// One line of /proc/self/mountinfo that matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    /// The filesystem's own options (`super options`), e.g. overlay's `upperdir=`.
    pub super_opts: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 4 <= s.len()
            && s[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
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

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        if fields.len() < sep + 4 || fields.len() < 5 {
            continue;
        }
        out.push(MountEntry {
            mountpoint: PathBuf::from(OsString::from_vec(unescape_octal(fields[4]))),
            fstype: String::from_utf8_lossy(fields[sep + 1]).into_owned(),
            super_opts: String::from_utf8_lossy(&unescape_octal(fields[sep + 3])).into_owned(),
        });
    }
    out
}

pub fn mounts() -> Result<Vec<MountEntry>, StartupError> {
    let text = std::fs::read("/proc/self/mountinfo")
        .map_err(|e| StartupError::new(format!("cannot read /proc/self/mountinfo: {e}")))?;
    Ok(parse_mountinfo(&text))
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

/// The layer stack a live layover mount at `mountpoint` serves (see the module comment).
pub fn stack_of_mount(mountpoint: &Path) -> Result<Stack, StartupError> {
    let want = std::fs::canonicalize(mountpoint)
        .map_err(|e| StartupError::new(format!("mountpoint '{}': {e}", mountpoint.display())))?;
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
    let Some((pid, m, cwd)) = found else {
        return Err(StartupError::new(format!(
            "no layover daemon for '{}' found in /proc (its command line is needed for the \
             layers; give them with -o instead)",
            want.display()
        )));
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = b"36 35 98:0 /mnt1 /mnt\\040a rw,noatime master:1 - fuse.layover layover rw,user_id=0\n\
                     37 35 0:5 / /o rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, Path::new("/mnt a"));
        assert_eq!(m[0].fstype, "fuse.layover");
        assert_eq!(m[1].fstype, "overlay");
        assert!(m[1].super_opts.contains("upperdir=/u"));
        assert_eq!(unescape_octal(b"a\\134b\\01"), b"a\\b\\01");
    }
}
