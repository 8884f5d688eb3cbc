//! Differential testing against the kernel's overlayfs, through `scripts/difftest/run.py`.
//!
//! `difftest_bounded` runs a fixed set of seeds (random layer stacks and random op sequences,
//! each compared op by op with `mount -t overlay` on identical layers); `difftest_rootless`
//! fewer of them as root of a user namespace, against the kernel's mount there;
//! `difftest_concurrent` has four processes work on one tree at once (on the kernel for
//! reference, then on layover: no crash, no hang, no errno the kernel does not give, a
//! consistent upper); `difftest_regressions` replays every reproducer saved in
//! `tests/regressions/*.json`. The four run one after the other (they share two cores),
//! about two minutes together on a two-core machine. Each fails when the script exits non-zero, with its report
//! (seed, shrunk op list, kernel vs layover results, reproducer path) in the panic message.
//!
//! The script needs root, /dev/fuse and `mount -t overlay`; when one is missing it exits 2
//! and the test fails loudly rather than skipping. Long runs: see scripts/difftest/README.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_layover");

/// The tests take turns: each keeps both cores busy, and timing out under contention would
/// read as a hang.
static SERIAL: Mutex<()> = Mutex::new(());

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo().join("scripts/difftest/run.py")
}

/// Runs run.py with `args` after `--binary BIN --known scripts/difftest/known.txt` (kernel
/// quirks and documented differences); panics with its output unless it exits 0.
fn run_difftest(what: &str, args: &[&str]) {
    let _turn = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let known = repo().join("scripts/difftest/known.txt");
    let out = Command::new("python3")
        .arg(script())
        .arg("--binary")
        .arg(BIN)
        .arg("--known")
        .arg(&known)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run python3 scripts/difftest/run.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert!(
        out.status.success(),
        "{what}: run.py {} exited with {}\n--- report ---\n{stdout}\n--- stderr (tail) ---\n{}",
        args.join(" "),
        out.status,
        tail(&stderr)
    );
    println!("{stdout}");
}

#[test]
fn difftest_bounded() {
    // 96 seeds x 300 ops on two jobs take about a minute when nothing diverges. On a
    // divergence the case is shrunk (at most 20 s each) and the run stops after three, so a
    // failing run stays within the same bound; --max-time is the backstop.
    run_difftest(
        "bounded difftest",
        &[
            "--seeds",
            "1-96",
            "--ops",
            "300",
            "--jobs",
            "2",
            "--shrink-time",
            "20",
            "--stop-after",
            "3",
            "--max-time",
            "150",
        ],
    );
}

/// The rootless reference: the whole run as root of a user namespace of the test user
/// (`--mode userns`: layover opens /dev/fuse itself; the kernel's overlayfs mounted in that
/// namespace, userxattr, is the reference). Fewer seeds than the root run.
#[test]
fn difftest_rootless() {
    run_difftest(
        "rootless difftest (--mode userns)",
        &[
            "--known",
            "scripts/difftest/known-userns.txt",
            "--mode",
            "userns",
            "--seeds",
            "1-32",
            "--ops",
            "300",
            "--jobs",
            "2",
            "--shrink-time",
            "20",
            "--stop-after",
            "3",
            "--max-time",
            "90",
        ],
    );
}

#[test]
fn difftest_concurrent() {
    run_difftest(
        "concurrent difftest",
        &["--concurrent", "10", "--workers", "4", "--seed", "1"],
    );
}

#[test]
fn difftest_regressions() {
    let dir = repo().join("tests/regressions");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .map(|e| e.expect("read tests/regressions").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", dir.display()),
    };
    if files.is_empty() {
        return;
    }
    files.sort();
    let mut args = vec!["--replay".to_owned()];
    args.extend(files.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_difftest("regression replay", &args);
}
