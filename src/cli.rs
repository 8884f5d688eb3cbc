//! The command line as the user typed it, parsed with clap: fuse-overlayfs's syntax
//! `layover [-f] [-d] [-o OPTS]... [SOURCE] MOUNTPOINT`, `--help`, `--version`, and the words
//! reserved for subcommands. What the `-o` options mean is `config`'s business; this module
//! only collects them (its `--help` shows `config`'s table of keys).
//!
//! # Subcommand or mountpoint
//!
//! A word is a subcommand only when it is the **first** argument and spelled exactly as one
//! (`explain`, `diff`, `export`, `check`, `stats`); anything else first (an option, a path,
//! another word) makes the whole line the mount syntax, where those words are plain
//! positionals. clap is not asked to find subcommands itself: it would take `explain` for
//! one in `layover -o OPTS explain`. So a directory named like a subcommand mounts in every
//! form that is used in practice:
//! - containers-storage and fuse-overlayfs's documentation: `layover -o OPTS MERGED`;
//! - mount(8) through mount.fuse3: `layover SOURCE MOUNTPOINT -o OPTS`, where the mountpoint
//!   is second (and absolute: mount(8) canonicalises it);
//! - by hand with the mountpoint first: `layover ./explain -o OPTS`.
//!
//! The one argument that stands first in practice is mount(8)'s SOURCE, a free name shown
//! in /proc/mounts (`overlay` or `layover` by convention): it must not be a reserved word.
//! A new subcommand's word is reserved before its tool exists (a line that would mean
//! something else later then fails instead of being taken for a mount).

use crate::error::StartupError;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::ffi::{OsStr, OsString};

/// What the user asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Print this text on stdout and exit 0 (`--help` of the mount syntax or a subcommand).
    Help(String),
    /// Print this text on stdout and exit 0.
    Version(String),
    Mount(MountArgs),
    /// A subcommand (`inspect::run` runs it).
    Tool(Tool),
}

/// The mount syntax, before the options are interpreted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountArgs {
    pub foreground: bool,
    pub debug: bool,
    /// Every `-o` argument, in order, still comma-joined and escaped.
    pub options: Vec<String>,
    pub source: Option<OsString>,
    pub mountpoint: OsString,
}

/// The mount syntax as clap sees it. The positionals are one list, counted afterwards: clap
/// cannot put an optional positional (SOURCE) before a required one.
#[derive(Parser, Debug)]
#[command(
    name = "layover",
    version,
    about = "Mount a merged view of directories with the semantics of the kernel's overlayfs, \
             through FUSE.",
    override_usage = "layover [-f] [-d] [-o OPTIONS]... [SOURCE] MOUNTPOINT\n       \
                      layover SUBCOMMAND [ARGS]...",
    args_override_self = true,
    disable_help_subcommand = true,
    help_template = "{usage-heading} {usage}\n\n{about-with-newline}\n{before-help}Options:\n{options}{after-help}",
    before_help = "Arguments:\n  \
                   [SOURCE]       only a name for /proc/mounts (default \"layover\"), as mount(8)\n                 \
                   passes it; not a subcommand's name (see Subcommands)\n  \
                   MOUNTPOINT     an existing directory, not inside a layer"
)]
struct MountCli {
    /// Mount options, comma-separated (see Mount options)
    #[arg(short = 'o', value_name = "OPTIONS", action = ArgAction::Append,
          allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
    options: Vec<OsString>,

    /// Stay in the foreground (else the command returns once the mount is live)
    #[arg(short = 'f')]
    foreground: bool,

    /// Foreground, with debug logging (RUST_LOG=debug works too)
    #[arg(short = 'd', long = "debug")]
    debug: bool,

    /// Single-threaded in libfuse: accepted and ignored
    #[arg(short = 's', hide = true)]
    single_threaded: bool,

    /// `[SOURCE] MOUNTPOINT` (described in `before_help`, as clap would show them as one list)
    #[arg(value_name = "ARGS", hide = true, value_parser = clap::value_parser!(OsString))]
    positionals: Vec<OsString>,
}

