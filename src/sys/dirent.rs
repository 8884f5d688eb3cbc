//! Reading a directory with `getdents64` on an fd opened with O_RDONLY|O_DIRECTORY.

use super::{cvt_long, retry};
use crate::error::FsResult;
use std::os::fd::{AsRawFd, BorrowedFd};

/// One raw entry as the layer's filesystem reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawDirEntry {
    pub ino: u64,
    /// `DT_*` value.
    pub d_type: u8,
    pub name: Vec<u8>,
}

/// Reads every entry of the directory (including `.` and `..`).
pub fn read_dir_entries(dir: BorrowedFd<'_>) -> FsResult<Vec<RawDirEntry>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = retry(|| {
            // SAFETY: valid fd and a writable buffer of the given length.
            cvt_long(unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    dir.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            })
        })? as usize;
        if n == 0 {
            return Ok(out);
        }
        parse_dirents(buf.get(..n).unwrap_or_default(), &mut out)?;
    }
}

/// The fixed part of `struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type;
/// char d_name[]; }`.
const HEADER: usize = 19;

/// Decodes the records getdents64 put in `buf`, appending them to `out`. What the kernel
/// gives is trusted for nothing: a record shorter than its header or running past the
/// buffer is EIO, a name without its NUL ends at the record's end; never a panic (the
/// property tests below feed it arbitrary and cut-short buffers).
pub fn parse_dirents(buf: &[u8], out: &mut Vec<RawDirEntry>) -> FsResult<()> {
    let mut rest = buf;
    while rest.len() >= HEADER {
        let ino = u64::from_ne_bytes(rest[0..8].try_into().unwrap_or([0; 8]));
        let reclen = u16::from_ne_bytes([rest[16], rest[17]]) as usize;
        let d_type = rest[18];
        if reclen < HEADER || reclen > rest.len() {
            return Err(crate::error::Errno::EIO);
        }
        let name_bytes = &rest[HEADER..reclen];
        let len = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_bytes.len());
        out.push(RawDirEntry {
            ino,
            d_type,
            name: name_bytes[..len].to_vec(),
        });
        rest = &rest[reclen..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Encodes entries as getdents64 does: header, name, NUL, zero padding to 8 bytes.
    fn encode(entries: &[RawDirEntry]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let reclen = (HEADER + e.name.len() + 1).next_multiple_of(8);
            buf.extend_from_slice(&e.ino.to_ne_bytes());
            buf.extend_from_slice(&(i as i64 + 1).to_ne_bytes());
            buf.extend_from_slice(&(reclen as u16).to_ne_bytes());
            buf.push(e.d_type);
            buf.extend_from_slice(&e.name);
            buf.resize(buf.len() + reclen - HEADER - e.name.len(), 0);
        }
        buf
    }

    fn entry() -> impl Strategy<Value = RawDirEntry> {
        let name = prop::collection::vec(1u8..=255, 1..=255)
            .prop_filter("no NUL", |n| !n.contains(&0) && !n.contains(&b'/'));
        (any::<u64>(), any::<u8>(), name).prop_map(|(ino, d_type, name)| RawDirEntry {
            ino,
            d_type,
            name,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource(
                "proptest-regressions",
            ))),
            ..ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut out = Vec::new();
            match parse_dirents(&buf, &mut out) {
                Ok(()) => prop_assert!(out.len() <= buf.len() / HEADER),
                Err(e) => prop_assert_eq!(e, crate::error::Errno::EIO),
            }
        }

        #[test]
        fn well_formed_records_round_trip(entries in prop::collection::vec(entry(), 0..12)) {
            let mut out = Vec::new();
            parse_dirents(&encode(&entries), &mut out).unwrap();
            prop_assert_eq!(out, entries);
        }

        /// A buffer cut anywhere gives a prefix of the entries, or EIO: never an entry that
        /// was not there.
        #[test]
        fn cut_buffers_give_a_prefix_or_eio(
            entries in prop::collection::vec(entry(), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let buf = encode(&entries);
            let buf = &buf[..cut.index(buf.len() + 1)];
            let mut out = Vec::new();
            match parse_dirents(buf, &mut out) {
                Ok(()) => prop_assert_eq!(&out[..], &entries[..out.len()]),
                Err(e) => {
                    prop_assert_eq!(e, crate::error::Errno::EIO);
                    prop_assert_eq!(&out[..], &entries[..out.len()]);
                }
            }
        }
    }
}
