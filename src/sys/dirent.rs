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
        let mut pos = 0usize;
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while pos + 19 <= n {
            let rec = &buf[pos..n];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap_or([0; 8]));
            let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
            let d_type = rec[18];
            if reclen < 19 || reclen > rec.len() {
                return Err(crate::error::Errno::EIO);
            }
            let name_bytes = &rec[19..reclen];
            let len = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            out.push(RawDirEntry {
                ino,
                d_type,
                name: name_bytes[..len].to_vec(),
            });
            pos += reclen;
        }
    }
}
