//! FUSE over io_uring, the system side: one io_uring per FUSE queue, its ring entries (each a
//! header buffer and a payload buffer the kernel writes a request into and reads the reply
//! from), the two commands (REGISTER an entry, COMMIT a reply AND FETCH the next request),
//! and pinning a thread to a CPU.
//!
//! The protocol (Linux >= 6.14, `enable_uring` module parameter, `FUSE_OVER_IO_URING` in the
//! INIT reply): every possible CPU has a queue; a request goes to the queue of the CPU its
//! caller runs on, into a free entry of that queue, and the entry's command completes. The
//! daemon writes the reply into the same entry and submits COMMIT_AND_FETCH, which hands the
//! reply to the kernel and offers the entry again. FORGET, INTERRUPT and notifications still
//! go through /dev/fuse. This module knows the layout of an entry and the SQEs, nothing of the
//! operations: callers get byte slices and give byte slices.
//!
//! The crate used is `io-uring` (ring setup, the shared queues, submit and wait); what it
//! leaves unsafe (pushing an SQE whose buffers the kernel keeps using) is done here only.

use io_uring::{IoUring, cqueue, squeue};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `struct fuse_in_header` / `fuse_out_header` area of an entry's header buffer.
pub const IN_OUT_SIZE: usize = 128;
/// The per-operation header area (`fuse_*_in` of the request's first argument).
pub const OP_IN_SIZE: usize = 128;
/// Offset of `struct fuse_uring_ent_in_out` (flags, commit_id, payload_sz, padding, reserved).
const ENT_IN_OUT: usize = IN_OUT_SIZE + OP_IN_SIZE;
/// `sizeof(struct fuse_uring_req_header)`.
pub const HEADER_SIZE: usize = ENT_IN_OUT + 32;
/// Size of `struct fuse_in_header`.
pub const IN_HEADER_SIZE: usize = 40;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// One ring entry's memory. Both buffers are boxed: their addresses are given to the kernel
/// at REGISTER and must not move while the ring lives.
struct Slot {
    header: Box<[u8; HEADER_SIZE]>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
    /// The commit id of the request the entry holds (0: none).
    commit_id: u64,
    /// The last command, to resubmit it after EINTR/EAGAIN.
    last: u32,
}

/// What one completed command says: the entry now holds a request (`res == 0`), or the
/// command failed (`res < 0`, ENOTCONN when the connection is gone).
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub slot: usize,
    pub res: i32,
}

/// One FUSE queue over io_uring, used by one thread.
pub struct Queue {
    // Declared first, so dropped first: closing the ring cancels the kernel's use of the
    // slots' buffers before they are freed.
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    slots: Vec<Slot>,
    qid: u16,
    /// Commands pushed since the last submit.
    pending: bool,
}

