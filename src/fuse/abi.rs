//! The FUSE wire format as far as both transports need it: the request header, where an
//! operation's own header ends in a request read from /dev/fuse (a ring entry keeps it apart),
//! the replies (`fuse_entry_out`, `fuse_attr_out`, `fuse_open_out`, dirents), device numbers. Written from the protocol's description (the kernel's
//! uapi header `linux/fuse.h`, protocol 7.42); all fields native-endian, as the kernel writes.
//! Decoding reads fixed offsets from byte slices: no layout is assumed of Rust structs.

/// Operation codes (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const INTERRUPT: u32 = 36;
}

/// The size of an operation's own header (`fuse_*_in`, its first argument) in a request read
/// from /dev/fuse, where it follows `fuse_in_header` with nothing to mark its end (a ring
/// entry keeps it in an area of its own). For the protocol version fuser answers INIT with
/// (7.40) and the capabilities layover asks for (no FUSE_SETXATTR_EXT: an 8-byte
/// `fuse_setxattr_in`). Operations without one (names only, or nothing) and unknown ones: 0.
pub fn op_in_size(opcode: u32) -> usize {
    match opcode {
        op::FORGET | op::OPEN | op::OPENDIR | op::MKDIR | op::RENAME | op::LINK => 8,
        op::SETXATTR | op::GETXATTR | op::LISTXATTR | op::ACCESS | op::INTERRUPT => 8,
        op::BATCH_FORGET => 8,
        op::GETATTR | op::MKNOD | op::CREATE | op::FSYNC | op::FSYNCDIR | op::RENAME2 => 16,
        op::RELEASE | op::RELEASEDIR | op::FLUSH | op::LSEEK => 24,
        op::FALLOCATE => 32,
        op::READ | op::WRITE | op::READDIR | op::READDIRPLUS => 40,
        op::COPY_FILE_RANGE => 56,
        op::SETATTR => 88,
        _ => 0,
    }
}

/// `FOPEN_DIRECT_IO`: reads and writes bypass the page cache.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// `FOPEN_KEEP_CACHE`: the page cache survives the open.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `FOPEN_CACHE_DIR`: the kernel may cache the directory's listing.
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;

/// `FOPEN_NOFLUSH`: no FLUSH on close.
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
/// `FOPEN_PASSTHROUGH`: the kernel reads and writes the backing file itself.
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// The kernel's `new_encode_dev`, which FUSE uses for `rdev` (attributes, MKNOD).
pub fn encode_dev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The inverse of `encode_dev`.
pub fn decode_dev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    crate::sys::makedev(major, minor)
}

/// Reads a native-endian u32 at `at` (0 past the end: callers check lengths first).
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// Reads a native-endian u64 at `at` (0 past the end).
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// One request as a ring entry holds it.
#[derive(Debug)]
pub struct Request<'a> {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The operation's own header (`fuse_open_in`, `fuse_create_in`, ...; zeros if it has
    /// none), 128 bytes.
    pub op_in: &'a [u8],
    /// The remaining arguments (names, data), as many bytes as the kernel wrote.
    pub payload: &'a [u8],
}

impl<'a> Request<'a> {
    /// Decodes `fuse_in_header` (40 bytes) and keeps the op header and payload.
    pub fn parse((header, op_in, payload): (&'a [u8], &'a [u8], &'a [u8])) -> Option<Self> {
        if header.len() < 40 {
            return None;
        }
        Some(Request {
            opcode: u32_at(header, 4),
            unique: u64_at(header, 8),
            nodeid: u64_at(header, 16),
            uid: u32_at(header, 24),
            gid: u32_at(header, 28),
            pid: u32_at(header, 32),
            op_in,
            payload,
        })
    }

    /// Decodes a request as read from /dev/fuse: `fuse_in_header`, the operation's header
    /// (`op_in_size`), then the rest. None if it is shorter than its header says.
    pub fn from_dev(buf: &'a [u8]) -> Option<Self> {
        let header = buf.get(..40)?;
        let len = u32_at(header, 0) as usize;
        let args = buf.get(40..len)?;
        let opcode = u32_at(header, 4);
        let (op_in, payload) = args.split_at(op_in_size(opcode).min(args.len()));
        Request::parse((header, op_in, payload))
    }

    /// The first name of the payload (up to its NUL), as LOOKUP, MKDIR, CREATE and the xattr
    /// operations carry it.
    pub fn name(&self) -> Option<&'a [u8]> {
        let end = self.payload.iter().position(|&b| b == 0)?;
        self.payload.get(..end)
    }
}

/// The attributes of `struct fuse_attr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    /// Type and permission bits (`S_IFREG | 0644`).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// Size of `struct fuse_attr`.
pub const ATTR_SIZE: usize = 88;
/// Size of `struct fuse_entry_out`.
pub const ENTRY_OUT_SIZE: usize = 40 + ATTR_SIZE;
/// Size of `struct fuse_open_out`.
pub const OPEN_OUT_SIZE: usize = 16;

