//! A live mount's figures (`layover stats`): what the daemon reports, the text it is sent
//! as, where its socket lives, and the client's side of asking.
//!
//! The channel needs no privilege beyond being the daemon's user: a Unix socket
//! `RUNTIME/layover/PID.sock`, where RUNTIME is the daemon's `$XDG_RUNTIME_DIR`, else
//! `/run` for root and `/run/user/UID` for an ordinary user (`runtime_dir`). The directory is
//! 0700 and the socket 0600, and the server also checks the peer's credentials (SO_PEERCRED:
//! the daemon's own uid or root). A client connects and reads; the daemon writes one report
//! and closes (`server`). The report is line-based text, `KEY VALUE` per line, one
//! `op NAME COUNT TOTAL_NS P50_NS P90_NS P99_NS MAX_NS` line per FUSE operation served,
//! between a `layover-stats 1` line and an `end` line (a report without `end` was cut
//! short).
//!
//! Owns: the report's types and wire text, the socket's path rule, the client.
//! Must not: know FUSE or the overlay's rules (the transport fills the report in).

pub mod server;

use crate::error::StartupError;
use crate::overlay::Figures;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How file data travels (`fuse::passthrough::DataPath::report`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataPathReport {
    /// Which transport serves requests: `FUSE over io_uring`, or `/dev/fuse (why not
    /// io_uring)`.
    pub transport: String,
    /// `passthrough`, `writeback cache`, `page cache`, or `page cache (passthrough refused
    /// by the kernel since INIT)`.
    pub mode: String,
    /// INIT's decision and why, in one sentence.
    pub why: String,
    /// Read-only opens of lower files may be passthrough too (not `strict_copy_up=1`).
    pub lower_shared: bool,
    /// Opens are tracked by mode (only while passthrough is granted): the next three
    /// figures mean something.
    pub tracked: bool,
    pub passthrough_opens: u64,
    pub cached_opens: u64,
    /// Backing files registered with the kernel (one per inode open in passthrough).
    pub backings: u64,
}

/// One FUSE operation's requests: how many, their total time in the daemon, and latency
/// percentiles (each the upper bound of a histogram bucket, so within 25% above the truth,
/// and never above the maximum). Nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpReport {
    pub name: String,
    pub count: u64,
    pub total_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// Everything a daemon reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub pid: u32,
    pub mountpoint: String,
    pub uptime_ms: u64,
    pub core: Figures,
    /// Fds the daemon's process holds (`/proc/self/fd`), and its open-file limit.
    pub fds: u64,
    pub fd_limit: u64,
    pub data: DataPathReport,
    /// Operations served at least once, in the transport's order.
    pub ops: Vec<OpReport>,
}

const MAGIC: &str = "layover-stats 1";

/// A value on one line: `\` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

impl Report {
    /// The wire text (module comment).
    pub fn to_text(&self) -> String {
        let c = &self.core;
        let d = &self.data;
        let mut lines = vec![
            MAGIC.to_string(),
            format!("pid {}", self.pid),
            format!("mountpoint {}", escape(&self.mountpoint)),
            format!("uptime_ms {}", self.uptime_ms),
            format!("inodes {}", c.inodes),
            format!("open_files {}", c.open_files),
            format!("open_dirs {}", c.open_dirs),
            format!("cached_dir_fds {}", c.cached_dir_fds),
            format!("fds {}", self.fds),
            format!("fd_limit {}", self.fd_limit),
            format!("copy_ups_files {}", c.copy_ups_files),
            format!("copy_ups_dirs {}", c.copy_ups_dirs),
            format!("copy_ups_other {}", c.copy_ups_other),
            format!("copy_up_bytes {}", c.copy_up_bytes),
            format!("transport {}", escape(&d.transport)),
            format!("data_path {}", escape(&d.mode)),
            format!("data_path_why {}", escape(&d.why)),
            format!("lower_shared {}", u8::from(d.lower_shared)),
            format!("opens_tracked {}", u8::from(d.tracked)),
            format!("passthrough_opens {}", d.passthrough_opens),
            format!("cached_opens {}", d.cached_opens),
            format!("backings {}", d.backings),
        ];
        for o in &self.ops {
            lines.push(format!(
                "op {} {} {} {} {} {} {}",
                o.name, o.count, o.total_ns, o.p50_ns, o.p90_ns, o.p99_ns, o.max_ns
            ));
        }
        lines.push("end".into());
        lines.join("\n") + "\n"
    }

    /// Reads the wire text. Unknown keys are skipped (a newer daemon may say more).
    pub fn parse(text: &str) -> Result<Report, String> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err("not a layover stats report".into());
        }
        let mut r = Report::default();
        let mut ended = false;
        for line in lines {
            if line == "end" {
                ended = true;
                break;
            }
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            if key == "op" {
                r.ops
                    .push(parse_op(value).ok_or_else(|| format!("bad line '{line}'"))?);
            } else {
                r.set(key, value)
                    .map_err(|_| format!("bad value in line '{line}'"))?;
            }
        }
        if !ended {
            return Err("the report was cut short".into());
        }
        Ok(r)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), std::num::ParseIntError> {
        let n = || value.parse::<u64>();
        let (c, d) = (&mut self.core, &mut self.data);
        match key {
            "pid" => self.pid = value.parse()?,
            "mountpoint" => self.mountpoint = unescape(value),
            "uptime_ms" => self.uptime_ms = n()?,
            "inodes" => c.inodes = n()?,
            "open_files" => c.open_files = n()?,
            "open_dirs" => c.open_dirs = n()?,
            "cached_dir_fds" => c.cached_dir_fds = n()?,
            "fds" => self.fds = n()?,
            "fd_limit" => self.fd_limit = n()?,
            "copy_ups_files" => c.copy_ups_files = n()?,
            "copy_ups_dirs" => c.copy_ups_dirs = n()?,
            "copy_ups_other" => c.copy_ups_other = n()?,
            "copy_up_bytes" => c.copy_up_bytes = n()?,
            "transport" => d.transport = unescape(value),
            "data_path" => d.mode = unescape(value),
            "data_path_why" => d.why = unescape(value),
            "lower_shared" => d.lower_shared = n()? != 0,
            "opens_tracked" => d.tracked = n()? != 0,
            "passthrough_opens" => d.passthrough_opens = n()?,
            "cached_opens" => d.cached_opens = n()?,
            "backings" => d.backings = n()?,
            _ => {}
        }
        Ok(())
    }
}

