//! The `-o` option string: its syntax (escapes, the key tables, what each key sets), parsed
//! into the raw, unvalidated `Options` that `Stack` and `Config` are built from, and the
//! options' help text.

use crate::error::StartupError;
use crate::idmap::stat_xattr::StatXattr;
use crate::idmap::{self, IdMap, OneMap, Range};
use crate::whiteout::Format;

// ---------------------------------------------------------------------------------------------
// Escapes: `\,` and `\:` (and `\\`) protect separators inside option values.
// ---------------------------------------------------------------------------------------------

/// Splits on `sep` where it is not escaped by a backslash; escapes are kept, so that a
/// second split (on `:` inside a `lowerdir=` taken from a split on `,`) still sees them.
pub fn split_escaped(s: &str, sep: char) -> Vec<String> {
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

/// Removes one level of backslash escapes (a lone backslash at the end is dropped).
pub fn unescape(s: &str) -> String {
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

/// The inverse of `unescape` for option values: backslash, comma and colon get a backslash,
/// so that any path survives `lowerdir=`/`upperdir=` inside a comma-separated `-o`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | ':') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Options as written, one struct per concern
// ---------------------------------------------------------------------------------------------

/// Options as written, before the filesystem is consulted.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    pub layers: LayerOptions,
    pub mount: MountOptions,
    pub daemon: DaemonOptions,
    /// Options we did not recognise (each gets a one-line warning: control characters are
    /// shown escaped).
    pub unknown: Vec<String>,
}

/// What makes a `Stack`: the layer directories and how the core treats them.
#[derive(Debug, Default, PartialEq)]
pub struct LayerOptions {
    /// Top first, unescaped.
    pub lowerdirs: Vec<String>,
    pub upperdir: Option<String>,
    pub workdir: Option<String>,
    pub fsync: Option<bool>,
    pub volatile: bool,
    pub userxattr: bool,
    /// `ro`: a generic mount flag, but also what makes the stack read-only.
    pub ro: bool,
    pub whiteout: Option<Format>,
    /// `uidmapping=`/`gidmapping=` (empty: the identity).
    pub uidmapping: Vec<Range>,
    pub gidmapping: Vec<Range>,
    pub squash_to_root: bool,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    pub static_nlink: bool,
    /// `noacl` (also a daemon matter: FUSE_POSIX_ACL is not asked for).
    pub noacl: bool,
    /// `xattr_permissions=1|2` (0: none).
    pub xattr_permissions: Option<StatXattr>,
    pub ino32: bool,
}

impl LayerOptions {
    /// The id map these options describe: a `squash_to_uid=`/`squash_to_gid=` wins over
    /// `squash_to_root` (as with fuse-overlayfs).
    pub fn id_map(&self) -> IdMap {
        let root = self.squash_to_root.then_some(0);
        IdMap {
            uids: OneMap {
                ranges: self.uidmapping.clone(),
                squash: self.squash_to_uid.or(root),
            },
            gids: OneMap {
                ranges: self.gidmapping.clone(),
                squash: self.squash_to_gid.or(root),
            },
            noacl: self.noacl,
            stat_xattr: self.xattr_permissions,
        }
    }
}

/// Generic mount(8) and FUSE mount options.
#[derive(Debug, Default, PartialEq)]
pub struct MountOptions {
    pub allow_other: bool,
    pub allow_root: bool,
    pub suid: bool,
    pub dev: bool,
    /// mount(2) flags asked for and asked against; the ones against win, whatever the order
    /// (`noexec,exec` is exec).
    pub flags_set: u64,
    pub flags_clear: u64,
    pub kernel_data: Vec<String>,
}

/// How the daemon serves the mount.
#[derive(Debug, Default, PartialEq)]
pub struct DaemonOptions {
    pub timeout: Option<f64>,
    pub max_write: Option<u32>,
    pub threads: Option<usize>,
    pub passthrough: Option<bool>,
    pub io_uring: Option<bool>,
    pub strict_copy_up: Option<bool>,
    pub auto_unmount: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// The table of keys
// ---------------------------------------------------------------------------------------------

/// One `-o` key with a meaning of its own.
pub struct Key {
    pub name: &'static str,
    /// What the value looks like in `--help`; `None` for a key that takes no value (a value
    /// given anyway is ignored, as it always was).
    pub value: Option<&'static str>,
    /// One line for `--help`.
    pub help: &'static str,
    apply: fn(&mut Options, &str) -> Result<(), StartupError>,
}

/// Keys that describe the layer stack (all an offline tool needs).
pub const LAYER_KEYS: &[Key] = &[
    Key {
        name: "lowerdir",
        value: Some("TOP:...:BOTTOM"),
        help: "read-only layers, the leftmost highest (required); a later lowerdir= replaces an earlier one",
        apply: |o, v| {
            o.layers.lowerdirs = lowerdirs(v)?;
            Ok(())
        },
    },
    Key {
        name: "upperdir",
        value: Some("DIR"),
        help: "the writable layer; needs workdir (without both the mount is read-only)",
        apply: |o, v| {
            o.layers.upperdir = Some(unescape(v));
            Ok(())
        },
    },
    Key {
        name: "workdir",
        value: Some("DIR"),
        help: "an empty directory on upperdir's filesystem, where copy-ups are staged",
        apply: |o, v| {
            o.layers.workdir = Some(unescape(v));
            Ok(())
        },
    },
    Key {
        name: "fsync",
        value: Some("0|1"),
        help: "0: no fsync before a copy-up is renamed into place, and fsync is not passed on",
        apply: |o, v| {
            o.layers.fsync = Some(bool_value("fsync", v)?);
            Ok(())
        },
    },
    Key {
        name: "volatile",
        value: None,
        help: "the same as fsync=0 (the kernel's name for it)",
        apply: |o, _| {
            o.layers.volatile = true;
            Ok(())
        },
    },
    Key {
        name: "userxattr",
        value: None,
        help: "markers in user.overlay.* instead of trusted.overlay.* (the default without CAP_SYS_ADMIN)",
        apply: |o, _| {
            o.layers.userxattr = true;
            Ok(())
        },
    },
    Key {
        name: "whiteout",
        value: Some("chardev|file"),
        help: "write whiteouts as 0/0 devices or as .wh. files (default: as the upper has them, else devices where they can be made)",
        apply: |o, v| {
            let f = Format::parse(v.as_bytes()).ok_or_else(|| {
                StartupError::new(format!(
                    "option whiteout={}: expected chardev or file",
                    one_line(v)
                ))
            })?;
            o.layers.whiteout = Some(f);
            Ok(())
        },
    },
    Key {
        name: "uidmapping",
        value: Some("DISK:SHOWN:N..."),
        help: "uids DISK..DISK+N on disk are shown as SHOWN..SHOWN+N (fuse-overlayfs's meaning); triples joined by ':' (or '\\,'); other ids show as 65534",
        apply: |o, v| {
            o.layers.uidmapping = mapping_value("uidmapping", v)?;
            Ok(())
        },
    },
    Key {
        name: "gidmapping",
        value: Some("DISK:SHOWN:N..."),
        help: "the same for gids",
        apply: |o, v| {
            o.layers.gidmapping = mapping_value("gidmapping", v)?;
            Ok(())
        },
    },
    Key {
        name: "squash_to_root",
        value: None,
        help: "every file is shown owned by 0:0",
        apply: |o, _| {
            o.layers.squash_to_root = true;
            Ok(())
        },
    },
    Key {
        name: "squash_to_uid",
        value: Some("UID"),
        help: "every file is shown owned by uid UID (wins over squash_to_root)",
        apply: |o, v| {
            o.layers.squash_to_uid = Some(num_value("squash_to_uid", v)?);
            Ok(())
        },
    },
    Key {
        name: "squash_to_gid",
        value: Some("GID"),
        help: "every file is shown owned by gid GID (wins over squash_to_root)",
        apply: |o, v| {
            o.layers.squash_to_gid = Some(num_value("squash_to_gid", v)?);
            Ok(())
        },
    },
    Key {
        name: "static_nlink",
        value: None,
        help: "every directory shows nlink 1 (no counting of subdirectories)",
        apply: |o, _| {
            o.layers.static_nlink = true;
            Ok(())
        },
    },
    Key {
        name: "xattr_permissions",
        value: Some("0|1|2"),
        help: "keep the owner and mode of files and directories in security.fuseoverlayfs.override_stat (1) or user.fuseoverlayfs.override_stat (2), not on the inode (fuse-overlayfs's meaning)",
        apply: |o, v| {
            let n = num_value("xattr_permissions", v)?;
            o.layers.xattr_permissions = StatXattr::of_option(n).ok_or_else(|| {
                StartupError::new(format!(
                    "option xattr_permissions={}: expected 0, 1 or 2",
                    one_line(v)
                ))
            })?;
            Ok(())
        },
    },
    Key {
        name: "ino32_t",
        value: None,
        help: "every inode number shown fits in 32 bits (for 32-bit programs), still one per object",
        apply: |o, _| {
            o.layers.ino32 = true;
            Ok(())
        },
    },
    Key {
        name: "ro",
        value: None,
        help: "mount read-only, even with an upperdir",
        apply: |o, _| {
            o.layers.ro = true;
            Ok(())
        },
    },
    Key {
        name: "rw",
        value: None,
        help: "mount read-write (the default with an upperdir)",
        apply: |o, _| {
            o.layers.ro = false;
            Ok(())
        },
    },
];

/// Keys that decide how the daemon serves the mount.
pub const DAEMON_KEYS: &[Key] = &[
    Key {
        name: "timeout",
        value: Some("SECONDS"),
        help: "how long the kernel caches entries and attributes (default 86400)",
        apply: |o, v| {
            o.daemon.timeout = Some(timeout_value(v)?);
            Ok(())
        },
    },
    Key {
        name: "threads",
        value: Some("N"),
        help: "worker threads (default twice the CPUs, from 8 to 32)",
        apply: |o, v| {
            o.daemon.threads = Some(num_value("threads", v)?);
            Ok(())
        },
    },
    Key {
        name: "max_write",
        value: Some("BYTES"),
        help: "the largest write request (default 1 MiB, or the kernel's limit)",
        apply: |o, v| {
            o.daemon.max_write = Some(num_value("max_write", v)?);
            Ok(())
        },
    },
    Key {
        name: "passthrough",
        value: Some("0|1"),
        help: "0: serve file data through the daemon and the writeback cache, not FUSE passthrough",
        apply: |o, v| {
            o.daemon.passthrough = Some(bool_value("passthrough", v)?);
            Ok(())
        },
    },
    Key {
        name: "io_uring",
        value: Some("0|1"),
        help: "1 (default): serve requests over FUSE over io_uring (per-CPU queues) when the kernel offers it (the fuse module's enable_uring parameter); 0: always /dev/fuse",
        apply: |o, v| {
            o.daemon.io_uring = Some(bool_value("io_uring", v)?);
            Ok(())
        },
    },
    Key {
        name: "strict_copy_up",
        value: Some("0|1"),
        help: "0 (default): lower files opened read-only are passthrough from the lower file, whose page cache every mount shares, and a descriptor opened read-only before the file's copy-up keeps reading the lower copy (Linux < 4.19); 1: such a descriptor reads the copy afterwards (Linux >= 4.19), at a page-cache copy of lower files per mount",
        apply: |o, v| {
            o.daemon.strict_copy_up = Some(bool_value("strict_copy_up", v)?);
            Ok(())
        },
    },
    Key {
        name: "auto_unmount",
        value: None,
        help: "unmount the mount when the daemon dies, however it dies (the default)",
        apply: |o, _| {
            o.daemon.auto_unmount = Some(true);
            Ok(())
        },
    },
    Key {
        name: "noauto_unmount",
        value: None,
        help: "leave the mount in place when the daemon dies (uses then fail with ENOTCONN)",
        apply: |o, _| {
            o.daemon.auto_unmount = Some(false);
            Ok(())
        },
    },
    Key {
        name: "noacl",
        value: None,
        help: "no POSIX ACLs: FUSE_POSIX_ACL is not asked for, so the kernel checks modes alone (ACL xattrs are stored as given, not enforced, their ids not mapped)",
        apply: |o, _| {
            o.layers.noacl = true;
            Ok(())
        },
    },
    Key {
        name: "allow_other",
        value: None,
        help: "let every user use the mount (always on as root, as with the kernel's overlay)",
        apply: |o, _| {
            o.mount.allow_other = true;
            Ok(())
        },
    },
    Key {
        name: "allow_root",
        value: None,
        help: "let root use the mount besides its owner",
        apply: |o, _| {
            o.mount.allow_root = true;
            Ok(())
        },
    },
];

/// Generic mount flags: name, mount(2) flags it sets, flags it clears.
pub const MOUNT_FLAGS: &[(&str, u64, u64)] = &[
    ("exec", 0, libc::MS_NOEXEC),
    ("noexec", libc::MS_NOEXEC, 0),
    ("atime", 0, libc::MS_NOATIME | libc::MS_RELATIME),
    ("norelatime", 0, libc::MS_NOATIME | libc::MS_RELATIME),
    ("noatime", libc::MS_NOATIME, 0),
    ("relatime", libc::MS_RELATIME, 0),
    ("strictatime", libc::MS_STRICTATIME, 0),
    ("nodiratime", libc::MS_NODIRATIME, 0),
    ("diratime", 0, libc::MS_NODIRATIME),
    ("sync", libc::MS_SYNCHRONOUS, 0),
    ("async", 0, libc::MS_SYNCHRONOUS),
    ("dirsync", libc::MS_DIRSYNC, 0),
];

/// nosuid and nodev are the default, as for every FUSE mount: name, suid, dev.
const SUID_DEV: &[(&str, Option<bool>, Option<bool>)] = &[
    ("suid", Some(true), None),
    ("nosuid", Some(false), None),
    ("dev", None, Some(true)),
    ("nodev", None, Some(false)),
];

/// SELinux labels, passed to the kernel in the mount data as `KEY=VALUE`.
pub const KERNEL_DATA_KEYS: &[&str] = &["context", "fscontext", "defcontext", "rootcontext"];

/// Always on, or only meaningful to mount(8) and fstab: accepted silently, as are `x-*`.
pub const IGNORED_KEYS: &[&str] = &[
    "default_permissions",
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "_netdev",
    "nofail",
    "fsname",
    "subtype",
];

/// `s` for a message that must stay on one line: control characters (a newline in a path)
/// are shown escaped, everything else as typed.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn bool_value(key: &str, v: &str) -> Result<bool, StartupError> {
    match v {
        "1" | "yes" | "on" | "true" => Ok(true),
        "0" | "no" | "off" | "false" => Ok(false),
        _ => Err(StartupError::new(format!(
            "option {key}={}: expected 0 or 1",
            one_line(v)
        ))),
    }
}

fn num_value<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, StartupError> {
    v.parse()
        .map_err(|_| StartupError::new(format!("option {key}={}: not a valid number", one_line(v))))
}

fn timeout_value(v: &str) -> Result<f64, StartupError> {
    let t: f64 = num_value("timeout", v)?;
    // Also refuses NaN and infinities, which Duration cannot hold.
    if !(0.0..=1e9).contains(&t) {
        return Err(StartupError::new(format!(
            "option timeout={t}: out of range"
        )));
    }
    Ok(t)
}

/// `uidmapping=`/`gidmapping=`'s value (escapes removed: `\,` joins triples too).
fn mapping_value(key: &str, v: &str) -> Result<Vec<Range>, StartupError> {
    idmap::parse_ranges(&unescape(v))
        .map_err(|e| StartupError::new(format!("option {key}={}: {e}", one_line(v))))
}

/// `lowerdir=`'s value: split on unescaped colons, each layer unescaped; an empty layer is
/// refused, and `a::b` (the kernel's data-only lowers) with a message of its own rather than
/// being read as `a:b`.
fn lowerdirs(v: &str) -> Result<Vec<String>, StartupError> {
    if v.is_empty() {
        return Err(StartupError::new("lowerdir is empty"));
    }
    // Empty once unescaped: `a::b`, a trailing `:`, or a lone `\` (whose escape is dropped).
    let parts: Vec<String> = split_escaped(v, ':').iter().map(|s| unescape(s)).collect();
    if parts.iter().any(String::is_empty) {
        if v.contains("::") {
            return Err(StartupError::new(
                "lowerdir: data-only lower layers (lowerdir=a::b) are not supported",
            ));
        }
        return Err(StartupError::new(format!(
            "lowerdir={}: empty layer path",
            one_line(v)
        )));
    }
    Ok(parts)
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Interprets every `-o` argument: each is split on unescaped commas, and each option is
/// applied in order (a later one wins where two disagree).
pub fn parse_options(args: &[String]) -> Result<Options, StartupError> {
    let mut o = Options::default();
    for arg in args {
        for opt in split_escaped(arg, ',') {
            if !opt.is_empty() {
                apply_option(&mut o, &opt)?;
            }
        }
    }
    Ok(o)
}

/// One `KEY` or `KEY=VALUE`, looked up in each table in turn.
fn apply_option(o: &mut Options, opt: &str) -> Result<(), StartupError> {
    let (key, value) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    if let Some(k) = LAYER_KEYS.iter().chain(DAEMON_KEYS).find(|k| k.name == key) {
        let v = match (k.value, value) {
            (None, _) => "",
            (Some(_), Some(v)) => v,
            (Some(_), None) => {
                return Err(StartupError::new(format!(
                    "option {} needs a value",
                    one_line(key)
                )));
            }
        };
        return (k.apply)(o, v);
    }
    if let Some(&(_, set, clear)) = MOUNT_FLAGS.iter().find(|f| f.0 == key) {
        o.mount.flags_set |= set;
        o.mount.flags_clear |= clear;
    } else if let Some(&(_, suid, dev)) = SUID_DEV.iter().find(|f| f.0 == key) {
        o.mount.suid = suid.unwrap_or(o.mount.suid);
        o.mount.dev = dev.unwrap_or(o.mount.dev);
    } else if KERNEL_DATA_KEYS.contains(&key) {
        let v = value
            .ok_or_else(|| StartupError::new(format!("option {} needs a value", one_line(key))))?;
        o.mount.kernel_data.push(format!("{key}={v}"));
    } else if value.is_none()
        && key.contains(':')
        && key.chars().all(|c| c == ':' || c.is_ascii_digit())
    {
        // `uidmapping=0:1000:1,1:100000:65536`: the comma ended the option.
        return Err(StartupError::new(format!(
            "option {key}: looks like more triples of a uidmapping=/gidmapping=; join them with ':' (a ',' separates -o options)"
        )));
    } else if !(IGNORED_KEYS.contains(&key) || key.starts_with("x-")) {
        o.unknown.push(one_line(opt));
    }
    Ok(())
}

/// The `-o` keys for `--help`: one line per key of the tables above, then the generic ones.
pub fn options_help() -> String {
    let mut out = String::new();
    for k in LAYER_KEYS.iter().chain(DAEMON_KEYS) {
        let left = match k.value {
            Some(v) => format!("{}={v}", k.name),
            None => k.name.to_string(),
        };
        out.push_str(&format!("  {left:<26} {}\n", wrap(k.help, 29)));
    }
    let flags: Vec<&str> = MOUNT_FLAGS
        .iter()
        .map(|f| f.0)
        .chain(SUID_DEV.iter().map(|f| f.0))
        .collect();
    let rest = [
        (
            "generic mount flags",
            format!("{} (nosuid,nodev by default)", flags.join(" ")),
        ),
        (
            "SELinux labels",
            format!("{}=LABEL", KERNEL_DATA_KEYS.join("|")),
        ),
        (
            "accepted, ignored",
            format!("{} x-*", IGNORED_KEYS.join(" ")),
        ),
        ("anything else", "accepted with a warning".to_string()),
    ];
    for (left, text) in rest {
        out.push_str(&format!("  {left:<26} {}\n", wrap(&text, 29)));
    }
    out.truncate(out.trim_end().len());
    out
}

/// Wraps `text` at spaces to lines of at most 96 columns, continuation lines indented by
/// `indent` (a word longer than a line stays whole).
fn wrap(text: &str, indent: usize) -> String {
    let width = 96 - indent;
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split(' ') {
        if line_len > 0 && line_len + 1 + word.len() > width {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            line_len = 0;
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += word.len();
    }
    out
}
