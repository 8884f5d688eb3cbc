//! The one kernel-vs-layover comparer. A [`Pair`] is the kernel's overlayfs and layover
//! mounted on identical copies of the same fixture layers ([`TestEnv::mount_pair`]); it runs
//! an operation on both and compares errnos and results ([`Pair::op`]), compares the merged
//! trees ([`Pair::check_merged`]), the upper layers on disk ([`Pair::check_upper`]) and the
//! lowers ([`Pair::check_lowers_untouched`]), and at the end of a writing test unmounts
//! layover and has the kernel mount layover's upper ([`Pair::finish`]).
//!
//! A mismatch fails the test at once, or, with [`Pair::collect`], is recorded and reported
//! with every other one at [`Pair::finish`], so that one difference does not hide the next.
//! "premise" in a message means the kernel did not do what the test expected: the test, not
//! layover, is then wrong.

use crate::env::TestEnv;
use crate::mode::{Mode, as_root, enter_user, mode, test_user};
use crate::procfs::{daemon_pids, umount_retrying};
use crate::run::{cmd_ok, errno_name, os, show, wait_until};
use crate::snapshot::{Kind, SnapOpts, Snapshot, list_tree, snapshot_with, walk_times};
use crate::sys::{record_times, utimensat};
use crate::tree::{Compare, Who, blur_recent_times, normalise_upper, tree_report};
use std::fmt::{Debug, Write as _};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// One mount's side of a pair: its mountpoint and the layers it runs on.
#[derive(Clone, Debug)]
pub struct Side {
    pub mnt: PathBuf,
    /// The directory holding this side's copy of the layers (`<layers>/<layer name>`).
    pub layers: PathBuf,
    /// The lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// The upper layer and the work directory (None for a read-only mount).
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

impl Side {
    fn of(mnt: PathBuf, layers: &Path, spec: &PairSpec) -> Side {
        Side {
            mnt,
            lowers: spec.lowers.iter().map(|l| layers.join(l)).collect(),
            upper: spec.upper.map(|u| layers.join(u)),
            work: spec.upper.map(|u| layers.join(format!("{u}.work"))),
            layers: layers.to_owned(),
        }
    }

    /// The upper layer (the test mounted one).
    pub fn upper(&self) -> &Path {
        self.upper.as_deref().expect("a mount with an upper layer")
    }

    /// The work directory (the test mounted an upper layer).
    pub fn work(&self) -> &Path {
        self.work.as_deref().expect("a mount with an upper layer")
    }

    /// The overlay options for these layers, with `work` as the work directory (and
    /// `userxattr` in the rootless modes).
    pub fn opts(&self, work: &Path) -> String {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let userxattr = if mode().rootless() { ",userxattr" } else { "" };
        format!(
            "lowerdir={},upperdir={},workdir={}{userxattr}",
            lowers.join(":"),
            self.upper().display(),
            work.display()
        )
    }
}

/// Both merged views of one set of layers, and the comparison of what they do.
pub struct Pair {
    pub kernel: Side,
    pub layover: Side,
    /// Record mismatches and report them all at [`Pair::finish`], instead of failing at the
    /// first.
    pub collect: bool,
    /// Whether the kernel's mount keeps one st_dev and d_ino == st_ino (not when its layers
    /// span several file systems).
    pub kernel_inodes: bool,
    /// Compare file contents byte for byte instead of through the snapshots' hashes (much
    /// faster for trees with files of many MiB; the diffs then show no content).
    pub raw_content: bool,
    /// Times at or after this (seconds) count as "set during the test" and compare only as
    /// recent ([`blur_recent_times`]); None compares every time exactly.
    pub recent_after: Option<i64>,
    fails: Mutex<Vec<String>>,
}

impl Pair {
    /// A pair of mounts already made, comparing strictly (fail at once, exact times).
    pub fn new(kernel: Side, layover: Side) -> Pair {
        Pair {
            kernel,
            layover,
            collect: false,
            kernel_inodes: true,
            raw_content: false,
            recent_after: None,
            fails: Mutex::new(Vec::new()),
        }
    }

