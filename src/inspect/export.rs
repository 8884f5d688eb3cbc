//! `layover export`: the upper layer as an OCI image layer (an uncompressed POSIX/PAX tar).
//!
//! The upper is walked raw with the core's per-layer helpers (so whiteouts and opaque
//! directories are recognised by the daemon's rules) in a fixed order: depth first,
//! names sorted bytewise, a directory before its contents. Whiteouts of every format
//! become `.wh.NAME` files and opaque directories a `.wh..wh..opq` file; a file with
//! several links is written once and its other names as hard links; extended attributes
//! (the overlay's own markers left out, escaped names unescaped) and nanosecond mtimes go
//! in PAX records. Nothing depends on the time of the run, the user, or the order the
//! filesystem lists entries in: the same upper gives the same bytes.
//!
//! `--compress gzip|zstd` compresses with flate2 (gzip header without name or time) or
//! zstd (level 3), both deterministic for a given crate version. A file with holes is
//! written in GNU's sparse PAX format 1.0 (GNU tar and Go's archive/tar, so containerd and
//! podman, read it), its data segments found with SEEK_DATA/SEEK_HOLE.

use super::{Outcome, io_error, write_error};
use crate::cli::Compression;
use crate::config::{Stack, XattrNs};
use crate::error::{Errno, FsResult, StartupError};
use crate::overlay::{LayerDir, LayerObj, Overlay, Query};
use crate::sys::Stat;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

const BLOCK: usize = 512;

/// One tar member's header fields.
struct Member<'a> {
    path: &'a [u8],
    typeflag: u8,
    st: &'a Stat,
    size: u64,
    link: &'a [u8],
    xattrs: &'a [(Vec<u8>, Vec<u8>)],
    /// A sparse file (GNU PAX format 1.0): its real name and size; `path` is then the
    /// stand-in name and `size` the stored map and data.
    sparse: Option<(&'a [u8], u64)>,
}

fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