/// The subcommands: the reserved words and, once they exist, their arguments. The rule reads
/// the words from here (`is_subcommand`); `name` spells them for messages (a unit test keeps
/// the two in step).
#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum Tool {
    /// Why a path in the merged view looks as it does: the layer it comes from, what hides it
    #[command(long_about = EXPLAIN_ABOUT, after_help = EXPLAIN_AFTER)]
    Explain(ExplainArgs),
    /// What the upper layer changes against the lowers
    #[command(long_about = DIFF_ABOUT, after_help = DIFF_AFTER)]
    Diff(DiffArgs),
    /// The upper layer as an OCI image layer (a tar)
    #[command(long_about = EXPORT_ABOUT, after_help = EXPORT_AFTER)]
    Export(ExportArgs),
    /// Check a layer stack for what the kernel's overlayfs would refuse or misread
    #[command(long_about = CHECK_ABOUT, after_help = CHECK_AFTER)]
    Check(CheckArgs),
    /// Live figures of a running layover mount: inodes, open files, copy-ups, requests
    #[command(long_about = STATS_ABOUT, after_help = STATS_AFTER)]
    Stats(StatsArgs),
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct StatsArgs {
    /// Write JSON (one object) instead of text
    #[arg(long)]
    pub json: bool,

    /// A live layover mount
    #[arg(value_name = "MOUNTPOINT", value_parser = clap::value_parser!(OsString))]
    pub mountpoint: OsString,
}

/// The layer stack of a tool, as for mounting, and the output format.
#[derive(Args, Debug, PartialEq, Eq)]
pub struct StackArgs {
    /// Layers as for mounting: lowerdir=DIR[:DIR...][,upperdir=DIR][,workdir=DIR][,userxattr]
    /// (other mount options are accepted and ignored)
    #[arg(short = 'o', value_name = "OPTIONS", action = ArgAction::Append)]
    pub options: Vec<String>,

    /// Write JSON (one object per line) instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub stack: StackArgs,

    /// Paths to explain: relative to the merged root with -o (a leading / is allowed);
    /// without -o, paths inside a live layover mount
    #[arg(required = true, value_name = "PATH", value_parser = clap::value_parser!(OsString))]
    pub paths: Vec<OsString>,
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct DiffArgs {
    #[command(flatten)]
    pub stack: StackArgs,

    /// A live layover mount to diff (instead of -o)
    #[arg(value_name = "MOUNTPOINT", value_parser = clap::value_parser!(OsString))]
    pub mountpoint: Option<OsString>,
}

/// How `export` compresses its tar.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct ExportArgs {
    /// Layers as for mounting: lowerdir=DIR[:DIR...],upperdir=DIR[,userxattr]
    #[arg(short = 'o', value_name = "OPTIONS", action = ArgAction::Append)]
    pub options: Vec<String>,

    /// Write the tar to FILE (default: standard output, which must not be a terminal)
    #[arg(long, value_name = "FILE", value_parser = clap::value_parser!(OsString))]
    pub output: Option<OsString>,

    /// Compress the tar (deterministically: no name or time in the gzip header)
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub compress: Option<Compression>,

    /// A live layover mount whose upper to export (instead of -o)
    #[arg(value_name = "MOUNTPOINT", value_parser = clap::value_parser!(OsString))]
    pub mountpoint: Option<OsString>,
}

#[derive(Args, Debug, PartialEq, Eq)]
pub struct CheckArgs {
    #[command(flatten)]
    pub stack: StackArgs,

    /// Repair what is safe to repair (never user data; never while the layers are mounted)
    #[arg(long)]
    pub fix: bool,

    /// A live layover mount whose layers to check (instead of -o; --fix is refused then)
    #[arg(value_name = "MOUNTPOINT", value_parser = clap::value_parser!(OsString))]
    pub mountpoint: Option<OsString>,
}

const EXPLAIN_ABOUT: &str = "\
Explain why each PATH of the merged view looks as it does, layer by layer:
  - what each layer holds at the path (an object, a whiteout and its format, an opaque
    directory and its marker, nothing);
  - which layer supplies the object and which directories are merged into it (the same
    lookup the daemon serves);
  - for every object not shown, what hides it: a whiteout (0/0 device, .wh. file, xattr
    whiteout), an opaque directory (overlay.opaque=y or .wh..wh..opq), or a non-directory
    above it on the path;
  - for an upper object, whether it was copied up (the kernel's overlay.origin record, or a
    lower object of the same type, size and mtime) or created in the upper;
  - where its inode number comes from;
  - for a directory, which layer each entry comes from, and which whiteouts in it hide what.";

