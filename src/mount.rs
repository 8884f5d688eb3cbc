//! Starting the daemon, in named steps (`run`): decide who we run as (`privilege`), check
//! what the mount needs before creating anything (`preflight`), open the layers, detach into
//! the background, mount — mount(2) on /dev/fuse as root or as root in a user namespace,
//! fusermount3 as an ordinary user — and serve with a multi-threaded session, exiting as
//! soon as it is unmounted (umount, fusermount3 -u, or SIGTERM/SIGINT/SIGHUP); the stats
//! socket (`crate::stats::server`) answers `layover stats` meanwhile. A start that
//! fails leaves nothing mounted and nothing half-created in the work directory.

use crate::config::Config;
use crate::error::{Errno, StartupError};
use crate::fuse::{Dispatcher, Fs, KernelCacheLink};
use crate::overlay::Overlay;
use crate::privilege::{Mode, Privilege};
use crate::sys;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn threads(cfg: &Config) -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    cfg.threads.unwrap_or((cpus * 2).clamp(8, 32)).max(1)
}

fn cstr(s: &[u8], what: &str) -> Result<CString, StartupError> {
    CString::new(s).map_err(|_| StartupError::new(format!("{what} contains a NUL byte")))
}

/// mount(2) of a FUSE filesystem on the opened /dev/fuse. `Ok(false)`: not permitted.
fn kernel_mount(cfg: &Config, dev: &OwnedFd) -> Result<bool, StartupError> {
    match try_kernel_mount(cfg, dev, &cfg.kernel_data) {
        // SELinux context options fail with EINVAL on a kernel without SELinux: like mount(8)
        // users expect from fuse-overlayfs, they are then dropped with a warning.
        Err(e) if e.raw() == libc::EINVAL && !cfg.kernel_data.is_empty() => {
            eprintln!(
                "layover: warning: the kernel refused {} (no SELinux?); mounting without",
                cfg.kernel_data.join(",")
            );
            try_kernel_mount(cfg, dev, &[])
        }
        other => other,
    }
    .map_err(|e| {
        StartupError::new(format!(
            "cannot mount on '{}': {e}",
            cfg.mountpoint.display()
        ))
    })
}

fn try_kernel_mount(
    cfg: &Config,
    dev: &OwnedFd,
    extra: &[String],
) -> Result<bool, crate::error::Errno> {
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        sys::geteuid(),
        sys::getegid()
    );
    if cfg.allow_other || cfg.allow_root {
        data.push_str(",allow_other");
    }
    for k in extra {
        data.push(',');
        data.push_str(k);
    }
    let c = |b: &[u8]| std::ffi::CString::new(b).map_err(|_| crate::error::Errno::EINVAL);
    let source = c(cfg.source.as_bytes())?;
    let target = c(cfg.mountpoint.as_os_str().as_bytes())?;
    let data = c(data.as_bytes())?;
    match sys::mount(&source, &target, c"fuse.layover", cfg.mount_flags, &data) {
        Ok(()) => Ok(true),
        Err(e) if e.raw() == libc::EPERM => Ok(false),
        Err(e) => Err(e),
    }
}

fn session_config(cfg: &Config) -> fuser::Config {
    let mut c = fuser::Config::default();
    c.n_threads = Some(threads(cfg));
    c.clone_fd = true;
    c.acl = if cfg.allow_other {
        fuser::SessionACL::All
    } else if cfg.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    c
}

