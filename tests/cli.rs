//! The command line and the daemon's life cycle: bad input is refused with one `layover: ...`
//! line and nothing mounted; good input mounts (directly, and through mount(8) and fuse3's
//! helper); unmounting or SIGTERM ends the daemon promptly and releases the layers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use layover_testkit::*;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs layover with `args` and returns a description of every way it failed to refuse
/// cleanly (empty when it refused cleanly).
fn refusal_problems(env: &TestEnv, what: &str, args: &[&OsStr], mnt: &Path) -> Vec<String> {
    let mut p = Vec::new();
    let r = env.run_layover(args);
    if is_mounted(mnt) {
        p.push(format!("{what}: something is mounted at {}", mnt.display()));
        // Unmount at once so that the next case starts clean.
        env.track(mnt, MountKind::Layover);
        let _ = cmd("umount", &[mnt.as_os_str()]);
        if is_mounted(mnt) {
            let _ = cmd("umount", &[OsStr::new("-l"), mnt.as_os_str()]);
        }
        if !is_mounted(mnt) {
            env.untrack(mnt);
        }
    }
    if r.ok() {
        p.push(format!("{what}: exit status 0, expected failure"));
    }
    let lines: Vec<&str> = r.stderr.lines().collect();
    if lines.len() != 1 || !lines[0].starts_with("layover: ") {
        p.push(format!(
            "{what}: stderr must be one line starting with 'layover: ', got {:?}",
            r.stderr
        ));
    }
    // No daemon may linger for this mountpoint.
    if !wait_until(Duration::from_secs(2), || {
        daemon_pids(mnt, false).is_empty()
    }) {
        p.push(format!(
            "{what}: a layover process for {} is still running: {:?}",
            mnt.display(),
            daemon_pids(mnt, false)
        ));
    }
    p
}