const EXPLAIN_AFTER: &str = "\
Layers are named upper, lower0 (the leftmost of lowerdir=, the top lower), lower1, ...
Names that are not UTF-8 are shown with \\xNN escapes.

Exit status: 0 every PATH exists in the merged view; 1 some PATH does not (it is still
explained); 2 wrong command line or unreadable layers.

Examples:
  layover explain -o lowerdir=/l1:/l0,upperdir=/u /etc/hosts /var/lib
  layover explain --json -o lowerdir=/l1:/l0 /etc
  layover explain /merged/etc/hosts        (inside a live layover mount)";

const DIFF_ABOUT: &str = "\
List what the upper layer changes against the merged view of the lowers, one line each:
  A PATH                 added (not in the lowers)
  M PATH  data           modified: file content, symlink target or device number
  M PATH  metadata: ...  modified, metadata only: which of mode, owner, mtime, xattrs
  M PATH  type: A -> B   replaced by an object of another type
  D PATH  (format)       deleted by a whiteout (0/0 device, .wh. file or xattr whiteout)
  O PATH  ...            a directory replaced opaquely (its lower contents hidden)
Contents of an added or opaque directory are listed as added. Unchanged copy-ups are not
listed. Times compared are mtimes (copy-up keeps them; atime and ctime always move); xattrs
compared are those the merged view shows (the overlay's own markers are left out). The
root directory is not compared. A whiteout that hides nothing is not listed (check reports
it).";

const DIFF_AFTER: &str = "\
Exit status: 0 the diff was written; 2 wrong command line or unreadable layers.

Examples:
  layover diff -o lowerdir=/l1:/l0,upperdir=/u
  layover diff --json /merged              (a live layover mount)";

const EXPORT_ABOUT: &str = "\
Write the upper layer as an OCI image layer: a POSIX (PAX) tar that image
tools apply over the lowers. Whiteouts of every format become .wh.NAME files, opaque
directories a .wh..wh..opq file; a file with several links is written once and its other
names as hard links; extended attributes (the overlay's own markers left out) and
nanosecond mtimes are PAX records. The output is deterministic: the same upper gives the
same bytes (entries in name order, markers with owner 0, mode 0 and time 0), compressed
or not (--compress gzip|zstd). Files with holes are written as GNU sparse members (PAX
format 1.0, read by GNU tar and Go's archive/tar), so their holes stay holes.";

const EXPORT_AFTER: &str = "\
Exit status: 0 the layer was written; 2 wrong command line, unreadable layers, or a
terminal as standard output.

Examples:
  layover export -o lowerdir=/l1:/l0,upperdir=/u > layer.tar
  layover export --compress zstd -o lowerdir=/l0,upperdir=/u > layer.tar.zst
  layover export --output layer.tar /merged     (a live layover mount)";

const CHECK_ABOUT: &str = "\
Check a layer stack for what the kernel's overlayfs (or layover) would refuse or read
differently than intended. Every layer is walked; each finding says where, what it means
and whether --fix repairs it. Findings:
  whiteout-in-opaque-dir      a whiteout inside an opaque directory: it hides nothing
                              (fix: removed, upper only)
  aufs-whiteout-beside-entry  .wh.X beside a live X in the same layer: the layer holds both
                              (fix: the empty .wh.X removed, upper only)
  markers-in-both-namespaces  overlay markers in both trusted.* and user.*: which are read
                              depends on userxattr
  mixed-whiteout-formats      0/0 devices and .wh. files in one layer: the kernel does not read
                              .wh. files (fix: converted to 0/0 devices and opaque xattrs,
                              upper only)
  aufs-whiteouts              .wh. whiteouts in a layer: layover reads them, the kernel does
                              not
  workdir-leftovers           files left in WORKDIR/work by an interrupted mount
                              (fix: removed; the incompat/ directory is never touched)
  workdir-volatile            WORKDIR/work/incompat/volatile: a volatile mount did not end
                              cleanly; the kernel refuses to mount until it is removed by hand
  redirect-marker             overlay.redirect: a renamed directory layover does not follow
  metacopy-marker             overlay.metacopy: data in a lower that layover does not fetch
  stray-xattr-whiteout        a file marked overlay.whiteout outside an opaque=x directory:
                              read as a plain empty file
  bad-opaque-value            overlay.opaque with a value other than y or x: ignored
  useless-whiteout            an upper whiteout that hides nothing (fix: removed)
--fix never removes a file with data, never touches a lower, and refuses to run while a
kernel overlay or a layover daemon uses the layers.";

const CHECK_AFTER: &str = "\
Exit status: 0 no findings (or all fixed); 1 findings remain; 2 wrong command line or
unreadable layers, or --fix refused.

Examples:
  layover check -o lowerdir=/l1:/l0,upperdir=/u,workdir=/w
  layover check --fix -o lowerdir=/l0,upperdir=/u,workdir=/w";

const STATS_ABOUT: &str = "\
Show live figures of the layover mount at MOUNTPOINT, asked of its daemon:
  inodes             inodes in the daemon's table (those the kernel holds a reference on)
  open files         open file handles; while passthrough is granted, how many the kernel
                     serves itself (passthrough) and how many go through the daemon, and the
                     backing files registered with the kernel
  open directories   open directory streams
  fds held           file descriptors the daemon holds, its limit, and how many are cached
                     directory fds
  copy-ups           objects copied up to the upper layer since the mount, by type
  copied up          file data copied up: the sizes of the files copied with their data (a
                     sparse or reflinked copy counts its whole size; an open with O_TRUNC
                     copies none)
  data path          how file data travels: passthrough (the kernel reads and writes the
                     real files), the kernel's writeback cache, or the page cache through the
                     daemon; and why (the INIT decision: passthrough=off, not real root, an
                     old kernel, a refusal)
  requests           per FUSE operation since the mount: count, total time in the daemon and
                     latency percentiles p50, p90, p99 and max (from the request's arrival at
                     the daemon to its reply; a log histogram with four buckets per power of
                     two, so a percentile is within 25% above the truth, never above max)

The daemon serves its figures on a Unix socket, RUNTIME/layover/PID.sock, where RUNTIME is
the daemon's $XDG_RUNTIME_DIR, else /run for root and /run/user/UID for an ordinary user.
The directory is mode 0700, the socket 0600, and the daemon answers only its own user and
root (SO_PEERCRED). The socket goes when the daemon exits cleanly; one left by a killed
daemon is removed by the next daemon that starts there. No privilege beyond the daemon's
user is needed, and asking costs the requests nothing (a thread of its own answers).";

const STATS_AFTER: &str = "\
Exit status: 0 the figures were written; 2 wrong command line, MOUNTPOINT not a live
layover mount, its daemon gone, or its socket missing, stale or refused.

Examples:
  layover stats /merged
  layover stats --json /merged | jq '.requests[] | select(.op == \"lookup\")'";

impl Tool {
    pub fn name(&self) -> &'static str {
        match self {
            Tool::Explain(_) => "explain",
            Tool::Diff(_) => "diff",
            Tool::Export(_) => "export",
            Tool::Check(_) => "check",
            Tool::Stats(_) => "stats",
        }
    }
}

/// The subcommand syntax: `layover SUBCOMMAND ...`.
#[derive(Parser, Debug)]
#[command(
    name = "layover",
    disable_help_subcommand = true,
    disable_version_flag = true
)]
struct ToolCli {
    #[command(subcommand)]
    tool: Tool,
}