fn parse_op(value: &str) -> Option<OpReport> {
    let mut w = value.split(' ');
    let name = w.next()?.to_string();
    let mut n = || w.next()?.parse::<u64>().ok();
    Some(OpReport {
        name,
        count: n()?,
        total_ns: n()?,
        p50_ns: n()?,
        p90_ns: n()?,
        p99_ns: n()?,
        max_ns: n()?,
    })
}

/// The directory of the stats sockets of a daemon running as `euid` with `$XDG_RUNTIME_DIR`
/// `xdg` (module comment). None: nowhere suitable (an ordinary user without a runtime
/// directory).
pub fn runtime_dir(euid: u32, xdg: Option<&OsStr>) -> Option<PathBuf> {
    if let Some(x) = xdg.filter(|x| Path::new(x).is_absolute()) {
        return Some(Path::new(x).join("layover"));
    }
    if euid == 0 {
        return Some(PathBuf::from("/run/layover"));
    }
    let user = PathBuf::from(format!("/run/user/{euid}"));
    user.is_dir().then(|| user.join("layover"))
}

/// The socket of daemon `pid` in `dir`.
pub fn socket_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{pid}.sock"))
}

/// How long a client waits for the daemon's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the daemon listening on `socket` for its report. The errors say what to do.
pub fn query(socket: &Path) -> Result<Report, StartupError> {
    use std::os::unix::net::UnixStream;
    let shown = socket.display();
    let mut s = UnixStream::connect(socket).map_err(|e| {
        StartupError::new(match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => format!(
                "stats socket '{shown}' refuses connections: it is stale (its daemon is gone \
                 or does not serve figures)"
            ),
            Some(libc::ENOENT) => format!(
                "no stats socket '{shown}': the daemon does not serve figures (started \
                 without a runtime directory, or by an older layover)"
            ),
            Some(libc::EACCES) => format!(
                "stats socket '{shown}': permission denied: only the daemon's user and \
                 root may read its figures"
            ),
            _ => format!("stats socket '{shown}': {e}"),
        })
    })?;
    let _ = s.set_read_timeout(Some(CLIENT_TIMEOUT));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| StartupError::new(format!("reading stats socket '{shown}': {e}")))?;
    let text = String::from_utf8_lossy(&buf);
    if let Some(err) = text.strip_prefix("error ") {
        return Err(StartupError::new(format!(
            "the daemon refused: {}",
            err.trim_end()
        )));
    }
    Report::parse(&text).map_err(|e| StartupError::new(format!("stats socket '{shown}': {e}")))
}

/// Whether `name` in a socket directory is a daemon's socket, and of which pid.
fn socket_pid(name: &OsStr) -> Option<u32> {
    let n = name.as_bytes().strip_suffix(b".sock")?;
    std::str::from_utf8(n).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips() {
        let r = Report {
            pid: 42,
            mountpoint: "/m n\\t\nx".into(),
            uptime_ms: 7,
            core: Figures {
                inodes: 3,
                copy_up_bytes: 1 << 40,
                ..Figures::default()
            },
            fds: 9,
            fd_limit: 1024,
            data: DataPathReport {
                transport: "/dev/fuse (io_uring=0)".into(),
                mode: "passthrough".into(),
                why: "because".into(),
                tracked: true,
                passthrough_opens: 2,
                ..DataPathReport::default()
            },
            ops: vec![OpReport {
                name: "lookup".into(),
                count: 5,
                total_ns: 50,
                p50_ns: 8,
                p90_ns: 11,
                p99_ns: 12,
                max_ns: 12,
            }],
        };
        assert_eq!(Report::parse(&r.to_text()), Ok(r.clone()));
        let cut = r.to_text().replace("end\n", "");
        assert!(Report::parse(&cut).is_err());
        assert!(Report::parse("hello\nend\n").is_err());
    }

    #[test]
    fn runtime_dirs() {
        let x = OsStr::new("/tmp/xdg");
        assert_eq!(runtime_dir(1000, Some(x)), Some("/tmp/xdg/layover".into()));
        assert_eq!(runtime_dir(0, Some(x)), Some("/tmp/xdg/layover".into()));
        assert_eq!(runtime_dir(0, None), Some("/run/layover".into()));
        assert_eq!(
            runtime_dir(0, Some(OsStr::new("rel"))),
            Some("/run/layover".into())
        );
        assert_eq!(socket_pid(OsStr::new("12.sock")), Some(12));
        assert_eq!(socket_pid(OsStr::new("x.sock")), None);
        assert_eq!(socket_pid(OsStr::new("12")), None);
    }
}