    /// The same relative path under both mounts: (kernel, layover).
    pub fn both(&self, rel: impl AsRef<Path>) -> (PathBuf, PathBuf) {
        (
            self.kernel.mnt.join(rel.as_ref()),
            self.layover.mnt.join(rel.as_ref()),
        )
    }

    /// A mismatch: fails the test now, or records it ([`Pair::collect`]).
    pub fn fail(&self, msg: String) {
        if !self.collect {
            panic!("{msg}");
        }
        eprintln!("MISMATCH: {msg}");
        self.fails.lock().unwrap().push(msg);
    }

    /// Runs `f` on the kernel's mount root, then on layover's: the kernel must give `want`
    /// (None: success), layover what the kernel gave, and on success the same value.
    pub fn op<R: PartialEq + Debug>(
        &self,
        what: &str,
        want: Option<i32>,
        f: impl Fn(&Path) -> io::Result<R>,
    ) -> Option<R> {
        self.both_ways(what, Some(want), f)
    }

    /// Like [`Pair::op`] without an expectation: layover must give whatever the kernel gives.
    pub fn agree<R: PartialEq + Debug>(
        &self,
        what: &str,
        f: impl Fn(&Path) -> io::Result<R>,
    ) -> Option<R> {
        self.both_ways(what, None, f)
    }

    /// [`Pair::op`] expecting success.
    pub fn ok<R: PartialEq + Debug>(
        &self,
        what: &str,
        f: impl Fn(&Path) -> io::Result<R>,
    ) -> Option<R> {
        self.op(what, None, f)
    }

    /// [`Pair::op`] expecting `errno`.
    pub fn err<R: PartialEq + Debug>(
        &self,
        what: &str,
        errno: i32,
        f: impl Fn(&Path) -> io::Result<R>,
    ) {
        self.op(what, Some(errno), f);
    }

    /// `op` on `rel` under both mounts: the kernel must fail with `want` (None: succeed) and
    /// layover as the kernel does; the values are not compared (files, directory streams).
    pub fn same_errno<R: Debug>(
        &self,
        rel: &Path,
        what: &str,
        want: Option<i32>,
        op: impl Fn(&Path) -> io::Result<R>,
    ) {
        let what = format!("{what} {}", show(rel.as_os_str().as_bytes()));
        let _ = self.errnos(&what, Some(want), |m| op(&m.join(rel)));
    }

    /// Runs `f` on both mount roots and checks the errnos: the kernel's against `want`
    /// (when given), layover's against the kernel's. Returns both results.
    fn errnos<R: Debug>(
        &self,
        what: &str,
        want: Option<Option<i32>>,
        f: impl Fn(&Path) -> io::Result<R>,
    ) -> (io::Result<R>, io::Result<R>) {
        let kr = f(&self.kernel.mnt);
        let lr = f(&self.layover.mnt);
        let errno_of = |r: &io::Result<R>| r.as_ref().err().map(|e| e.raw_os_error().unwrap_or(-1));
        let (ke, le) = (errno_of(&kr), errno_of(&lr));
        if let Some(want) = want
            && ke != want
        {
            self.fail(format!(
                "premise: kernel {what}: {} ({kr:?}), the test expected {}",
                errno_name(ke),
                errno_name(want)
            ));
        }
        if le != ke {
            self.fail(format!(
                "{what}: kernel gives {}, layover gives {}",
                errno_name(ke),
                errno_name(le)
            ));
        }
        (kr, lr)
    }

