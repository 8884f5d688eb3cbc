//! Validated, typed settings: what the `-o` options mean, checked against the filesystem
//! before anything is mounted. Pure data once built; nothing here runs on the request path.

use crate::cli::MountArgs;
use crate::error::StartupError;
use crate::idmap::IdMap;
use crate::privilege::Privilege;
use crate::whiteout::Format;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod options;
pub use options::*;

/// Which xattr namespace holds the overlay's own markers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrNs {
    /// `trusted.overlay.*` (the kernel's default; needs CAP_SYS_ADMIN).
    Trusted,
    /// `user.overlay.*` (the kernel's `userxattr`; unprivileged mounts).
    User,
}

/// The layer stack and how the overlay core treats it: all an offline tool needs, and what
/// the core is built from. Validated against the filesystem; no mountpoint involved.
#[derive(Clone, Debug)]
pub struct Stack {
    /// Lower layers, top first.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    /// Syncs happen: a staged copy-up is fsynced before its rename into the upper, and
    /// fsync/fsyncdir reach the upper (all off with fsync=0 or volatile, as the kernel's
    /// volatile option does).
    pub durable: bool,
    pub xattr_ns: XattrNs,
    pub read_only: bool,
    /// `whiteout=chardev|file`: the whiteout format forced (None: decided at mount).
    pub whiteout: Option<Format>,
    /// How ids cross between requests and the layers (`uidmapping=`, `squash_to_root`, ...;
    /// the identity without them).
    pub ids: IdMap,
    /// `static_nlink`: every directory shows nlink 1.
    pub static_nlink: bool,
    /// `ino32_t`: every inode number shown fits in 32 bits.
    pub ino32: bool,
}

