//! The kernel's mount table as this process sees it (`/proc/self/mountinfo`, proc(5)): one
//! parser for everything that asks which mounts exist (the auto_unmount watcher, the tools'
//! view of live mounts).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    /// "MAJOR:MINOR" of the mounted filesystem.
    pub dev: String,
    pub mountpoint: PathBuf,
    pub fstype: String,
    /// The filesystem's own options (`super options`), e.g. overlay's `upperdir=`.
    pub super_opts: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
pub fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s.get(i + 1..i + 4) {
            Some(d) if s[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push((v & 0xff) as u8);
                i += 4;
            }
            _ => {
                out.push(s[i]);
                i += 1;
            }
        }
    }
    out
}

/// One line; None for a line that does not parse.
fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let num = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u64>().ok();
    let sep = fields.iter().position(|f| *f == b"-")?;
    if sep < 5 {
        return None;
    }
    Some(MountEntry {
        id: num(fields[0])?,
        parent: num(fields[1])?,
        dev: String::from_utf8_lossy(fields[2]).into_owned(),
        mountpoint: PathBuf::from(OsString::from_vec(unescape_octal(fields[4]))),
        fstype: String::from_utf8_lossy(fields.get(sep + 1)?).into_owned(),
        super_opts: String::from_utf8_lossy(&unescape_octal(fields.get(sep + 3)?)).into_owned(),
    })
}

/// Parses mountinfo text; lines that do not parse are left out.
pub fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|b| *b == b'\n').filter_map(parse_line).collect()
}

/// This process's mount table.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read("/proc/self/mountinfo")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn lines_with_escaped_paths_and_optional_fields() {
        let text = b"36 35 98:0 /mnt1 /mnt\\040a rw,noatime master:1 - fuse.layover layover rw,user_id=0\n\
                     37 35 0:5 / /o rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n\
                     garbage\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].id, m[0].parent, m[0].dev.as_str()), (36, 35, "98:0"));
        assert_eq!(m[0].mountpoint, Path::new("/mnt a"));
        assert_eq!(m[0].fstype, "fuse.layover");
        assert_eq!(m[1].fstype, "overlay");
        assert!(m[1].super_opts.contains("upperdir=/u"));
        assert!(parse(b"").is_empty());
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape_octal(b"a\\040b\\011c\\134d"), b"a b\tc\\d");
        assert_eq!(unescape_octal(b"x\\9y\\04"), b"x\\9y\\04");
    }
}
