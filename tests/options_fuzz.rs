//! Property tests of everything that parses the command line: arbitrary `-o` strings
//! (backslashes, commas, colons, `=`, empty segments, very long values, any Unicode) and
//! arbitrary argument vectors (non-UTF-8 bytes too) never panic, errors stay on one line,
//! escaping round-trips, and the subcommand rule holds. Nothing here mounts or touches the
//! filesystem. Failures proptest finds are kept in `tests/options_fuzz.proptest-regressions`
//! and replayed first; hand-picked inputs in `tests/corpus/` are replayed by the last tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use layover::cli::{self, Command};
use layover::config::{escape, parse_options, split_escaped, unescape};
use proptest::prelude::*;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

const RESERVED: &[&str] = &["explain", "diff", "export", "check", "stats"];

/// Pieces an option string is made of: the keys layover knows (so their values are parsed),
/// the characters with a meaning, and anything at all.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "lowerdir=", "upperdir=", "workdir=", "fsync=", "volatile", "timeout=", "threads=",
            "max_write=", "passthrough=", "userxattr", "ro", "rw", "context=", "x-", "nodev",
            "noexec", "exec", "allow_other", "0", "1", "-1", "1e308", "NaN", "inf", "::", "/",
        ])
        .prop_map(str::to_string),
        3 => prop::sample::select(vec![",", ":", "=", "\\", "\\,", "\\:", "\\\\", ",,", "\n"])
            .prop_map(str::to_string),
        2 => any::<String>(),
        1 => "[a-z/]{0,8}",
    ]
}

/// One `-o` argument: a few pieces, or now and then one very long value.
fn option_string() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => prop::collection::vec(piece(), 0..12).prop_map(|v| v.concat()),
        1 => ("(lowerdir|upperdir|timeout|context)=", "[a-z/\\\\:,]{5000,20000}")
            .prop_map(|(k, v)| format!("{k}{v}")),
    ]
}

/// Any argument, as bytes (a command line need not be UTF-8).
fn any_arg() -> impl Strategy<Value = OsString> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "-o", "-f", "-d", "-s", "-h", "--help", "-V", "--", "-", "--debug", "-x", "-fd",
            "-olowerdir=/a", "overlay", "/mnt", "explain", "check", "diff", "./explain",
        ])
        .prop_map(OsString::from),
        2 => option_string().prop_map(OsString::from),
        2 => prop::collection::vec(any::<u8>(), 0..24).prop_map(OsString::from_vec),
    ]
}

fn assert_one_line(what: &str, msg: &str) {
    assert!(
        !msg.is_empty() && !msg.contains('\n') && !msg.contains('\r'),
        "{what}: message not one line: {msg:?}"
    );
}

/// Everything said about one `-o` argument, whatever it holds.
fn check_option_string(s: &str) {
    match parse_options(&[s.to_string()]) {
        Ok(o) => {
            assert!(o.layers.lowerdirs.iter().all(|l| !l.is_empty()), "{s:?}");
            if let Some(t) = o.daemon.timeout {
                assert!((0.0..=1e9).contains(&t), "{s:?}: timeout {t}");
            }
        }
        Err(e) => assert_one_line(s, &e.0),
    }
    for sep in [',', ':'] {
        let parts = split_escaped(s, sep);
        assert_eq!(parts.join(&sep.to_string()), s, "split/join on {sep:?}");
    }
    assert_eq!(unescape(&escape(s)), s);
    // Through the command line too, as one -o argument and glued.
    for args in [
        vec![OsString::from("-o"), s.into(), "/mnt".into()],
        vec![format!("-o{s}").into(), "/mnt".into()],
    ] {
        check_argv(&args);
    }
}