    fn both_ways<R: PartialEq + Debug>(
        &self,
        what: &str,
        want: Option<Option<i32>>,
        f: impl Fn(&Path) -> io::Result<R>,
    ) -> Option<R> {
        match self.errnos(what, want, f) {
            (Ok(k), Ok(l)) => {
                if k != l {
                    self.fail(format!("{what}: kernel returns {k:?}, layover {l:?}"));
                }
                Some(l)
            }
            _ => None,
        }
    }

    fn snap(&self, root: &Path) -> Snapshot {
        let mut s = snapshot_with(
            root,
            SnapOpts {
                xattrs: true,
                content: !self.raw_content,
            },
        );
        if let Some(cutoff) = self.recent_after {
            blur_recent_times(&mut s, cutoff);
        }
        s
    }

    /// With `raw_content`: the contents of the regular files both snapshots hold, compared
    /// byte for byte.
    fn check_contents(&self, a: &Snapshot, la: &str, b: &Snapshot, lb: &str) {
        if !self.raw_content {
            return;
        }
        for (rel, n) in &a.nodes {
            if n.kind != Kind::File || b.nodes.get(rel).map(|m| m.kind) != Some(Kind::File) {
                continue;
            }
            let p = Path::new(std::ffi::OsStr::from_bytes(rel));
            let (x, y) = (fs::read(a.root.join(p)), fs::read(b.root.join(p)));
            match (&x, &y) {
                (Ok(x), Ok(y)) if x == y => {}
                (Ok(x), Ok(y)) => self.fail(format!(
                    "{}: content differs: {la} {} bytes, {lb} {} bytes, first difference at {:?}",
                    show(rel),
                    x.len(),
                    y.len(),
                    x.iter().zip(y.iter()).position(|(p, q)| p != q)
                )),
                _ => self.fail(format!(
                    "{}: reading: {la} {:?}, {lb} {:?}",
                    show(rel),
                    x.map(|v| v.len()),
                    y.map(|v| v.len())
                )),
            }
        }
    }

    /// Compares two snapshots, reporting a difference as "{what}:\n{report}".
    #[allow(clippy::too_many_arguments)]
    fn compare_snaps(
        &self,
        what: &str,
        a: (&Snapshot, &str, Option<Who>),
        b: (&Snapshot, &str, Option<Who>),
        cmp: &Compare,
    ) {
        let r = tree_report(a.0, a.1, a.2, b.0, b.1, b.2, cmp);
        if !r.is_empty() {
            self.fail(format!("{what}:\n{r}"));
        }
        self.check_contents(a.0, a.1, b.0, b.1);
    }

    /// The merged trees now, with the default fields; see [`Pair::check_merged_with`].
    pub fn check_merged(&self, when: &str) {
        self.check_merged_with(when, &Compare::default());
    }

    /// The merged trees now: every field `cmp` names, each mount's inode rules, and which
    /// names share an inode.
    pub fn check_merged_with(&self, when: &str, cmp: &Compare) {
        let k = self.snap(&self.kernel.mnt);
        let l = self.snap(&self.layover.mnt);
        let kernel_rules = self.kernel_inodes.then_some(Who::Kernel);
        self.compare_snaps(
            &format!("merged trees {when}"),
            (&k, "kernel", kernel_rules),
            (&l, "layover", Some(Who::Layover)),
            cmp,
        );
    }

    /// The upper layers on disk now, without the kernel's own bookkeeping xattrs and its
    /// sharing of one inode among all whiteouts ([`normalise_upper`]).
    /// (Read as root: see [`crate::mode`].)
    pub fn check_upper(&self, when: &str) {
        let mut k = as_root(|| self.snap(self.kernel.upper()));
        let mut l = as_root(|| self.snap(self.layover.upper()));
        normalise_upper(&mut k);
        normalise_upper(&mut l);
        self.compare_snaps(
            &format!("upper layers on disk {when}"),
            (&k, "kernel's upper", Some(Who::Layover)),
            (&l, "layover's upper", Some(Who::Layover)),
            &Compare::default(),
        );
    }

