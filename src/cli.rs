//! The command line as the user typed it: fuse-overlayfs's syntax
//! `layover [-f] [-d] [-o OPTS]... [SOURCE] MOUNTPOINT`, plus `--help` and `--version`.
//!
//! Subcommands (explain, diff, export, check) will be recognised by their first word before
//! the mount syntax is parsed, so they can never be mistaken for a SOURCE.

use crate::error::StartupError;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

/// What the user asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    Mount(MountArgs),
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

pub const USAGE: &str = "\
usage: layover [-f] [-d] [-o OPTIONS]... [SOURCE] MOUNTPOINT

Mounts a merged view of one writable upper directory over read-only lower directories,
with the semantics of the kernel's overlayfs, through FUSE.

  -o lowerdir=TOP:...:BOTTOM   read-only layers, the leftmost highest (required)
  -o upperdir=DIR,workdir=DIR  the writable layer and its staging directory, on one
                               filesystem (both or neither; without them the mount is
                               read-only)
  -o fsync=0 | volatile        skip the fsync before a copy-up is renamed into place
  -o timeout=SECONDS           how long the kernel caches entries and attributes
  -o userxattr                 use user.overlay.* markers instead of trusted.overlay.*
  -o whiteout=chardev|file     write 0/0 devices or .wh. files (default: as the upper has)
  -o allow_other,ro,nodev,...  generic FUSE and mount options
  -f                           stay in the foreground
  -d                           foreground, with debug logging (RUST_LOG works too)
  -h, --help                   this text
  -V, --version                the version

Options may repeat and are comma-separated; \\, and \\: escape separators.
Unmount with `umount MOUNTPOINT` or `fusermount3 -u MOUNTPOINT`.";

/// Parses the arguments after the program name.
pub fn parse(args: &[OsString]) -> Result<Command, StartupError> {
    let mut m = MountArgs::default();
    let mut positional: Vec<OsString> = Vec::new();
    let mut i = 0;
    let mut only_positional = false;
    while i < args.len() {
        let arg = &args[i];
        let bytes = arg.as_bytes();
        i += 1;
        if only_positional || !bytes.starts_with(b"-") || bytes == b"-" {
            positional.push(arg.clone());
            continue;
        }
        match bytes {
            b"--" => only_positional = true,
            b"-h" | b"--help" => return Ok(Command::Help),
            b"-V" | b"--version" => return Ok(Command::Version),
            b"-f" => m.foreground = true,
            b"-d" | b"--debug" => {
                m.foreground = true;
                m.debug = true;
            }
            b"-s" => {} // single-threaded in libfuse: accepted, we stay multi-threaded
            b"-o" => {
                let Some(v) = args.get(i) else {
                    return Err(StartupError::new("option -o needs an argument"));
                };
                i += 1;
                m.options.push(to_utf8(v)?);
            }
            _ if bytes.starts_with(b"-o") => {
                m.options
                    .push(to_utf8(&OsString::from(std::ffi::OsStr::from_bytes(
                        &bytes[2..],
                    )))?)
            }
            _ => {
                return Err(StartupError::new(format!(
                    "unknown argument '{}' (see layover --help)",
                    arg.to_string_lossy()
                )));
            }
        }
    }
    match positional.len() {
        0 => Err(StartupError::new(
            "no mountpoint given (see layover --help)",
        )),
        1 => {
            m.mountpoint = positional.remove(0);
            Ok(Command::Mount(m))
        }
        2 => {
            m.mountpoint = positional.remove(1);
            m.source = Some(positional.remove(0));
            Ok(Command::Mount(m))
        }
        _ => Err(StartupError::new(format!(
            "too many arguments: '{}' (expected [SOURCE] MOUNTPOINT)",
            positional[2].to_string_lossy()
        ))),
    }
}

fn to_utf8(v: &OsString) -> Result<String, StartupError> {
    v.to_str().map(str::to_owned).ok_or_else(|| {
        StartupError::new(format!(
            "option '{}' is not valid UTF-8",
            v.to_string_lossy()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, StartupError> {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn mount_syntax() {
        let Command::Mount(m) = p(&["-o", "lowerdir=/a", "-oallow_other", "-f", "/mnt"]).unwrap()
        else {
            panic!("not a mount")
        };
        assert_eq!(m.options, vec!["lowerdir=/a", "allow_other"]);
        assert!(m.foreground && !m.debug);
        assert_eq!(m.mountpoint, "/mnt");
        assert_eq!(m.source, None);
    }

    #[test]
    fn source_and_mountpoint() {
        let Command::Mount(m) = p(&["overlay", "/mnt", "-o", "rw,lowerdir=/a"]).unwrap() else {
            panic!("not a mount")
        };
        assert_eq!(m.source.as_deref(), Some(std::ffi::OsStr::new("overlay")));
        assert_eq!(m.mountpoint, "/mnt");
    }

    #[test]
    fn errors() {
        assert!(p(&[]).is_err());
        assert!(p(&["-o"]).is_err());
        assert!(p(&["-x", "/mnt"]).is_err());
        assert!(p(&["a", "b", "c"]).is_err());
        assert_eq!(p(&["--help"]).unwrap(), Command::Help);
        assert_eq!(p(&["-V"]).unwrap(), Command::Version);
        let Command::Mount(m) = p(&["-d", "/m"]).unwrap() else {
            panic!()
        };
        assert!(m.debug && m.foreground);
    }
}
