#!/bin/sh
# The side-by-side suites' runner (cargo's target runner, see scripts/test.sh): runs a test
# binary in the way LAYOVER_TEST_MODE names, started as root.
#
#   root    as it is (real root, the kernel's overlayfs mounted by root);
#   user    real root in a private mount namespace whose /dev/fuse is a 0666 node (the
#           host's node, mode 0600, is never changed), so that the test user can mount
#           through fusermount3; the testkit then mounts layover as that user, the kernel's
#           overlayfs in the user's own user namespace, and runs each case's operations on a
#           thread with the user's credentials;
#   userns  the whole binary as root of a user namespace made by the test user (its
#           subordinate ids mapped too, as podman's rootless namespace): fixtures, both mounts
#           and the operations in that namespace, /dev/fuse opened directly.
# Anything missing fails loudly; nothing is skipped.
set -eu
user=${LAYOVER_TEST_USER:-podtest}
die() { echo "run-mode.sh: PREREQUISITE MISSING: $*" >&2; exit 1; }
mode=${LAYOVER_TEST_MODE:-root}
[ "$(id -u)" = 0 ] || die "start the tests as root (mode $mode)"
case $mode in
root) exec "$@" ;;
user | userns) ;;
*) die "LAYOVER_TEST_MODE=$mode: want root, user or userns" ;;
esac
id -u "$user" >/dev/null 2>&1 || die "no user $user (scripts/test.sh makes it)"
grep -q "^$user:" /etc/subuid || die "no /etc/subuid range for $user"
command -v fusermount3 >/dev/null || die "fusermount3 (apt-get install fuse3)"
command -v newuidmap >/dev/null || die "newuidmap (apt-get install uidmap)"
# A 0666 node over /dev/fuse in a mount namespace of the run's own.
dir=$(mktemp -d /tmp/layover-run-mode.XXXXXX)
mknod -m 666 "$dir/fuse" c 10 229
chmod 755 "$dir"
if [ "$mode" = user ]; then
    exec unshare -m --propagation private -- sh -ec \
        'mount --bind "$0/fuse" /dev/fuse; rm -r "$0"; exec "$@"' "$dir" "$@"
fi
# The test binary and the binary under test, where the user can run them (the checkout may
# be closed to them, e.g. in /root).
user_can_run() { setpriv --reuid="$user" --regid="$user" --init-groups -- test -x "$1"; }
bindir=$(mktemp -d /tmp/layover-run-mode-bin.XXXXXX)
chmod 755 "$bindir"
test_bin=$1
if ! user_can_run "$test_bin"; then
    cp "$1" "$bindir/"
    test_bin="$bindir/$(basename "$1")"
fi
shift
if [ -n "${CARGO_BIN_EXE_layover:-}" ] && ! user_can_run "$CARGO_BIN_EXE_layover"; then
    cp "$CARGO_BIN_EXE_layover" "$bindir/layover"
    export CARGO_BIN_EXE_layover="$bindir/layover"
fi
# Root's helper for what only real root may do: drop the kernel's caches
# (testkit's drop_caches, through the fifos req and ack).
helper_dir=$(mktemp -d /tmp/layover-run-mode-root.XXXXXX)
mkfifo -m 600 "$helper_dir/req" "$helper_dir/ack"
chown "$user" "$helper_dir" "$helper_dir/req" "$helper_dir/ack"
(while read -r _ <"$helper_dir/req"; do
    echo 2 >/proc/sys/vm/drop_caches
    echo done >"$helper_dir/ack"
done) &
helper=$!
status=0
LAYOVER_TEST_USER=$user LAYOVER_TEST_DROP_CACHES=$helper_dir \
    unshare -m --propagation private -- sh -ec \
    'mount --bind "$0/fuse" /dev/fuse; rm -r "$0"
     exec setpriv --reuid="$LAYOVER_TEST_USER" --regid="$LAYOVER_TEST_USER" --init-groups -- \
        unshare --map-auto --map-root-user -m -- "$@"' "$dir" "$test_bin" "$@" || status=$?
kill "$helper" 2>/dev/null || true
rm -rf "$helper_dir" "$bindir"
exit "$status"
