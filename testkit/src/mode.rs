//! The three ways the side-by-side suites run ([`Mode`], from `$LAYOVER_TEST_MODE`):
//!
//! - [`Mode::Root`]: real root; the kernel's overlayfs mounted by root is the reference.
//! - [`Mode::User`]: layover mounted by the ordinary user [`test_user`] through fusermount3,
//!   beside the kernel's overlayfs mounted by the same user in a user namespace of its own
//!   (`unshare -Urm`, `userxattr`). The test process is root (it builds the fixtures, copies
//!   them, gives the copies' root-owned objects to the user, makes the mounts); once a pair is
//!   mounted, the test's thread takes the user's credentials ([`enter_user`]), so the case's
//!   operations, and the commands and threads it starts, run as the user. The testkit turns
//!   back to root only for its own bookkeeping ([`as_root`]). The kernel's mount lives in the
//!   mount namespace of a holder process and is reached through `/proc/PID/root`.
//! - [`Mode::UserNs`]: the whole test binary runs as root of a user namespace made by the
//!   test user, its subordinate ids mapped too (`testkit/scripts/run-mode.sh`, podman's
//!   rootless layout): fixtures, both mounts (`userxattr` for the kernel's) and operations in
//!   that namespace; layover opens /dev/fuse itself.
//!
//! In both unprivileged modes the overlay's own markers are `user.overlay.*`:
//! [`Layer`](crate::layer::Layer) writes the kernel's `trusted.overlay.*` fixture markers
//! there, and both mounts get `userxattr`. What one mode cannot do at all (a device node or a
//! `trusted.*` xattr in a user namespace) a test states per mode; nothing is skipped.

use std::cell::Cell;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// How the side-by-side suites run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Root,
    User,
    UserNs,
}

impl Mode {
    /// Whether the mounts are unprivileged ones (markers in `user.overlay.*`).
    pub fn rootless(self) -> bool {
        self != Mode::Root
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Root => "root",
            Mode::User => "user",
            Mode::UserNs => "userns",
        }
    }
}

/// The mode of this run, from `$LAYOVER_TEST_MODE` (root, user or userns; unset: root).
/// Anything else fails the test.
pub fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let m = match std::env::var("LAYOVER_TEST_MODE").as_deref() {
            Err(_) | Ok("") | Ok("root") => Mode::Root,
            Ok("user") => Mode::User,
            Ok("userns") => Mode::UserNs,
            Ok(other) => panic!("LAYOVER_TEST_MODE={other}: want root, user or userns"),
        };
        if m != Mode::Root {
            eprintln!(
                "side-by-side mode: {} (layover {}; the reference: the kernel's overlayfs \
                 mounted in a user namespace, userxattr)",
                m.name(),
                if m == Mode::User {
                    "as an ordinary user through fusermount3"
                } else {
                    "as root of a user namespace"
                }
            );
        }
        m
    })
}

/// The ordinary user of [`Mode::User`] (`$LAYOVER_TEST_USER`, default podtest) and its
/// uid and gid.
pub fn test_user() -> (String, u32, u32) {
    static USER: OnceLock<(String, u32, u32)> = OnceLock::new();
    USER.get_or_init(|| {
        let name = std::env::var("LAYOVER_TEST_USER").unwrap_or_else(|_| "podtest".into());
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, &name])
                .output()
                .unwrap_or_else(|e| panic!("id {flag} {name}: {e}"));
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| {
                    panic!(
                        "PREREQUISITE MISSING: the test user {name} does not exist \
                         (scripts/test.sh makes it)"
                    )
                })
        };
        let (uid, gid) = (id("-u"), id("-g"));
        (name, uid, gid)
    })
    .clone()
}

/// The prefix of the overlay's own xattrs on the mounts of this mode.
pub fn marker_prefix() -> &'static str {
    if mode().rootless() {
        "user.overlay."
    } else {
        "trusted.overlay."
    }
}

thread_local! {
    /// Whether this thread has the test user's credentials now ([`enter_user`]).
    static AS_USER: Cell<bool> = const { Cell::new(false) };
}