/// Mounts and completes the FUSE handshake: when this returns, the mount is live. Root (in
/// the initial namespace or in a user namespace) calls mount(2) on `dev`; an ordinary user
/// has fusermount3 do it (`dev` is then None). Also returns the io_uring side of the
/// filesystem, to start once the session is up.
fn start_session(
    cfg: &Config,
    fs: Fs,
    privilege: &Privilege,
    dev: Option<OwnedFd>,
) -> Result<(fuser::Session<Fs>, Dispatcher), StartupError> {
    let ring = fs.dispatcher();
    let scfg = session_config(cfg);
    if let Some(dev) = dev {
        if kernel_mount(cfg, &dev)? {
            let target = cstr(cfg.mountpoint.as_os_str().as_bytes(), "mountpoint")?;
            return fuser::Session::from_fd(fs, dev, scfg.acl, scfg)
                .map(|s| (s, ring))
                .map_err(|e| {
                    let _ = sys::umount(&target, true); // no half-mounted state is left behind
                    StartupError::new(format!("FUSE handshake failed: {e}"))
                });
        }
        if privilege.mode == Mode::UserNamespaceRoot {
            // fusermount3's set-uid bit means nothing in a user namespace without root.
            return Err(StartupError::new(format!(
                "cannot mount on '{}': mount(2) refused (EPERM): root in a user namespace may \
                 mount only in a mount namespace of its own: run layover under `unshare -Urm` \
                 (or as the ordinary user, through fusermount3)",
                cfg.mountpoint.display()
            )));
        }
        log::debug!("mount(2) refused (EPERM): mounting through fusermount3");
    }
    let mut scfg = scfg;
    scfg.mount_options = vec![
        fuser::MountOption::FSName(cfg.source.clone()),
        fuser::MountOption::Subtype("layover".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    if cfg.stack.read_only {
        scfg.mount_options.push(fuser::MountOption::RO);
    }
    fuser::Session::new(fs, &cfg.mountpoint, &scfg)
        .map(|s| (s, ring))
        .map_err(|e| {
            StartupError::new(format!(
                "cannot mount on '{}' through fusermount3: {}",
                cfg.mountpoint.display(),
                e.to_string().trim()
            ))
        })
}

/// Unmounts on SIGTERM/SIGINT/SIGHUP (lazily, so that open files stay usable until
/// closed); the session then ends by itself.
fn spawn_signal_thread(cfg: &Config) {
    let target = CString::new(cfg.mountpoint.as_os_str().as_bytes()).unwrap_or_default();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let sig = sys::wait_signal(&SIGNALS);
                log::info!("signal {sig}: unmounting");
                if let Err(e) = sys::umount(&target, true) {
                    log::error!("unmount failed ({e}); exiting");
                    sys::exit_now(1);
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("no signal thread ({e}): signals will end the daemon without unmounting");
    }
}

/// The kernel reads ahead 128 KiB at a time on a FUSE mount: for a file served through the
/// daemon (a lower file in a writable mount) that is one request per 128 KiB, and the first
/// read of a 512 MiB file ran at 0.6 GB/s. One request can carry `max_write` bytes (1 MiB),
/// so the mount's read-ahead window is raised to that (0.9 GB/s): the mount's own
/// backing-device setting in sysfs, which only root may change. It needs the mount's device
/// number, which a stat of the mount point gives once the workers answer, so a short-lived
/// thread does it.
fn spawn_readahead_tuner(cfg: &Config) {
    let mountpoint = cfg.mountpoint.clone();
    let kib = crate::fuse::max_write(cfg.max_write) / 1024;
    let spawned = std::thread::Builder::new()
        .name("readahead".into())
        .spawn(move || {
            use std::os::unix::fs::MetadataExt;
            let Ok(md) = std::fs::metadata(&mountpoint) else {
                return;
            };
            let (major, minor) = sys::dev_major_minor(md.dev());
            let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
            let now: u32 = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if now >= kib {
                return;
            }
            match std::fs::write(&path, format!("{kib}\n")) {
                Ok(()) => log::debug!("read-ahead window raised from {now} to {kib} KiB"),
                Err(e) => log::debug!("read-ahead window left at {now} KiB ({path}: {e})"),
            }
        });
    if let Err(e) = spawned {
        log::debug!("read-ahead window left as it is ({e})");
    }
}

/// Exits the moment the FUSE connection is gone (umount aborts it), without waiting for
/// the workers to wind down: whoever unmounts the layers' filesystem right after unmounting
/// us must not find them still held (where the layers are not private clones). It sleeps on
/// mount-table changes, not on /dev/fuse, whose pollers every request wakes.
///
/// After its window the watcher relies on the workers, which end when the connection is
/// aborted and let the main thread exit. The connection is not aborted while another mount
/// namespace holds a copy of the mount (one made by `unshare -m` or a container while we
/// were mounted): the daemon must go on serving that copy, and says so once.
/// `socket`: the stats socket, removed as the process ends.
fn spawn_exit_watcher(
    session: &fuser::Session<Fs>,
    ov: Arc<Overlay>,
    mountpoint: PathBuf,
    socket: Option<PathBuf>,
) {
    let fd = match session.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("no exit watcher ({e}): the daemon exits when its workers stop");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("exit".into())
        .spawn(move || {
            if !sys::make_thread_realtime() {
                log::debug!("exit watcher runs without real-time priority");
            }
            let Ok(mountinfo) = sys::open_path(c"/proc/self/mountinfo", libc::O_RDONLY) else {
                log::warn!(
                    "no exit watcher (/proc/self/mountinfo): the daemon exits when its workers stop"
                );
                return;
            };
            // The connection's device number, to tell our mount in the table (a stat of the
            // mount point, answered once the workers run).
            use std::os::unix::fs::MetadataExt;
            let conn = std::fs::metadata(&mountpoint)
                .ok()
                .map(|m| sys::dev_major_minor(m.dev()));
            let mut told = false;
            // An unmount changes the mount table; the connection is aborted as the umount
            // call returns, so look for that for a while after each change.
            loop {
                if sys::wait_mount_change(mountinfo.as_fd()).is_err() {
                    return;
                }
                // The abort follows the table change within the same umount call: look at
                // once, then a few times with growing pauses (1 ms up to 32 ms).
                let mut gone = sys::has_error(fd.as_fd());
                let mut pause = 1;
                while !gone && pause <= 32 {
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                    gone = sys::has_error(fd.as_fd());
                    pause *= 2;
                }
                if gone {
                    break;
                }
                if let Some((major, minor)) = conn.filter(|&(ma, mi)| !told && !mounted_here(ma, mi)) {
                    told = true;
                    log::warn!(
                        "{}: unmounted in this mount namespace but still mounted in another; serving until it is unmounted there (nsenter -t PID -m umount {0}, or echo 1 > /sys/fs/fuse/connections/{1}/abort)",
                        mountpoint.display(),
                        // The connection's directory is named by its device number, which
                        // for an anonymous (major 0) device is the minor.
                        if major == 0 { minor } else { major << 20 | minor }
                    );
                }
            }
            ov.cleanup_work();
            remove_stats(socket.as_deref());
            // Let go of every layer first, from this thread, then end the process.
            sys::close_fds_from(3);
            sys::exit_now(0);
        });
    if let Err(e) = spawned {
        log::warn!("no exit watcher ({e}): the daemon exits when its workers stop");
    }
}

/// Whether this mount namespace's table still has a mount of device major:minor. Unknown
/// (the table unreadable) counts as mounted: nothing is said then.
fn mounted_here(major: u32, minor: u32) -> bool {
    let dev = format!("{major}:{minor}");
    crate::mountinfo::read().map_or(true, |all| all.iter().any(|m| m.dev == dev))
}

/// What the mount needs from the system, checked before anything is created: /dev/fuse
/// (opened now when we mount it ourselves), fusermount3 for an ordinary user, and upper and
/// work directories we may write. Each failure names the missing piece and the fix.
fn preflight(cfg: &Config, privilege: &Privilege) -> Result<Option<OwnedFd>, StartupError> {
    let dev = match sys::open_fuse_device() {
        Ok(fd) => fd,
        Err(e) if e == Errno::ENOENT => {
            return Err(StartupError::new(
                "/dev/fuse is missing: load the fuse module (modprobe fuse) or, in a \
                 container, pass the device in (--device /dev/fuse)",
            ));
        }
        Err(e) if privilege.mode == Mode::Root => {
            return Err(StartupError::new(format!("cannot open /dev/fuse: {e}")));
        }
        Err(e) => {
            return Err(StartupError::new(format!(
                "cannot open /dev/fuse ({e}): {} needs read and write access to it \
                 (it is usually mode 0666: chmod 0666 /dev/fuse, or pass it into the \
                 container or namespace with --device /dev/fuse)",
                if privilege.mode == Mode::User {
                    "an ordinary user"
                } else {
                    "root in a user namespace"
                }
            )));
        }
    };
    if privilege.mode == Mode::User {
        check_fusermount3()?;
    }
    if !cfg.stack.read_only {
        for (what, dir) in [
            ("upperdir", &cfg.stack.upperdir),
            ("workdir", &cfg.stack.workdir),
        ] {
            if let Some(dir) = dir {
                check_writable(what, dir, privilege)?;
            }
        }
    }
    Ok(privilege.mounts_itself().then_some(dev))
}

fn check_fusermount3() -> Result<(), StartupError> {
    use std::os::unix::fs::MetadataExt;
    let Some(path) = crate::privilege::find_fusermount3() else {
        return Err(StartupError::new(
            "fusermount3 not found: an ordinary user mounts through this set-uid helper of \
             the fuse3 package; install it (apt-get install fuse3, dnf install fuse3)",
        ));
    };
    match std::fs::metadata(&path) {
        Ok(md) if md.uid() == 0 && md.mode() & 0o4000 != 0 => Ok(()),
        Ok(_) => Err(StartupError::new(format!(
            "{} is not set-uid root: an ordinary user cannot mount through it (reinstall \
             fuse3, or chown root {0} && chmod u+s {0})",
            path.display()
        ))),
        Err(e) => Err(StartupError::new(format!(
            "fusermount3 '{}': {e}: install the fuse3 package",
            path.display()
        ))),
    }
}

fn check_writable(what: &str, dir: &Path, privilege: &Privilege) -> Result<(), StartupError> {
    let c = cstr(dir.as_os_str().as_bytes(), what)?;
    sys::access(&c, libc::W_OK | libc::X_OK).map_err(|e| {
        StartupError::new(format!(
            "{what} '{}': not writable by uid {} ({e}): use a directory this user owns, \
             or give it to them (chown)",
            dir.display(),
            privilege.euid
        ))
    })
}

/// The work directory's `work` subdirectory does not exist yet: it is made by this start,
/// and must go again if the start fails.
fn work_subdir_is_new(cfg: &Config) -> bool {
    cfg.stack
        .workdir
        .as_ref()
        .is_some_and(|w| std::fs::symlink_metadata(w.join("work")).is_err())
}

/// A failed start leaves nothing behind: what the work directory holds for this mount goes,
/// and so does its `work` subdirectory when this start made it. (Both the daemon that failed
/// and the parent that hears of it call this; whichever comes second finds nothing left.)
fn undo_start(cfg: &Config, ov: &Overlay, made_work: bool) {
    ov.cleanup_work();
    remove_new_work_subdir(cfg, made_work);
}

fn remove_new_work_subdir(cfg: &Config, made_work: bool) {
    if made_work && let Some(w) = &cfg.stack.workdir {
        let work = w.join("work");
        if let Err(e) = std::fs::remove_dir_all(&work)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("could not remove '{}': {e}", work.display());
        }
    }
}

/// Forks unless in the foreground. The parent waits for the child's word that the mount is
/// live and exits 0, or returns the child's startup error; the child gets the pipe to
/// report on (None in the foreground).
fn daemonize(cfg: &Config) -> Result<Option<OwnedFd>, StartupError> {
    if cfg.foreground {
        return Ok(None);
    }
    let (rd, wr) = sys::pipe().map_err(|e| StartupError::new(format!("pipe: {e}")))?;
    match sys::fork().map_err(|e| StartupError::new(format!("fork: {e}")))? {
        sys::Fork::Parent => {
            drop(wr);
            let mut msg = Vec::new();
            let _ = sys::read_all(rd.as_fd(), &mut msg);
            if msg == b"ok" {
                sys::exit_now(0);
            }
            let text = String::from_utf8_lossy(&msg);
            Err(StartupError::new(if text.is_empty() {
                "the daemon exited during startup".into()
            } else {
                text
            }))
        }
        sys::Fork::Child => {
            drop(rd);
            sys::setsid();
            sys::chdir_root();
            Ok(Some(wr))
        }
    }
}

/// The one log line that says what was mounted and how.
fn announce(cfg: &Config, ov: &Overlay, privilege: &Privilege) {
    log::info!(
        "mounted {} ({} lower, {}), {} threads, {}, whiteouts as {}",
        cfg.mountpoint.display(),
        cfg.stack.lowerdirs.len(),
        if cfg.stack.read_only {
            "read-only"
        } else {
            "upper"
        },
        threads(cfg),
        privilege.describe(),
        if ov.caps.whiteout_dev {
            "0/0 devices"
        } else {
            ".wh. files"
        }
    );
}

/// Runs the mount to its end. Returns only on a startup failure. `privilege`: who the
/// daemon runs as, decided once (`Privilege::detect`) before `cfg` was built.
pub fn run(cfg: Config, privilege: &Privilege) -> Result<(), StartupError> {
    for u in &cfg.unknown {
        eprintln!("layover: warning: unknown option '{u}' ignored");
    }
    // Forked first, while nothing but stdio is open (it must hold no layer and no /dev/fuse);
    // only copy-up needs it.
    let opener = if cfg.stack.read_only {
        None
    } else {
        crate::opener::Opener::start(privilege)
    };
    let dev = preflight(&cfg, privilege)?;
    let nofile = sys::raise_nofile_limit();
    // New objects get exactly the mode the kernel asked for (it applied the caller's umask).
    sys::umask(0);
    sys::use_one_malloc_arena();
    let kernel_cache = KernelCacheLink::default();
    let made_work = work_subdir_is_new(&cfg);
    let ov = Overlay::new(cfg.stack.clone(), nofile, privilege, opener)
        .inspect_err(|_| remove_new_work_subdir(&cfg, made_work))?;
    let ov = Arc::new(ov.with_kernel_cache(Box::new(kernel_cache.clone())));
    // Every thread spawned from here on inherits the blocked signals; one thread takes them.
    sys::block_signals(&SIGNALS);
    let notify = daemonize(&cfg).inspect_err(|_| undo_start(&cfg, &ov, made_work))?;
    let fs = Fs::new(Arc::clone(&ov), &cfg, privilege);
    let reporter = fs.reporter(&cfg.mountpoint, nofile);
    let (session, ring) = match start_session(&cfg, fs, privilege, dev) {
        Ok(s) => s,
        Err(e) => {
            undo_start(&cfg, &ov, made_work);
            if let Some(wr) = notify {
                sys::write_all(wr.as_fd(), e.0.as_bytes());
                sys::exit_now(1);
            }
            return Err(e);
        }
    };
    // Forked while the daemon is still single-threaded (the notifier's thread comes next).
    let watcher = if cfg.auto_unmount {
        crate::autounmount::start(&cfg.mountpoint, privilege, !cfg.foreground)
    } else {
        None
    };
    kernel_cache.connect(session.notifier(), ring.node_ids());
    // After the fork above: the workers and the queues are threads. Until the queues are all
    // registered (and if they fail) requests come through /dev/fuse.
    let workers = match ring.start(session.as_fd(), threads(&cfg)) {
        Ok(w) => w,
        Err(e) => {
            let e = StartupError::new(format!("cannot start the /dev/fuse workers: {e}"));
            drop(session); // unmounts what fusermount3 mounted
            if let Ok(target) = cstr(cfg.mountpoint.as_os_str().as_bytes(), "mountpoint") {
                let _ = sys::umount(&target, true); // and what mount(2) did
            }
            undo_start(&cfg, &ov, made_work);
            if let Some(wr) = notify {
                sys::write_all(wr.as_fd(), e.0.as_bytes());
                sys::exit_now(1);
            }
            return Err(e);
        }
    };
    announce(&cfg, &ov, privilege);
    // Only root may change the mount's read-ahead window (sysfs); the tuner's stat of the
    // mountpoint would otherwise only make an unmount right after mounting find it busy.
    let tune_readahead = privilege.mode == Mode::Root;
    // Before the parent returns, so that `layover stats` works as soon as `layover` did.
    let socket = start_stats(reporter);
    if let Some(wr) = notify {
        sys::write_all(wr.as_fd(), b"ok");
        drop(wr);
        if !cfg.debug {
            sys::redirect_stdio_to_null();
        }
    }
    serve(&cfg, &session, workers, ov, tune_readahead, watcher, socket)
}

/// The stats socket (`stats::server`) in the runtime directory, or None (logged at info
/// level: the mount works without it, and `layover stats` says why when asked).
fn start_stats(reporter: crate::stats::server::Reporter) -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR");
    let Some(dir) = crate::stats::runtime_dir(sys::geteuid(), xdg.as_deref()) else {
        log::info!(
            "no runtime directory ($XDG_RUNTIME_DIR unset, no /run/user/UID): no stats socket"
        );
        return None;
    };
    match crate::stats::server::start(&dir, reporter) {
        Ok(path) => {
            log::debug!("figures served on '{}'", path.display());
            Some(path)
        }
        Err(e) => {
            log::info!("no stats socket: {e}");
            None
        }
    }
}