/// Everything the daemon needs, validated: the layer stack, and how it is mounted and served.
#[derive(Clone, Debug)]
pub struct Config {
    pub stack: Stack,
    pub mountpoint: PathBuf,
    pub source: String,
    pub foreground: bool,
    pub debug: bool,
    /// Entry and attribute cache time.
    pub timeout: Duration,
    pub allow_other: bool,
    pub allow_root: bool,
    /// mount(2) flags (MS_NOSUID, MS_NODEV, ...).
    pub mount_flags: u64,
    /// Extra kernel mount data (context=..., max_read=...).
    pub kernel_data: Vec<String>,
    pub max_write: Option<u32>,
    pub threads: Option<usize>,
    /// Ask the kernel for FUSE passthrough (`passthrough=off` serves file data through the
    /// daemon and its writeback cache, as happens without root or on kernels before 6.9).
    pub passthrough: bool,
    /// Serve requests over FUSE over io_uring when the kernel offers it (`io_uring=1`, the
    /// default; it needs the fuse module's `enable_uring` parameter), else over /dev/fuse.
    pub io_uring: bool,
    /// `strict_copy_up=1` (off by default): lower files opened read-only are read through
    /// the daemon, so that a descriptor opened before a copy-up reads the copy afterwards
    /// (Linux >= 4.19), at the cost of a page-cache copy per mount. Off: they are FUSE
    /// passthrough from the lower file, whose page cache every mount shares, and such a
    /// descriptor keeps reading the lower copy after a copy-up (Linux < 4.19); the copy is
    /// opened through a new kernel inode (docs/design.md, "Node ids").
    pub strict_copy_up: bool,
    /// Unmount the mount if the daemon dies (`auto_unmount`, the default; `noauto_unmount`
    /// leaves a dead mount in place, as libfuse does without `auto_unmount`).
    pub auto_unmount: bool,
    /// Ask the kernel for POSIX ACL support at INIT (`noacl`: not).
    pub acl: bool,
    /// Options we did not recognise (each gets a one-line warning).
    pub unknown: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Checks against the filesystem
// ---------------------------------------------------------------------------------------------

fn err_path(what: &str, p: &Path, msg: impl std::fmt::Display) -> StartupError {
    StartupError::new(format!(
        "{what} '{}': {msg}",
        one_line(&p.to_string_lossy())
    ))
}

/// The path must exist and be a directory; returns its canonical form and device.
fn check_dir(what: &str, p: &Path) -> Result<(PathBuf, u64), StartupError> {
    let md = std::fs::metadata(p).map_err(|e| match e.raw_os_error() {
        // A FUSE mount whose daemon is gone (left by a crash, or mounted noauto_unmount).
        Some(libc::ENOTCONN) => err_path(
            what,
            p,
            format!(
                "a FUSE mount whose daemon is gone is still there: unmount it first \
                 (umount -l {0}, or fusermount3 -uz {0} as its user)",
                p.display()
            ),
        ),
        _ => err_path(what, p, e),
    })?;
    if !md.is_dir() {
        return Err(err_path(what, p, "not a directory"));
    }
    let canon = p.canonicalize().map_err(|e| err_path(what, p, e))?;
    Ok((canon, md.dev()))
}

fn inside(child: &Path, parent: &Path) -> bool {
    child != parent && child.starts_with(parent)
}

/// `child` may be neither `parent` nor below it.
fn apart(what: &str, child: &Path, parent_what: &str, parent: &Path) -> Result<(), StartupError> {
    if child == parent || inside(child, parent) {
        return Err(err_path(
            what,
            child,
            format!("is inside {parent_what} '{}'", parent.display()),
        ));
    }
    Ok(())
}

/// Upper and work: one filesystem, two directories, neither inside the other.
fn check_upper_work(u: &(PathBuf, u64), w: &(PathBuf, u64)) -> Result<(), StartupError> {
    let ((u, udev), (w, wdev)) = (u, w);
    if udev != wdev {
        return Err(err_path(
            "workdir",
            w,
            "not on the same filesystem as upperdir",
        ));
    }
    if u == w {
        return Err(err_path("workdir", w, "is the same directory as upperdir"));
    }
    if inside(w, u) {
        return Err(err_path("workdir", w, "is inside upperdir"));
    }
    if inside(u, w) {
        return Err(err_path("upperdir", u, "is inside workdir"));
    }
    Ok(())
}

impl Stack {
    /// Builds a layer stack from `-o` options alone (`lowerdir=...[,upperdir=...]`), as an
    /// offline tool does: the layer keys are read (others are ignored here), and the
    /// directories are checked against the filesystem; no mountpoint is involved.
    /// `privilege`: who the process runs as (decides the default xattr namespace).
    pub fn from_options(args: &[String], privilege: &Privilege) -> Result<Stack, StartupError> {
        Stack::from_layer_options(&parse_options(args)?.layers, privilege)
    }

    /// An upperdir without a workdir is accepted here and makes a read-only stack (a tool
    /// only reads); a mount refuses it (`Config::from_args`). A workdir without an upperdir is
    /// always refused. Markers live in `user.overlay.*` with `userxattr` or when `privilege`
    /// may not use `trusted.*` xattrs.
    pub fn from_layer_options(
        o: &LayerOptions,
        privilege: &Privilege,
    ) -> Result<Stack, StartupError> {
        if o.lowerdirs.is_empty() {
            return Err(StartupError::new(
                "no lowerdir given (-o lowerdir=DIR[:DIR...])",
            ));
        }
        if o.upperdir.is_none() && o.workdir.is_some() {
            return Err(StartupError::new("workdir given without upperdir"));
        }
        let mut lowers = Vec::new();
        for l in &o.lowerdirs {
            lowers.push(check_dir("lowerdir", Path::new(l))?.0);
        }
        let upper = o.upperdir.as_deref();
        let upper = upper
            .map(|u| check_dir("upperdir", Path::new(u)))
            .transpose()?;
        let work = o.workdir.as_deref();
        let work = work
            .map(|w| check_dir("workdir", Path::new(w)))
            .transpose()?;
        if let (Some(u), Some(w)) = (&upper, &work) {
            check_upper_work(u, w)?;
        }
        for l in &lowers {
            if let Some((u, _)) = &upper {
                apart("upperdir", u, "lowerdir", l)?;
                if inside(l, u) {
                    return Err(err_path(
                        "lowerdir",
                        l,
                        format!("is inside upperdir '{}'", u.display()),
                    ));
                }
            }
            if let Some((w, _)) = &work {
                apart("workdir", w, "lowerdir", l)?;
            }
        }
        let writable = upper.is_some() && work.is_some() && !o.ro;
        Ok(Stack {
            lowerdirs: lowers,
            upperdir: upper.map(|u| u.0),
            workdir: work.map(|w| w.0),
            durable: !o.volatile && o.fsync != Some(false),
            xattr_ns: if o.userxattr || !privilege.may_use_trusted_xattrs() {
                XattrNs::User
            } else {
                XattrNs::Trusted
            },
            read_only: !writable,
            whiteout: o.whiteout,
            ids: o.id_map(),
            static_nlink: o.static_nlink,
            ino32: o.ino32,
        })
    }

