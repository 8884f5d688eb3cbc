//! Requests per FUSE operation and their latency, for `layover stats`: one fixed-bucket
//! log histogram per operation, lock-free (relaxed atomics). A request costs two clock reads
//! and four atomic updates (`Fs` times every operation through `OpStats::start`, one guard
//! per handler). Also the transport's part of the live report (`Fs::reporter`).

use super::Fs;
use crate::stats::{DataPathReport, OpReport, Report, server::Reporter};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

macro_rules! ops {
    ($($variant:ident => $name:literal,)*) => {
        /// The operations the daemon serves.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Op { $($variant,)* }
        const NAMES: &[&str] = &[$($name,)*];
        impl Op {
            /// The operation's name, as `layover stats` and `-d` give it.
            pub fn name(self) -> &'static str {
                NAMES.get(self as usize).copied().unwrap_or("?")
            }
        }
    };
}

ops! {
    Lookup => "lookup", Forget => "forget", Getattr => "getattr", Setattr => "setattr",
    Readlink => "readlink", Mknod => "mknod", Mkdir => "mkdir", Unlink => "unlink",
    Rmdir => "rmdir", Symlink => "symlink", Rename => "rename", Link => "link",
    Open => "open", Read => "read", Write => "write", Flush => "flush",
    Release => "release", Fsync => "fsync", Opendir => "opendir", Readdir => "readdir",
    Readdirplus => "readdirplus", Releasedir => "releasedir", Fsyncdir => "fsyncdir",
    Statfs => "statfs", Setxattr => "setxattr", Getxattr => "getxattr",
    Listxattr => "listxattr", Removexattr => "removexattr", Access => "access",
    Create => "create", Fallocate => "fallocate", Lseek => "lseek",
    CopyFileRange => "copy_file_range",
}

/// Buckets: 0..8 ns one each, then four per power of two up to 2^64 ns.
const BUCKETS: usize = 8 + 61 * 4;

fn bucket(ns: u64) -> usize {
    if ns < 8 {
        return ns as usize;
    }
    let log = 63 - ns.leading_zeros(); // >= 3
    let sub = (ns >> (log - 2)) & 3;
    ((log - 1) * 4) as usize + sub as usize
}

/// The largest value that falls in bucket `b`.
fn bucket_top(b: usize) -> u64 {
    if b < 8 {
        return b as u64;
    }
    let log = (b / 4 + 1) as u32;
    let sub = (b % 4) as u64;
    let low = (4 + sub) << (log - 2);
    low.saturating_add((1u64 << (log - 2)) - 1)
}

struct Histogram {
    count: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            count: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn record(&self, ns: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        self.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// The report of this operation; None if it was never served. Read while requests go
    /// on, so the figures are each consistent, not all at one instant.
    fn report(&self, name: &str) -> Option<OpReport> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return None;
        }
        let max = self.max_ns.load(Ordering::Relaxed);
        let pct = |p: u64| -> u64 {
            // The smallest value with at least p% of the requests at or below it.
            let want = (n * p).div_ceil(100).max(1);
            let mut seen = 0;
            for (b, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return bucket_top(b).min(max);
                }
            }
            max
        };
        Some(OpReport {
            name: name.to_string(),
            count: self.count.load(Ordering::Relaxed).max(n),
            total_ns: self.total_ns.load(Ordering::Relaxed),
            p50_ns: pct(50),
            p90_ns: pct(90),
            p99_ns: pct(99),
            max_ns: max,
        })
    }
}

/// A histogram per operation.
pub struct OpStats {
    ops: Vec<Histogram>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            ops: NAMES.iter().map(|_| Histogram::new()).collect(),
        }
    }
}

/// Times one request from its start to the guard's drop (after the reply was sent).
pub struct Timer<'a> {
    h: Option<&'a Histogram>,
    start: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.h {
            let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            h.record(ns);
        }
    }
}

impl OpStats {
    /// Starts timing a request of `op`: keep the guard until the reply is sent.
    pub fn start(&self, op: Op) -> Timer<'_> {
        Timer {
            h: self.ops.get(op as usize),
            start: Instant::now(),
        }
    }

    /// Every operation served at least once.
    pub fn report(&self) -> Vec<OpReport> {
        self.ops
            .iter()
            .zip(NAMES)
            .filter_map(|(h, name)| h.report(name))
            .collect()
    }
}

/// Fds this process holds.
fn fd_count() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1) as u64)
}

impl Fs {
    /// What the stats socket answers with: the core's figures, the data path, the requests.
    /// `fd_limit`: the daemon's open-file limit.
    pub fn reporter(&self, mountpoint: &Path, fd_limit: u64) -> Reporter {
        let (ov, ops, data, uring) = (
            Arc::clone(&self.ov),
            Arc::clone(&self.ops),
            Arc::clone(&self.data),
            Arc::clone(&self.uring),
        );
        let mountpoint = mountpoint.to_string_lossy().into_owned();
        let started = Instant::now();
        Box::new(move || Report {
            pid: std::process::id(),
            mountpoint: mountpoint.clone(),
            uptime_ms: started.elapsed().as_millis() as u64,
            core: ov.figures(),
            fds: fd_count(),
            fd_limit,
            data: DataPathReport {
                transport: uring.transport(),
                ..data.report()
            },
            ops: ops.report(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_and_bound() {
        assert_eq!(NAMES.len(), Op::CopyFileRange as usize + 1);
        for ns in (0..5000).chain([u64::MAX / 3, u64::MAX]) {
            let b = bucket(ns);
            assert!(b < BUCKETS, "{ns}");
            assert!(
                bucket_top(b) >= ns,
                "{ns}: bucket {b} top {}",
                bucket_top(b)
            );
            if b > 0 {
                assert!(bucket_top(b - 1) < ns, "{ns}");
            }
            // Within 25% above the value.
            assert!(bucket_top(b) - ns <= ns / 4 + 1, "{ns}");
        }
    }

    #[test]
    fn percentiles() {
        let s = OpStats::default();
        for ns in 1..=1000u64 {
            s.ops[Op::Read as usize].record(ns * 1000);
        }
        let r = s.report();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(
            (r.name.as_str(), r.count, r.max_ns),
            ("read", 1000, 1_000_000)
        );
        for (p, got) in [
            (500_000, r.p50_ns),
            (900_000, r.p90_ns),
            (990_000, r.p99_ns),
        ] {
            assert!(got >= p && got <= p + p / 4, "{p}: {got}");
        }
        assert_eq!(r.total_ns, 500_500_000);
    }
}