/// Removes the stats socket, if any, as the daemon exits.
fn remove_stats(socket: Option<&Path>) {
    if let Some(s) = socket {
        crate::stats::server::remove(s);
    }
}

/// Serves the live mount until it is unmounted, then exits the process. `session`: fuser's,
/// after INIT (it holds the mount, and the fd notifications go through); `workers`: the
/// /dev/fuse workers serving it. `_watcher`: the auto_unmount watcher's pipe, held (never
/// used) until the process ends.
fn serve(
    cfg: &Config,
    session: &fuser::Session<Fs>,
    workers: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
    ov: Arc<Overlay>,
    tune_readahead: bool,
    _watcher: Option<OwnedFd>,
    socket: Option<PathBuf>,
) -> ! {
    spawn_signal_thread(cfg);
    spawn_exit_watcher(
        session,
        Arc::clone(&ov),
        cfg.mountpoint.clone(),
        socket.clone(),
    );
    if tune_readahead {
        spawn_readahead_tuner(cfg);
    }
    let mut result = Ok(());
    for w in workers {
        let r = w
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("a /dev/fuse worker panicked")));
        if result.is_ok() {
            result = r;
        }
    }
    // Unmounted (the exit watcher did not get there first): leave the work directory empty
    // and let go of every layer at once. Exiting without running destructors means no time
    // is spent freeing the inode table while the layers are still held.
    ov.cleanup_work();
    remove_stats(socket.as_deref());
    match result {
        Ok(()) => sys::exit_now(0),
        Err(e) => {
            log::error!("session ended with an error: {e}");
            sys::exit_now(1)
        }
    }
}