/// Whether `word`, as the first argument, names a subcommand (the rule in the module
/// comment). Only the exact name counts: `./explain` or `explain/` is a path.
pub fn is_subcommand(word: &OsStr) -> bool {
    ToolCli::command()
        .get_subcommands()
        .any(|c| OsStr::new(c.get_name()) == word)
}

/// The text after the options in `--help`: the `-o` keys, the subcommand rule, exit codes.
fn after_help() -> String {
    let words: Vec<String> = ToolCli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    format!(
        "Mount options (-o):\n{opts}\n\n  \
         -o may repeat, stand before or after the arguments, and be glued (-oOPTIONS). Within\n  \
         one, options are comma-separated; \\, and \\: put a comma or a colon inside a value\n  \
         (\\\\ a backslash). Where two options disagree, the later one wins.\n\n\
         Subcommands: {words} (see layover SUBCOMMAND --help)\n  \
         A word is a subcommand only as the first argument. To mount on a directory named like\n  \
         one, put anything else first: `layover -o OPTIONS explain`, `layover SOURCE explain`,\n  \
         `layover ./explain -o OPTIONS`. mount(8)'s SOURCE must not be one of these words.\n\n\
         Exit status:\n  \
         0  mounted (the daemon serves in the background), or help or version printed\n  \
         1  the mount could not be made (the message says which path and why)\n  \
         2  the command line is wrong\n\n\
         Examples:\n  \
         layover -o lowerdir=/l2:/l1,upperdir=/u,workdir=/w /merged\n  \
         mount -t fuse.layover -o lowerdir=/l2:/l1,upperdir=/u,workdir=/w overlay /merged\n  \
         fstab: overlay /merged fuse.layover lowerdir=/l2:/l1,upperdir=/u,workdir=/w 0 0\n\n\
         Unmount with `umount MOUNTPOINT` or `fusermount3 -u MOUNTPOINT`.",
        opts = crate::config::options_help(),
        words = words.join(", "),
    )
}

