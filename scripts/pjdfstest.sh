#!/usr/bin/env bash
# POSIX conformance: runs pjdfstest (the Rust port, crate `pjdfstest`) in the merged directory
# of the kernel's overlayfs and of layover (and, on request, fuse-overlayfs), each on a fresh
# stack, and compares them.
#
#   sudo scripts/pjdfstest.sh                      kernel, then layover; compare
#   sudo scripts/pjdfstest.sh --fs all             kernel, layover, fuse-overlayfs
#   sudo scripts/pjdfstest.sh --fs layover --only rename --only unlink::
#   sudo scripts/pjdfstest.sh --keep-logs /tmp/pjd  keep each run's full output there
#
# --fs NAME     kernel | layover | fuse-overlayfs | all; repeat or comma-separate. Default:
#               kernel,layover.
# --only PAT    run only the test cases whose name contains PAT (repeatable; pjdfstest's own
#               filter, e.g. `chmod`, `rename::`, `open::etxtbsy`).
# --keep-logs D write each file system's full pjdfstest output to D/NAME.log (otherwise they
#               live in the temporary directory and are removed).
# -v            also print each failing case's message for every file system.
#
# Each stack is two lowers with a little content, an empty upper and a work directory on a
# private tmpfs under /var/tmp; pjdfstest runs inside the merged directory (it makes its own
# temporary directory there). The EXDEV tests get a directory on that tmpfs as their second
# file system. Everything is unmounted and removed on exit, whatever happens.
#
# Exit status: 1 if layover fails a test case that the kernel's overlayfs passes (both must
# have run), or a run did not finish; 0 otherwise. Test cases that fail on the kernel too
# (pjdfstest's char-device cases: overlayfs refuses mknod of a 0:0 char device, which is a
# whiteout, with EPERM) are listed but not held against layover.
set -euo pipefail

PJDFSTEST_VERSION=0.2.2
RUN_TIMEOUT=${PJDFSTEST_TIMEOUT:-1200} # seconds per file system

die() {
    echo "pjdfstest.sh: $*" >&2
    exit 2
}
step() { printf '\n== %s\n' "$*"; }

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
config="$here/pjdfstest/pjdfstest.toml"

