//! Self-checks of the test harness: it must notice a dead daemon and a differing tree, and
//! clean up after a failing test. (If these pass vacuously, every other test could too.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use layover_testkit::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

#[test]
#[should_panic(expected = "has died")]
fn a_killed_daemon_fails_the_test() {
    let env = TestEnv::new("selfcheck_kill");
    env.layer("l1").file("a", "a");
    env.layer("l2").file("b", "b");
    let pair = env.mount_pair(&["l1", "l2"], Some("upper"));
    let pids = daemon_pids(&pair.layover.mnt, false);
    assert_eq!(pids.len(), 1, "{pids:?}");
    cmd_ok("kill", &[os("-KILL"), os(&pids[0].to_string())]);
    // Its threads are gone within milliseconds as a rule (docs/reliability.md), but a thread
    // in an uninterruptible syscall on a layer (an fsync behind a busy disk, after the heavy
    // suites) finishes it first: once in a full run, more than 5 s. What this test checks is
    // that the harness notices the death, not how soon it comes.
    assert!(wait_until(Duration::from_secs(30), || !process_alive(
        pids[0]
    )));
    // Dropping env must notice and fail (after cleaning up).
}

#[test]
#[should_panic(expected = "trees differ")]
fn a_differing_tree_fails_the_comparison() {
    let env = TestEnv::new("selfcheck_diff");
    env.layer("l1").file("a", "same").file("d/x", "x");
    env.layer("l2").file("b", "b");
    let pair = env.mount_pair(&["l1", "l2"], Some("upper"));
    // Change the layover side's layers behind its back (before anything is cached).
    fs::write(pair.layover.layers.join("upper/extra"), "only in layover").unwrap();
    fs::write(pair.layover.layers.join("upper/a"), "changed").unwrap();
    pair.check_merged("after changing layover's upper");
}

#[test]
fn mounts_are_gone_after_a_failed_test() {
    let root = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let env = TestEnv::new("selfcheck_cleanup");
        env.layer("l1").file("a", "a");
        env.layer("l2").file("b", "b");
        let pair = env.mount_pair(&["l1", "l2"], Some("upper"));
        *root.lock().unwrap() = Some((
            env.root.clone(),
            pair.kernel.mnt.clone(),
            pair.layover.mnt.clone(),
        ));
        panic!("deliberate");
    });
    assert!(r.is_err());
    let (dir, k, l) = root.lock().unwrap().take().unwrap();
    assert!(!is_mounted(&k), "kernel overlay left mounted");
    assert!(!is_mounted(&l), "layover left mounted");
    assert!(
        !mounts().iter().any(|m| m.target.starts_with(&dir)),
        "something left mounted under {}",
        dir.display()
    );
    assert!(!Path::new(&dir).exists(), "{} not removed", dir.display());
    assert!(
        wait_until(Duration::from_secs(2), || daemon_pids(&l, false).is_empty()),
        "layover daemon still running after cleanup"
    );
}
