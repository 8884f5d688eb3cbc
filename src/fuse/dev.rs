//! The /dev/fuse transport: worker threads, each reading requests from its own clone of the
//! connection's fd, answering them through the handler the io_uring queues use too
//! (`ops::Dispatcher`: one decoding, one dispatch, one encoding of every operation) and writing
//! the reply. fuser mounts and does INIT; from then on every request a ring does not take
//! comes here: all of them when FUSE over io_uring is not granted, those sent while the rings
//! start, and FORGET, BATCH_FORGET and INTERRUPT always.
//!
//! READ replies are spliced from the real file into the device through a pipe pair of the
//! worker's (`sys::fusedev::SplicePipes`): the data never passes through the daemon's
//! memory, which saves a copy of every byte read through the daemon (lower files in a
//! writable mount without `strict_copy_up=0`, every file without passthrough). Replies larger
//! than the pipes, and every reply when the pipes cannot be made, go through memory.

use super::abi::{Request, op, u32_at, u64_at};
use super::ops::Dispatcher;
use crate::sys::fusedev::{self, SplicePipes, Spliced};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Room for the largest request: `payload` bytes of data (max_write, or max_pages pages)
/// after the headers, which the kernel wants a page for.
fn buffer_size(payload: usize) -> usize {
    payload + 4096
}

/// Starts `threads` workers on clones of the connection `dev` (the first on `dev` itself).
/// They run until the connection ends.
pub(crate) fn serve(
    ring: &Arc<Dispatcher>,
    dev: &Arc<OwnedFd>,
    threads: usize,
    payload: usize,
) -> io::Result<Vec<JoinHandle<io::Result<()>>>> {
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads.max(1) {
        let fd = if i == 0 {
            dev.as_fd().try_clone_to_owned()?
        } else {
            fusedev::clone_device(dev.as_fd())?
        };
        let ring = Arc::clone(ring);
        let conn = Arc::clone(dev);
        let w = std::thread::Builder::new()
            .name(format!("fuse-dev-{i}"))
            .spawn(move || {
                let mut buf = vec![0u8; buffer_size(payload)];
                let mut w = Worker {
                    fd: fd.as_fd(),
                    ring: &ring,
                    conn: &conn,
                    pipes: None,
                    want: payload + 16,
                    read_buf: Vec::new(),
                };
                w.run(&mut buf)
            })?;
        workers.push(w);
    }
    Ok(workers)
}

/// One worker: its fd, the handler, and its splice pipes (made at the first READ).
struct Worker<'a> {
    fd: BorrowedFd<'a>,
    ring: &'a Dispatcher,
    /// The connection's fd, on which the handler registers passthrough backings.
    conn: &'a Arc<OwnedFd>,
    pipes: Option<SplicePipes>,
    /// The largest reply the pipes are asked to hold.
    want: usize,
    /// READ replies that do not go through the pipes are read into this (made at the first
    /// such READ, of the largest request's size, and reused).
    read_buf: Vec<u8>,
}