/// Everything said about an argument vector, whatever it holds.
fn check_argv(args: &[OsString]) {
    let first_reserved = args
        .first()
        .is_some_and(|a| RESERVED.iter().any(|r| a.as_os_str() == *r));
    match cli::parse(args) {
        Ok(Command::Tool(t)) => {
            assert!(first_reserved, "{args:?}: {} as a subcommand", t.name());
            assert_eq!(args[0], t.name());
        }
        Ok(Command::Mount(m)) => {
            assert!(
                !first_reserved,
                "{args:?}: mount syntax after a reserved word"
            );
            assert!(args.contains(&m.mountpoint), "{args:?}: {m:?}");
        }
        Ok(Command::Help(h)) => assert!(!h.is_empty()),
        Ok(Command::Version(v)) => assert!(v.contains(env!("CARGO_PKG_VERSION"))),
        Err(e) => assert_one_line(&format!("{args:?}"), &e.0),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // 512 on every `cargo test`; PROPTEST_CASES=N for a longer run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::SourceParallel("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn option_strings_never_panic(s in option_string()) {
        check_option_string(&s);
    }

    #[test]
    fn several_option_arguments_never_panic(v in prop::collection::vec(option_string(), 0..5)) {
        let _ = parse_options(&v);
    }

    #[test]
    fn argument_vectors_never_panic(args in prop::collection::vec(any_arg(), 0..8)) {
        check_argv(&args);
    }

    /// Any list of values survives escaping, joining and splitting again.
    #[test]
    fn escape_split_round_trip(parts in prop::collection::vec(any::<String>(), 1..6)) {
        for sep in [',', ':'] {
            let joined: Vec<String> = parts.iter().map(|p| escape(p)).collect();
            let back: Vec<String> = split_escaped(&joined.join(&sep.to_string()), sep)
                .iter()
                .map(|p| unescape(p))
                .collect();
            prop_assert_eq!(&back, &parts);
        }
    }

    /// Paths with any characters come out of `lowerdir=` and `upperdir=` as they went in,
    /// once escaped, next to other options.
    #[test]
    fn layer_paths_round_trip(
        lowers in prop::collection::vec(any::<String>().prop_filter("empty", |s| !s.is_empty()), 1..5),
        upper in any::<String>(),
    ) {
        let lowerdir: Vec<String> = lowers.iter().map(|p| escape(p)).collect();
        let opt = format!("ro,lowerdir={},upperdir={},noexec", lowerdir.join(":"), escape(&upper));
        let o = parse_options(&[opt]).unwrap();
        prop_assert_eq!(&o.layers.lowerdirs, &lowers);
        prop_assert_eq!(o.layers.upperdir.as_deref(), Some(upper.as_str()));
        prop_assert!(o.layers.ro);
    }

    /// `-o` values are collected in order wherever they stand around the positionals, given
    /// as `-o VALUE` or glued as `-oVALUE` (glued, a leading `=` is dropped: clap reads
    /// `-o=VALUE` as `-o VALUE`).
    #[test]
    fn options_anywhere_around_the_positionals(
        opts in prop::collection::vec(("-?[a-z=,\\\\:]{0,12}", any::<bool>(), 0usize..3), 0..4),
        positionals in prop::collection::vec("[a-z/.][a-z/.]{0,8}", 1..3),
    ) {
        prop_assume!(!RESERVED.contains(&positionals[0].as_str()));
        let mut args: Vec<OsString> = Vec::new();
        let mut expected: Vec<String> = Vec::new();
        for slot in 0..3 {
            for (value, glued, at) in &opts {
                if (*at).min(positionals.len()) != slot {
                    continue;
                }
                if *glued && !value.is_empty() {
                    args.push(format!("-o{value}").into());
                    expected.push(value.strip_prefix('=').unwrap_or(value).to_string());
                } else {
                    args.push("-o".into());
                    args.push(value.into());
                    expected.push(value.clone());
                }
            }
            if let Some(p) = positionals.get(slot) {
                args.push(p.into());
            }
        }
        let Ok(Command::Mount(m)) = cli::parse(&args) else {
            panic!("{args:?} not a mount");
        };
        prop_assert_eq!(&m.options, &expected, "{:?}", args);
        prop_assert_eq!(m.mountpoint.to_string_lossy(), positionals.last().unwrap().as_str());
        prop_assert_eq!(m.source.is_some(), positionals.len() == 2);
    }
}

/// The corpus files: one `-o` argument per file in `options/`, one argument vector per file
/// in `argv/` (arguments separated by NUL bytes), kept as raw bytes.
fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 10, "{}: corpus too small", dir.display());
    out
}

#[test]
fn option_corpus() {
    for (name, bytes) in corpus("options") {
        match String::from_utf8(bytes.clone()) {
            Ok(s) => check_option_string(&s),
            Err(_) => check_argv(&["-o".into(), OsString::from_vec(bytes), "/m".into()]),
        }
        eprintln!("ok {name}");
    }
}

#[test]
fn argv_corpus() {
    for (name, bytes) in corpus("argv") {
        let args: Vec<OsString> = bytes
            .split(|&b| b == 0)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        check_argv(&args);
        eprintln!("ok {name}");
    }
}