    /// The lower layers on disk: the kernel never changes them (it opens lower files with
    /// O_NOATIME, so not even their atimes move); layover must leave its copies as the
    /// kernel left its own (types and mtimes, and atimes when asked).
    pub fn check_lowers_untouched(&self, atimes: bool) {
        let walk = |d: &Path| {
            let mut w = as_root(|| walk_times(d));
            if !atimes {
                for v in w.values_mut() {
                    v.1 = (0, 0);
                }
            }
            w
        };
        for (kl, ll) in self.kernel.lowers.iter().zip(&self.layover.lowers) {
            let (k, l) = (walk(kl), walk(ll));
            let mut d = Vec::new();
            for (rel, kv) in &k {
                match l.get(rel) {
                    Some(lv) if lv == kv => {}
                    lv => d.push(format!(
                        "{}: kernel's copy (type, atime, mtime) {kv:?}, layover's {lv:?}",
                        rel.display()
                    )),
                }
            }
            d.extend(
                l.keys()
                    .filter(|rel| !k.contains_key(*rel))
                    .map(|rel| format!("{}: only in layover's copy", rel.display())),
            );
            if !d.is_empty() {
                let n = d.len();
                d.truncate(20);
                self.fail(format!(
                    "layover changed its lower layer {} ({n} path(s)); the kernel left its copy alone:\n  {}",
                    ll.display(),
                    d.join("\n  ")
                ));
            }
        }
    }

    /// The end of a test that writes: the merged trees and the upper layers once more; then
    /// layover is unmounted (its daemon must exit, its work directory hold nothing but empty
    /// `work` and `index`), the kernel mounts layover's upper and must show what its own
    /// mount showed, the kernel's own mount goes, and the lowers must be as the kernel left
    /// its copy. Fails the test with every mismatch recorded along the way.
    pub fn finish(self, env: &TestEnv) {
        env.assert_alive();
        self.check_merged("at the end");
        self.check_upper("at the end");
        let kview = self.snap(&self.kernel.mnt);

        // Unmount layover; its daemon must be gone before its work dir is judged.
        as_root(|| umount_retrying(&self.layover.mnt));
        env.untrack(&self.layover.mnt);
        if !wait_until(Duration::from_secs(10), || {
            daemon_pids(&self.layover.mnt, false).is_empty()
        }) {
            self.fail("layover's daemon still runs 10 s after its unmount".into());
        }
        let leftovers: Vec<String> = as_root(|| list_tree(self.layover.work()))
            .into_iter()
            .filter(|(p, k)| {
                !(*k == Kind::Dir && (p == Path::new("work") || p == Path::new("index")))
            })
            .map(|(p, k)| format!("{} ({k:?})", p.display()))
            .collect();
        if !leftovers.is_empty() {
            self.fail(format!(
                "layover's workdir is not empty after a clean unmount: {leftovers:?}"
            ));
        }
        self.check_remount(env, &kview);
        // The kernel keeps one shared whiteout (work/#NNN) in its workdir; anything else is
        // news.
        env.unmount_kernel_in_mode(&self.kernel.mnt);
        let kleft = as_root(|| temp_files(self.kernel.work()));
        if !kleft.is_empty() {
            eprintln!("note: the kernel's workdir after unmount holds {kleft:?}");
        }
        self.check_lowers_untouched(false);
        let fails = std::mem::take(&mut *self.fails.lock().unwrap());
        assert!(
            fails.is_empty(),
            "\n{} mismatch(es):\n\n{}",
            fails.len(),
            fails.join("\n\n")
        );
    }

