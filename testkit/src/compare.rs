//! The kernel's overlay and layover side by side: both mounted on identical copies of one set
//! of fixture layers ([`TestEnv::mount_pair`]), and the comparison of what they show.

use crate::env::TestEnv;
use crate::run::{cmd_ok, os};
use crate::snapshot::{Snapshot, snapshot};
use crate::sys::{record_times, utimensat};
use crate::tree::{Compare, assert_same_tree};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Both merged views of one set of layers.
pub struct Pair {
    /// The kernel overlay's mountpoint.
    pub kernel: PathBuf,
    /// layover's mountpoint.
    pub layover: PathBuf,
    /// The directories holding each mount's copy of the layers (`<dir>/<layer name>`).
    pub kernel_layers: PathBuf,
    pub layover_layers: PathBuf,
}

impl Pair {
    /// The same relative path under both mounts: (kernel, layover).
    pub fn both(&self, rel: impl AsRef<Path>) -> (PathBuf, PathBuf) {
        (
            self.kernel.join(rel.as_ref()),
            self.layover.join(rel.as_ref()),
        )
    }
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
            fs::create_dir_all(&work).expect("mkdir work");
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
        o
    }

    /// Mounts the kernel overlay and layover on two identical copies of the fixture.
    pub fn mount_pair(&self, lowers: &[&str], upper: Option<&str>) -> Pair {
        self.mount_pair_with(&PairSpec {
            lowers: lowers.to_vec(),
            upper,
            extra: vec![],
        })
    }

    pub fn mount_pair_with(&self, spec: &PairSpec) -> Pair {
        if let Some(u) = spec.upper {
            fs::create_dir_all(self.root.join("src").join(u)).expect("mkdir upper");
        }
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let kdir = self.copy_layers(&format!("k{n}"));
        let fdir = self.copy_layers(&format!("f{n}"));
        let kmnt = self.mkdir(format!("k{n}.mnt"));
        let fmnt = self.mkdir(format!("f{n}.mnt"));
        self.mount_kernel(&Self::overlay_opts(&kdir, spec), &kmnt);
        self.mount_layover(&Self::overlay_opts(&fdir, spec), &fmnt);
        Pair {
            kernel: kmnt,
            layover: fmnt,
            kernel_layers: kdir,
            layover_layers: fdir,
        }
    }

    /// [`TestEnv::mount_pair_with`], with the two copies of the layers made by
    /// [`copy_layers_exact`] (identical atimes too).
    pub fn mount_pair_exact(&self, spec: &PairSpec) -> Pair {
        if let Some(u) = spec.upper {
            fs::create_dir_all(self.root.join("src").join(u)).expect("mkdir upper");
        }
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let (kname, fname) = (format!("xk{n}"), format!("xf{n}"));
        let dirs = copy_layers_exact(self, &[&kname, &fname]);
        let kmnt = self.mkdir(format!("xk{n}.mnt"));
        let fmnt = self.mkdir(format!("xf{n}.mnt"));
        self.mount_kernel(&Self::overlay_opts(&dirs[0], spec), &kmnt);
        self.mount_layover(&Self::overlay_opts(&dirs[1], spec), &fmnt);
        Pair {
            kernel: kmnt,
            layover: fmnt,
            kernel_layers: dirs[0].clone(),
            layover_layers: dirs[1].clone(),
        }
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

/// Snapshots both mounts of a pair and asserts they agree.
pub fn compare_pair(pair: &Pair, cmp: &Compare) -> (Snapshot, Snapshot) {
    let k = snapshot(&pair.kernel);
    let l = snapshot(&pair.layover);
    assert_same_tree(&k, &l, cmp);
    (k, l)
}