impl Queue {
    /// Creates the ring of queue `qid` with `depth` entries of `payload` bytes each (at least
    /// the connection's largest request: max_write, or max_pages pages) and registers them
    /// with the kernel. Call after the INIT reply granted `FUSE_OVER_IO_URING`.
    pub fn new(dev: BorrowedFd<'_>, qid: u16, depth: usize, payload: usize) -> io::Result<Queue> {
        let entries = u32::try_from(depth.max(1).next_power_of_two()).map_err(io::Error::other)?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(entries * 2)
            .setup_submit_all()
            .build(entries)?;
        ring.submitter().register_files(&[dev.as_raw_fd()])?;
        let mut q = Queue {
            ring,
            slots: Vec::with_capacity(depth),
            qid,
            pending: false,
        };
        for i in 0..depth.max(1) {
            let mut header = Box::new([0u8; HEADER_SIZE]);
            let mut payload = vec![0u8; payload].into_boxed_slice();
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.as_mut_ptr().cast(),
                    iov_len: HEADER_SIZE,
                },
                libc::iovec {
                    iov_base: payload.as_mut_ptr().cast(),
                    iov_len: payload.len(),
                },
            ]);
            q.slots.push(Slot {
                header,
                payload,
                iov,
                commit_id: 0,
                last: CMD_REGISTER,
            });
            q.push(i)?;
        }
        q.submit()?;
        Ok(q)
    }

    /// Queues the slot's last command again (REGISTER, or COMMIT_AND_FETCH of its reply).
    fn push(&mut self, slot: usize) -> io::Result<()> {
        let s = self
            .slots
            .get(slot)
            .ok_or_else(|| io::Error::other("no such slot"))?;
        let mut sqe = [0u8; 128];
        sqe[0] = io_uring::opcode::UringCmd80::CODE;
        sqe[1] = 1; // IOSQE_FIXED_FILE: fd is index 0 of the registered files
        // fd (offset 4) = 0
        sqe[8..12].copy_from_slice(&s.last.to_ne_bytes()); // cmd_op
        if s.last == CMD_REGISTER {
            sqe[16..24].copy_from_slice(&(s.iov.as_ptr() as u64).to_ne_bytes()); // addr
            sqe[24..28].copy_from_slice(&2u32.to_ne_bytes()); // len: two iovecs
        }
        sqe[32..40].copy_from_slice(&(slot as u64).to_ne_bytes()); // user_data
        // The command area (offset 48): struct fuse_uring_cmd_req { flags, commit_id, qid }.
        sqe[56..64].copy_from_slice(&s.commit_id.to_ne_bytes());
        sqe[64..66].copy_from_slice(&self.qid.to_ne_bytes());
        // SAFETY: `Entry128` is `repr(C)`: a 64-byte `io_uring_sqe` followed by 64 bytes of
        // command data, plain integers all, so any 128 bytes are a valid value; the bytes
        // above follow the kernel's layout of a 128-byte SQE.
        let entry: squeue::Entry128 = unsafe { std::mem::transmute::<[u8; 128], _>(sqe) };
        // SAFETY: the buffers the command refers to (the iovec array, and through it the
        // slot's header and payload) are boxed in `self.slots`, never moved or freed while
        // the ring lives (the ring is dropped before them); the SQ has room, since it has
        // one place per slot and each slot has at most one command in flight.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.pending = true;
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.pending {
            self.ring.submit()?;
            self.pending = false;
        }
        Ok(())
    }

    /// Submits the queued replies and waits for at least one command to complete; fills
    /// `done` with what completed.
    pub fn wait(&mut self, done: &mut Vec<Completion>) -> io::Result<()> {
        done.clear();
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
        self.pending = false;
        for cqe in self.ring.completion() {
            let slot = usize::try_from(cqe.user_data()).unwrap_or(usize::MAX);
            done.push(Completion {
                slot,
                res: cqe.result(),
            });
        }
        for c in done.iter() {
            if c.res == 0
                && let Some(s) = self.slots.get_mut(c.slot)
            {
                s.commit_id = read_u64(&s.header[..], ENT_IN_OUT + 8);
            }
        }
        Ok(())
    }

    /// Pushes the slot's command again after it failed with EINTR or EAGAIN.
    pub fn resubmit(&mut self, slot: usize) -> io::Result<()> {
        self.push(slot)
    }

    /// The request a slot holds: `fuse_in_header`, the per-operation header area, the payload.
    pub fn request(&self, slot: usize) -> Option<(&[u8], &[u8], &[u8])> {
        let s = self.slots.get(slot)?;
        let len = read_u32(&s.header[..], ENT_IN_OUT + 16) as usize;
        Some((
            &s.header[..IN_HEADER_SIZE],
            &s.header[IN_OUT_SIZE..ENT_IN_OUT],
            s.payload.get(..len)?,
        ))
    }

    /// Writes the reply to the slot's request (`error`: 0 or a negative errno; `parts`: the
    /// reply's arguments, concatenated into the payload) and queues its COMMIT_AND_FETCH,
    /// submitted by the next `wait`.
    pub fn reply(&mut self, slot: usize, error: i32, parts: &[&[u8]]) -> io::Result<()> {
        let s = self
            .slots
            .get_mut(slot)
            .ok_or_else(|| io::Error::other("no such slot"))?;
        let mut len = 0usize;
        let mut error = error;
        if error == 0 {
            for p in parts {
                match s.payload.get_mut(len..len + p.len()) {
                    Some(dst) => dst.copy_from_slice(p),
                    None => {
                        error = -libc::EIO;
                        len = 0;
                        break;
                    }
                }
                len += p.len();
            }
        }
        self.commit(slot, error, len)
    }

    /// The request a slot holds, as `request` gives it but without its payload, and the
    /// slot's whole payload buffer to write a reply into in place (then `commit` it). For a
    /// request whose arguments are all in the header area (READ): the reply overwrites the
    /// payload the kernel wrote.
    pub fn request_and_buffer(&mut self, slot: usize) -> Option<(&[u8], &[u8], &mut [u8])> {
        let s = self.slots.get_mut(slot)?;
        Some((
            &s.header[..IN_HEADER_SIZE],
            &s.header[IN_OUT_SIZE..ENT_IN_OUT],
            &mut s.payload[..],
        ))
    }

    /// Answers the slot's request with the first `len` bytes of its payload buffer (written
    /// in place, see `request_and_buffer`) or an error (`error`: 0 or a negative errno), and
    /// queues its COMMIT_AND_FETCH, submitted by the next `wait`.
    pub fn commit(&mut self, slot: usize, error: i32, len: usize) -> io::Result<()> {
        let s = self
            .slots
            .get_mut(slot)
            .ok_or_else(|| io::Error::other("no such slot"))?;
        let unique = read_u64(&s.header[..], 8);
        let (error, len) = match error {
            0 if len > s.payload.len() => (-libc::EIO, 0),
            0 => (0, len),
            e => (e, 0),
        };
        // struct fuse_out_header { len, error, unique }
        let out_len = (16 + len) as u32;
        s.header[0..4].copy_from_slice(&out_len.to_ne_bytes());
        s.header[4..8].copy_from_slice(&error.to_ne_bytes());
        s.header[8..16].copy_from_slice(&unique.to_ne_bytes());
        s.header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(len as u32).to_ne_bytes());
        s.last = CMD_COMMIT_AND_FETCH;
        self.push(slot)
    }

    /// The number of slots.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Pins the calling thread to one CPU (a queue's thread runs where its requests come from).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only touch
    // the set given, which lives on the stack for the calls.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The number of possible CPUs (the kernel makes one queue for each), from
/// /sys/devices/system/cpu/possible ("0-7", "0", "0-3,5").
pub fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut max = 0usize;
    for part in s.trim().split(',') {
        let last = part.rsplit('-').next().unwrap_or(part);
        let n: usize = last.trim().parse().map_err(io::Error::other)?;
        max = max.max(n + 1);
    }
    Ok(max)
}

/// Whether the fuse module lets a daemon use io_uring (its `enable_uring` parameter).
pub fn uring_enabled() -> bool {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|s| matches!(s.trim(), "Y" | "1"))
}
