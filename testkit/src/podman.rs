//! Podman on this kind of host, for the tests that run it (tests/podman.rs, and the export
//! check in tests/inspect.rs): one containers.conf for both.

use std::path::Path;

/// containers.conf for a podman whose config, run, temporary and network directories are
/// under `dir` (`run/libpod`, `tmp`, `cni`). Debian 12's crun refuses this host's hybrid
/// cgroup layout: runc. The default nofile/nproc limits of 1048576 need CAP_SYS_RESOURCE:
/// none. No systemd: cgroupfs and a file for events. Locks in files, networks and temporary
/// files under `dir`: nothing in /dev/shm, /etc/cni or /var/tmp.
pub fn podman_containers_conf(dir: &Path) -> String {
    let p = |d: &str| dir.join(d).display().to_string();
    format!(
        "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n\
         cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nlock_type = \"file\"\n\
         tmp_dir = \"{}\"\nimage_copy_tmp_dir = \"{}\"\n\n[network]\n\
         network_config_dir = \"{}\"\n",
        p("run/libpod"),
        p("tmp"),
        p("cni")
    )
}
