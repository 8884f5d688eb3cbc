//! `layover stats MOUNTPOINT`: a live mount's figures, asked of its daemon through the
//! stats socket (`crate::stats`). The daemon is found as the other tools find a live
//! mount's (`live::daemon_of_mount`); its pid, its effective uid and `$XDG_RUNTIME_DIR`
//! (from `/proc/PID/status` and `/proc/PID/environ`) name the socket.

use super::output::Json;
use super::{Outcome, write_error};
use crate::error::StartupError;
use crate::stats::{OpReport, Report};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

pub fn run(mountpoint: &Path, json: bool, out: &mut impl Write) -> Result<Outcome, StartupError> {
    let socket = socket_of_mount(mountpoint)?;
    let r = crate::stats::query(&socket)?;
    let text = if json {
        to_json(&r).render() + "\n"
    } else {
        human(&r)
    };
    out.write_all(text.as_bytes()).map_err(write_error)?;
    out.flush().map_err(write_error)?;
    Ok(Outcome::Clean)
}

/// The stats socket of the daemon serving `mountpoint`.
fn socket_of_mount(mountpoint: &Path) -> Result<PathBuf, StartupError> {
    let (pid, _, _) = super::live::daemon_of_mount(mountpoint, "its pid names its stats socket")?;
    let euid = effective_uid(&pid).ok_or_else(|| {
        StartupError::new(format!(
            "cannot read /proc/{pid}/status (the daemon just exited?)"
        ))
    })?;
    let xdg = match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => env_var(&env, b"XDG_RUNTIME_DIR"),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(StartupError::new(format!(
                "the daemon of '{}' (pid {pid}) runs as uid {euid}: only that user and root \
                 may read its figures",
                mountpoint.display()
            )));
        }
        Err(e) => {
            return Err(StartupError::new(format!("/proc/{pid}/environ: {e}")));
        }
    };
    let dir = crate::stats::runtime_dir(euid, xdg.as_deref()).ok_or_else(|| {
        StartupError::new(format!(
            "the daemon of '{}' (pid {pid}, uid {euid}) has no runtime directory \
             ($XDG_RUNTIME_DIR unset, no /run/user/{euid}): it serves no figures",
            mountpoint.display()
        ))
    })?;
    let pid: u32 = pid
        .parse()
        .map_err(|_| StartupError::new(format!("bad pid '{pid}'")))?;
    Ok(crate::stats::socket_path(&dir, pid))
}

/// The effective uid in `/proc/PID/status`.
fn effective_uid(pid: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A variable of a `/proc/PID/environ` (NUL-separated `NAME=VALUE`).
fn env_var(environ: &[u8], name: &[u8]) -> Option<OsString> {
    environ.split(|b| *b == 0).find_map(|kv| {
        let v = kv.strip_prefix(name)?.strip_prefix(b"=")?;
        Some(OsString::from_vec(v.to_vec()))
    })
}

/// A count with thousands separators.
fn count(n: u64) -> String {
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

/// A duration in nanoseconds, in the unit that suits it.
fn duration(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1} ms", f / 1e6)
    } else {
        format!("{:.2} s", f / 1e9)
    }
}

fn bytes(n: u64) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = "";
    for u in units {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit.is_empty() {
        format!("{n} bytes")
    } else {
        format!("{} bytes ({v:.1} {unit})", count(n))
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", count(n), if n == 1 { one } else { many })
}

/// The report for people.
fn human(r: &Report) -> String {
    let (c, d) = (&r.core, &r.data);
    let mut s = format!(
        "layover mount {} (daemon {}, up {})\n",
        crate::inspect::output::show(r.mountpoint.as_bytes()),
        r.pid,
        duration(r.uptime_ms * 1_000_000)
    );
    let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<18} {v}\n"));
    row("inodes", count(c.inodes));
    let modes = if d.tracked {
        format!(
            " ({} passthrough, {} through the daemon; {})",
            count(d.passthrough_opens),
            count(d.cached_opens),
            plural(d.backings, "backing file", "backing files")
        )
    } else {
        String::new()
    };
    row("open files", format!("{}{modes}", count(c.open_files)));
    row("open directories", count(c.open_dirs));
    row(
        "fds held",
        format!(
            "{} (limit {}; {})",
            count(r.fds),
            count(r.fd_limit),
            plural(
                c.cached_dir_fds,
                "cached directory fd",
                "cached directory fds"
            )
        ),
    );
    row(
        "copy-ups",
        format!(
            "{}, {}, {}",
            plural(c.copy_ups_files, "file", "files"),
            plural(c.copy_ups_dirs, "directory", "directories"),
            plural(c.copy_ups_other, "other", "others")
        ),
    );
    row("copied up", bytes(c.copy_up_bytes));
    let shared = if d.lower_shared {
        " (lower files shared)"
    } else {
        ""
    };
    row("data path", format!("{}{shared}", d.mode));
    for line in wrap(&d.why, 70) {
        row("", line);
    }
    s.push_str(&ops_table(&r.ops));
    s
}

