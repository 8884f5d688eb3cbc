#!/usr/bin/env bash
# Builds layover, mounts a small example overlay and shows what it merged.
#
#   sudo scripts/demo.sh        (or scripts/demo.sh in a root shell)
#
# Run as root on Debian: the example layers hold a whiteout (a 0/0 character device, which
# only root may create) and a trusted.overlay.opaque xattr, as the kernel's overlayfs writes
# them. Everything lives in a fresh temporary directory that is unmounted and removed on exit,
# so the demo can be run again and again.
set -euo pipefail

if [ -t 1 ]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi
run() {
    printf '$ %s\n' "$*"
    "$@"
}
die() {
    echo "demo: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "run me as root: sudo $0"
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

# --- what the demo needs ---------------------------------------------------------------------
missing=()
command -v mount.fuse3 >/dev/null || missing+=(fuse3)
command -v setfattr >/dev/null || missing+=(attr)
command -v cc >/dev/null || missing+=(build-essential)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq fuse3 attr build-essential
fi
[ -c /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse) or, in a container, pass the device in (--device /dev/fuse)"

# cargo: root's own, or (under sudo) the invoking user's rustup toolchain. When run through
# sudo, the build runs as that user, so target/ stays theirs.
builder=()
if ! command -v cargo >/dev/null; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
    elif [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [ -x "$home/.cargo/bin/cargo" ]; then
            PATH="$home/.cargo/bin:$PATH"
            builder=(runuser -u "$SUDO_USER" -- env "PATH=$PATH" "HOME=$home")
        fi
    fi
fi
command -v cargo >/dev/null ||
    die "cargo not found: install Rust with rustup (curl https://sh.rustup.rs -sSf | sh), then run me again"

say "building layover (cargo build --release)"
run "${builder[@]}" cargo build --release
bin="$repo/target/release/layover"

# --- the example layers ----------------------------------------------------------------------
tmp=$(mktemp -d /tmp/layover-demo.XXXXXX)
mnt="$tmp/merged"
cleanup() {
    status=$?
    set +e
    cd /
    if mountpoint -q "$mnt" 2>/dev/null; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt"
    fi
    # Never rm -rf through a live mount (that would be a workload on the overlay, not cleanup).
    if mountpoint -q "$mnt" 2>/dev/null; then
        echo "demo: $mnt is still mounted; left $tmp in place" >&2
    else
        rm -rf "$tmp"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$tmp"

# lower1 is the higher of the two read-only layers, lower2 the bottom one; upper is the
# writable layer and work its staging area for copy-up (on the same filesystem).
mkdir lower1 lower2 upper work merged

# An overridden file: both lowers have it, the higher one wins.
echo "greeting from lower2 (hidden)" >lower2/greeting.txt
echo "greeting from lower1 (wins)" >lower1/greeting.txt
# A whited-out file: lower2 has it, the upper holds a whiteout (char device 0/0) over it.
echo "notes from lower2" >lower2/notes.txt
mknod upper/notes.txt c 0 0
# An opaque directory: lower1's config/ is marked opaque, so lower2's config/ is not merged.
mkdir lower2/config lower1/config
echo "old" >lower2/config/old.conf
echo "new" >lower1/config/new.conf
setfattr -n trusted.overlay.opaque -v y lower1/config
# A merged directory: every layer has shared/, and the merged view shows all their entries.
mkdir lower2/shared lower1/shared upper/shared
echo "from lower2" >lower2/shared/from-lower2.txt
echo "from lower1" >lower1/shared/from-lower1.txt
echo "from upper" >upper/shared/from-upper.txt
# A file that only a lower holds, for the copy-up below.
echo "line 1, written into lower2" >lower2/log.txt

say "the layers, in $tmp (highest last)"
for layer in lower2 lower1 upper; do
    run ls -lR "$layer"
done
run getfattr -n trusted.overlay.opaque lower1/config

say "mounting upper over lower1 over lower2 on merged/"
run "$bin" -o lowerdir=lower1:lower2,upperdir=upper,workdir=work merged
run findmnt -o TARGET,SOURCE,FSTYPE,OPTIONS "$mnt"

say "the merged view"
run ls -la merged
run cat merged/greeting.txt
echo "-> overridden: lower1's greeting.txt hides lower2's (the leftmost lowerdir is the highest)."
if run ls merged/notes.txt 2>&1; then die "notes.txt should be hidden by its whiteout"; fi
echo "-> whited out: notes.txt exists in lower2, but the upper's 0/0 character device hides it."
run ls merged/config
echo "-> opaque: config/ shows lower1's entries only; lower2's old.conf is hidden below the"
echo "   opaque marker (trusted.overlay.opaque=y)."
run ls merged/shared
echo "-> merged: shared/ is the union of the three layers' shared/ directories."

say "a write: copy-up"
run ls upper
echo "\$ echo 'line 2, appended through the mount' >> merged/log.txt"
echo "line 2, appended through the mount" >>merged/log.txt
run cat merged/log.txt
run ls -la upper
run cat upper/log.txt
run cat lower2/log.txt
echo "-> copy-up: the first write copied log.txt into the upper (data, owner, mode, times,"
echo "   xattrs) and wrote there; the lower layer is unchanged."

say "unmounting"
run umount merged
echo "done: $tmp is removed on exit."
