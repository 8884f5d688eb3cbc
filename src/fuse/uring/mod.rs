//! FUSE over io_uring: the per-CPU queue threads and the request as the kernel lays it in a
//! ring entry, answered by the handler both transports share (`fuse::ops::Dispatcher`). The
//! rings themselves (buffers, SQEs) are `sys::uring`'s. Public (as `layover::fuse_uring`,
//! with the wire format `fuse::abi` re-exported) for the floor example
//! (examples/fuse_floor.rs), which measures the transport on its own.
//!
//! Set-up: the INIT reply (through /dev/fuse, by fuser) grants `FUSE_OVER_IO_URING`; then
//! `serve` starts threads pinned to each possible CPU, owning that CPU's queue. Until every
//! queue has registered an entry, and for FORGET and INTERRUPT always, requests keep coming
//! through /dev/fuse, whose workers run beside the rings.

use crate::sys::uring::{Completion, Queue};
use fuser::{InitFlags, KernelConfig};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

pub use super::abi::{self, Request};
pub use crate::sys::fusedev::Backing;
pub use crate::sys::uring::{possible_cpus, uring_enabled};

/// Answers one request: the reply's bytes (its arguments, concatenated) or a positive errno.
pub type Handler = dyn Fn(&Request<'_>) -> Result<Vec<u8>, i32> + Send + Sync;

/// Answers a READ in place: reads into the ring entry's payload buffer (at most the
/// request's size) and gives how many bytes it read, or a positive errno. Saves the copy of
/// the data from a buffer of its own into the entry that a `Handler` reply costs.
pub type ReadHandler = dyn Fn(&Request<'_>, &mut [u8]) -> Result<usize, i32> + Send + Sync;

/// How `serve_with` runs the queues.
#[derive(Clone)]
pub struct Serving {
    /// Threads per CPU queue, and ring entries per thread (`DEFAULT_SHAPE`).
    pub shape: (usize, usize),
    /// Pin each queue's threads to the queue's CPU.
    pub pin: bool,
    /// READ answered in place; without it READ goes to the `Handler` like the rest.
    pub read: Option<Arc<ReadHandler>>,
}

/// FUSE over io_uring at INIT: whether the daemon asks for it, whether the kernel granted it.
pub(crate) struct Offer {
    wanted: bool,
    granted: AtomicBool,
    /// The rings are up and serving (set once every queue has started).
    serving: AtomicBool,
    /// Why not, for the log line.
    why_not: std::sync::Mutex<&'static str>,
}

impl Offer {
    pub(crate) fn new(wanted: bool) -> Offer {
        Offer {
            wanted,
            granted: AtomicBool::new(false),
            serving: AtomicBool::new(false),
            why_not: std::sync::Mutex::new(if wanted { "" } else { "io_uring=0" }),
        }
    }

    /// At INIT: asks for `FUSE_OVER_IO_URING` if wanted and offered.
    pub(crate) fn negotiate(&self, config: &mut KernelConfig) {
        if !self.wanted {
            return;
        }
        let granted = config
            .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
            .is_ok();
        self.granted.store(granted, Ordering::Relaxed);
        if !granted && let Ok(mut w) = self.why_not.lock() {
            *w = if uring_enabled() {
                "the kernel did not offer it at INIT"
            } else {
                "the fuse module's enable_uring parameter is off"
            };
        }
    }

    pub(crate) fn granted(&self) -> bool {
        self.granted.load(Ordering::Relaxed)
    }

    /// The rings serve requests from now on.
    pub(crate) fn serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    /// Which transport serves the mount, for `layover stats`.
    pub(crate) fn transport(&self) -> String {
        if self.serving.load(Ordering::Relaxed) {
            "FUSE over io_uring".into()
        } else if self.granted() {
            "/dev/fuse (io_uring was granted but did not start)".into()
        } else {
            format!("/dev/fuse ({})", self.why_not())
        }
    }

    pub(crate) fn why_not(&self) -> &'static str {
        self.why_not.lock().map_or("", |w| *w)
    }
}

/// Threads (each with its own ring) per CPU queue, and ring entries per thread. One entry
/// per thread: the kernel gives a request to any free entry of the queue, and an entry of a
/// thread busy with a slow request (a large copy-up) would wait for it (a stat of another
/// file then took 0.4-0.6 s, against 0.03-0.07 s over /dev/fuse; with one entry per thread
/// only idle threads have free entries).
pub const DEFAULT_SHAPE: (usize, usize) = (4, 1);

/// Starts `per_queue` threads per possible CPU on the connection `dev` (after an INIT reply
/// that granted `FUSE_OVER_IO_URING`), each pinned to its CPU with a ring of `depth` entries
/// of `payload` bytes (at least the connection's max_write, and its max_pages pages) in that
/// CPU's queue. A request takes any free entry of its CPU's queue, so with more than one
/// thread a slow request (a large copy-up, an fsync) does not hold up the others. The threads
/// run until the connection ends (the kernel fails their commands with ENOTCONN). Returns
/// once every ring has registered its entries, or the first error.
pub fn serve(
    dev: &Arc<OwnedFd>,
    shape: (usize, usize),
    payload: usize,
    handler: Arc<Handler>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let how = Serving {
        shape,
        pin: true,
        read: None,
    };
    serve_with(dev, &how, payload, handler)
}

/// `serve`, with the choices of `how`: the shape, whether the threads are pinned, and a
/// handler answering READ in place.
pub fn serve_with(
    dev: &Arc<OwnedFd>,
    how: &Serving,
    payload: usize,
    handler: Arc<Handler>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let (per_queue, depth) = how.shape;
    let cpus = possible_cpus()?;
    let mut threads = Vec::with_capacity(cpus * per_queue);
    let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
    for cpu in (0..cpus).flat_map(|c| std::iter::repeat_n(c, per_queue.max(1))) {
        let dev = Arc::clone(dev);
        let handler = Arc::clone(&handler);
        let read = how.read.clone();
        let pin = how.pin;
        let tx = tx.clone();
        let qid = u16::try_from(cpu).map_err(io::Error::other)?;
        let t = std::thread::Builder::new()
            .name(format!("fuse-ring-{cpu}"))
            .spawn(move || {
                if pin && let Err(e) = crate::sys::uring::pin_to_cpu(cpu) {
                    log::debug!("queue {qid}: not pinned to CPU {cpu}: {e}");
                }
                let queue = Queue::new(dev.as_fd(), qid, depth, payload);
                let mut queue = match queue {
                    Ok(q) => {
                        let _ = tx.send(Ok(()));
                        q
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                drop(tx);
                if let Err(e) = run_queue(&mut queue, &*handler, read.as_deref()) {
                    log::error!("io_uring queue {qid}: {e}");
                }
            })?;
        threads.push(t);
    }
    drop(tx);
    for _ in 0..threads.len() {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a queue thread ended during set-up")),
        }
    }
    Ok(threads)
}

/// One queue's loop: wait for requests, answer each, until the connection ends.
fn run_queue(queue: &mut Queue, handler: &Handler, read: Option<&ReadHandler>) -> io::Result<()> {
    let mut done: Vec<Completion> = Vec::with_capacity(queue.depth());
    loop {
        queue.wait(&mut done)?;
        for c in &done {
            match c.res {
                0 => {}
                r if r == -libc::EINTR || r == -libc::EAGAIN => {
                    queue.resubmit(c.slot)?;
                    continue;
                }
                r if r == -libc::ENOTCONN => return Ok(()),
                r => return Err(io::Error::from_raw_os_error(-r)),
            }
            let is_read = queue
                .request(c.slot)
                .and_then(Request::parse)
                .is_some_and(|r| r.opcode == abi::op::READ);
            match read {
                Some(read) if is_read => read_in_place(queue, c.slot, read)?,
                _ => answer(queue, c.slot, handler)?,
            }
        }
    }
}

/// Answers the request a slot holds with the handler's reply.
fn answer(queue: &mut Queue, slot: usize, handler: &Handler) -> io::Result<()> {
    let answer = match queue.request(slot).and_then(Request::parse) {
        Some(req) => handler(&req),
        None => Err(libc::EIO),
    };
    match answer {
        Ok(bytes) => queue.reply(slot, 0, &[&bytes]),
        Err(errno) => {
            log::debug!("errno {errno}");
            queue.reply(slot, -errno, &[])
        }
    }
}

/// Answers the READ a slot holds with the data read straight into the slot's payload buffer.
fn read_in_place(queue: &mut Queue, slot: usize, read: &ReadHandler) -> io::Result<()> {
    let answer = match queue.request_and_buffer(slot) {
        // A READ's arguments are all in its header area; the payload is the reply's room.
        Some((header, op_in, buf)) => match Request::parse((header, op_in, &[])) {
            Some(req) => read(&req, buf),
            None => Err(libc::EIO),
        },
        None => Err(libc::EIO),
    };
    match answer {
        Ok(n) => queue.commit(slot, 0, n),
        Err(errno) => queue.commit(slot, -errno, 0),
    }
}