# --- arguments -------------------------------------------------------------------------------
fss=()
only=()
keep_logs=
verbose=0
while [ $# -gt 0 ]; do
    case "$1" in
    --fs)
        [ $# -ge 2 ] || die "--fs needs a value"
        IFS=, read -r -a parts <<<"$2"
        for p in "${parts[@]}"; do
            case "$p" in
            kernel | layover | fuse-overlayfs) fss+=("$p") ;;
            all) fss+=(kernel layover fuse-overlayfs) ;;
            *) die "--fs: unknown file system '$p' (kernel, layover, fuse-overlayfs, all)" ;;
            esac
        done
        shift 2
        ;;
    --fs=*) set -- --fs "${1#--fs=}" "${@:2}" ;;
    --only)
        [ $# -ge 2 ] || die "--only needs a pattern"
        only+=("$2")
        shift 2
        ;;
    --only=*) set -- --only "${1#--only=}" "${@:2}" ;;
    --keep-logs)
        [ $# -ge 2 ] || die "--keep-logs needs a directory"
        keep_logs=$2
        shift 2
        ;;
    -v | --verbose)
        verbose=1
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ ${#fss[@]} -gt 0 ] || fss=(kernel layover)
# Deduplicate, keeping the order (kernel first when given, so it is the reference).
mapfile -t fss < <(printf '%s\n' "${fss[@]}" | awk '!seen[$0]++')

# --- prerequisites ---------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "mounting overlays needs root: sudo $0"
[ -c /dev/fuse ] || die "/dev/fuse is missing"

if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
PATH="$cargo_bin:$PATH"

apt_missing=()
command -v mount.fuse3 >/dev/null || apt_missing+=(fuse3)
# The pjdfstest crate links libacl (through the exacl crate) and needs its headers to build.
if ! command -v pjdfstest >/dev/null && ! [ -e /usr/include/sys/acl.h ]; then
    apt_missing+=(libacl1-dev)
fi
command -v cc >/dev/null || apt_missing+=(build-essential)
for fs in "${fss[@]}"; do
    if [ "$fs" = fuse-overlayfs ] && ! command -v fuse-overlayfs >/dev/null; then
        apt_missing+=(fuse-overlayfs)
    fi
done
if [ ${#apt_missing[@]} -gt 0 ]; then
    step "installing ${apt_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${apt_missing[@]}"
fi

if ! pjdfstest --version 2>/dev/null | grep -qx "pjdfstest $PJDFSTEST_VERSION"; then
    step "installing pjdfstest $PJDFSTEST_VERSION (cargo install)"
    cargo install pjdfstest --version "$PJDFSTEST_VERSION" --locked
fi
for fs in "${fss[@]}"; do
    if [ "$fs" = kernel ] && ! grep -qw overlay /proc/filesystems; then
        modprobe overlay 2>/dev/null || die "the kernel has no overlayfs (modprobe overlay)"
    fi
done

layover="$root/target/release/layover"
for fs in "${fss[@]}"; do
    if [ "$fs" = layover ]; then
        step "building layover (release)"
        (cd "$root" && cargo build --release --quiet)
        break
    fi
done

# --- scratch space, and the trap that always cleans it up -------------------------------------
# Kept short, and every file system is mounted at the same path ($base/mnt): pjdfstest binds
# unix sockets deep inside it, and sun_path holds only 107 bytes, so a longer mount path turns
# socket cases into ENAMETOOLONG failures that say nothing about the file system.
base=$(mktemp -d /var/tmp/pjd.XXXXXX)
mounts=() # mounted directories, outermost first
pjd= # process (group) id of the running pjdfstest

unmount_one() {
    local m=$1 i
    mountpoint -q "$m" || return 0
    for i in 1 2 3 4 5; do
        umount "$m" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "pjdfstest.sh: $m busy, detaching it (umount -l)" >&2
    umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
}
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    cd /
    # An interrupted run: end the test run (its own session, so not reached by the signal).
    if [ -n "$pjd" ]; then
        kill -KILL -- "-$pjd" 2>/dev/null || true
        wait "$pjd" 2>/dev/null || true
    fi
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        unmount_one "${mounts[i]}"
    done
    unmount_one "$base"
    if mountpoint -q "$base"; then
        echo "pjdfstest.sh: could not unmount $base; left in place" >&2
    else
        rm -rf "$base"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mount -t tmpfs -o mode=0755,size=2g layover-pjdfstest "$base"
mounts+=("$base")
mkdir "$base/secondary" "$base/logs" "$base/mnt"
mnt=$base/mnt
logs=${keep_logs:-$base/logs}
mkdir -p "$logs"

# A fresh stack for one file system: lowers l1 (top) and l2 with a little content.
make_stack() {
    local d=$1
    mkdir -p "$d"/{l1,l2,upper,work}
    echo "top" >"$d/l1/top-only"
    echo "shadowed (top)" >"$d/l1/both"
    mkdir "$d/l1/dir" && echo "from l1" >"$d/l1/dir/one"
    echo "bottom" >"$d/l2/bottom-only"
    echo "shadowed (bottom)" >"$d/l2/both"
    mkdir "$d/l2/dir" && echo "from l2" >"$d/l2/dir/two"
    ln -s bottom-only "$d/l2/link"
}

# Mounts the stack in $1 at $2, with the command line each file system is normally used with.
mount_fs() {
    local fs=$1 d=$2 mnt=$3
    local opts="lowerdir=$d/l1:$d/l2,upperdir=$d/upper,workdir=$d/work"
    mounts+=("$mnt")
    case "$fs" in
    kernel) mount -t overlay overlay -o "$opts" "$mnt" ;;
    layover) "$layover" -o "$opts" "$mnt" ;;
    fuse-overlayfs) fuse-overlayfs -o "$opts" "$mnt" ;;
    esac
    mountpoint -q "$mnt" || die "$fs: $mnt is not mounted"
}

# Reduce pjdfstest's output to "NAME STATUS" lines (STATUS: ok FAILED skipped XPASS XFAIL),
# and each failure's message (a tab-indented line, and for assert_eq! its "left:"/"right:"
# lines) to one "NAME<TAB>message" line.
parse_results() {
    awk '
        function flush() { if (cur != "" && msg != "") print cur "\t" msg > "/dev/stderr"; cur = ""; msg = "" }
        /^[A-Za-z_][A-Za-z0-9_:]* +(ok|FAILED|skipped|PASSED UNEXPECTEDLY|failed as expected)$/ {
            flush()
            name = $1; st = $0; sub(/^[^ ]+ +/, "", st)
            if (st == "PASSED UNEXPECTEDLY") st = "XPASS"
            if (st == "failed as expected") st = "XFAIL"
            print name, st; if (st == "FAILED") cur = name; next
        }
        cur != "" && /^\t/ && msg == "" { msg = $0; sub(/^\t/, "", msg); next }
        cur != "" && msg != "" && /^ *(left|right):/ { l = $0; sub(/^ +/, "", l); msg = msg "; " l; next }
        { flush() }
        END { flush() }
    ' "$1" >"$2" 2>"$3"
}

summaries=()
status=0
for fs in "${fss[@]}"; do
    step "$fs: fresh stack, pjdfstest${only:+ (only: ${only[*]})}"
    d="$base/$fs"
    make_stack "$d"
    mount_fs "$fs" "$d" "$mnt"
    findmnt -n -o FSTYPE,OPTIONS "$mnt" | cut -c1-100 | sed 's/^/   mounted: /'
    log="$logs/$fs.log"
    rc=0
    # In a session of its own, so that whatever a failed case left running in the mount (the
    # ETXTBSY cases run a copy of sleep(1) from it) is ended with it, by its process group.
    (cd "$mnt" && exec env NO_COLOR=1 RUST_BACKTRACE=0 setsid timeout -k 10 "$RUN_TIMEOUT" \
        pjdfstest -c "$config" -p "$mnt" -s "$base/secondary" -- "${only[@]}") \
        >"$log" 2>&1 &
    pjd=$!
    wait "$pjd" || rc=$?
    kill -KILL -- "-$pjd" 2>/dev/null || true
    pjd=
    parse_results "$log" "$base/$fs.results" "$base/$fs.messages"
    if ! grep -q '^Summary:' "$log"; then
        echo "   $fs: pjdfstest did not finish (exit $rc); last lines of $log:" >&2
        tail -n 15 "$log" | sed 's/^/   | /' >&2
        status=1
    fi
    if [ "$verbose" = 1 ]; then
        sed 's/^/   /' "$base/$fs.messages"
    fi
    unmount_one "$mnt"
    summaries+=("$fs")