/// `text` in lines of at most `width` characters, broken between words (a longer word
/// stands alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

fn ops_table(ops: &[OpReport]) -> String {
    let mut s = format!(
        "  {:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "requests", "count", "total", "p50", "p90", "p99", "max"
    );
    for o in ops {
        s.push_str(&format!(
            "  {:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            o.name,
            count(o.count),
            duration(o.total_ns),
            duration(o.p50_ns),
            duration(o.p90_ns),
            duration(o.p99_ns),
            duration(o.max_ns)
        ));
    }
    let total: u64 = ops.iter().map(|o| o.count).sum();
    s.push_str(&format!("  {:<16} {:>10}\n", "all", count(total)));
    s
}

fn to_json(r: &Report) -> Json {
    let (c, d) = (&r.core, &r.data);
    let n = Json::Num;
    let ops = r
        .ops
        .iter()
        .map(|o| {
            Json::Obj(vec![
                ("op", Json::str(&o.name)),
                ("count", n(o.count)),
                ("total_ns", n(o.total_ns)),
                ("p50_ns", n(o.p50_ns)),
                ("p90_ns", n(o.p90_ns)),
                ("p99_ns", n(o.p99_ns)),
                ("max_ns", n(o.max_ns)),
            ])
        })
        .collect();
    let opens = if d.tracked {
        Json::Obj(vec![
            ("passthrough", n(d.passthrough_opens)),
            ("cached", n(d.cached_opens)),
            ("backing_files", n(d.backings)),
        ])
    } else {
        Json::Null
    };
    Json::Obj(vec![
        ("mountpoint", Json::str(&r.mountpoint)),
        ("pid", n(u64::from(r.pid))),
        ("uptime_ms", n(r.uptime_ms)),
        ("inodes", n(c.inodes)),
        ("open_files", n(c.open_files)),
        ("open_dirs", n(c.open_dirs)),
        ("fds", n(r.fds)),
        ("fd_limit", n(r.fd_limit)),
        ("cached_dir_fds", n(c.cached_dir_fds)),
        (
            "copy_ups",
            Json::Obj(vec![
                ("files", n(c.copy_ups_files)),
                ("dirs", n(c.copy_ups_dirs)),
                ("other", n(c.copy_ups_other)),
            ]),
        ),
        ("copy_up_bytes", n(c.copy_up_bytes)),
        (
            "data_path",
            Json::Obj(vec![
                ("mode", Json::str(&d.mode)),
                ("why", Json::str(&d.why)),
                ("lower_shared", Json::Bool(d.lower_shared)),
                ("opens", opens),
            ]),
        ),
        ("requests", Json::Arr(ops)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(duration(850), "850 ns");
        assert_eq!(duration(8_250), "8.2 µs");
        assert_eq!(bytes(1 << 20), "1,048,576 bytes (1.0 MiB)");
        assert_eq!(bytes(10), "10 bytes");
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("a verylongword b", 4), ["a", "verylongword", "b"]);
        assert!(wrap("", 5).is_empty());
        let env = b"A=1\0XDG_RUNTIME_DIR=/run/user/7\0B=2\0";
        assert_eq!(
            env_var(env, b"XDG_RUNTIME_DIR"),
            Some(OsString::from("/run/user/7"))
        );
        assert_eq!(env_var(env, b"XDG"), None);
    }
}