fn assert_all_refused(env: &TestEnv, cases: &[(&str, Vec<OsString>, PathBuf)]) {
    let mut problems = Vec::new();
    for (what, args, mnt) in cases {
        let a: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        problems.extend(refusal_problems(env, what, &a, mnt));
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

fn o(opts: String, mnt: &Path) -> Vec<OsString> {
    vec!["-o".into(), opts.into(), mnt.as_os_str().to_owned()]
}

fn d(p: &Path) -> String {
    p.display().to_string()
}

/// Lower, upper, work, mountpoint and a plain file, all fresh.
struct Dirs {
    l1: PathBuf,
    l2: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    file: PathBuf,
}

fn dirs(env: &TestEnv) -> Dirs {
    let file = env.path("plainfile");
    fs::write(&file, "not a directory").unwrap();
    let l1 = env.mkdir("l1");
    fs::write(l1.join("hello"), "hello from l1").unwrap();
    let l2 = env.mkdir("l2");
    fs::write(l2.join("deep"), "l2").unwrap();
    Dirs {
        l1,
        l2,
        upper: env.mkdir("upper"),
        work: env.mkdir("work"),
        mnt: env.mkdir("mnt"),
        file,
    }
}

#[test]
fn refuses_bad_lowerdirs() {
    let env = TestEnv::new("bad_lower");
    let x = dirs(&env);
    let missing = env.path("does-not-exist");
    assert_all_refused(
        &env,
        &[
            (
                "missing lowerdir",
                o(format!("lowerdir={}", d(&missing)), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "missing second lowerdir",
                o(format!("lowerdir={}:{}", d(&x.l1), d(&missing)), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "lowerdir is a file",
                o(format!("lowerdir={}", d(&x.file)), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "empty lowerdir",
                o("lowerdir=".into(), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "no lowerdir at all",
                o(
                    format!("upperdir={},workdir={}", d(&x.upper), d(&x.work)),
                    &x.mnt,
                ),
                x.mnt.clone(),
            ),
            (
                "no -o at all",
                vec![x.mnt.as_os_str().to_owned()],
                x.mnt.clone(),
            ),
        ],
    );
}

#[test]
fn refuses_bad_upper_work_and_mountpoint() {
    let env = TestEnv::new("bad_upper");
    let x = dirs(&env);
    let missing = env.path("does-not-exist");
    let lower = format!("lowerdir={}:{}", d(&x.l1), d(&x.l2));
    let uw = |u: &Path, w: &Path| format!("{lower},upperdir={},workdir={}", d(u), d(w));
    assert_all_refused(
        &env,
        &[
            (
                "missing upperdir",
                o(uw(&missing, &x.work), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "upperdir is a file",
                o(uw(&x.file, &x.work), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "missing workdir",
                o(uw(&x.upper, &missing), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "workdir is a file",
                o(uw(&x.upper, &x.file), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "missing mountpoint",
                o(uw(&x.upper, &x.work), &missing),
                missing.clone(),
            ),
            (
                "mountpoint is a file",
                o(uw(&x.upper, &x.work), &x.file),
                x.file.clone(),
            ),
            (
                "upperdir without workdir",
                o(format!("{lower},upperdir={}", d(&x.upper)), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "workdir without upperdir",
                o(format!("{lower},workdir={}", d(&x.work)), &x.mnt),
                x.mnt.clone(),
            ),
        ],
    );
}

#[test]
fn refuses_workdir_on_another_filesystem() {
    let env = TestEnv::new("work_other_fs");
    let x = dirs(&env);
    let tmpfs = env.mount_tmpfs("tmpfs", "4m");
    let work = tmpfs.join("work");
    fs::create_dir(&work).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        d(&x.l1),
        d(&x.upper),
        d(&work)
    );
    assert_all_refused(
        &env,
        &[("workdir on a tmpfs", o(opts, &x.mnt), x.mnt.clone())],
    );
}

#[test]
fn refuses_nested_layers_and_mountpoint() {
    let env = TestEnv::new("nested");
    let x = dirs(&env);
    let lower = format!("lowerdir={}:{}", d(&x.l1), d(&x.l2));
    let work_in_upper = x.upper.join("work");
    fs::create_dir(&work_in_upper).unwrap();
    let upper_in_work = x.work.join("upper");
    fs::create_dir(&upper_in_work).unwrap();
    let mnt_in_lower = x.l2.join("mnt");
    fs::create_dir(&mnt_in_lower).unwrap();
    let upper_in_lower = x.l1.join("upper");
    fs::create_dir(&upper_in_lower).unwrap();
    let uw = |u: &Path, w: &Path| format!("{lower},upperdir={},workdir={}", d(u), d(w));
    assert_all_refused(
        &env,
        &[
            (
                "workdir inside upperdir",
                o(uw(&x.upper, &work_in_upper), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "upperdir inside workdir",
                o(uw(&upper_in_work, &x.work), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "mountpoint inside a lower",
                o(uw(&x.upper, &x.work), &mnt_in_lower),
                mnt_in_lower.clone(),
            ),
            (
                "upperdir inside a lower",
                o(uw(&upper_in_lower, &x.work), &x.mnt),
                x.mnt.clone(),
            ),
        ],
    );
}

#[test]
fn refuses_malformed_arguments() {
    let env = TestEnv::new("malformed");
    let x = dirs(&env);
    let m = x.mnt.as_os_str().to_owned();
    let lower = format!("lowerdir={}:{}", d(&x.l1), d(&x.l2));
    let os = |s: &str| OsString::from(s);
    assert_all_refused(
        &env,
        &[
            (
                "lowerdir=a::b (data-only lowers)",
                o(format!("lowerdir={}::{}", d(&x.l1), d(&x.l2)), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "fsync=maybe",
                o(format!("{lower},fsync=maybe"), &x.mnt),
                x.mnt.clone(),
            ),
            (
                "-o without a value",
                vec![m.clone(), os("-o")],
                x.mnt.clone(),
            ),
            (
                "unknown flag -x",
                vec![os("-x"), os("-o"), os(&lower), m.clone()],
                x.mnt.clone(),
            ),
            ("no mountpoint", vec![os("-o"), os(&lower)], x.mnt.clone()),
            (
                "too many positionals",
                vec![os("-o"), os(&lower), os("src"), m.clone(), os("extra")],
                x.mnt.clone(),
            ),
        ],
    );
}

#[test]
fn help_and_version() {
    let env = TestEnv::new("help");
    for flag in ["--help", "-h"] {
        let r = env.run_layover(&[OsStr::new(flag)]);
        assert!(r.ok(), "{flag}: {}", r.status);
        let out = format!("{}{}", r.stdout, r.stderr);
        assert!(
            out.contains("lowerdir"),
            "{flag} should print usage mentioning lowerdir: {out:?}"
        );
    }
    for flag in ["--version", "-V"] {
        let r = env.run_layover(&[OsStr::new(flag)]);
        assert!(r.ok(), "{flag}: {}", r.status);
        let out = format!("{}{}", r.stdout, r.stderr);
        assert!(
            out.contains(env!("CARGO_PKG_VERSION")),
            "{flag} should print the version {}: {out:?}",
            env!("CARGO_PKG_VERSION")
        );
    }
}

#[test]
fn unknown_option_warns_once_but_mounts() {
    let env = TestEnv::new("unknown_opt");
    let x = dirs(&env);
    let r = env.mount_layover(
        &format!("lowerdir={}:{},frobnicate=7", d(&x.l1), d(&x.l2)),
        &x.mnt,
    );
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].contains("frobnicate"),
        "expected a one-line warning naming the option, got {:?}",
        r.stderr
    );
    assert_eq!(fs::read(x.mnt.join("hello")).unwrap(), b"hello from l1");
    env.assert_alive();
}

#[test]
fn repeated_o_options_accumulate() {
    let env = TestEnv::new("repeat_o");
    let x = dirs(&env);
    let r = env.run_layover(&[
        OsStr::new("-o"),
        OsStr::new(&format!("lowerdir={}:{}", d(&x.l1), d(&x.l2))),
        OsStr::new("-o"),
        OsStr::new(&format!("upperdir={}", d(&x.upper))),
        OsStr::new(&format!("-oworkdir={}", d(&x.work))),
        x.mnt.as_os_str(),
    ]);
    if is_mounted(&x.mnt) {
        env.track(&x.mnt, MountKind::Layover);
    }
    assert!(r.ok(), "{}: {}", r.status, r.stderr);
    env.expect_layover_mounted(&x.mnt);
    assert_eq!(fs::read(x.mnt.join("hello")).unwrap(), b"hello from l1");
    assert_eq!(fs::read(x.mnt.join("deep")).unwrap(), b"l2");
    // The upper was taken: the mount is writable and writes land there.
    fs::write(x.mnt.join("new"), "written").unwrap();
    assert_eq!(fs::read(x.upper.join("new")).unwrap(), b"written");
    env.assert_alive();
}

#[test]
fn escaped_comma_and_colon_in_lowerdir() {
    let env = TestEnv::new("escapes");
    let comma = env.mkdir("with,comma");
    fs::write(comma.join("c"), "comma layer").unwrap();
    let colon = env.mkdir("with:colon");
    fs::write(colon.join("k"), "colon layer").unwrap();
    let mnt = env.mkdir("mnt");
    let esc = |p: &Path| d(p).replace(',', "\\,").replace(':', "\\:");
    env.mount_layover(&format!("lowerdir={}:{}", esc(&comma), esc(&colon)), &mnt);
    assert_eq!(fs::read(mnt.join("c")).unwrap(), b"comma layer");
    assert_eq!(fs::read(mnt.join("k")).unwrap(), b"colon layer");
    env.assert_alive();
}

#[test]
fn mount_shows_as_fuse_layover() {
    let env = TestEnv::new("fstype");
    let x = dirs(&env);
    env.mount_layover(
        &format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            d(&x.l1),
            d(&x.l2),
            d(&x.upper),
            d(&x.work)
        ),
        &x.mnt,
    );
    let at = mounts_at(&x.mnt);
    assert_eq!(at.len(), 1, "{at:?}");
    assert_eq!(at[0].fstype, fstype());
    assert_eq!(
        daemon_pids(&x.mnt, false).len(),
        1,
        "exactly one daemon serves the mount"
    );
    env.assert_alive();
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Checks a mount made through a helper, writes through it and unmounts it.
fn check_helper_mount(env: &TestEnv, how: &str, r: &Run, x: &Dirs, name: &str) {
    if is_mounted(&x.mnt) {
        env.track(&x.mnt, MountKind::Layover);
    }
    assert!(
        r.ok(),
        "{how} failed ({}):\n{}{}",
        r.status,
        r.stdout,
        r.stderr
    );
    env.expect_layover_mounted(&x.mnt);
    assert_eq!(
        fs::read(x.mnt.join("hello")).unwrap(),
        b"hello from l1",
        "{how}"
    );
    fs::write(x.mnt.join(name), how).unwrap();
    assert_eq!(fs::read_to_string(x.upper.join(name)).unwrap(), how);
    env.assert_alive();
    umount_retrying(&x.mnt);
    env.untrack(&x.mnt);
    assert!(!is_mounted(&x.mnt), "{how}: still mounted after umount");
    // Each helper mount needs an empty workdir again.
    fs::remove_dir_all(&x.work).unwrap();
    fs::create_dir(&x.work).unwrap();
}

/// Mounting through mount(8) and fuse3's helper (/sbin/mount.fuse3), three ways:
/// - `mount.fuse3 overlay MNT -t fuse.layover -o ...` with `layover` found on PATH;
/// - `mount -t fuse -o ... /path/to/layover#overlay MNT` (the helper's legacy syntax);
/// - `mount -t fuse.layover -o ... overlay MNT`. mount(8) runs its helpers with PATH removed
///   from the environment (util-linux), so /bin/sh's default path is searched: the test puts a
///   symlink in /usr/local/sbin for the duration, unless something else already sits there.
#[test]
fn mount_helper_mount_t_fuse_layover() {
    let env = TestEnv::new("mount_helper");
    let helper = ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("PREREQUISITE MISSING: mount.fuse3 (apt-get install -y fuse3)");
    let x = dirs(&env);
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        d(&x.l1),
        d(&x.l2),
        d(&x.upper),
        d(&x.work)
    );
    let bindir = env.mkdir("bin");
    std::os::unix::fs::symlink(bin(), bindir.join("layover")).unwrap();
    let path = format!(
        "{}:{}",
        d(&bindir),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );

    let mut c = Command::new(helper);
    c.env("PATH", &path).args([
        OsStr::new("overlay"),
        x.mnt.as_os_str(),
        OsStr::new("-t"),
        OsStr::new("fuse.layover"),
        OsStr::new("-o"),
        OsStr::new(&opts),
    ]);
    let r = run_with_timeout(&mut c, &env.root, Duration::from_secs(30));
    check_helper_mount(&env, "mount.fuse3 -t fuse.layover", &r, &x, "via-helper");

    let mut source = bin().into_os_string();
    source.push("#overlay");
    let mut c = Command::new("mount");
    c.args([
        OsStr::new("-t"),
        OsStr::new("fuse"),
        OsStr::new("-o"),
        OsStr::new(&opts),
        &source,
        x.mnt.as_os_str(),
    ]);
    let r = run_with_timeout(&mut c, &env.root, Duration::from_secs(30));
    check_helper_mount(&env, "mount -t fuse PROG#overlay", &r, &x, "via-hash");

    let system = PathBuf::from("/usr/local/sbin/layover");
    let _cleanup = match fs::symlink_metadata(&system) {
        Err(_) => {
            fs::create_dir_all("/usr/local/sbin").unwrap();
            std::os::unix::fs::symlink(bin(), &system).unwrap();
            Some(RemoveOnDrop(system.clone()))
        }
        Ok(_) => {
            eprintln!(
                "NOTE: {} already exists; mount -t fuse.layover will run that binary",
                system.display()
            );
            None
        }
    };
    let mut c = Command::new("mount");
    c.env("PATH", &path).args([
        OsStr::new("-t"),
        OsStr::new("fuse.layover"),
        OsStr::new("-o"),
        OsStr::new(&opts),
        OsStr::new("overlay"),
        x.mnt.as_os_str(),
    ]);
    let r = run_with_timeout(&mut c, &env.root, Duration::from_secs(30));
    check_helper_mount(&env, "mount -t fuse.layover", &r, &x, "via-mount");
}

fn mount_one(env: &TestEnv, x: &Dirs) -> u32 {
    env.mount_layover(
        &format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            d(&x.l1),
            d(&x.l2),
            d(&x.upper),
            d(&x.work)
        ),
        &x.mnt,
    );
    let pids = daemon_pids(&x.mnt, false);
    assert_eq!(
        pids.len(),
        1,
        "expected one daemon for {}: {pids:?}",
        x.mnt.display()
    );
    pids[0]
}

#[test]
fn daemon_exits_after_umount() {
    let env = TestEnv::new("exit_on_umount");
    let x = dirs(&env);
    let pid = mount_one(&env, &x);
    assert_eq!(fs::read(x.mnt.join("hello")).unwrap(), b"hello from l1");
    umount_retrying(&x.mnt);
    env.untrack(&x.mnt);
    assert!(
        wait_until(Duration::from_secs(1), || !process_alive(pid)),
        "daemon {pid} still running 1 s after umount (state {:?})",
        process_state(pid)
    );
}

#[test]
fn sigterm_unmounts_cleanly() {
    let env = TestEnv::new("sigterm");
    let x = dirs(&env);
    let pid = mount_one(&env, &x);
    fs::write(x.mnt.join("before"), "x").unwrap();
    cmd_ok("kill", &[OsStr::new("-TERM"), OsStr::new(&pid.to_string())]);
    let gone = wait_until(Duration::from_secs(2), || !is_mounted(&x.mnt));
    let exited = wait_until(Duration::from_secs(2), || !process_alive(pid));
    assert!(gone, "mount still present 2 s after SIGTERM to the daemon");
    env.untrack(&x.mnt);
    assert!(exited, "daemon {pid} still running 2 s after SIGTERM");
    // The mountpoint is an ordinary directory again (not ENOTCONN).
    let md = fs::metadata(&x.mnt).unwrap();
    assert!(md.is_dir());
    assert_eq!(fs::read(x.upper.join("before")).unwrap(), b"x");
}

/// A daemon killed outright (SIGKILL: no chance to unmount) takes its mount with it
/// (`auto_unmount`, the default): the mountpoint becomes a plain directory again instead of a
/// mount where `stat` succeeds from cached attributes and everything else fails with ENOTCONN.
#[test]
fn killed_daemon_is_unmounted() {
    let env = TestEnv::new("sigkill");
    let x = dirs(&env);
    let pid = mount_one(&env, &x);
    fs::write(x.mnt.join("before"), "x").unwrap();
    cmd_ok("kill", &[OsStr::new("-KILL"), OsStr::new(&pid.to_string())]);
    let gone = wait_until(Duration::from_secs(5), || !is_mounted(&x.mnt));
    assert!(gone, "mount still present 5 s after SIGKILL of the daemon");
    env.untrack(&x.mnt);
    let md = fs::metadata(&x.mnt).expect("the mountpoint is a plain directory again");
    assert!(md.is_dir());
    assert_eq!(fs::read(x.upper.join("before")).unwrap(), b"x");
}

/// With `noauto_unmount` a dead daemon's mount stays, but it is seen as dead: `stat MNT` fails
/// with ENOTCONN once the root's attributes expire (they are kept for at most a second, not
/// for `timeout`), and mounting over it again says what is there and how to remove it.
#[test]
fn dead_mount_is_visible_and_named_when_mounting_over_it() {
    let env = TestEnv::new("deadmount");
    let x = dirs(&env);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},noauto_unmount",
        d(&x.l1),
        d(&x.upper),
        d(&x.work)
    );
    env.mount_layover(&opts, &x.mnt);
    let pids = daemon_pids(&x.mnt, false);
    assert_eq!(pids.len(), 1, "one daemon: {pids:?}");
    fs::metadata(&x.mnt).unwrap();
    cmd_ok(
        "kill",
        &[OsStr::new("-KILL"), OsStr::new(&pids[0].to_string())],
    );
    assert!(
        wait_until(Duration::from_secs(2), || !process_alive(pids[0])),
        "daemon {} survived SIGKILL",
        pids[0]
    );
    let enotconn =
        || fs::metadata(&x.mnt).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN);
    assert!(
        wait_until(Duration::from_secs(3), enotconn),
        "stat of a dead mount's root still succeeds 3 s after its daemon died"
    );
    assert!(is_mounted(&x.mnt), "noauto_unmount: the dead mount stays");
    let again = cmd(
        &bin().to_string_lossy(),
        &[OsStr::new("-o"), OsStr::new(&opts), x.mnt.as_os_str()],
    );
    assert_eq!(
        again.status.code(),
        Some(1),
        "mounting over a dead mount: {again:?}"
    );
    assert!(
        again.stderr.contains("daemon is gone") && again.stderr.contains("umount -l"),
        "the error names the dead mount and the fix: {}",
        again.stderr
    );
    cmd_ok("umount", &[OsStr::new("-l"), x.mnt.as_os_str()]);
    env.untrack(&x.mnt);
}

/// A volatile mount marks its work directory as the kernel's does
/// (`work/incompat/volatile/dirty`). Ended cleanly, it syncs the upper and removes the mark:
/// the next mount takes the upper. Killed, it leaves the mark, and then layover refuses the
/// work directory with one line naming it, as the kernel's overlayfs refuses it.
#[test]
fn volatile_mark_refuses_a_work_directory_a_crash_left() {
    let env = TestEnv::new("volatile");
    let x = dirs(&env);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},volatile",
        d(&x.l1),
        d(&x.upper),
        d(&x.work)
    );
    let mark = x.work.join("work/incompat/volatile/dirty");
    env.mount_layover(&opts, &x.mnt);
    assert!(mark.exists(), "a volatile mount is marked while it lasts");
    fs::write(x.mnt.join("f"), "data").unwrap();
    let pid = daemon_pids(&x.mnt, false)[0];
    umount_retrying(&x.mnt);
    env.untrack(&x.mnt);
    assert!(wait_until(Duration::from_secs(5), || !process_alive(pid)));
    assert!(
        !x.work.join("work/incompat").exists(),
        "a clean end removes the mark"
    );
    assert_eq!(fs::read(x.upper.join("f")).unwrap(), b"data");

    env.mount_layover(&opts, &x.mnt);
    let pid = daemon_pids(&x.mnt, false)[0];
    cmd_ok("kill", &[OsStr::new("-KILL"), OsStr::new(&pid.to_string())]);
    assert!(wait_until(Duration::from_secs(5), || !is_mounted(&x.mnt)));
    env.untrack(&x.mnt);
    assert!(mark.exists(), "a killed volatile mount leaves its mark");
    let again = cmd(
        &bin().to_string_lossy(),
        &[OsStr::new("-o"), OsStr::new(&opts), x.mnt.as_os_str()],
    );
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(
        again.stderr.contains("work/incompat/volatile") && !again.stderr.trim().contains('\n'),
        "one line naming the mark: {}",
        again.stderr
    );
    assert!(!is_mounted(&x.mnt));
    let kernel = cmd(
        "mount",
        &[
            OsStr::new("-t"),
            OsStr::new("overlay"),
            OsStr::new("-o"),
            OsStr::new(&format!(
                "lowerdir={},upperdir={},workdir={}",
                d(&x.l1),
                d(&x.upper),
                d(&x.work)
            )),
            OsStr::new("overlay"),
            x.mnt.as_os_str(),
        ],
    );
    if kernel.ok() {
        umount_retrying(&x.mnt);
    }
    assert!(
        !kernel.ok(),
        "the kernel's overlayfs refuses the marked work directory too"
    );
}

/// After `umount MNT` returns, the daemon must have let go of every layer: a tmpfs holding
/// them unmounts at once, without EBUSY. Twenty rounds, zero failures.
#[test]
fn layers_released_right_after_umount() {
    let env = TestEnv::new("release");
    let mnt = env.mkdir("mnt");
    let fsdir = env.mkdir("layers");
    let mut failures = Vec::new();
    for round in 0..20 {
        cmd_ok(
            "mount",
            &[
                OsStr::new("-t"),
                OsStr::new("tmpfs"),
                OsStr::new("-o"),
                OsStr::new("size=8m"),
                OsStr::new("tmpfs"),
                fsdir.as_os_str(),
            ],
        );
        env.track(&fsdir, MountKind::Other);
        for sub in ["l1", "l2", "upper", "work"] {
            fs::create_dir(fsdir.join(sub)).unwrap();
        }
        fs::write(fsdir.join("l1/a"), "l1 a").unwrap();
        fs::create_dir(fsdir.join("l2/d")).unwrap();
        fs::write(fsdir.join("l2/d/b"), "l2 b").unwrap();
        env.mount_layover(
            &format!(
                "lowerdir={}:{},upperdir={},workdir={}",
                d(&fsdir.join("l1")),
                d(&fsdir.join("l2")),
                d(&fsdir.join("upper")),
                d(&fsdir.join("work"))
            ),
            &mnt,
        );
        // Touch every layer: read a lower file, list a merged dir, copy up, create.
        assert_eq!(fs::read(mnt.join("a")).unwrap(), b"l1 a");
        assert_eq!(list(&mnt.join("d")).unwrap().len(), 1);
        fs::write(mnt.join("d/b"), "changed").unwrap();
        fs::write(mnt.join("new"), "new").unwrap();
        let keep_open = fs::File::open(mnt.join("d/b")).unwrap();
        drop(keep_open);
        env.assert_alive();
        let pids = daemon_pids(&mnt, false);
        assert_eq!(pids.len(), 1, "one daemon for {}: {pids:?}", mnt.display());
        let pid = pids[0];
        umount_retrying(&mnt);
        env.untrack(&mnt);
        let alive_after_umount = process_alive(pid);
        let r = cmd("umount", &[fsdir.as_os_str()]);
        if r.ok() {
            env.untrack(&fsdir);
        } else {
            let who = holders(&fsdir);
            failures.push(format!(
                "round {round}: umount of the layers' tmpfs: {} (holders right after: {who:?}; \
                 layover daemon {pid} still running as umount MNT returned: \
                 {alive_after_umount}, still running now: {})",
                r.stderr.trim(),
                process_alive(pid)
            ));
            // Let the daemon go, then clean up for the next round.
            wait_until(Duration::from_secs(5), || {
                cmd("umount", &[fsdir.as_os_str()]).ok()
            });
            if is_mounted(&fsdir) {
                let _ = cmd("umount", &[OsStr::new("-l"), fsdir.as_os_str()]);
            }
            env.untrack(&fsdir);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 20 rounds could not unmount the layers right after umount:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs layover from `cwd` (for relative mountpoints).
fn run_layover_in(env: &TestEnv, cwd: &Path, args: &[&OsStr]) -> Run {
    let run = env.root.join("run");
    let _ = std::fs::create_dir(&run);
    let mut c = Command::new(bin());
    c.current_dir(cwd).args(args).env("XDG_RUNTIME_DIR", &run);
    run_with_timeout(&mut c, &env.root, Duration::from_secs(30))
}

/// A directory named like a subcommand is a mountpoint in every form used in practice:
/// containers-storage's `-o OPTS MERGED`, mount.fuse3's `SOURCE MOUNTPOINT -o OPTS`, and by
/// hand, relative, with anything but the bare word first.
#[test]
fn mounts_on_a_directory_named_like_a_subcommand() {
    let env = TestEnv::new("subcommand_named_mnt");
    let x = dirs(&env);
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        d(&x.l1),
        d(&x.l2),
        d(&x.upper),
        d(&x.work)
    );
    let os = |s: &str| OsString::from(s);
    for word in ["explain", "diff", "export", "check", "stats"] {
        let mnt = env.mkdir(word);
        let abs = mnt.as_os_str().to_owned();
        let dotted = os(&format!("./{word}"));
        let forms: [(&str, Vec<OsString>); 5] = [
            ("-o OPTS MERGED", vec![os("-o"), os(&opts), abs.clone()]),
            (
                "SOURCE MOUNTPOINT -o OPTS",
                vec![os("overlay"), abs.clone(), os("-o"), os(&opts)],
            ),
            (
                "-o OPTS WORD (relative)",
                vec![os("-o"), os(&opts), os(word)],
            ),
            ("./WORD -o OPTS", vec![dotted, os("-o"), os(&opts)]),
            (
                "-oOPTS WORD (glued, relative)",
                vec![os(&format!("-o{opts}")), os(word)],
            ),
        ];
        for (how, args) in forms {
            let a: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
            let r = run_layover_in(&env, &env.root, &a);
            if is_mounted(&mnt) {
                env.track(&mnt, MountKind::Layover);
            }
            assert!(r.ok(), "{word}, {how}: {}: {}", r.status, r.stderr);
            env.expect_layover_mounted(&mnt);
            assert_eq!(
                fs::read(mnt.join("hello")).unwrap(),
                b"hello from l1",
                "{word}, {how}"
            );
            env.assert_alive();
            umount_retrying(&mnt);
            env.untrack(&mnt);
            fs::remove_dir_all(&x.work).unwrap();
            fs::create_dir(&x.work).unwrap();
        }
    }
}

/// A reserved word as the first argument is a subcommand, even where a directory of that
/// name exists: nothing is mounted; `stats`, `explain`, `check` and `export` run as tools
/// (a usage error is one line, exit status 2). This is also what mount(8) gets for a
/// SOURCE spelled like a subcommand.
#[test]
fn reserved_word_first_is_a_subcommand() {
    let env = TestEnv::new("reserved_first");
    let x = dirs(&env);
    let mnt = env.mkdir("explain");
    let opts = format!("lowerdir={}", d(&x.l1));
    let os = |s: &str| OsString::from(s);
    let cases = [
        (vec![os("export"), os("-o"), os(&opts)], Some(2)),
        (
            vec![os("stats"), mnt.as_os_str().to_owned(), os("-o"), os(&opts)],
            Some(2),
        ),
        (vec![os("stats")], Some(2)),
        // The tools: explain of a path the layers do not hold (exit 1), check with no
        // layers (a usage error).
        (
            vec![
                os("explain"),
                mnt.as_os_str().to_owned(),
                os("-o"),
                os(&opts),
            ],
            Some(1),
        ),
        (vec![os("check")], Some(2)),
    ];
    for (args, code) in cases {
        let a: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let r = run_layover_in(&env, &env.root, &a);
        if is_mounted(&mnt) {
            env.track(&mnt, MountKind::Layover);
        }
        assert!(!is_mounted(&mnt), "{args:?}: mounted");
        assert_eq!(r.status.code(), code, "{args:?}: {}", r.stderr);
        if code == Some(1) {
            assert!(
                r.stdout.contains("does not exist in the merged view"),
                "{r:?}"
            );
        } else {
            assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        }
    }
    let r = env.run_layover(&[OsStr::new("explain"), OsStr::new("--help")]);
    assert!(
        r.ok() && r.stdout.contains("Usage: layover explain"),
        "{r:?}"
    );
}

/// Usage errors exit 2, startup errors 1, help and version 0.
#[test]
fn exit_status_by_kind_of_failure() {
    let env = TestEnv::new("exit_codes");
    let x = dirs(&env);
    let lower = format!("lowerdir={}", d(&x.l1));
    let missing = format!("lowerdir={}", d(&env.path("missing")));
    let os = OsStr::new;
    let cases: [(&[&OsStr], i32); 6] = [
        (&[os("-x"), x.mnt.as_os_str()], 2),
        (&[os("-o"), os(&lower)], 2),
        (&[os("-o"), os(&lower), os("a"), os("b"), os("c")], 2),
        (&[os("-o"), os(&missing), x.mnt.as_os_str()], 1),
        (&[os("--help")], 0),
        (&[os("-V")], 0),
    ];
    for (args, code) in cases {
        let r = env.run_layover(args);
        assert_eq!(r.status.code(), Some(code), "{args:?}: {}", r.stderr);
        assert!(!is_mounted(&x.mnt), "{args:?}: mounted");
    }
}
