//! FUSE: the two transports and what they share. fuser mounts and does the INIT handshake
//! (`init`; `Fs` is fuser's `Filesystem` for that alone, and the only code here that names
//! fuser's types besides `notify`). Requests are then answered by our own code: one handler
//! (`ops::Dispatcher`) decodes each request (`abi`: the wire format), calls the overlay core
//! once and encodes the reply, for both transports: the /dev/fuse workers (`dev`) and, where
//! the kernel grants it, the per-CPU queues of FUSE over io_uring (`uring`). What is FUSE's and
//! not the overlay's lives beside it: how open files' data travels (`passthrough`:
//! passthrough backings, per-inode open modes, the writeback cache's open option), the
//! kernel-cache notifications (`notify`) and the requests' counts and latencies (`stats`).

pub mod abi;
mod dev;
mod init;
mod nodeid;
mod notify;
mod ops;
mod passthrough;
mod stats;
pub mod uring;

pub use init::max_write;
pub use notify::KernelCacheLink;
pub(crate) use ops::Dispatcher;

use crate::config::Config;
use crate::error::Errno;
use crate::overlay::{Opened, Overlay};
use crate::privilege::Privilege;
use crate::sys::fusedev::Backing;
use fuser::{Filesystem, KernelConfig, Request};
use passthrough::{DataPath, Serve};
use stats::OpStats;
use std::sync::Arc;
use std::time::Duration;

pub struct Fs {
    pub ov: Arc<Overlay>,
    ttl: Duration,
    /// Ask for passthrough at INIT, or why not (`init::passthrough_wish`).
    want_passthrough: Result<(), &'static str>,
    max_write: Option<u32>,
    /// `strict_copy_up=1` (off by default): lower files opened
    /// read-only are not passthrough.
    strict_copy_up: bool,
    /// Ask for POSIX ACLs at INIT (not with `noacl`).
    acl: bool,
    /// Passthrough or cached, per open file (shared with the request handler and the stats
    /// socket's reporter).
    data: Arc<DataPath<Backing>>,
    /// Requests and their latency per operation (both transports).
    ops: Arc<OpStats>,
    /// FUSE over io_uring: asked for, granted at INIT.
    uring: Arc<uring::Offer>,
    /// Who besides the owner may make requests (`allow_root`, `allow_other`).
    access: ops::Access,
    /// Kernel node ids and the core's numbers (`nodeid`).
    ids: Arc<nodeid::NodeIds>,
}

impl Fs {
    /// `privilege`: who the daemon runs as (passthrough is asked for only as real root).
    pub fn new(ov: Arc<Overlay>, cfg: &Config, privilege: &Privilege) -> Fs {
        Fs {
            ov,
            ttl: cfg.timeout,
            want_passthrough: init::passthrough_wish(cfg.passthrough, privilege.mode),
            max_write: cfg.max_write,
            acl: cfg.acl,
            strict_copy_up: cfg.strict_copy_up,
            data: Arc::new(DataPath::new(!cfg.strict_copy_up)),
            ops: Arc::default(),
            uring: Arc::new(uring::Offer::new(cfg.io_uring)),
            access: ops::Access::new(crate::sys::geteuid(), cfg.allow_root, cfg.allow_other),
            ids: Arc::default(),
        }
    }
}

/// How an open the data path decided on is answered: the open's `FOPEN_*` flags and the
/// backing to name (passthrough), or an error, the core's handle then closed.
fn open_answer(
    ov: &Overlay,
    o: &Opened,
    serve: Serve<Backing>,
) -> Result<(u32, Option<Arc<Backing>>), Errno> {
    use abi::{FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_NOFLUSH, FOPEN_PASSTHROUGH};
    let (flags, b) = match serve {
        Serve::Passthrough(b) => (FOPEN_NOFLUSH, b),
        // A `Serve::Direct` open names the inode's backing, as the kernel wants, but its
        // reads and writes come to the daemon.
        Serve::Direct(b) => (FOPEN_NOFLUSH | FOPEN_DIRECT_IO, b),
        // The page cache stays valid across opens: every change goes through this mount.
        Serve::Cached => return Ok((FOPEN_KEEP_CACHE | FOPEN_NOFLUSH, None)),
        Serve::Stale => {
            ov.release(o.fh);
            return Err(Errno::ESTALE);
        }
    };
    Ok((flags | FOPEN_PASSTHROUGH, Some(b)))
}

/// How long the kernel may keep the root's attributes: at most a second, whatever `timeout`
/// says. `stat MNT` and `mountpoint MNT` answer from them, so with a long cache they would go
/// on succeeding after the daemon died (while every other use fails with ENOTCONN). A path
/// walk checks the root's permission bits from them too: one GETATTR a second at most.
const ROOT_ATTR_TTL: Duration = Duration::from_secs(1);

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let want = init::Wanted {
            passthrough: self.want_passthrough,
            max_write: self.max_write,
            read_only: self.ov.read_only(),
            has_upper: self.ov.layers.has_upper,
            strict_copy_up: self.strict_copy_up,
            acl: self.acl,
        };
        let granted = init::negotiate(config, &want);
        self.data
            .negotiated(granted.passthrough, granted.writeback, granted.summary);
        self.uring.negotiate(config);
        Ok(())
    }
}
