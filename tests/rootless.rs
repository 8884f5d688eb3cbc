//! Rootless side by side: for each case, the kernel's overlayfs mounted in a user namespace
//! by an ordinary user (`unshare -Urm`, `mount -t overlay -o userxattr`), the reference,
//! and layover mounted by the same user on an identical copy of the same layers — through
//! fusermount3 (an ordinary user, case a) or as root in a user namespace (case b). The
//! same operations run in both as the user (in the namespace: its root with every
//! capability dropped, the same user to the filesystem), and the results, the merged tree
//! and the upper on disk (whiteouts, `user.overlay.*` markers) must be the same, except for
//! the differences each case names (and pins: a named difference that does not happen
//! fails too).
//!
//! Runs as root, to bind a 0666 node over /dev/fuse inside each test's own mount namespace
//! (see `support`); needs the user `podtest` with subordinate ids (.ci/run makes it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "rootless/support.rs"]
mod support;

use support::Scratch;

/// How layover is mounted.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    /// An ordinary user, through fusermount3.
    User,
    /// Root in a user namespace of its own (`unshare -Urm`), mount(2) on /dev/fuse.
    UserNamespace,
    /// Root in a user namespace mapping the user's subordinate ids too, as podman's rootless
    /// namespace does (`unshare --map-auto --map-root-user -m`), operations run with the
    /// namespace root's capabilities (the kernel's mount is made the same way).
    MappedUserNamespace,
    /// As `MappedUserNamespace`, with layers owned by a subordinate id (uid and gid 1000 in
    /// the namespace, 100999 outside), as podman's rootless containers' layers are.
    SubordinateLayers,
}

const DROP_CAPS: &str = "setpriv --bounding-set=-all --inh-caps=-all";

/// Builds the layers twice (k/ for the kernel, f/ for layover), runs `case` in both
/// mounts; returns (kernel output, layover output): the operations' results, the merged
/// tree and the upper.
/// `extra`: more layover options (",whiteout=file").
fn run_case(s: &Scratch, case: &str, way: Way, extra: &str) -> (String, String) {
    s.user_ok("$OPS setup k && $OPS setup f");
    let mapped = matches!(way, Way::MappedUserNamespace | Way::SubordinateLayers);
    let (ns, as_user) = if mapped {
        ("unshare --map-auto --map-root-user -m", "")
    } else {
        ("unshare -Urm", DROP_CAPS)
    };
    if way == Way::SubordinateLayers {
        s.user_ok(&format!("{ns} chown -R 1000:1000 k f"));
    }
    s.user_ok(&format!(
        "{ns} sh -ec 'mount -t overlay -o userxattr,lowerdir=$PWD/k/l,\
         upperdir=$PWD/k/u,workdir=$PWD/k/w overlay $PWD/k/m; \
         {as_user} $OPS run {case} $PWD/k/m > k/out || true; $OPS unmount $PWD/k/m'
         $OPS upper k/u >> k/out"
    ));
    let opts = format!("-o lowerdir=$PWD/f/l,upperdir=$PWD/f/u,workdir=$PWD/f/w{extra} $PWD/f/m");
    match way {
        Way::User => s.user_ok(&format!(
            "$LAYOVER {opts}
             $OPS run {case} $PWD/f/m > f/out || true
             $OPS unmount $PWD/f/m
             $OPS upper f/u f/w/work >> f/out"
        )),
        Way::UserNamespace | Way::MappedUserNamespace | Way::SubordinateLayers => {
            s.user_ok(&format!(
                "{ns} sh -ec '$LAYOVER {opts}; \
             {as_user} $OPS run {case} $PWD/f/m > f/out || true; $OPS unmount $PWD/f/m'
             $OPS upper f/u >> f/out"
            ))
        }
    };
    (s.read("k/out"), s.read("f/out"))
}

/// Lines of `a` not matched in `b` (as multisets).
fn missing_from(a: &[String], b: &[String]) -> Vec<String> {
    let mut rest = b.to_vec();
    let mut out = Vec::new();
    for l in a {
        match rest.iter().position(|x| x == l) {
            Some(i) => {
                rest.remove(i);
            }
            None => out.push(l.clone()),
        }
    }
    out
}

