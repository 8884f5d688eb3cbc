//! The daemon's side of the stats socket: one thread of its own that accepts a connection,
//! checks who is asking (SO_PEERCRED: the daemon's uid or root), writes one report and
//! closes. It never touches the request path: the report is built from counters the
//! workers bump and table sizes read on this thread.

use super::{Report, socket_path, socket_pid};
use crate::sys;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Builds a report when a client asks.
pub type Reporter = Box<dyn Fn() -> Report + Send>;

/// How long the server waits on a client that does not read its report.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Listens on `DIR/PID.sock` (made 0600; `dir` made 0700 if missing, and refused unless it
/// is a directory of this user that nobody else may write) and serves reports from a
/// thread of its own. Sockets in `dir` of daemons that are gone (no such process), and one
/// of this pid, are removed first. Returns the socket's path, for `remove` at exit.
pub fn start(dir: &Path, report: Reporter) -> Result<PathBuf, String> {
    let euid = sys::geteuid();
    prepare_dir(dir, euid)?;
    let me = std::process::id();
    sweep_stale(dir, me);
    let path = socket_path(dir, me);
    let listener =
        UnixListener::bind(&path).map_err(|e| format!("cannot bind '{}': {e}", path.display()))?;
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        remove(&path);
        return Err(format!("cannot make '{}' mode 0600: {e}", path.display()));
    }
    let spawned = std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || serve(listener, euid, report));
    if let Err(e) = spawned {
        remove(&path);
        return Err(format!("no stats thread: {e}"));
    }
    Ok(path)
}

/// Removes the socket (at the daemon's exit).
pub fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::debug!("could not remove '{}': {e}", path.display());
    }
}

fn prepare_dir(dir: &Path, euid: u32) -> Result<(), String> {
    let shown = dir.display();
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create '{shown}': {e}")),
    }
    let md = std::fs::symlink_metadata(dir).map_err(|e| format!("'{shown}': {e}"))?;
    if !md.is_dir() {
        return Err(format!("'{shown}' is not a directory"));
    }
    if md.uid() != euid || md.mode() & 0o022 != 0 {
        return Err(format!(
            "'{shown}' belongs to uid {} with mode {:o}: it must be this user's (uid {euid}) \
             and writable by nobody else",
            md.uid(),
            md.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Removes the sockets in `dir` whose daemon is gone, and any of pid `me` (a daemon that
/// had this pid before and did not exit cleanly).
fn sweep_stale(dir: &Path, me: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = socket_pid(&e.file_name()) else {
            continue;
        };
        if pid == me || !Path::new(&format!("/proc/{pid}")).exists() {
            log::debug!("removing stale stats socket '{}'", e.path().display());
            remove(&e.path());
        }
    }
}

fn serve(listener: UnixListener, euid: u32, report: Reporter) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => answer(s, euid, &report),
            Err(e) => {
                log::warn!("stats socket: {e}; no more figures served");
                return;
            }
        }
    }
}

fn answer(mut s: UnixStream, euid: u32, report: &Reporter) {
    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
    let text = match sys::peer_cred(s.as_fd()) {
        Ok((_, uid, _)) if uid == euid || uid == 0 => report().to_text(),
        Ok((pid, uid, _)) => {
            log::info!("stats socket: refused pid {pid} of uid {uid}");
            format!("error uid {uid} may not read the figures of a daemon of uid {euid}\n")
        }
        Err(e) => format!("error cannot tell who is asking ({e})\n"),
    };
    let _ = s.write_all(text.as_bytes());
}
