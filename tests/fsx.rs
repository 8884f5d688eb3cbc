//! fsx (the File System eXerciser, Rust port: `cargo install fsx`) on a layover mount, over a
//! file that starts in a lower layer, so that fsx's first open for writing copies it up and
//! every later operation (pread/pwrite, mmap reads and writes, truncate, fallocate, hole
//! punching, copy_file_range, sendfile, fsync, close/reopen) runs on the copy. fsx checks
//! every read against its own model of the file and exits non-zero on the first mismatch.
//!
//! fsx is a prerequisite: when it is missing the tests fail loudly (they never skip).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use layover_testkit::*;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const INSTALL: &str = "cargo install fsx --version 0.3.2 --locked";

/// The fsx binary: $FSX, else `fsx` on PATH, else $CARGO_HOME/bin/fsx or ~/.cargo/bin/fsx.
fn fsx_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FSX") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "PREREQUISITE MISSING: $FSX names {}, which is not a file. Install fsx with:\n    {INSTALL}",
            p.display()
        );
        return p;
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v fsx"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    on_path
        .into_iter()
        .chain(cargo_home.map(|c| c.join("bin/fsx")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "PREREQUISITE MISSING: fsx (File System eXerciser) not found on PATH, in \
                 $CARGO_HOME/bin or ~/.cargo/bin. Install it with:\n    {INSTALL}\n\
                 (or point $FSX at the binary)"
            )
        })
}

/// Every operation fsx knows, for the normal mode.
const CONFIG_ALL_OPS: &str = "\
[weights]
close_open = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
";

/// Block mode: the file keeps its size and fsx opens it without O_TRUNC, so the copy-up at
/// its first open copies the lower's data (fsx then overwrites it and checks from there).
const CONFIG_BLOCKMODE: &str = "\
blockmode = true
[weights]
close_open = 0
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 0
fsync = 1
fdatasync = 1
posix_fallocate = 0
punch_hole = 1
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
";

const NUMOPS: u32 = 20_000;
const FLEN: usize = 256 * 1024;

/// `extra`: more mount options (",passthrough=off" serves the data through the daemon with
/// the kernel's writeback cache, as without root).
fn run_fsx(name: &str, seed: u64, config: &str, extra: &str) {
    let fsx = fsx_binary();
    let env = TestEnv::new(name);
    let data: Vec<u8> = (0..FLEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    env.layer("lower").file("dir/fsx.dat", &data);
    env.layer("top").file("other", "other");
    let upper = env.mkdir("upper");
    let work = env.mkdir("work");
    let mnt = env.mkdir("mnt");
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}{extra}",
        env.path("src/top").display(),
        env.path("src/lower").display(),
        upper.display(),
        work.display()
    );
    env.mount_layover(&opts, &mnt);
    let file = mnt.join("dir/fsx.dat");
    assert_eq!(
        fs::read(&file).unwrap(),
        data,
        "the lower file reads wrong before fsx starts"
    );
    assert!(
        !upper.join("dir/fsx.dat").exists(),
        "premise: the file must start in the lower layer only"
    );
    let conf = env.path("fsx.toml");
    fs::write(&conf, config).unwrap();
    let artifacts = env.mkdir("artifacts");
    let mut c = Command::new(&fsx);
    c.arg("-N")
        .arg(NUMOPS.to_string())
        .arg("-S")
        .arg(seed.to_string())
        .arg("-P")
        .arg(&artifacts)
        .arg("-f")
        .arg(&conf)
        .arg(&file);
    let r = run_with_timeout(&mut c, &env.root, Duration::from_secs(240));
    env.assert_alive();
    let tail = |s: &str| -> String {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    assert!(
        r.ok(),
        "fsx -N {NUMOPS} -S {seed} ({}) on layover failed ({}); reproduce with the same seed.\n\
         stdout (tail):\n{}\nstderr (tail):\n{}",
        if config.contains("blockmode") {
            "block mode"
        } else {
            "all operations"
        },
        r.status,
        tail(&r.stdout),
        tail(&r.stderr)
    );
    assert!(
        upper.join("dir/fsx.dat").is_file(),
        "fsx passed, but the file was never copied up to the upper layer"
    );
    assert_eq!(
        fs::read(env.path("src/lower/dir/fsx.dat")).unwrap(),
        data,
        "the lower file changed"
    );
    // A clean unmount leaves the work directory with nothing but an empty work/.
    umount_retrying(&mnt);
    env.untrack(&mnt);
    assert!(
        wait_until(Duration::from_secs(10), || daemon_pids(&mnt, false)
            .is_empty()),
        "layover's daemon still runs 10 s after its unmount"
    );
    let left: Vec<_> = list_tree(&work)
        .into_iter()
        .filter(|(p, k)| !(*k == Kind::Dir && p.as_os_str() == "work"))
        .collect();
    assert!(left.is_empty(), "layover's workdir after unmount: {left:?}");
}

#[test]
fn fsx_all_operations_seed_1() {
    run_fsx("fsx_seed_1", 1, CONFIG_ALL_OPS, "");
}

#[test]
fn fsx_all_operations_seed_2() {
    run_fsx("fsx_seed_2", 2, CONFIG_ALL_OPS, "");
}

#[test]
fn fsx_block_mode_seed_3() {
    run_fsx("fsx_seed_3_blockmode", 3, CONFIG_BLOCKMODE, "");
}

/// Without passthrough the data goes through the daemon and the kernel's writeback cache.
#[test]
fn fsx_writeback_cache_seed_4() {
    run_fsx(
        "fsx_seed_4_writeback",
        4,
        CONFIG_ALL_OPS,
        ",passthrough=off",
    );
}

#[test]
fn fsx_writeback_cache_block_mode_seed_5() {
    run_fsx(
        "fsx_seed_5_writeback_blockmode",
        5,
        CONFIG_BLOCKMODE,
        ",passthrough=off",
    );
}