/// Parses the arguments after the program name.
pub fn parse(args: &[OsString]) -> Result<Command, StartupError> {
    match args.first() {
        Some(first) if is_subcommand(first) => parse_tool(args),
        _ => parse_mount(args),
    }
}

fn argv(args: &[OsString]) -> impl Iterator<Item = OsString> + '_ {
    std::iter::once(OsString::from("layover")).chain(args.iter().cloned())
}

fn parse_mount(args: &[OsString]) -> Result<Command, StartupError> {
    let cmd = MountCli::command().after_help(after_help());
    let parsed = cmd
        .try_get_matches_from(argv(args))
        .and_then(|m| MountCli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => return clap_outcome(e),
    };
    let mut positionals = cli.positionals;
    let (source, mountpoint) = match positionals.len() {
        0 => {
            return Err(StartupError::new(
                "no mountpoint given (see layover --help)",
            ));
        }
        1 => (None, positionals.remove(0)),
        2 => {
            let mountpoint = positionals.remove(1);
            (Some(positionals.remove(0)), mountpoint)
        }
        _ => {
            return Err(StartupError::new(format!(
                "too many arguments: '{}' (expected [SOURCE] MOUNTPOINT)",
                crate::config::one_line(&positionals[2].to_string_lossy())
            )));
        }
    };
    Ok(Command::Mount(MountArgs {
        foreground: cli.foreground || cli.debug,
        debug: cli.debug,
        options: cli.options.iter().map(to_utf8).collect::<Result<_, _>>()?,
        source,
        mountpoint,
    }))
}

fn parse_tool(args: &[OsString]) -> Result<Command, StartupError> {
    match ToolCli::try_parse_from(argv(args)) {
        Ok(cli) => Ok(Command::Tool(cli.tool)),
        Err(e) => clap_outcome(e),
    }
}

/// Help and version are answers; every other clap error becomes one line, as every usage
/// error of layover is (`layover: ...` on stderr, exit 2).
fn clap_outcome(e: clap::Error) -> Result<Command, StartupError> {
    use clap::error::ErrorKind;
    let text = e.to_string();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            Ok(Command::Help(text))
        }
        ErrorKind::DisplayVersion => Ok(Command::Version(text)),
        _ => {
            let mut lines = text.lines();
            let first = lines.next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            // "the following required arguments were not provided:" names them below.
            let named;
            let first = match lines.next() {
                Some(next) if first.ends_with(':') => {
                    named = format!("{first} {}", next.trim());
                    named.as_str()
                }
                _ => first,
            };
            Err(StartupError::new(format!(
                "{} (see layover --help)",
                crate::config::one_line(first)
            )))
        }
    }
}

