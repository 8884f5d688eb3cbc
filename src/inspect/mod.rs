//! The inspection tools: `explain` (why a path looks as it does), `diff` (what the upper
//! changes against the lowers), `check` (a lint for a layer stack), `export` (the upper
//! as an OCI layer tar) and `stats` (a live mount's figures, asked of its daemon through
//! its socket: `crate::stats`). The others read layers
//! through the same core the daemon serves (`Overlay::open_read_only` and its `Query`), so
//! that a tool and a mount never disagree about a rule; where they need to say *why*, they
//! use the core's per-layer helpers (`Query::layer_*`), which classify with the core's own
//! rule functions. Nothing here writes, except `check --fix` (check.rs says what).
//!
//! Owns: the tools' logic and output (`output`), finding a live mount's layers (`live`).
//! Must not touch: the overlay rules, the daemon, FUSE.

pub mod check;
pub mod diff;
pub mod explain;
pub mod export;
pub mod live;
pub mod output;
pub mod progress;
pub mod stats;

use crate::config::Stack;
use crate::error::StartupError;
use std::path::{Path, PathBuf};

/// Where a tool's layers come from: `-o` options (as for mounting), or a live mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub options: Vec<String>,
    pub mountpoint: Option<PathBuf>,
}

impl Source {
    /// The stack to read. `-o` and a mountpoint are exclusive (the command line says so).
    pub fn stack(&self) -> Result<Stack, StartupError> {
        match (&self.mountpoint, self.options.is_empty()) {
            (Some(m), true) => live::stack_of_mount(m),
            (None, false) => {
                Stack::from_options(&self.options, &crate::privilege::Privilege::detect())
            }
            (Some(_), false) => Err(StartupError::new(
                "give the layers either with -o or as a mountpoint, not both",
            )),
            (None, true) => Err(StartupError::new(
                "no layers given: -o lowerdir=DIR[:DIR...][,upperdir=DIR] or a mountpoint",
            )),
        }
    }
}

/// What a tool run ended with, for main's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 0: nothing to report (check), or the answer was given.
    Clean,
    /// 1: check found problems (that remain after --fix); explain: a path does not exist.
    Findings,
}

/// An I/O error while reading layers, with the path it concerns.
pub fn io_error(what: &str, path: &Path, e: crate::error::Errno) -> StartupError {
    StartupError::new(format!("{what} '{}': {e}", path.display()))
}

/// Runs a tool; what it prints goes to stdout, and an error (with its path) comes back for
/// main to print.
pub fn run(tool: &crate::cli::Tool) -> Result<Outcome, StartupError> {
    match run_tool(tool) {
        // The reader went away (`| head`): not an error of ours.
        Err(e) if e.0 == BROKEN_PIPE => Ok(Outcome::Clean),
        r => r,
    }
}

const BROKEN_PIPE: &str = "writing the output: broken pipe";

fn run_tool(tool: &crate::cli::Tool) -> Result<Outcome, StartupError> {
    use crate::cli::Tool;
    // Buffered: a diff of a large upper writes a line per change.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    match tool {
        Tool::Explain(a) => {
            let r = explain::run(a, &mut out);
            std::io::Write::flush(&mut out).map_err(write_error)?;
            r
        }
        Tool::Diff(a) => {
            let src = Source {
                options: a.stack.options.clone(),
                mountpoint: a.mountpoint.as_ref().map(PathBuf::from),
            };
            diff::run(&src.stack()?, a.stack.json, &mut out)
        }
        Tool::Check(a) => {
            let src = Source {
                options: a.stack.options.clone(),
                mountpoint: a.mountpoint.as_ref().map(PathBuf::from),
            };
            if a.fix && src.mountpoint.is_some() {
                return Err(StartupError::new(
                    "--fix is refused on a live mount: unmount it and give the layers with -o",
                ));
            }
            let r = check::run(&src.stack()?, a.fix, a.stack.json, &mut out);
            std::io::Write::flush(&mut out).map_err(write_error)?;
            r
        }
        Tool::Export(a) => {
            let src = Source {
                options: a.options.clone(),
                mountpoint: a.mountpoint.as_ref().map(PathBuf::from),
            };
            let output = a.output.as_ref().map(PathBuf::from);
            if output.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                return Err(StartupError::new(
                    "export writes a tar: redirect standard output or give --output FILE",
                ));
            }
            let stack = src.stack()?;
            export::run(&stack, output.as_deref(), a.compress, &mut out)
        }
        Tool::Stats(a) => stats::run(Path::new(&a.mountpoint), a.json, &mut out),
    }
}

/// A write to stdout failed (a closed pipe ends the run quietly: see main).
pub fn write_error(e: std::io::Error) -> StartupError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return StartupError::new(BROKEN_PIPE);
    }
    StartupError::new(format!("writing the output: {e}"))
}
