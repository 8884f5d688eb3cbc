//! Property tests of the xattr values layover parses from outside (a caller's setxattr, a
//! layer written by anything): POSIX ACLs (`idmap::acl`, through `IdMap`'s
//! `acl_to_shown`/`acl_to_disk`) and the override_stat values (`idmap::stat_xattr`). Any
//! bytes at all never panic; a value that parses keeps its shape (an ACL its length and its
//! entries' tags and permissions); mapping an ACL to disk and back gives it back where every
//! id is mapped; formatting an override and parsing it gives the same owner, mode and type.
//! Nothing here mounts. Hand-picked values in `tests/corpus/acl/` and
//! `tests/corpus/override_stat/` are replayed by the last tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use layover::idmap::stat_xattr::{self, PRECEDENCE};
use layover::idmap::{IdMap, OneMap, parse_ranges};
use layover::{Errno, Stat};
use proptest::prelude::*;
use std::path::Path;

/// Disk 0..65536 shown as 100000..165536, both kinds of id.
fn mapped() -> IdMap {
    let one = || OneMap {
        ranges: parse_ranges("0:100000:65536").unwrap(),
        squash: None,
    };
    IdMap {
        uids: one(),
        gids: one(),
        ..IdMap::default()
    }
}

fn entries(v: &[u8]) -> Vec<(u16, u16, u32)> {
    v[4..]
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u16::from_le_bytes([e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect()
}

/// Checks one ACL value both ways; never panics, whatever `v` is.
fn check_acl(v: &[u8]) {
    let m = mapped();
    let shown = m.acl_to_shown(v);
    let disk = m.acl_to_disk(v);
    let well_formed = v.len() >= 4 && v[..4] == [2, 0, 0, 0] && (v.len() - 4).is_multiple_of(8);
    match &shown {
        Ok(s) => {
            assert!(well_formed, "{v:?} accepted");
            assert_eq!(s.len(), v.len());
            let (a, b) = (entries(v), entries(s));
            for ((t, p, id), (t2, p2, id2)) in a.iter().zip(&b) {
                assert_eq!((t, p), (t2, p2));
                if !matches!(t, 2 | 8) {
                    assert_eq!(id, id2, "an id-less entry changed");
                } else if *id < 65536 {
                    assert_eq!(*id2, id + 100000);
                } else {
                    assert_eq!(*id2, 65534);
                }
            }
            // Every id it shows comes back to disk as it was, where the id was mapped.
            if a.iter()
                .all(|(t, _, id)| !matches!(t, 2 | 8) || *id < 65536)
            {
                assert_eq!(m.acl_to_disk(s).as_deref(), Ok(v));
            }
        }
        Err(e) => {
            assert!(!well_formed, "{v:?} refused");
            assert_eq!(*e, Errno::EIO);
        }
    }
    match &disk {
        Ok(d) => assert_eq!(d.len(), v.len()),
        Err(e) => assert_eq!(*e, Errno::EINVAL),
    }
}

/// Checks one override_stat value: never panics, and what parses applies to a file and a
/// directory without changing what cannot change (a directory stays one, a file is never
/// shown as a directory or a symlink).
fn check_override(v: &[u8]) {
    let Some(o) = stat_xattr::parse(v) else {
        return;
    };
    assert!(o.perm <= 0o7777);
    for real in [libc::S_IFREG, libc::S_IFDIR] {
        let st = o.apply(Stat {
            mode: real | 0o700,
            ..Stat::default()
        });
        assert_eq!((st.uid, st.gid, st.mode & 0o7777), (o.uid, o.gid, o.perm));
        let t = st.mode & libc::S_IFMT;
        if real == libc::S_IFDIR {
            assert_eq!(t, libc::S_IFDIR);
        } else {
            assert!(t != libc::S_IFDIR && t != libc::S_IFLNK, "{v:?}");
        }
    }
    for w in PRECEDENCE {
        let again =
            stat_xattr::parse(&w.format(o.uid, o.gid, libc::S_IFREG | o.perm, o.special_kind()))
                .unwrap();
        assert_eq!((again.uid, again.gid, again.perm), (o.uid, o.gid, o.perm));
        assert_eq!(again.special_kind(), o.special_kind());
    }
}

/// ACL-shaped values: the header (or a broken one) and entries with every tag, or any bytes.
fn acl_value() -> impl Strategy<Value = Vec<u8>> {
    let entry = (
        prop::sample::select(vec![1u16, 2, 4, 8, 0x10, 0x20, 0, 3, 0xffff]),
        any::<u16>(),
        prop_oneof![0u32..70000, Just(u32::MAX), any::<u32>()],
    );
    prop_oneof![
        4 => (prop::collection::vec(entry, 0..12), prop::sample::select(vec![2u32, 2, 2, 1, 0])).prop_map(|(es, ver)| {
            let mut v = ver.to_le_bytes().to_vec();
            for (t, p, id) in es {
                v.extend_from_slice(&t.to_le_bytes());
                v.extend_from_slice(&p.to_le_bytes());
                v.extend_from_slice(&id.to_le_bytes());
            }
            v
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// override_stat-shaped values: fields with the separators, digits and type words.
fn override_value() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        "[0-9]{0,11}",
        "[0-7]{0,7}",
        prop::sample::select(vec![
            "file",
            "dir",
            "symlink",
            "pipe",
            "socket",
            "char-1-3",
            "block-8-0",
            "char-",
            "block--1-2-3",
            "char-99999999999-1",
            "-",
            "",
            "0x10",
            "+5",
            " 5",
        ])
        .prop_map(str::to_string),
        any::<String>(),
    ];
    prop_oneof![
        4 => prop::collection::vec(field, 0..6).prop_map(|f| f.join(":").into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn acl_values_never_panic(v in acl_value()) {
        check_acl(&v);
    }

    #[test]
    fn override_values_never_panic(v in override_value()) {
        check_override(&v);
    }
}

/// The corpus files of `dir`, one value per file, as raw bytes.
fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 8, "{}: corpus too small", dir.display());
    out
}

#[test]
fn acl_corpus() {
    let mut parsed = 0;
    for (name, v) in corpus("acl") {
        check_acl(&v);
        parsed += usize::from(mapped().acl_to_shown(&v).is_ok());
        eprintln!("ok {name}");
    }
    assert!(parsed >= 3, "the corpus holds well-formed ACLs too");
}

#[test]
fn override_stat_corpus() {
    let mut parsed = 0;
    for (name, v) in corpus("override_stat") {
        check_override(&v);
        parsed += usize::from(stat_xattr::parse(&v).is_some());
        eprintln!("ok {name}");
    }
    assert!(parsed >= 3, "the corpus holds valid values too");
}