    /// The mountpoint may not be inside a layer, nor be the workdir (it may be the upperdir
    /// or a lower, as with the kernel's overlay: the mount then hides it).
    fn check_mountpoint(&self, mnt: &Path) -> Result<(), StartupError> {
        let what = "mountpoint";
        for l in &self.lowerdirs {
            if inside(mnt, l) {
                return Err(err_path(
                    what,
                    mnt,
                    format!("is inside lowerdir '{}'", l.display()),
                ));
            }
        }
        if let Some(u) = &self.upperdir
            && inside(mnt, u)
        {
            return Err(err_path(what, mnt, "is inside upperdir"));
        }
        if let Some(w) = &self.workdir
            && (w == mnt || inside(mnt, w))
        {
            return Err(err_path(what, mnt, "is inside workdir"));
        }
        Ok(())
    }
}

impl Config {
    /// Builds the configuration from the command line and checks it against the filesystem:
    /// the stack (as `Stack::from_layer_options`), then what only a mount needs: a workdir
    /// beside the upperdir, and a mountpoint that is a directory outside the layers.
    /// `privilege`: the one decision of who the daemon runs as (`Privilege::detect`).
    pub fn from_args(m: &MountArgs, privilege: &Privilege) -> Result<Config, StartupError> {
        let o = parse_options(&m.options)?;
        // A mount writes, so an upper needs its workdir (an offline stack does not).
        if o.layers.upperdir.is_some() && o.layers.workdir.is_none() {
            return Err(StartupError::new("upperdir given without workdir"));
        }
        let stack = Stack::from_layer_options(&o.layers, privilege)?;
        let (mountpoint, _) = check_dir("mountpoint", Path::new(&m.mountpoint))?;
        stack.check_mountpoint(&mountpoint)?;
        let source = m
            .source
            .as_ref()
            .map(|s: &OsString| s.to_string_lossy().into_owned());
        Ok(Config {
            mount_flags: mount_flags(&o.mount, stack.read_only),
            stack,
            mountpoint,
            source: source.unwrap_or_else(|| "layover".to_string()),
            foreground: m.foreground,
            debug: m.debug,
            timeout: Duration::from_secs_f64(o.daemon.timeout.unwrap_or(86400.0)),
            // As root (also in a user namespace: mount(2) is ours) the merged view is open to
            // every user, as the kernel's overlay is.
            allow_other: o.mount.allow_other || privilege.mounts_itself(),
            allow_root: o.mount.allow_root,
            kernel_data: o.mount.kernel_data,
            max_write: o.daemon.max_write,
            threads: o.daemon.threads,
            passthrough: o.daemon.passthrough != Some(false),
            io_uring: o.daemon.io_uring != Some(false),
            strict_copy_up: o.daemon.strict_copy_up == Some(true),
            auto_unmount: o.daemon.auto_unmount != Some(false),
            acl: !o.layers.noacl,
            unknown: o.unknown,
        })
    }
}

/// The mount(2) flags: those asked for less those asked against, nosuid and nodev unless
/// asked otherwise, read-only when the stack is.
fn mount_flags(m: &MountOptions, read_only: bool) -> u64 {
    let mut flags = m.flags_set & !m.flags_clear;
    if !m.suid {
        flags |= libc::MS_NOSUID;
    }
    if !m.dev {
        flags |= libc::MS_NODEV;
    }
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(a: &[&str]) -> Options {
        parse_options(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn escapes() {
        let o = opts(&["lowerdir=/a\\:b:/c\\,d,upperdir=/u", "workdir=/w"]);
        assert_eq!(o.layers.lowerdirs, vec!["/a:b", "/c,d"]);
        assert_eq!(o.layers.upperdir.as_deref(), Some("/u"));
        assert_eq!(o.layers.workdir.as_deref(), Some("/w"));
        assert_eq!(escape("/a:b,c\\d"), "/a\\:b\\,c\\\\d");
        assert_eq!(unescape(&escape("/a:b,c\\d")), "/a:b,c\\d");
    }

    #[test]
    fn generic_and_unknown() {
        let o =
            opts(&["lowerdir=/a,allow_other,ro,noexec,fsync=0,timeout=2.5,bogus=1,x-systemd.foo"]);
        assert!(o.mount.allow_other && o.layers.ro);
        assert_eq!(o.layers.fsync, Some(false));
        assert_eq!(o.daemon.timeout, Some(2.5));
        assert_eq!(o.unknown, vec!["bogus=1"]);
        assert_eq!(opts(&["a\nb"]).unknown, vec!["a\\nb"]);
        assert_ne!(o.mount.flags_set & libc::MS_NOEXEC, 0);
    }

    #[test]
    fn later_options_win() {
        let o = opts(&[
            "ro,suid,dev,passthrough=0",
            "rw,nodev,passthrough=on,threads=3",
        ]);
        assert!(!o.layers.ro && o.mount.suid && !o.mount.dev);
        assert_eq!(o.daemon.passthrough, Some(true));
        assert_eq!(o.daemon.threads, Some(3));
        let o = opts(&["lowerdir=/a:/b", "lowerdir=/c"]);
        assert_eq!(o.layers.lowerdirs, vec!["/c"]);
    }

    #[test]
    fn mount_flags_against_win() {
        let o = opts(&["exec,noexec,noatime,nodiratime,context=system_u:object_r:tmp_t:s0"]);
        let flags = mount_flags(&o.mount, false);
        assert_eq!(flags & libc::MS_NOEXEC, 0);
        assert_ne!(flags & libc::MS_NOATIME, 0);
        assert_ne!(flags & libc::MS_NODIRATIME, 0);
        assert_ne!(flags & libc::MS_NOSUID, 0);
        assert_ne!(flags & libc::MS_NODEV, 0);
        assert_eq!(flags & libc::MS_RDONLY, 0);
        assert_ne!(mount_flags(&o.mount, true) & libc::MS_RDONLY, 0);
        assert_eq!(
            o.mount.kernel_data,
            vec!["context=system_u:object_r:tmp_t:s0"]
        );
    }

    #[test]
    fn bad_options() {
        let p = |s: &str| parse_options(&[s.to_string()]);
        assert!(p("lowerdir=/a::/b").is_err());
        assert!(p("lowerdir=").is_err());
        assert!(p("lowerdir").is_err());
        assert!(p("fsync=maybe").is_err());
        assert!(p("timeout=abc").is_err());
        assert!(p("timeout=NaN").is_err());
        assert!(p("timeout=inf").is_err());
        assert!(p("timeout=-1").is_err());
        assert!(p("threads=-1").is_err());
        assert!(p("context").is_err());
        assert!(p("lowerdir=/a:").is_err());
        assert!(p("lowerdir=/a:\\").is_err());
        assert!(p("lowerdir=\\").is_err());
    }

    #[test]
    fn id_options() {
        let o = opts(&["uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1\\,1:100000:9"]);
        let m = o.layers.id_map();
        assert_eq!(m.uids.ranges.len(), 2);
        assert_eq!(m.gids.ranges[1].count, 9);
        assert_eq!(m.uids.squash, None);
        assert!(parse_options(&["uidmapping=0:1000:1,1:100000:65536".into()]).is_err());
        assert!(parse_options(&["gidmapping=0:1000".into()]).is_err());
        assert!(parse_options(&["squash_to_uid=x".into()]).is_err());
        let m = opts(&["squash_to_root,squash_to_gid=7"]).layers.id_map();
        assert_eq!((m.uids.squash, m.gids.squash), (Some(0), Some(7)));
        let m = opts(&["squash_to_uid=5"]).layers.id_map();
        assert_eq!((m.uids.squash, m.gids.squash), (Some(5), None));
    }

    #[test]
    fn every_key_is_in_the_help() {
        let help = options_help();
        for k in LAYER_KEYS.iter().chain(DAEMON_KEYS) {
            assert!(help.contains(k.name), "{} missing from the help", k.name);
        }
        for f in MOUNT_FLAGS {
            assert!(help.contains(f.0), "{} missing from the help", f.0);
        }
    }

    /// A fresh directory under the system's temporary directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("layover-config-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        fn dir(&self, name: &str) -> String {
            let p = self.0.join(name);
            std::fs::create_dir_all(&p).unwrap();
            p.display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn stack_without_a_mountpoint() {
        let t = TempDir::new("stack");
        let (l1, l2, u, w) = (t.dir("l1"), t.dir("l2"), t.dir("u"), t.dir("w"));
        let s =
            Stack::from_options(&[format!("lowerdir={l1}:{l2}")], &Privilege::detect()).unwrap();
        assert_eq!(s.lowerdirs.len(), 2);
        assert!(s.read_only && s.upperdir.is_none());
        // An upper alone is a read-only stack for a tool, and refused for a mount.
        let s = Stack::from_options(
            &[format!("lowerdir={l1},upperdir={u}")],
            &Privilege::detect(),
        )
        .unwrap();
        assert!(s.read_only && s.upperdir.is_some());
        let m = MountArgs {
            options: vec![format!("lowerdir={l1},upperdir={u}")],
            mountpoint: t.dir("mnt").into(),
            ..MountArgs::default()
        };
        assert!(Config::from_args(&m, &Privilege::detect()).is_err());
        let s = Stack::from_options(
            &[format!("lowerdir={l1},upperdir={u},workdir={w},fsync=0")],
            &Privilege::detect(),
        )
        .unwrap();
        assert!(!s.read_only && !s.durable);
        let s = Stack::from_options(
            &[format!("lowerdir={l1},upperdir={u},workdir={w},ro")],
            &Privilege::detect(),
        );
        assert!(s.unwrap().read_only);
        let bad = |o: String| Stack::from_options(&[o], &Privilege::detect()).is_err();
        assert!(bad(format!("lowerdir={l1},workdir={w}")));
        assert!(bad(format!("lowerdir={l1},upperdir={u},workdir={u}")));
        assert!(bad(format!("lowerdir={l1},upperdir={l1},workdir={w}")));
        assert!(bad(format!("lowerdir={l1},upperdir={u},workdir={l1}/x",)));
        assert!(bad(format!("upperdir={u},workdir={w}")));
    }

    #[test]
    fn config_checks_the_mountpoint() {
        let t = TempDir::new("mnt");
        let (l1, u, w) = (t.dir("l1"), t.dir("u"), t.dir("w"));
        let m = |mnt: String| MountArgs {
            options: vec![format!("lowerdir={l1},upperdir={u},workdir={w}")],
            mountpoint: mnt.into(),
            source: Some("overlay".into()),
            ..MountArgs::default()
        };
        let c = Config::from_args(&m(t.dir("mnt")), &Privilege::detect()).unwrap();
        assert_eq!(c.source, "overlay");
        assert!(!c.stack.read_only);
        assert_eq!(c.mount_flags & libc::MS_RDONLY, 0);
        assert!(Config::from_args(&m(t.dir("l1/inside")), &Privilege::detect()).is_err());
        assert!(Config::from_args(&m(t.dir("u/inside")), &Privilege::detect()).is_err());
        assert!(Config::from_args(&m(w.clone()), &Privilege::detect()).is_err());
        assert!(Config::from_args(&m(format!("{l1}/missing")), &Privilege::detect()).is_err());
        // Over the upper itself is allowed, as with the kernel's overlay.
        assert!(Config::from_args(&m(u.clone()), &Privilege::detect()).is_ok());
    }
}