/// In [`Mode::User`]: gives this thread the test user's credentials: real, effective and
/// saved uid and gid, its group as the only supplementary one (FUSE serves a mount made
/// through fusermount3 only to a caller whose uids and gids all are the mounter's). The
/// kernel's setresuid/setresgid/setgroups change one thread's credentials; threads and
/// processes the thread starts inherit them. The thread keeps root's capabilities in its
/// permitted set only (`PR_SET_KEEPCAPS`; none is effective, and an exec drops them), so that
/// [`as_root`] and [`leave_user`] can return. Other modes: nothing.
pub fn enter_user() {
    if mode() != Mode::User || AS_USER.get() {
        return;
    }
    let (_, uid, gid) = test_user();
    let (u, g) = (
        rustix::process::Uid::from_raw(uid),
        rustix::process::Gid::from_raw(gid),
    );
    rustix::thread::set_keep_capabilities(true)
        .unwrap_or_else(|e| panic!("prctl(PR_SET_KEEPCAPS): {e}"));
    rustix::thread::set_thread_groups(&[g]).unwrap_or_else(|e| panic!("setgroups: {e}"));
    rustix::thread::set_thread_res_gid(g, g, g).unwrap_or_else(|e| panic!("setresgid({gid}): {e}"));
    rustix::thread::set_thread_res_uid(u, u, u).unwrap_or_else(|e| panic!("setresuid({uid}): {e}"));
    AS_USER.set(true);
}

/// Gives this thread root's credentials back (after [`enter_user`]): its permitted
/// capabilities made effective again, then root's ids.
pub fn leave_user() {
    if !AS_USER.get() {
        return;
    }
    let mut caps = rustix::thread::capabilities(None).unwrap_or_else(|e| panic!("capget: {e}"));
    caps.effective = caps.permitted;
    rustix::thread::set_capabilities(None, caps).unwrap_or_else(|e| panic!("capset: {e}"));
    let (r, g) = (rustix::process::Uid::ROOT, rustix::process::Gid::ROOT);
    rustix::thread::set_thread_res_uid(r, r, r).unwrap_or_else(|e| panic!("setresuid(0): {e}"));
    rustix::thread::set_thread_res_gid(g, g, g).unwrap_or_else(|e| panic!("setresgid(0): {e}"));
    rustix::thread::set_thread_groups(&[g]).unwrap_or_else(|e| panic!("setgroups: {e}"));
    rustix::thread::set_keep_capabilities(false)
        .unwrap_or_else(|e| panic!("prctl(PR_SET_KEEPCAPS): {e}"));
    AS_USER.set(false);
}

/// [`leave_user`] on a thread that inherited the test user's credentials from the thread
/// that started it (its own record says root).
pub fn leave_user_inherited() {
    AS_USER.set(true);
    leave_user();
}

/// Whether this thread has the test user's credentials now.
pub fn is_user() -> bool {
    AS_USER.get()
}

/// Runs `f` with root's credentials on this thread, then returns to the user's if the thread
/// had them. For the testkit's own work (fixtures, mounting, reading the layers on disk).
pub fn as_root<R>(f: impl FnOnce() -> R) -> R {
    let was = AS_USER.get();
    leave_user();
    let r = f();
    if was {
        enter_user();
    }
    r
}

/// Makes the kernel forget unused dentries and inodes (`echo 2 > /proc/sys/vm/drop_caches`),
/// as real root: directly, or in [`Mode::UserNs`] through the runner's root helper
/// (`$LAYOVER_TEST_DROP_CACHES`: a directory with the fifos `req` and `ack`).
pub fn drop_caches() {
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    if mode() != Mode::UserNs {
        as_root(|| std::fs::write("/proc/sys/vm/drop_caches", "2"))
            .unwrap_or_else(|e| panic!("drop_caches: {e}"));
        return;
    }
    let dir = std::env::var("LAYOVER_TEST_DROP_CACHES").unwrap_or_else(|_| {
        panic!(
            "PREREQUISITE MISSING: in mode userns, dropping the kernel's caches needs the \
             runner's root helper ($LAYOVER_TEST_DROP_CACHES, set by testkit/scripts/run-mode.sh)"
        )
    });
    let dir = std::path::Path::new(&dir);
    std::fs::write(dir.join("req"), "2\n").unwrap_or_else(|e| panic!("drop_caches req: {e}"));
    let ack =
        std::fs::read_to_string(dir.join("ack")).unwrap_or_else(|e| panic!("drop_caches ack: {e}"));
    assert_eq!(ack.trim(), "done", "drop_caches helper answered {ack:?}");
}

/// The value for this run's mode: what a case expects as root, as an ordinary user, and as
/// root of a user namespace (an errno, a count...), so that every difference between the
/// modes is written down beside the case.
pub fn per_mode<T>(root: T, user: T, userns: T) -> T {
    match mode() {
        Mode::Root => root,
        Mode::User => user,
        Mode::UserNs => userns,
    }
}
