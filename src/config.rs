//! Validated, typed settings: what the `-o` options mean, checked against the filesystem
//! before anything is mounted. Pure data once built; nothing here runs on the request path.

use crate::cli::MountArgs;
use crate::error::StartupError;
use crate::privilege::Privilege;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub whiteout: Option<crate::whiteout::Format>,
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
    /// Options we did not recognise (each gets a one-line warning).
    pub unknown: Vec<String>,
}

/// Splits on `sep` where it is not escaped by a backslash; escapes are kept.
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Removes one level of backslash escapes.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Options as written, before the filesystem is consulted.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    pub lowerdirs: Vec<String>,
    pub upperdir: Option<String>,
    pub workdir: Option<String>,
    pub fsync: Option<bool>,
    pub volatile: bool,
    pub timeout: Option<f64>,
    pub userxattr: bool,
    pub ro: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub suid: bool,
    pub dev: bool,
    pub flags_set: u64,
    pub flags_clear: u64,
    pub kernel_data: Vec<String>,
    pub max_write: Option<u32>,
    pub threads: Option<usize>,
    pub passthrough: Option<bool>,
    pub whiteout: Option<crate::whiteout::Format>,
    pub unknown: Vec<String>,
}

fn bool_value(key: &str, v: &str) -> Result<bool, StartupError> {
    match v {
        "1" | "yes" | "on" | "true" => Ok(true),
        "0" | "no" | "off" | "false" => Ok(false),
        _ => Err(StartupError::new(format!(
            "option {key}={v}: expected 0 or 1"
        ))),
    }
}

fn num_value<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, StartupError> {
    v.parse()
        .map_err(|_| StartupError::new(format!("option {key}={v}: not a valid number")))
}

/// Interprets every `-o` argument.
pub fn parse_options(args: &[String]) -> Result<Options, StartupError> {
    let mut o = Options::default();
    for arg in args {
        for opt in split_escaped(arg, ',') {
            if opt.is_empty() {
                continue;
            }
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (opt.clone(), None),
            };
            let need = |v: &Option<String>| {
                v.clone()
                    .ok_or_else(|| StartupError::new(format!("option {key} needs a value")))
            };
            match key.as_str() {
                "lowerdir" => {
                    let v = need(&value)?;
                    if v.is_empty() {
                        return Err(StartupError::new("lowerdir is empty"));
                    }
                    if split_escaped(&v, ':').iter().any(String::is_empty) {
                        if v.contains("::") {
                            return Err(StartupError::new(
                                "lowerdir: data-only lower layers (lowerdir=a::b) are not supported",
                            ));
                        }
                        return Err(StartupError::new(format!("lowerdir={v}: empty layer path")));
                    }
                    // A later lowerdir= replaces an earlier one, as with mount(8).
                    o.lowerdirs = split_escaped(&v, ':').iter().map(|s| unescape(s)).collect();
                }
                "upperdir" => o.upperdir = Some(unescape(&need(&value)?)),
                "workdir" => o.workdir = Some(unescape(&need(&value)?)),
                "fsync" => o.fsync = Some(bool_value(&key, &need(&value)?)?),
                "volatile" => o.volatile = true,
                "timeout" => {
                    let t: f64 = num_value(&key, &need(&value)?)?;
                    if !(0.0..=1e9).contains(&t) {
                        return Err(StartupError::new(format!(
                            "option timeout={t}: out of range"
                        )));
                    }
                    o.timeout = Some(t);
                }
                "userxattr" => o.userxattr = true,
                "threads" => o.threads = Some(num_value(&key, &need(&value)?)?),
                "max_write" => o.max_write = Some(num_value(&key, &need(&value)?)?),
                "passthrough" => o.passthrough = Some(bool_value(&key, &need(&value)?)?),
                "whiteout" => {
                    let v = need(&value)?;
                    o.whiteout =
                        Some(crate::whiteout::Format::parse(v.as_bytes()).ok_or_else(|| {
                            StartupError::new(format!(
                                "option whiteout={v}: expected chardev or file"
                            ))
                        })?);
                }
                "allow_other" => o.allow_other = true,
                "allow_root" => o.allow_root = true,
                "ro" => o.ro = true,
                "rw" => o.ro = false,
                "suid" => o.suid = true,
                "nosuid" => o.suid = false,
                "dev" => o.dev = true,
                "nodev" => o.dev = false,
                "exec" => o.flags_clear |= libc::MS_NOEXEC,
                "noexec" => o.flags_set |= libc::MS_NOEXEC,
                "atime" | "norelatime" => o.flags_clear |= libc::MS_NOATIME | libc::MS_RELATIME,
                "noatime" => o.flags_set |= libc::MS_NOATIME,
                "relatime" => o.flags_set |= libc::MS_RELATIME,
                "strictatime" => o.flags_set |= libc::MS_STRICTATIME,
                "nodiratime" => o.flags_set |= libc::MS_NODIRATIME,
                "diratime" => o.flags_clear |= libc::MS_NODIRATIME,
                "sync" => o.flags_set |= libc::MS_SYNCHRONOUS,
                "async" => o.flags_clear |= libc::MS_SYNCHRONOUS,
                "dirsync" => o.flags_set |= libc::MS_DIRSYNC,
                "context" | "fscontext" | "defcontext" | "rootcontext" => {
                    o.kernel_data.push(format!("{key}={}", need(&value)?));
                }
                // Always on, or only meaningful to mount(8) and fstab: accepted silently.
                "default_permissions"
                | "defaults"
                | "auto"
                | "noauto"
                | "user"
                | "users"
                | "nouser"
                | "_netdev"
                | "nofail"
                | "fsname"
                | "subtype" => {}
                _ if key.starts_with("x-") => {}
                _ => o.unknown.push(opt.clone()),
            }
        }
    }
    Ok(o)
}