/// The two outputs agree but for `differences` (kernel line, layover line; "" for a line
/// the side does not have), each of which must happen. Layover's work directory must be
/// left empty.
fn compare(case: &str, kernel: &str, layover: &str, differences: &[(&str, &str)]) {
    let mut layover_lines: Vec<String> = Vec::new();
    let mut work_left = None;
    for l in layover.lines() {
        if let Some(w) = l.strip_prefix("work leftovers: ") {
            work_left = Some(w.to_string());
        } else {
            layover_lines.push(l.to_string());
        }
    }
    if let Some(w) = work_left {
        assert_eq!(
            w, "[]",
            "{case}: layover left objects in its work directory"
        );
    }
    let mut kernel_lines: Vec<String> = kernel.lines().map(str::to_string).collect();
    for (k, l) in differences {
        for (side, lines, want) in [
            ("kernel", &mut kernel_lines, k),
            ("layover", &mut layover_lines, l),
        ] {
            if want.is_empty() {
                continue;
            }
            let i = lines.iter().position(|x| x == want);
            assert!(
                i.is_some(),
                "{case}: the expected difference did not happen: {side} should say\n  \
                 {want}\nkernel said:\n{kernel}\nlayover said:\n{layover}"
            );
            lines.remove(i.unwrap());
        }
    }
    let only_k = missing_from(&kernel_lines, &layover_lines);
    let only_l = missing_from(&layover_lines, &kernel_lines);
    assert!(
        only_k.is_empty() && only_l.is_empty() && kernel_lines == layover_lines,
        "{case}: layover differs from the kernel's overlayfs in a user namespace\n\
         only the kernel:\n  {}\nonly layover:\n  {}\nkernel said:\n{kernel}\nlayover said:\n{layover}",
        only_k.join("\n  "),
        only_l.join("\n  "),
    );
}

/// Runs `case` both ways and compares; returns layover's output.
fn same(case: &str, way: Way, differences: &[(&str, &str)]) -> String {
    let s = Scratch::new(case);
    let (k, l) = run_case(&s, case, way, "");
    compare(case, &k, &l, differences);
    l
}

/// The lines of a run's output that describe the upper, and the others.
fn split_upper(out: &str) -> (String, String) {
    let (upper, rest): (Vec<&str>, Vec<&str>) = out.lines().partition(|l| l.starts_with("upper "));
    (upper.join("\n"), rest.join("\n"))
}

#[test]
fn read_merge() {
    let out = same("read", Way::User, &[]);
    assert!(out.contains("read d/f gave b'x\\n'"), "{out}");
}

#[test]
fn copy_up_on_append() {
    same("append", Way::User, &[]);
}

/// A file of the user's own whose mode denies reading it (0000) is copied up as the kernel's
/// mounter credentials do it: an ordinary user's daemon opens it through its opener (a helper
/// in a user namespace of its own, see src/opener.rs).
#[test]
fn copy_up_of_a_0000_file() {
    let out = same("copyup_0000", Way::User, &[]);
    assert!(
        out.contains("upper file f0000: 0o640 me:me size=7"),
        "{out}"
    );
}

#[test]
fn copy_up_of_a_0500_directory() {
    same("copyup_0500", Way::User, &[]);
}

#[test]
fn unlink_of_lower_files_leaves_0_0_whiteouts() {
    let out = same("unlink", Way::User, &[]);
    assert!(out.contains("upper chardev d/f: 0o0 me:me 0/0"), "{out}");
}

#[test]
fn rmdir_of_lower_directories() {
    let out = same("rmdir", Way::User, &[]);
    for done in [
        "op rmdir d (0500, whiteouts inside): ok",
        "op rename x over d0500 (0500, a whiteout inside): ok",
    ] {
        assert!(out.contains(done), "{out}");
    }
}

