//! layover: a userspace OverlayFS on FUSE. This file parses the command line, sets up
//! logging and hands over to `mount`; it is the one place that prints a fatal error and
//! picks the exit status.

use layover::{cli, config, mount, privilege::Privilege};
use std::process::ExitCode;

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_micros()
        .init();
}

fn main() -> ExitCode {
    // Started by a daemon as its auto_unmount watcher (autounmount.rs): only that.
    if let Some(watcher) = layover::autounmount::watcher_from_env() {
        watcher.run();
    }
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let cmd = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("layover: {e}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        cli::Command::Help(text) | cli::Command::Version(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        cli::Command::Tool(t) => {
            init_logging(false);
            match layover::inspect::run(&t) {
                Ok(layover::inspect::Outcome::Clean) => ExitCode::SUCCESS,
                Ok(layover::inspect::Outcome::Findings) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("layover: {e}");
                    ExitCode::from(2)
                }
            }
        }
        cli::Command::Mount(m) => {
            init_logging(m.debug);
            // Who the daemon runs as is decided once, here; config and mount ask this.
            let privilege = Privilege::detect();
            let result = config::Config::from_args(&m, &privilege)
                .and_then(|cfg| mount::run(cfg, &privilege));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("layover: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