fn to_utf8(v: &OsString) -> Result<String, StartupError> {
    v.to_str().map(str::to_owned).ok_or_else(|| {
        StartupError::new(format!(
            "option '{}' is not valid UTF-8",
            crate::config::one_line(&v.to_string_lossy())
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn p(args: &[&str]) -> Result<Command, StartupError> {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    fn mount(args: &[&str]) -> MountArgs {
        match p(args) {
            Ok(Command::Mount(m)) => m,
            other => panic!("{args:?}: not a mount: {other:?}"),
        }
    }

    #[test]
    fn clap_definitions_are_consistent() {
        MountCli::command().debug_assert();
        ToolCli::command().debug_assert();
    }

    #[test]
    fn mount_syntax() {
        let m = mount(&["-o", "lowerdir=/a", "-oallow_other", "-f", "/mnt"]);
        assert_eq!(m.options, vec!["lowerdir=/a", "allow_other"]);
        assert!(m.foreground && !m.debug);
        assert_eq!(m.mountpoint, "/mnt");
        assert_eq!(m.source, None);
    }

    #[test]
    fn source_and_mountpoint() {
        let m = mount(&["overlay", "/mnt", "-o", "rw,lowerdir=/a"]);
        assert_eq!(m.source.as_deref(), Some(OsStr::new("overlay")));
        assert_eq!(m.mountpoint, "/mnt");
        assert_eq!(m.options, vec!["rw,lowerdir=/a"]);
        // Options between the positionals, and after `--` everything is positional.
        let m = mount(&["src", "-o", "a", "/mnt", "-ob", "-s"]);
        assert_eq!(m.source.as_deref(), Some(OsStr::new("src")));
        assert_eq!(
            (m.mountpoint.as_os_str(), m.options),
            (OsStr::new("/mnt"), vec!["a".to_string(), "b".to_string()])
        );
        let m = mount(&["-o", "x", "--", "-weird"]);
        assert_eq!(m.mountpoint, "-weird");
        let m = mount(&["-o", "-dash-value", "-"]);
        assert_eq!(m.options, vec!["-dash-value"]);
        assert_eq!(m.mountpoint, "-");
    }

    #[test]
    fn flags_repeat_and_debug_implies_foreground() {
        let m = mount(&["-d", "/m"]);
        assert!(m.debug && m.foreground);
        let m = mount(&["--debug", "-f", "-f", "-s", "/m"]);
        assert!(m.debug && m.foreground);
    }

    #[test]
    fn errors_are_one_line() {
        for args in [
            &[][..],
            &["-o"],
            &["/mnt", "-o"],
            &["-x", "/mnt"],
            &["--frobnicate", "/mnt"],
            &["a", "b", "c"],
            &["-o", "lowerdir=/a"],
            &["-x\r", "/m"],
            &["a", "b", "c\nd"],
        ] {
            let e = p(args).expect_err(&format!("{args:?} accepted"));
            assert!(!e.0.contains('\n'), "{args:?}: {e}");
            assert!(
                e.0.ends_with("(see layover --help)") || e.0.starts_with("too many"),
                "{e}"
            );
        }
        let bad = OsString::from_vec(b"lowerdir=/\xff".to_vec());
        let e = parse(&["-o".into(), bad, "/m".into()]).unwrap_err();
        assert!(e.0.contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn non_utf8_paths_pass_through() {
        let mnt = OsString::from_vec(b"/mnt/\xff".to_vec());
        let Command::Mount(m) = parse(&["-o".into(), "lowerdir=/a".into(), mnt.clone()]).unwrap()
        else {
            panic!("not a mount")
        };
        assert_eq!(m.mountpoint, mnt);
    }

    #[test]
    fn help_and_version() {
        for flag in ["-h", "--help"] {
            let Ok(Command::Help(h)) = p(&[flag]) else {
                panic!("{flag}")
            };
            for needle in [
                "lowerdir=",
                "upperdir=",
                "-o <OPTIONS>",
                "Subcommands",
                "Exit status",
            ] {
                assert!(h.contains(needle), "{flag}: {needle} missing:\n{h}");
            }
        }
        // Help wins wherever it stands, as with libfuse.
        assert!(matches!(
            p(&["-o", "x", "/m", "--help"]),
            Ok(Command::Help(_))
        ));
        let Ok(Command::Version(v)) = p(&["-V"]) else {
            panic!("-V")
        };
        assert_eq!(v.trim(), format!("layover {}", env!("CARGO_PKG_VERSION")));
        assert!(matches!(p(&["--version"]), Ok(Command::Version(_))));
    }

    /// The rule: a reserved word is a subcommand only as the first argument.
    #[test]
    fn subcommand_only_as_first_argument() {
        for word in ["explain", "diff", "export", "check", "stats"] {
            assert!(is_subcommand(OsStr::new(word)), "{word}");
            match p(&[word, "/some/path"]) {
                Ok(Command::Tool(t)) => {
                    assert_eq!(t.name(), word);
                }
                other => panic!("{word}: {other:?}"),
            }
            // containers-storage's form, and mount(8)'s through mount.fuse3.
            let m = mount(&["-o", "lowerdir=/a,upperdir=/u,workdir=/w", word]);
            assert_eq!(m.mountpoint, word);
            let m = mount(&["overlay", word, "-o", "lowerdir=/a"]);
            assert_eq!(m.mountpoint, word);
            let m = mount(&["-f", word, "-o", "lowerdir=/a"]);
            assert_eq!(m.mountpoint, word);
            let dotted = format!("./{word}");
            assert_eq!(mount(&[&dotted, "-o", "lowerdir=/a"]).mountpoint, *dotted);
            let slashed = format!("{word}/");
            assert_eq!(mount(&[&slashed, "-o", "lowerdir=/a"]).mountpoint, *slashed);
        }
        for word in ["Explain", "help", "mount", "overlay", "explain2", ""] {
            assert!(!is_subcommand(OsStr::new(word)), "{word}");
        }
    }

    #[test]
    fn tool_names_agree_with_clap() {
        let names: Vec<String> = ToolCli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert_eq!(names, ["explain", "diff", "export", "check", "stats"]);
        for n in names {
            let Ok(Command::Tool(t)) = p(&[&n, "x"]) else {
                panic!("{n}")
            };
            assert_eq!(t.name(), n);
        }
    }

    #[test]
    fn subcommand_arguments_and_help() {
        let Ok(Command::Tool(Tool::Explain(a))) = p(&[
            "explain",
            "-o",
            "lowerdir=/a",
            "x",
            "--json",
            "-o",
            "upperdir=/u",
        ]) else {
            panic!("explain")
        };
        assert_eq!(a.stack.options, vec!["lowerdir=/a", "upperdir=/u"]);
        assert!(a.stack.json);
        assert_eq!(a.paths, vec!["x"]);
        assert!(
            p(&["explain", "-o", "lowerdir=/a"]).is_err(),
            "a PATH is required"
        );
        let Ok(Command::Tool(Tool::Diff(d))) = p(&["diff"]) else {
            panic!("diff")
        };
        assert_eq!(d.mountpoint, None);
        let Ok(Command::Tool(Tool::Check(c))) = p(&["check", "--fix", "/m"]) else {
            panic!("check")
        };
        assert!(c.fix && c.mountpoint.as_deref() == Some(OsStr::new("/m")));
        assert!(matches!(
            p(&["export", "x"]),
            Ok(Command::Tool(Tool::Export(_)))
        ));
        assert!(matches!(
            p(&["stats", "--json", "/m"]),
            Ok(Command::Tool(Tool::Stats(StatsArgs { json: true, .. })))
        ));
        assert!(p(&["stats"]).is_err(), "a MOUNTPOINT is required");
        for tool in ["explain", "diff", "check", "export", "stats"] {
            let Ok(Command::Help(h)) = p(&[tool, "--help"]) else {
                panic!("{tool} --help")
            };
            for needle in ["layer", "Exit status", "Examples", "-o <OPTIONS>"] {
                if tool == "stats" && needle.starts_with("-o") {
                    continue; // a live mount only
                }
                assert!(h.contains(needle), "{tool}: {needle} missing:\n{h}");
            }
        }
    }
}
