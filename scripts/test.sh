#!/usr/bin/env bash
# The test command: formatting, lints, then every test target (unit tests, and the mounted
# black-box tests that run layover beside the kernel's overlayfs).
#
#   sudo scripts/test.sh        (or scripts/test.sh in a root shell; CI runs it through .ci/run)
#
# The mounted tests need root and /dev/fuse; a missing prerequisite fails here, loudly, rather
# than letting a test skip itself. Arguments are passed on to `cargo test`, e.g.
# `scripts/test.sh read_side` runs only the tests whose names match.
set -euo pipefail

step() { printf '\n== %s\n' "$*"; }
die() {
    echo "test.sh: $*" >&2
    exit 1
}

cd "$(dirname "$0")/.."

# --- prerequisites ---------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "the tests mount file systems and must run as root: sudo $0"

# Debian packages the tests call, each with a command that shows it is there:
# mount.fuse3/fusermount3 (fuse3), getfattr/setfattr (attr), python3 (scripts, and the tests'
# mmap helper), a C toolchain (build-essential), mkfs.ext4 (e2fsprogs: tests/reliability.rs
# puts layers on a small ext4 image), newuidmap/newgidmap (uidmap: user namespaces with
# subordinate ids), and for tests/podman.rs podman, runc (Debian 12's crun refuses a hybrid
# cgroup layout) and busybox-static (the containers' root file system); umoci (tests/inspect.rs
# applies `layover export`'s layer with it, and with podman).
# mount/umount, losetup, cp, mknod... are essential. This is the one list: .ci/run only calls
# this script. Cargo-installed test tools (fsx) are installed below, once cargo is found.
need=(
    "mount.fuse3:fuse3" "setfattr:attr" "python3:python3" "cc:build-essential"
    "mkfs.ext4:e2fsprogs" "newuidmap:uidmap" "podman:podman" "runc:runc" "umoci:umoci"
)
missing=()
for n in "${need[@]}"; do
    command -v "${n%%:*}" >/dev/null || missing+=("${n#*:}")
done
# A static busybox, not the dynamically linked one of the `busybox` package.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
    missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The rootless tests (tests/rootless.rs, tests/podman.rs, the ops tier as an ordinary user)
# run as the ordinary user `podtest`, with subordinate id ranges in /etc/subuid and
# /etc/subgid. Made once, if missing; an existing user and its ranges are kept.
if ! id -u podtest >/dev/null 2>&1; then
    step "creating the test user podtest (for the rootless tests)"
    useradd --create-home --shell /bin/bash podtest
fi
grep -q '^podtest:' /etc/subuid || usermod --add-subuids 100000-165535 podtest
grep -q '^podtest:' /etc/subgid || usermod --add-subgids 100000-165535 podtest

[ -c /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse) or, in a container, pass the device in (--device /dev/fuse)"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null ||
    die "the kernel has no overlayfs (modprobe overlay): the tests compare layover with it"

# cargo: root's own, or (under sudo) the invoking user's rustup toolchain. Everything is
# built as that user (so target/ stays theirs); only the tests themselves run as root.
builder=()
if ! command -v cargo >/dev/null; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
    elif [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [ -x "$home/.cargo/bin/cargo" ]; then
            export PATH="$home/.cargo/bin:$PATH" RUSTUP_HOME="$home/.rustup" CARGO_HOME="$home/.cargo"
            builder=(runuser -u "$SUDO_USER" -- env "PATH=$PATH" "HOME=$home")
        fi
    fi
fi
command -v cargo >/dev/null ||
    die "cargo not found: install Rust with rustup (curl https://sh.rustup.rs -sSf | sh), then run me again"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    step "installing the rustfmt and clippy components"
    "${builder[@]}" rustup component add rustfmt clippy
fi

# Test tools from crates.io: fsx (the file system exerciser, tests/fsx.rs).
if ! command -v fsx >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/fsx" ]; then
    step "installing fsx (cargo install fsx --version 0.3.2 --locked)"
    "${builder[@]}" cargo install fsx --version 0.3.2 --locked
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# --- the checks ------------------------------------------------------------------------------
step "$(cargo --version), $(uname -sr)"
step "cargo fmt --check"
"${builder[@]}" cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
"${builder[@]}" cargo clippy --all-targets -- -D warnings

# FUSE over io_uring: layover serves over it when the kernel offers it (io_uring=1, the
# default), which needs the fuse module's enable_uring parameter. It is turned on here, so the
# tests run over io_uring where the kernel has it, and the side-by-side suites once more over
# /dev/fuse below. (A global knob, but only daemons that ask for io_uring at INIT use it.)
uring=/sys/module/fuse/parameters/enable_uring
if [ -e "$uring" ]; then
    echo 1 >"$uring"
    step "FUSE over io_uring: enable_uring=$(cat "$uring") (the suites run over it, and over /dev/fuse)"
else
    step "FUSE over io_uring: not in this kernel (the suites run over /dev/fuse only)"
fi

step "cargo test --release"
"${builder[@]}" cargo test --release --no-run
cargo test --release --no-fail-fast "$@"
if [ $# -eq 0 ] && [ -e "$uring" ]; then
    step "side-by-side suites over /dev/fuse (io_uring=0)"
    LAYOVER_TEST_OPTS=io_uring=0 cargo test --release --no-fail-fast \
        --test read_side --test write_side
fi
if [ $# -eq 0 ]; then
    # The side-by-side suites again with file data through the daemon and the kernel's
    # writeback cache, the data path of mounts without root or on kernels before 6.9.
    step "side-by-side suites with passthrough=off (writeback cache)"
    LAYOVER_TEST_OPTS=passthrough=off cargo test --release --no-fail-fast \
        --test read_side --test write_side
    # The side-by-side suites the two rootless ways, against the kernel's overlayfs mounted
    # in a user namespace: layover as podtest through fusermount3, and as root of podtest's
    # user namespace (testkit/scripts/run-mode.sh, cargo's runner for these runs).
    runner_var="CARGO_TARGET_$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')_RUNNER"
    for mode in user userns; do
        step "side-by-side suites in mode $mode"
        env "$runner_var=$PWD/testkit/scripts/run-mode.sh" LAYOVER_TEST_MODE=$mode \
            cargo test --release --no-fail-fast --test read_side --test write_side
    done
fi