#[test]
fn mkdir_over_a_whiteout_is_opaque() {
    let out = same("mkdir_opaque", Way::User, &[]);
    assert!(
        out.contains("upper dir d: 0o755 me:me xattrs[user.overlay.opaque=y]"),
        "{out}"
    );
}

#[test]
fn rename_of_lower_objects() {
    same("rename", Way::User, &[]);
}

/// Another id does not exist in the kernel's `unshare -Ur` namespace (EINVAL); an ordinary
/// user outside any namespace may name it but not give a file to it (EPERM, from the
/// kernel's own check: the request never reaches layover).
#[test]
fn chown_to_another_id_as_an_ordinary_user() {
    same(
        "chown",
        Way::User,
        &[
            ("op chown a to 1234: EINVAL", "op chown a to 1234: EPERM"),
            ("op chgrp a to 1234: EINVAL", "op chgrp a to 1234: EPERM"),
        ],
    );
}

/// Creation of every kind, xattrs (user.*, and trusted.* and the overlay's own names, which
/// an ordinary user may not set), times and modes of lower objects whose modes deny the user,
/// and what the caller's own permissions forbid.
///
/// One known difference: a lower directory whose mode denies its owner search and read
/// (0000) stays closed to an ordinary user's daemon after a chmod opened its merged copy (the
/// kernel looks into it with its mounter's CAP_DAC_OVERRIDE): lookups and listings in it
/// fail with EACCES (docs/semantics.md). Root in a user namespace matches the kernel.
#[test]
fn assorted_operations() {
    same(
        "misc",
        Way::User,
        &[
            ("op create in d0000: ok", "op create in d0000: EACCES"),
            (
                "merged dir d0000: 0o755 me:me xattrs[user.hidden]",
                "merged dir d0000: 0o755 me:me (listing: EACCES) xattrs[user.hidden]",
            ),
            (
                "merged file d0000/n: 0o644 me:me size=2 nlink=1 sha=a4fb621495a0",
                "",
            ),
            (
                "upper file d0000/n: 0o644 me:me size=2 nlink=1 sha=a4fb621495a0",
                "",
            ),
        ],
    );
}

#[test]
fn root_in_a_user_namespace() {
    for case in [
        "mkdir_opaque",
        "append",
        "copyup_0000",
        "copyup_0500",
        "rename",
    ] {
        same(case, Way::UserNamespace, &[]);
    }
}

/// In a namespace with the subordinate ids mapped (podman's), root of the namespace may give
/// a file to another id, through the kernel's mount and through layover alike; on disk the
/// file belongs to the matching subordinate id (1234 is 100000 + 1233 outside).
#[test]
fn chown_in_a_user_namespace_with_subordinate_ids() {
    let s = Scratch::new("chown_mapped");
    let (k, l) = run_case(&s, "chown", Way::MappedUserNamespace, "");
    compare("chown_mapped", &k, &l, &[]);
    assert!(k.contains("op chown a to 1234: ok"), "kernel:\n{k}");
    assert!(
        k.contains("upper file a: 0o644 101233:101233"),
        "kernel:\n{k}"
    );
}