    /// The kernel's view of layover's upper (layover unmounted), beside the kernel's own.
    fn check_remount(&self, env: &TestEnv, kview: &Snapshot) {
        let fresh = self.layover.work().with_file_name("kernel-check.work");
        as_root(|| fs::create_dir_all(&fresh)).unwrap();
        let mnt = env.mkdir("kernel-check.mnt");
        if mode() == Mode::User {
            as_root(|| give_to_user(&[&fresh, &mnt]));
        }
        match env.mount_kernel_in_mode(&self.layover.opts(&fresh), &mnt) {
            Err(e) => self.fail(format!("the kernel refuses to mount layover's upper: {e}")),
            Ok(mnt) => {
                let v = self.snap(&mnt);
                let rules = self.kernel_inodes.then_some(Who::Kernel);
                self.compare_snaps(
                    "after remounting",
                    (kview, "kernel's own view", rules),
                    (&v, "kernel's view of layover's upper", rules),
                    &Compare::default(),
                );
            }
        }
    }
}

impl Drop for Pair {
    /// Recorded mismatches are never dropped silently (a test that forgot [`Pair::finish`]).
    fn drop(&mut self) {
        let fails = std::mem::take(&mut *self.fails.lock().unwrap_or_else(|e| e.into_inner()));
        if !fails.is_empty() && !std::thread::panicking() {
            panic!(
                "\n{} mismatch(es), never reported:\n\n{}",
                fails.len(),
                fails.join("\n\n")
            );
        }
    }
}

/// Anything but directories and whiteouts in a work directory, as "path (type)".
pub fn temp_files(work: &Path) -> Vec<String> {
    list_tree(work)
        .into_iter()
        .filter(|(p, k)| {
            let whiteout =
                *k == Kind::Char && fs::symlink_metadata(work.join(p)).is_ok_and(|m| m.rdev() == 0);
            *k != Kind::Dir && !whiteout
        })
        .map(|(p, k)| format!("{} ({k:?})", p.display()))
        .collect()
}

/// Options for [`TestEnv::mount_pair_with`].
#[derive(Clone, Debug, Default)]
pub struct PairSpec<'a> {
    /// Layer names, top first, as created with [`TestEnv::layer`].
    pub lowers: Vec<&'a str>,
    /// The upper layer's name (its work dir is made beside it); None for a read-only mount.
    pub upper: Option<&'a str>,
    /// Options given to both mounts (e.g. "userxattr").
    pub extra: Vec<&'a str>,
    /// Options given to layover's mount only (e.g. "strict_copy_up=1").
    pub layover_extra: Vec<&'a str>,
}

impl TestEnv {
    /// The overlay options for layers that live in `dir`.
    pub fn overlay_opts(dir: &Path, spec: &PairSpec) -> String {
        let lowers: Vec<String> = spec
            .lowers
            .iter()
            .map(|l| dir.join(l).display().to_string())
            .collect();
        let mut o = format!("lowerdir={}", lowers.join(":"));
        if let Some(u) = spec.upper {
            let work = dir.join(format!("{u}.work"));
            as_root(|| fs::create_dir_all(&work)).expect("mkdir work");
            write!(
                o,
                ",upperdir={},workdir={}",
                dir.join(u).display(),
                work.display()
            )
            .unwrap();
        }
        for e in &spec.extra {
            o.push(',');
            o.push_str(e);
        }
        if mode().rootless() && !spec.extra.contains(&"userxattr") {
            o.push_str(",userxattr");
        }
        o
    }

    /// Mounts the kernel overlay and layover on two identical copies of the fixture.
    pub fn mount_pair(&self, lowers: &[&str], upper: Option<&str>) -> Pair {
        self.mount_pair_with(&PairSpec {
            lowers: lowers.to_vec(),
            upper,
            extra: vec![],
            layover_extra: vec![],
        })
    }

    /// [`TestEnv::mount_pair`] with options.
    pub fn mount_pair_with(&self, spec: &PairSpec) -> Pair {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let (kdir, fdir) = as_root(|| {
            self.prepare_upper(spec);
            (
                self.copy_layers(&format!("k{n}")),
                self.copy_layers(&format!("f{n}")),
            )
        });
        self.mount_both(
            spec,
            [kdir, fdir],
            [format!("k{n}.mnt"), format!("f{n}.mnt")],
        )
    }