done

# --- report ----------------------------------------------------------------------------------
# Per file system: test files (pjdfstest's modules, e.g. chmod, rename, mknod::privileged: a
# module passes when none of its cases failed) and test cases.
step "totals"
printf '%-16s %28s   %s\n' "" "test files (pass/fail/total)" "test cases (pass/fail/skip/total)"
for fs in "${summaries[@]}"; do
    awk -v fs="$fs" '
        { n = split($1, p, "::"); mod = p[1]; if (p[2] == "privileged") mod = mod "::privileged"
          mods[mod] = 1; total++
          if ($2 == "ok" || $2 == "XFAIL") pass++
          else if ($2 == "FAILED" || $2 == "XPASS") { fail++; bad[mod] = 1 }
          else skip++ }
        END {
          m = 0; mb = 0; for (k in mods) { m++; if (k in bad) mb++ }
          printf "%-16s %14d/%d/%d %20d/%d/%d/%d\n", fs, m - mb, mb, m, pass, fail, skip, total
        }' "$base/$fs.results"
done

# Side by side: every case that failed somewhere, with each file system's result; first those
# whose results differ, then those that fail on every file system run.
step "failing test cases, side by side"
failed_names=$(for fs in "${summaries[@]}"; do awk '$2 == "FAILED" || $2 == "XPASS" { print $1 }' "$base/$fs.results"; done | sort -u)
if [ -z "$failed_names" ]; then
    echo "   (none)"
else
    table() { # $1: "differ" or "same"
        printf '%s' "test case"
        for fs in "${summaries[@]}"; do printf '\t%s' "$fs"; done
        printf '\n'
        while read -r name; do
            row=() distinct=
            for fs in "${summaries[@]}"; do
                r=$(awk -v n="$name" '$1 == n { print $2; exit }' "$base/$fs.results")
                row+=("${r:--}")
            done
            distinct=$(printf '%s\n' "${row[@]}" | sort -u | wc -l)
            if { [ "$1" = differ ] && [ "$distinct" -gt 1 ]; } || { [ "$1" = same ] && [ "$distinct" = 1 ]; }; then
                printf '%s' "$name"
                printf '\t%s' "${row[@]}"
                printf '\n'
            fi
        done <<<"$failed_names"
    }
    differ=$(table differ)
    same=$(table same)
    if [ "$(wc -l <<<"$differ")" -gt 1 ]; then
        echo "   results differ:"
        column -t -s $'\t' <<<"$differ" | sed 's/^/     /'
    fi
    if [ "$(wc -l <<<"$same")" -gt 1 ]; then
        echo "   failing on every file system run ($(($(wc -l <<<"$same") - 1))):"
        column -t -s $'\t' <<<"$same" | sed 's/^/     /'
    fi
fi

# Regressions: layover fails (or errors in) a case the kernel passes.
have() { printf '%s\n' "${summaries[@]}" | grep -qx "$1"; }
if have kernel && have layover; then
    step "layover against the kernel"
    regressions=$(join <(awk '$2 == "ok" { print $1 }' "$base/kernel.results" | sort) \
        <(awk '$2 != "ok" && $2 != "skipped" { print $1 }' "$base/layover.results" | sort))
    missing=$(join -v1 <(awk '$2 == "ok" { print $1 }' "$base/kernel.results" | sort) \
        <(awk '{ print $1 }' "$base/layover.results" | sort))
    better=$(join <(awk '$2 == "FAILED" { print $1 }' "$base/kernel.results" | sort) \
        <(awk '$2 == "ok" { print $1 }' "$base/layover.results" | sort))
    if [ -n "$regressions$missing" ]; then
        echo "   layover fails $(printf '%s\n' $regressions $missing | grep -c .) case(s) the kernel passes:"
        for name in $regressions; do
            printf '     %s\n' "$name"
            awk -F'\t' -v n="$name" '$1 == n { print "         " $2 }' "$base/layover.messages"
        done
        for name in $missing; do printf '     %s   (not run on layover: did the run stop early?)\n' "$name"; done
        status=1
    else
        echo "   layover passes every case the kernel passes"
    fi
    [ -z "$better" ] || printf '   layover passes, the kernel fails: %s\n' $better
fi
if [ -n "$keep_logs" ]; then echo; echo "full output: $keep_logs/<fs>.log"; fi
exit "$status"