/// whiteout=file: the same merged view as the kernel's, written as `.wh.NAME` files and a
/// `.wh..wh..opq` marker instead of 0/0 devices and the opaque xattr.
#[test]
fn whiteout_format_file_when_forced() {
    let s = Scratch::new("wh_file");
    let (k, l) = run_case(&s, "mkdir_opaque", Way::User, ",whiteout=file");
    let ((_, k_rest), (l_upper, l_rest)) = (split_upper(&k), split_upper(&l));
    let l_rest: String = l_rest
        .lines()
        .filter(|x| !x.starts_with("work leftovers"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(k_rest, l_rest, "the merged views differ");
    for want in [
        "upper file d/.wh..wh..opq: 0o0 me:me size=0",
        "upper file d/new: 0o644 me:me",
    ] {
        assert!(l_upper.contains(want), "no '{want}' in:\n{l_upper}");
    }
    assert!(
        !l_upper.contains("chardev"),
        "a 0/0 device was written:\n{l_upper}"
    );
    assert!(!l_upper.contains("user.overlay.opaque"), "{l_upper}");
}

/// An upper written with `.wh.` files keeps that format at its next mount without the
/// option (the work directory notes it), even though 0/0 devices could be made.
#[test]
fn an_upper_keeps_its_whiteout_format() {
    let s = Scratch::new("wh_keep");
    s.user_ok("$OPS setup f");
    let opts = "lowerdir=$PWD/f/l,upperdir=$PWD/f/u,workdir=$PWD/f/w";
    let out = s.user_ok(&format!(
        "$LAYOVER -o {opts},whiteout=file $PWD/f/m
         rm f/m/a
         $OPS unmount $PWD/f/m
         $LAYOVER -o {opts} $PWD/f/m
         rm f/m/r
         ls f/m
         $OPS unmount $PWD/f/m
         $OPS upper f/u"
    ));
    assert!(out.contains("upper file .wh.a: 0o0 me:me size=0"), "{out}");
    assert!(out.contains("upper file .wh.r: 0o0 me:me size=0"), "{out}");
    assert!(!out.contains("chardev"), "{out}");
    assert!(!out.lines().any(|l| l == "a" || l == "r"), "{out}");
}

/// Podman's layout: layers owned by a subordinate id, layover mounted by root of a user
/// namespace that maps the subordinate ids, operations with that root's capabilities.
#[test]
fn layers_owned_by_subordinate_ids() {
    for case in [
        "append",
        "copyup_0000",
        "copyup_0500",
        "unlink",
        "rmdir",
        "mkdir_opaque",
        "rename",
        "misc",
    ] {
        same(case, Way::SubordinateLayers, &[]);
    }
}

/// A mount that cannot be made says what is missing in one line, exits 1, and leaves
/// nothing mounted and nothing created in the work directory.
#[test]
fn what_is_missing_is_named_and_nothing_is_left() {
    let s = Scratch::new("missing");
    s.user_ok("mkdir -p l u w m && echo hi > l/a");
    std::fs::create_dir(s.path("rootw")).unwrap(); // root's: the user may not write it
    let opts = "-o lowerdir=$PWD/l,upperdir=$PWD/u,workdir=$PWD/w";
    let cases: [(&str, bool, &str); 5] = [
        (
            "$LAYOVER {opts} $PWD/m",
            false,
            "cannot open /dev/fuse (Permission denied",
        ),
        (
            "FUSERMOUNT_PATH=$PWD/none $LAYOVER {opts} $PWD/m",
            true,
            "fusermount3 '",
        ),
        (
            "$LAYOVER -o lowerdir=$PWD/l,upperdir=$PWD/u,workdir=$PWD/rootw $PWD/m",
            true,
            "rootw': not writable by uid 1001",
        ),
        // fusermount3 refuses a mountpoint the user may not write: after `work` was made.
        (
            "$LAYOVER {opts} /",
            true,
            "through fusermount3: fusermount3:",
        ),
        (
            "unshare -Ur $LAYOVER {opts} $PWD/m",
            true,
            "root in a user namespace may mount only in a mount namespace of its own",
        ),
    ];
    for (cmd, fuse, want) in cases {
        let cmd = cmd.replace("{opts}", opts);
        let (ok, out, err) = s.user_with(
            &format!("set +e; {cmd}; echo status=$?; grep -q \" $PWD/m \" /proc/self/mountinfo && echo MOUNTED; true"),
            fuse,
        );
        assert!(ok, "{cmd}: {err}");
        assert!(
            out.contains("status=1"),
            "{cmd}: not exit status 1: {out} {err}"
        );
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("layover: ") && lines[0].contains(want),
            "{cmd}: want one line with '{want}', got:\n{err}"
        );
        let left: Vec<_> = std::fs::read_dir(s.path("w")).unwrap().collect();
        assert!(left.is_empty(), "{cmd}: the workdir holds {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&*s.dir.to_string_lossy()),
            "{cmd}: left a mount"
        );
    }
}