    /// [`TestEnv::mount_pair_with`], with the two copies of the layers made by
    /// [`copy_layers_exact`] (identical atimes too).
    pub fn mount_pair_exact(&self, spec: &PairSpec) -> Pair {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let [kdir, fdir]: [PathBuf; 2] = as_root(|| {
            self.prepare_upper(spec);
            copy_layers_exact(self, &[&format!("xk{n}"), &format!("xf{n}")])
        })
        .try_into()
        .unwrap();
        self.mount_both(
            spec,
            [kdir, fdir],
            [format!("xk{n}.mnt"), format!("xf{n}.mnt")],
        )
    }

    fn prepare_upper(&self, spec: &PairSpec) {
        if let Some(u) = spec.upper {
            fs::create_dir_all(self.root.join("src").join(u)).expect("mkdir upper");
        }
    }

    /// Mounts the kernel's overlay on the layers in `dirs[0]` at `mnts[0]`, layover on
    /// `dirs[1]` at `mnts[1]`.
    /// In [`Mode::User`] the copies' root-owned objects and the mountpoints are given to
    /// the test user first, and the thread takes the user's credentials once both are
    /// mounted (see [`crate::mode`]).
    fn mount_both(&self, spec: &PairSpec, dirs: [PathBuf; 2], mnts: [String; 2]) -> Pair {
        let [kdir, fdir] = dirs;
        let kmnt = self.mkdir(&mnts[0]);
        let fmnt = self.mkdir(&mnts[1]);
        let kopts = as_root(|| Self::overlay_opts(&kdir, spec));
        let mut lopts = as_root(|| Self::overlay_opts(&fdir, spec));
        if mode() == Mode::User {
            as_root(|| give_to_user(&[&kdir, &fdir, &kmnt, &fmnt]));
        }
        let kat = self
            .mount_kernel_in_mode(&kopts, &kmnt)
            .unwrap_or_else(|e| panic!("{e}"));
        for e in &spec.layover_extra {
            lopts.push(',');
            lopts.push_str(e);
        }
        as_root(|| self.mount_layover(&lopts, &fmnt));
        enter_user();
        Pair::new(Side::of(kat, &kdir, spec), Side::of(fmnt, &fdir, spec))
    }
}

/// Gives what root owns under each of `paths` (symlinks themselves, not followed) to the test
/// user and its group ([`Mode::User`]): an ordinary user's layers are its own.
pub fn give_to_user(paths: &[&Path]) {
    let (name, _, _) = test_user();
    for p in paths {
        cmd_ok(
            "chown",
            &[os("-hR"), os("--from=0"), os(&name), p.as_os_str()],
        );
        cmd_ok(
            "chown",
            &[
                os("-hR"),
                os("--from=:0"),
                os(&format!(":{name}")),
                p.as_os_str(),
            ],
        );
    }
}

/// Copies the fixture layers (`src/`) to each of `dests` with `cp -a`, then gives every copy
/// exactly the atimes and mtimes the fixture had before any copying: `cp` reads the fixture,
/// which moves its atimes (relatime, old fixture times), so a second plain copy would not
/// match the first.
pub fn copy_layers_exact(env: &TestEnv, dests: &[&str]) -> Vec<PathBuf> {
    let src = env.root.join("src");
    let times = record_times(&src);
    let mut from = src.into_os_string();
    from.push("/.");
    let dirs: Vec<PathBuf> = dests.iter().map(|d| env.root.join(d)).collect();
    for d in &dirs {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        cmd_ok("cp", &[os("-a"), &from, d.as_os_str()]);
        for (rel, atime, mtime) in &times {
            let p = d.join(rel);
            utimensat(&p, *atime, *mtime, true)
                .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
        }
    }
    dirs
}