/// One PAX record: "LEN KEY=VALUE\n", LEN counting the whole record.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A ustar header block; the fields that do not fit are left for PAX records.
fn header(name: &[u8], typeflag: u8, st: &Stat, size: u64, link: &[u8]) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(st.mode & 0o7777));
    if !octal(&mut h[108..116], u64::from(st.uid)) {
        octal(&mut h[108..116], 0);
    }
    if !octal(&mut h[116..124], u64::from(st.gid)) {
        octal(&mut h[116..124], 0);
    }
    if !octal(&mut h[124..136], size) {
        octal(&mut h[124..136], 0);
    }
    octal(&mut h[136..148], u64::try_from(st.mtime.0).unwrap_or(0));
    h[156] = typeflag;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if matches!(typeflag, b'3' | b'4') {
        let (ma, mi) = (libc::major(st.rdev), libc::minor(st.rdev));
        octal(&mut h[329..337], u64::from(ma));
        octal(&mut h[337..345], u64::from(mi));
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// The PAX records a member needs: what does not fit in ustar, nanosecond mtime, xattrs.
fn pax_records(m: &Member<'_>) -> Vec<u8> {
    let mut r = Vec::new();
    if let Some((name, real)) = m.sparse {
        pax_record(&mut r, "GNU.sparse.major", b"1");
        pax_record(&mut r, "GNU.sparse.minor", b"0");
        pax_record(&mut r, "GNU.sparse.name", name);
        pax_record(&mut r, "GNU.sparse.realsize", real.to_string().as_bytes());
    }
    if m.path.len() > 100 {
        pax_record(&mut r, "path", m.path);
    }
    if m.link.len() > 100 {
        pax_record(&mut r, "linkpath", m.link);
    }
    if m.size >= 0o77777777777 {
        pax_record(&mut r, "size", m.size.to_string().as_bytes());
    }
    if m.st.uid > 0o7777777 {
        pax_record(&mut r, "uid", m.st.uid.to_string().as_bytes());
    }
    if m.st.gid > 0o7777777 {
        pax_record(&mut r, "gid", m.st.gid.to_string().as_bytes());
    }
    if m.st.mtime.1 != 0 || m.st.mtime.0 < 0 {
        let t = format!("{}.{:09}", m.st.mtime.0, m.st.mtime.1);
        pax_record(&mut r, "mtime", t.as_bytes());
    }
    for (n, v) in m.xattrs {
        let key = format!("SCHILY.xattr.{}", String::from_utf8_lossy(n));
        if key.len() == 13 + n.len() {
            pax_record(&mut r, &key, v);
        }
    }
    r
}

fn pad(out: &mut impl Write, len: u64) -> std::io::Result<()> {
    let rest = (BLOCK - (len % BLOCK as u64) as usize) % BLOCK;
    out.write_all(&[0u8; BLOCK][..rest])
}

/// Writes a member's headers (a PAX header first when needed); the caller writes `size`
/// bytes of data and the padding.
fn write_header(out: &mut impl Write, m: &Member<'_>) -> std::io::Result<()> {
    let pax = pax_records(m);
    if !pax.is_empty() {
        let zero = Stat::default();
        let mut name = b"PaxHeaders/".to_vec();
        name.extend_from_slice(&m.path[m.path.len().saturating_sub(80)..]);
        out.write_all(&header(&name, b'x', &zero, pax.len() as u64, b""))?;
        out.write_all(&pax)?;
        pad(out, pax.len() as u64)?;
    }
    out.write_all(&header(m.path, m.typeflag, m.st, m.size, m.link))
}

/// The upper walked into a tar stream.
struct Exporter<'a, W: Write> {
    q: Query<'a>,
    ns: XattrNs,
    out: W,
    /// (dev, ino) of files with several links -> the path they were first written under.
    links: HashMap<(u64, u64), Vec<u8>>,
    progress: super::progress::Progress,
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn io(e: std::io::Error) -> Errno {
    Errno::new(e.raw_os_error().unwrap_or(libc::EIO))
}

impl<W: Write> Exporter<'_, W> {
    /// The xattrs the merged view shows (private markers left out), sorted.
    fn xattrs(&self, dir: &LayerDir, name: &[u8]) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let all = match self.q.layer_xattrs(dir, name) {
            Ok(v) => v,
            Err(e) if e == Errno::EOPNOTSUPP => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut v: Vec<_> = all
            .into_iter()
            .filter_map(|(n, val)| crate::whiteout::from_real_xattr(self.ns, &n).map(|n| (n, val)))
            .collect();
        v.sort();
        Ok(v)
    }

    /// An empty regular file `path` (a whiteout or opaque marker), owned by root, mode 0,
    /// time 0: nothing about it depends on the run.
    fn marker(&mut self, path: &[u8]) -> FsResult<()> {
        let st = Stat::default();
        let m = Member {
            path,
            typeflag: b'0',
            st: &st,
            size: 0,
            link: b"",
            xattrs: &[],
            sparse: None,
        };
        write_header(&mut self.out, &m).map_err(io)
    }

    fn dir(&mut self, d: &LayerDir, prefix: &[u8]) -> FsResult<()> {
        let mut entries = self.q.layer_entries(d)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, obj) in entries {
            self.progress.tick();
            let path = join(prefix, &name);
            match obj {
                LayerObj::Whiteout(..) => {
                    let wh =
                        crate::whiteout::aufs_whiteout_for(&name).ok_or(Errno::ENAMETOOLONG)?;
                    self.marker(&join(prefix, &wh))?;
                }
                LayerObj::AufsWhiteout { .. } | LayerObj::AufsOpaque(_) => self.marker(&path)?,
                LayerObj::AufsMeta(_) => {}
                LayerObj::Dir { stat, opaque, .. } => {
                    let xattrs = self.xattrs(d, &name)?;
                    let mut dpath = path.clone();
                    dpath.push(b'/');
                    let m = Member {
                        path: &dpath,
                        typeflag: b'5',
                        st: &stat,
                        size: 0,
                        link: b"",
                        xattrs: &xattrs,
                        sparse: None,
                    };
                    write_header(&mut self.out, &m).map_err(io)?;
                    let sub = self.q.layer_subdir(d, &name)?;
                    // An AUFS marker inside is listed (and written) with the entries.
                    if opaque == Some(crate::overlay::OpaqueBy::Xattr) {
                        self.marker(&join(&path, crate::whiteout::OPAQUE_MARKER))?;
                    }
                    self.dir(&sub, &path)?;
                }
                LayerObj::Other(stat) => self.object(d, &name, &path, &stat)?,
            }
        }
        Ok(())
    }

    /// A non-directory: a file (or a hard link to one written before), symlink, device,
    /// fifo. Sockets cannot be archived and are skipped, as tar does.
    fn object(&mut self, d: &LayerDir, name: &[u8], path: &[u8], st: &Stat) -> FsResult<()> {
        let xattrs = self.xattrs(d, name)?;
        let mut link = Vec::new();
        let typeflag = match st.file_type() {
            libc::S_IFREG if st.nlink > 1 => match self.links.get(&(st.dev, st.ino)) {
                Some(first) => {
                    link = first.clone();
                    b'1'
                }
                None => {
                    self.links.insert((st.dev, st.ino), path.to_vec());
                    b'0'
                }
            },
            libc::S_IFREG => b'0',
            libc::S_IFLNK => {
                link = self.q.layer_readlink(d, name)?;
                b'2'
            }
            libc::S_IFCHR => b'3',
            libc::S_IFBLK => b'4',
            libc::S_IFIFO => b'6',
            _ => return Ok(()),
        };
        let size = if typeflag == b'0' {
            st.size.max(0) as u64
        } else {
            0
        };
        let f = match size {
            0 => None,
            _ => Some(self.q.layer_open(d, name)?),
        };
        // A file with fewer blocks than its size may have holes: they are kept as holes.
        let segments = match &f {
            Some(f) if (st.blocks.max(0) as u64) * 512 < size => data_segments(f, size)?,
            _ => None,
        };
        if let (Some(f), Some(segs)) = (f.as_ref(), segments) {
            return self.sparse(f, path, st, &xattrs, size, &segs);
        }
        let m = Member {
            path,
            typeflag,
            st,
            size,
            link: &link,
            xattrs: &xattrs,
            sparse: None,
        };
        write_header(&mut self.out, &m).map_err(io)?;
        if let Some(f) = f {
            self.data(f, 0, size)?;
            pad(&mut self.out, size).map_err(io)?;
        }
        Ok(())
    }

    /// A sparse file in GNU's PAX format 1.0: a stand-in name, the real one in the PAX
    /// records, and data that starts with the map of the data segments (their count, then
    /// offset and length of each, one decimal per line, padded to a block) and goes on
    /// with the segments.
    fn sparse(
        &mut self,
        f: &std::fs::File,
        path: &[u8],
        st: &Stat,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        real: u64,
        segs: &[(u64, u64)],
    ) -> FsResult<()> {
        let mut map = format!("{}\n", segs.len()).into_bytes();
        for (off, len) in segs {
            map.extend_from_slice(format!("{off}\n{len}\n").as_bytes());
        }
        map.resize(map.len().div_ceil(BLOCK) * BLOCK, 0);
        let data: u64 = segs.iter().map(|s| s.1).sum();
        let slash = path.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
        let stand_in = [&path[..slash], b"GNUSparseFile.0/", &path[slash..]].concat();
        let m = Member {
            path: &stand_in,
            typeflag: b'0',
            st,
            size: map.len() as u64 + data,
            link: b"",
            xattrs,
            sparse: Some((path, real)),
        };
        write_header(&mut self.out, &m).map_err(io)?;
        self.out.write_all(&map).map_err(io)?;
        for (off, len) in segs {
            let g = f.try_clone().map_err(io)?;
            self.data(g, *off, *len)?;
        }
        pad(&mut self.out, map.len() as u64 + data).map_err(io)
    }

    /// Exactly `len` bytes of the file from `offset` (cut, or padded with zeros if it
    /// changed meanwhile); the caller pads the member to a block.
    fn data(&mut self, mut f: std::fs::File, offset: u64, len: u64) -> FsResult<()> {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
        let mut r = f.take(len);
        let n = std::io::copy(&mut r, &mut self.out).map_err(io)?;
        let mut left = len - n;
        while left > 0 {
            let k = left.min(BLOCK as u64);
            self.out
                .write_all(&[0u8; BLOCK][..k as usize])
                .map_err(io)?;
            left -= k;
        }
        Ok(())
    }
}