impl Worker<'_> {
    /// Reads a request, answers it, until the connection ends (ENODEV).
    fn run(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let fd = self.fd;
        loop {
            let n = match fusedev::read_request(fd, buf) {
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENOENT | libc::EINTR | libc::EAGAIN) => continue,
                    Some(libc::ENODEV) => return Ok(()),
                    _ => return Err(e),
                },
            };
            let Some(req) = buf.get(..n).and_then(Request::from_dev) else {
                log::error!("a malformed request of {n} bytes from /dev/fuse");
                // Its unique, if the header is whole, so that the caller does not wait.
                if n >= 16 {
                    send(fd, u64_at(buf, 8), Err(libc::EIO));
                }
                continue;
            };
            self.answer(&req);
        }
    }

    fn answer(&mut self, req: &Request<'_>) {
        let (fd, ring) = (self.fd, self.ring);
        match req.opcode {
            // No reply to a forget.
            op::FORGET => ring.forget(req.nodeid, u64_at(req.op_in, 0)),
            op::BATCH_FORGET => {
                // fuse_batch_forget_in { count, dummy }, then count fuse_forget_one
                // { nodeid, nlookup }.
                let count = u32_at(req.op_in, 0) as usize;
                for one in req.payload.chunks_exact(16).take(count) {
                    ring.forget(u64_at(one, 0), u64_at(one, 8));
                }
            }
            // Requests are not interrupted (each is answered promptly or not at all): ENOSYS
            // tells the kernel to send no more INTERRUPTs.
            op::INTERRUPT => send(fd, req.unique, Err(libc::ENOSYS)),
            op::READ => self.read(req),
            _ => send(
                fd,
                req.unique,
                ring.handle(self.conn, req).as_deref().map_err(|&e| e),
            ),
        }
    }

    /// Answers a READ: spliced if it can be, else read into the worker's buffer.
    fn read(&mut self, req: &Request<'_>) {
        if self.splice(req) {
            return;
        }
        if self.read_buf.len() < self.want {
            self.read_buf = vec![0; self.want];
        }
        match self.ring.read_into(req, &mut self.read_buf) {
            Ok(n) => send(
                self.fd,
                req.unique,
                Ok(self.read_buf.get(..n).unwrap_or(&[])),
            ),
            Err(e) => send(self.fd, req.unique, Err(e)),
        }
    }

    /// Answers a READ through the splice pipes; false if it must go through memory (too
    /// large for the pipes, or no pipes).
    fn splice(&mut self, req: &Request<'_>) -> bool {
        if self.pipes.is_none() {
            self.pipes = SplicePipes::new(self.want)
                .inspect_err(|e| log::debug!("READ replies through memory: no pipes ({e})"))
                .ok();
        }
        let Some(pipes) = &self.pipes else {
            return false;
        };
        // fuse_read_in { fh, offset, size, ... }
        if u32_at(req.op_in, 16) as usize > pipes.max_data() {
            return false;
        }
        let (_timer, source) = self.ring.read_source(req);
        let (file, offset, size) = match source {
            Ok(s) => s,
            Err(e) => {
                send(self.fd, req.unique, Err(e));
                return true;
            }
        };
        match pipes.reply_from_file(self.fd, req.unique, file.as_fd(), offset, size) {
            Ok(Spliced::Sent(_)) => {}
            // A file whose filesystem cannot splice: read through memory.
            Ok(Spliced::ReadFailed(libc::EINVAL | libc::ENOSYS)) => return false,
            Ok(Spliced::ReadFailed(e)) => send(self.fd, req.unique, Err(e)),
            // The reply may or may not have reached the device; if it did, this second one
            // finds the request gone (ENOENT, ignored).
            Err(e) => {
                self.pipes = None;
                if e.raw_os_error() != Some(libc::ENOENT) {
                    log::warn!("a spliced READ reply failed ({e}); replying EIO");
                    send(self.fd, req.unique, Err(libc::EIO));
                }
            }
        }
        true
    }
}

/// Writes the reply to request `unique`: `fuse_out_header` (length, -errno, unique), then the
/// reply's bytes.
fn send(fd: BorrowedFd<'_>, unique: u64, answer: Result<&[u8], i32>) {
    let (error, body) = match answer {
        Ok(b) => (0, b),
        Err(e) => {
            log::debug!("#{unique}: errno {e}");
            (-e, &[][..])
        }
    };
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    header[4..8].copy_from_slice(&error.to_ne_bytes());
    header[8..16].copy_from_slice(&unique.to_ne_bytes());
    match fusedev::write_reply(fd, &[&header, body]) {
        Ok(()) => {}
        // The request was interrupted or the connection aborted: no one waits for it.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => {}
        Err(e) => log::error!("reply to request {unique} refused by /dev/fuse: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_holds_the_largest_write_and_its_headers() {
        // fuse_in_header (40) + fuse_write_in (40) before 1 MiB of data.
        assert!(buffer_size(1 << 20) >= (1 << 20) + 80);
    }
}