fn put_attr(out: &mut Vec<u8>, a: &Attr) {
    for v in [a.ino, a.size, a.blocks] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    for t in [a.atime, a.mtime, a.ctime] {
        out.extend_from_slice(&(t.0 as u64).to_ne_bytes());
    }
    for v in [
        a.atime.1, a.mtime.1, a.ctime.1, a.mode, a.nlink, a.uid, a.gid, a.rdev,
    ] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out.extend_from_slice(&a.blksize.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // flags
}

/// `struct fuse_entry_out` (a negative entry: `nodeid` 0), appended to `out`.
pub fn entry_out(out: &mut Vec<u8>, nodeid: u64, attr: &Attr, ttl: std::time::Duration) {
    out.extend_from_slice(&nodeid.to_ne_bytes());
    out.extend_from_slice(&0u64.to_ne_bytes()); // generation
    out.extend_from_slice(&ttl.as_secs().to_ne_bytes()); // entry_valid
    out.extend_from_slice(&ttl.as_secs().to_ne_bytes()); // attr_valid
    out.extend_from_slice(&ttl.subsec_nanos().to_ne_bytes());
    out.extend_from_slice(&ttl.subsec_nanos().to_ne_bytes());
    put_attr(out, attr);
}

/// `struct fuse_attr_out`, appended to `out`.
pub fn attr_out(out: &mut Vec<u8>, attr: &Attr, ttl: std::time::Duration) {
    out.extend_from_slice(&ttl.as_secs().to_ne_bytes());
    out.extend_from_slice(&ttl.subsec_nanos().to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // dummy
    put_attr(out, attr);
}

/// `struct fuse_open_out`, appended to `out` (`backing_id` 0 without passthrough).
pub fn open_out(out: &mut Vec<u8>, fh: u64, open_flags: u32, backing_id: u32) {
    out.extend_from_slice(&fh.to_ne_bytes());
    out.extend_from_slice(&open_flags.to_ne_bytes());
    out.extend_from_slice(&backing_id.to_ne_bytes());
}

/// Appends one `struct fuse_dirent` (ino, off, namelen, type, name, padded to 8 bytes) for
/// `(ino, off, type, name)` if it fits in `max` bytes; says whether it did.
pub fn dirent(
    out: &mut Vec<u8>,
    max: usize,
    (ino, off, typ, name): (u64, u64, u32, &[u8]),
) -> bool {
    let len = (24 + name.len()).next_multiple_of(8);
    if out.len() + len > max {
        return false;
    }
    out.extend_from_slice(&ino.to_ne_bytes());
    out.extend_from_slice(&off.to_ne_bytes());
    out.extend_from_slice(&(name.len() as u32).to_ne_bytes());
    out.extend_from_slice(&typ.to_ne_bytes());
    out.extend_from_slice(name);
    out.resize(out.len() + len - 24 - name.len(), 0);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn device_numbers_round_trip_through_the_kernel_encoding() {
        for (major, minor) in [(1, 3), (8, 0), (259, 65_536), (4095, 1 << 19)] {
            let rdev = crate::sys::makedev(major, minor);
            assert_eq!(decode_dev(encode_dev(rdev)), rdev, "{major}:{minor}");
        }
        assert_eq!(encode_dev(crate::sys::makedev(1, 3)), 0x103);
    }

    #[test]
    fn replies_have_the_kernel_sizes() {
        let mut v = Vec::new();
        entry_out(&mut v, 2, &Attr::default(), Duration::from_secs(1));
        assert_eq!(v.len(), ENTRY_OUT_SIZE);
        let mut v = Vec::new();
        attr_out(&mut v, &Attr::default(), Duration::from_secs(1));
        assert_eq!(v.len(), 104);
        let mut v = Vec::new();
        open_out(&mut v, 1, FOPEN_PASSTHROUGH, 3);
        assert_eq!(v.len(), OPEN_OUT_SIZE);
        let mut v = Vec::new();
        assert!(dirent(&mut v, 32, (5, 1, 4, b"abc")));
        assert_eq!(v.len(), 32);
        assert!(
            !dirent(&mut v, 63, (6, 2, 8, b"defgh")),
            "32 + 32 bytes do not fit in 63"
        );
        assert_eq!(v.len(), 32);
    }

    #[test]
    fn a_request_header_decodes_and_the_name_stops_at_nul() {
        let mut h = vec![0u8; 40];
        h[4..8].copy_from_slice(&op::LOOKUP.to_ne_bytes());
        h[8..16].copy_from_slice(&77u64.to_ne_bytes());
        h[16..24].copy_from_slice(&1u64.to_ne_bytes());
        h[24..28].copy_from_slice(&1000u32.to_ne_bytes());
        let op_in = [0u8; 128];
        let r = Request::parse((&h, &op_in, b"name\0junk")).unwrap();
        assert_eq!(
            (r.opcode, r.unique, r.nodeid, r.uid),
            (op::LOOKUP, 77, 1, 1000)
        );
        assert_eq!(r.name(), Some(&b"name"[..]));
        assert!(Request::parse((&h[..39], &op_in, b"")).is_none());
    }

    #[test]
    fn a_dev_request_splits_at_its_operation_header() {
        // WRITE: fuse_write_in (40 bytes: fh, offset, size, ...), then the data.
        let mut b = vec![0u8; 40];
        b[4..8].copy_from_slice(&op::WRITE.to_ne_bytes());
        let mut write_in = [0u8; 40];
        write_in[16..20].copy_from_slice(&3u32.to_ne_bytes());
        b.extend_from_slice(&write_in);
        b.extend_from_slice(b"abc");
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        let r = Request::from_dev(&b).unwrap();
        assert_eq!((r.op_in.len(), u32_at(r.op_in, 16)), (40, 3));
        assert_eq!(r.payload, b"abc");
        // LOOKUP has no header of its own: the name starts right after fuse_in_header.
        b.truncate(40);
        b[4..8].copy_from_slice(&op::LOOKUP.to_ne_bytes());
        b.extend_from_slice(b"f\0");
        b[0..4].copy_from_slice(&42u32.to_ne_bytes());
        let r = Request::from_dev(&b).unwrap();
        assert_eq!((r.op_in.len(), r.name()), (0, Some(&b"f"[..])));
        // A length past the bytes read is refused.
        b[0..4].copy_from_slice(&43u32.to_ne_bytes());
        assert!(Request::from_dev(&b).is_none());
    }
}