/// The data segments (offset, length) of a file of `size` bytes, from SEEK_DATA and
/// SEEK_HOLE; a hole at the end is a last segment of length 0 at `size` (as GNU tar
/// writes it). None when the filesystem cannot tell (the file is then written whole).
fn data_segments(f: &std::fs::File, size: u64) -> FsResult<Option<Vec<(u64, u64)>>> {
    use std::os::fd::AsFd;
    let fd = f.as_fd();
    let mut segs = Vec::new();
    let end = i64::try_from(size).map_err(|_| Errno::new(libc::EFBIG))?;
    let mut pos: i64 = 0;
    while pos < end {
        let data = match crate::sys::lseek(fd, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) if e.raw() == libc::ENXIO => end, // only a hole from here
            Err(e) if e.raw() == libc::EINVAL => return Ok(None),
            Err(e) => return Err(e),
        };
        if data >= end {
            break;
        }
        let hole = crate::sys::lseek(fd, data, libc::SEEK_HOLE)?.min(end);
        segs.push((data as u64, (hole - data) as u64));
        pos = hole;
    }
    if segs.last().is_none_or(|(o, l)| o + l < size) {
        segs.push((size, 0));
    }
    Ok(Some(segs))
}

/// Writes the upper of `stack` as a tar stream to `out`.
pub fn export(stack: &Stack, out: impl Write) -> Result<(), StartupError> {
    let Some(upper) = &stack.upperdir else {
        return Err(StartupError::new(
            "export needs an upperdir (-o upperdir=DIR)",
        ));
    };
    let ov = Overlay::open_read_only(stack)?;
    let q = ov.query();
    let root = q
        .layer_dir(q.layers()[0].index, Path::new(""))
        .map_err(|e| io_error("upperdir", upper, e))?
        .ok_or_else(|| io_error("upperdir", upper, Errno::ENOENT))?;
    let mut x = Exporter {
        q,
        ns: stack.xattr_ns,
        out,
        links: HashMap::new(),
        progress: super::progress::Progress::new("export"),
    };
    x.dir(&root, b"")
        .map_err(|e| io_error("export of upperdir", upper, e))?;
    x.out
        .write_all(&[0u8; 2 * BLOCK])
        .and_then(|()| x.out.flush())
        .map_err(write_error)
}

