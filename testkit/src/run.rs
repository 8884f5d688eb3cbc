//! Running helper commands, and small conversions for messages (errno names, byte paths).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The result of a finished command, with its output as (lossy) text.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

/// Runs a command to completion with a deadline. Output goes through files, not pipes: a
/// daemon that inherits stdout/stderr must not keep us waiting for EOF.
pub fn run_with_timeout(cmd: &mut Command, scratch: &Path, timeout: Duration) -> Run {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let out_path = scratch.join(format!(".cmd-{n}.out"));
    let err_path = scratch.join(format!(".cmd-{n}.err"));
    let out = fs::File::create(&out_path).expect("create stdout file");
    let err = fs::File::create(&err_path).expect("create stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {timeout:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&fs::read(&out_path).unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default()).into_owned();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    Run {
        status,
        stdout,
        stderr,
    }
}

/// Runs a short helper command (no daemon involved) and returns its output.
pub fn cmd(program: &str, args: &[&OsStr]) -> Run {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a helper command and fails the test if it fails.
pub fn cmd_ok(program: &str, args: &[&OsStr]) -> Run {
    let r = cmd(program, args);
    assert!(
        r.ok(),
        "{program} {:?} failed ({}): {}{}",
        args,
        r.status,
        r.stdout,
        r.stderr
    );
    r
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A path built from raw bytes (names need not be UTF-8).
pub fn bpath(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

/// The errno of a failed call, None on success.
pub fn errno<T>(r: io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

pub fn errno_name(e: Option<i32>) -> String {
    match e {
        None => "success".into(),
        Some(n) => format!("{} ({})", io::Error::from_raw_os_error(n), n),
    }
}

/// Escapes a byte path for messages.
pub fn show(b: &[u8]) -> String {
    if b.is_empty() {
        return "<root>".into();
    }
    format!("\"{}\"", b.escape_ascii())
}

/// Waits until `cond` holds or the deadline passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