fn err_path(what: &str, p: &Path, msg: impl std::fmt::Display) -> StartupError {
    StartupError::new(format!("{what} '{}': {msg}", p.display()))
}

/// The path must exist and be a directory; returns its canonical form and device.
fn check_dir(what: &str, p: &Path) -> Result<(PathBuf, u64), StartupError> {
    let md = std::fs::metadata(p).map_err(|e| err_path(what, p, e))?;
    if !md.is_dir() {
        return Err(err_path(what, p, "not a directory"));
    }
    let canon = p.canonicalize().map_err(|e| err_path(what, p, e))?;
    Ok((canon, md.dev()))
}

fn inside(child: &Path, parent: &Path) -> bool {
    child != parent && child.starts_with(parent)
}

impl Config {
    /// Builds the configuration from the command line and checks it against the filesystem.
    pub fn from_args(m: &MountArgs) -> Result<Config, StartupError> {
        let o = parse_options(&m.options)?;
        if o.lowerdirs.is_empty() {
            return Err(StartupError::new(
                "no lowerdir given (-o lowerdir=DIR[:DIR...])",
            ));
        }
        match (&o.upperdir, &o.workdir) {
            (Some(_), None) => return Err(StartupError::new("upperdir given without workdir")),
            (None, Some(_)) => return Err(StartupError::new("workdir given without upperdir")),
            _ => {}
        }
        let mountpoint_arg = PathBuf::from(&m.mountpoint);
        let (mountpoint, _) = check_dir("mountpoint", &mountpoint_arg)?;
        let mut lowers = Vec::new();
        for l in &o.lowerdirs {
            lowers.push(check_dir("lowerdir", Path::new(l))?.0);
        }
        let upper = o
            .upperdir
            .as_deref()
            .map(|u| check_dir("upperdir", Path::new(u)))
            .transpose()?;
        let work = o
            .workdir
            .as_deref()
            .map(|w| check_dir("workdir", Path::new(w)))
            .transpose()?;
        if let (Some((u, udev)), Some((w, wdev))) = (&upper, &work) {
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
        }
        for l in &lowers {
            if inside(&mountpoint, l) {
                return Err(err_path(
                    "mountpoint",
                    &mountpoint,
                    format!("is inside lowerdir '{}'", l.display()),
                ));
            }
            if let Some((u, _)) = &upper {
                if u == l || inside(u, l) {
                    return Err(err_path(
                        "upperdir",
                        u,
                        format!("is inside lowerdir '{}'", l.display()),
                    ));
                }
                if inside(l, u) {
                    return Err(err_path(
                        "lowerdir",
                        l,
                        format!("is inside upperdir '{}'", u.display()),
                    ));
                }
            }
            if let Some((w, _)) = &work
                && (w == l || inside(w, l))
            {
                return Err(err_path(
                    "workdir",
                    w,
                    format!("is inside lowerdir '{}'", l.display()),
                ));
            }
        }
        if let Some((u, _)) = &upper
            && inside(&mountpoint, u)
        {
            return Err(err_path("mountpoint", &mountpoint, "is inside upperdir"));
        }
        if let Some((w, _)) = &work
            && (w == &mountpoint || inside(&mountpoint, w))
        {
            return Err(err_path("mountpoint", &mountpoint, "is inside workdir"));
        }

        let root = crate::sys::geteuid() == 0;
        let mut flags = o.flags_set & !o.flags_clear;
        if !o.suid {
            flags |= libc::MS_NOSUID;
        }
        if !o.dev {
            flags |= libc::MS_NODEV;
        }
        let read_only = o.ro || upper.is_none();
        if read_only {
            flags |= libc::MS_RDONLY;
        }
        let source = m
            .source
            .as_ref()
            .map(|s: &OsString| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "layover".to_string());
        Ok(Config {
            stack: Stack {
                lowerdirs: lowers,
                upperdir: upper.map(|u| u.0),
                workdir: work.map(|w| w.0),
                durable: !o.volatile && o.fsync != Some(false),
                xattr_ns: if o.userxattr || !Privilege::detect().may_use_trusted_xattrs() {
                    XattrNs::User
                } else {
                    XattrNs::Trusted
                },
                read_only,
                whiteout: o.whiteout,
            },
            mountpoint,
            source,
            foreground: m.foreground,
            debug: m.debug,
            timeout: Duration::from_secs_f64(o.timeout.unwrap_or(86400.0)),
            // As root the merged view is open to every user, as the kernel's overlay is.
            allow_other: o.allow_other || root,
            allow_root: o.allow_root,
            mount_flags: flags,
            kernel_data: o.kernel_data,
            max_write: o.max_write,
            threads: o.threads,
            passthrough: o.passthrough != Some(false),
            unknown: o.unknown,
        })
    }
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
        assert_eq!(o.lowerdirs, vec!["/a:b", "/c,d"]);
        assert_eq!(o.upperdir.as_deref(), Some("/u"));
        assert_eq!(o.workdir.as_deref(), Some("/w"));
    }

    #[test]
    fn generic_and_unknown() {
        let o =
            opts(&["lowerdir=/a,allow_other,ro,noexec,fsync=0,timeout=2.5,bogus=1,x-systemd.foo"]);
        assert!(o.allow_other && o.ro);
        assert_eq!(o.fsync, Some(false));
        assert_eq!(o.timeout, Some(2.5));
        assert_eq!(o.unknown, vec!["bogus=1"]);
        assert_ne!(o.flags_set & libc::MS_NOEXEC, 0);
    }

    #[test]
    fn bad_options() {
        let p = |s: &str| parse_options(&[s.to_string()]);
        assert!(p("lowerdir=/a::/b").is_err());
        assert!(p("lowerdir=").is_err());
        assert!(p("lowerdir").is_err());
        assert!(p("fsync=maybe").is_err());
        assert!(p("timeout=abc").is_err());
        assert!(p("lowerdir=/a:").is_err());
    }
}