/// Writes the tar, compressed as asked, to `out`.
fn export_to(
    stack: &Stack,
    compress: Option<Compression>,
    out: impl Write,
) -> Result<(), StartupError> {
    match compress {
        None => export(stack, out),
        Some(Compression::Gzip) => {
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(255)
                .write(out, flate2::Compression::default());
            export(stack, &mut gz)?;
            gz.try_finish().map_err(write_error)
        }
        Some(Compression::Zstd) => {
            let mut z = zstd::stream::Encoder::new(out, 3).map_err(write_error)?;
            export(stack, &mut z)?;
            z.finish().and_then(|mut w| w.flush()).map_err(write_error)
        }
    }
}

pub fn run(
    stack: &Stack,
    output: Option<&Path>,
    compress: Option<Compression>,
    out: &mut impl Write,
) -> Result<Outcome, StartupError> {
    match output {
        Some(p) => {
            let f = std::fs::File::create(p)
                .map_err(|e| StartupError::new(format!("output '{}': {e}", p.display())))?;
            let mut w = std::io::BufWriter::new(f);
            export_to(stack, compress, &mut w)?;
            w.flush().map_err(write_error)?;
        }
        None => export_to(stack, compress, out)?,
    }
    Ok(Outcome::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for n in 0..1200 {
            let value = vec![b'v'; n];
            let mut r = Vec::new();
            pax_record(&mut r, "path", &value);
            let sp = r.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&r[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, r.len(), "value of {n} bytes");
            assert!(r.ends_with(b"\n"));
        }
    }

    #[test]
    fn headers_have_a_valid_checksum_and_fit_or_defer_to_pax() {
        let st = Stat {
            mode: libc::S_IFREG | 0o644,
            uid: 1000,
            gid: 1000,
            mtime: (1_700_000_000, 5),
            ..Stat::default()
        };
        let h = header(b"a/b", b'0', &st, 12, b"");
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut copy = h;
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|b| u64::from(*b)).sum::<u64>());
        assert_eq!(&h[124..136], b"00000000014\0");
        assert_eq!(&h[257..263], b"ustar\0");
        // What does not fit goes to PAX: a long name, a big uid, nanoseconds, xattrs.
        let long = vec![b'n'; 150];
        let big = Stat {
            uid: 3_000_000,
            ..st
        };
        let x = vec![(b"user.k".to_vec(), b"v".to_vec())];
        let m = Member {
            path: &long,
            typeflag: b'0',
            st: &big,
            size: 0,
            link: b"",
            xattrs: &x,
            sparse: None,
        };
        let pax = String::from_utf8(pax_records(&m)).unwrap();
        for key in [
            " path=",
            " uid=3000000\n",
            " mtime=1700000000.000000005\n",
            " SCHILY.xattr.user.k=v\n",
        ] {
            assert!(pax.contains(key), "{key} missing in {pax}");
        }
        let mut field = [0u8; 8];
        assert!(!octal(&mut field, 0o10000000), "7 octal digits at most");
    }
}
