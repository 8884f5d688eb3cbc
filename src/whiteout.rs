//! The on-disk overlay format: whiteouts (0/0 character devices, `.wh.NAME` files, xattr
//! whiteouts), opaque markers and the overlay's private xattr names. Decisions only, as pure
//! functions; the I/O that feeds them lives in `overlay`.

use crate::config::XattrNs;
use crate::sys::Stat;
use std::ffi::CStr;

/// The name of the note in `WORKDIR/work` where a mount that writes `.wh.` whiteouts records
/// that format, so that later mounts keep it (the work module writes it; a mount keeps it
/// when it empties `work/`, and `layover check` does not count it as a leftover).
pub(crate) const FORMAT_NOTE: &std::ffi::CStr = c"#layover-whiteout-format";

/// Prefix of AUFS/OCI whiteout files.
pub const WH_PREFIX: &[u8] = b".wh.";
/// The AUFS/OCI opaque-directory marker file.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// How a mount writes whiteouts and opaque markers (it always reads both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// 0/0 character devices and the `overlay.opaque` xattr: the kernel's format.
    Chardev,
    /// `.wh.NAME` files and `.wh..wh..opq` markers: the OCI/AUFS format, for filesystems or
    /// kernels (before 5.8, unprivileged) where 0/0 devices cannot be made.
    File,
}

impl Format {
    /// The option's value (`whiteout=chardev|file`), and what the work directory records.
    pub fn parse(v: &[u8]) -> Option<Format> {
        match v {
            b"chardev" => Some(Format::Chardev),
            b"file" => Some(Format::File),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Chardev => "chardev",
            Format::File => "file",
        }
    }

    /// The format a mount writes: `forced` by the option, else the one the upper was
    /// `found` written with, else 0/0 devices where the work directory lets us make one
    /// (`can_mknod`), else files. Ok also names the upper's other format when the option
    /// forces mixing; Err says why no format will do (0/0 devices needed but impossible).
    pub fn choose(
        forced: Option<Format>,
        found: Option<Format>,
        can_mknod: bool,
    ) -> Result<(Format, Option<Format>), String> {
        let chosen = match (forced, found) {
            (Some(f), _) | (None, Some(f)) => f,
            (None, None) if can_mknod => Format::Chardev,
            (None, None) => Format::File,
        };
        if chosen == Format::Chardev && !can_mknod {
            return Err(format!(
                "whiteouts: a 0/0 character device cannot be made in the workdir (Linux \
                 before 5.8 without root, or a nodev filesystem){}: -o whiteout=file writes \
                 .wh. files instead",
                if forced.is_none() {
                    ", and this upper already holds such whiteouts"
                } else {
                    ""
                }
            ));
        }
        Ok((chosen, found.filter(|&was| was != chosen)))
    }
}

/// Is this stat a kernel-format whiteout (a character device 0/0)?
pub fn is_whiteout_dev(st: &Stat) -> bool {
    st.is_chr() && st.rdev == 0
}

/// The `.wh.NAME` file that would hide `name`, if such a name can exist.
pub fn aufs_whiteout_for(name: &[u8]) -> Option<Vec<u8>> {
    if name.len() + WH_PREFIX.len() > 255 {
        return None;
    }
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name);
    Some(v)
}

/// Names reserved by the AUFS format: never shown in the merged view.
pub fn is_aufs_special(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// The name a `.wh.NAME` entry hides (None for the opaque marker and `.wh..wh.*` metadata).
pub fn aufs_hidden_name(name: &[u8]) -> Option<&[u8]> {
    let rest = name.strip_prefix(WH_PREFIX)?;
    if rest.starts_with(WH_PREFIX) || rest.is_empty() {
        return None;
    }
    Some(rest)
}

/// What a directory's opaque xattr says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opacity {
    None,
    /// `y`: hides everything below.
    Opaque,
    /// `x`: not opaque, but holds xattr whiteouts (zero-size files marked `whiteout`).
    XWhiteouts,
}

pub fn opacity_from_value(v: &[u8]) -> Opacity {
    match v {
        b"y" => Opacity::Opaque,
        b"x" => Opacity::XWhiteouts,
        _ => Opacity::None,
    }
}

/// The overlay's private xattr names in one namespace.
pub struct XattrNames {
    pub prefix: &'static [u8],
    pub opaque: &'static CStr,
    pub whiteout: &'static CStr,
}

pub fn xattr_names(ns: XattrNs) -> XattrNames {
    match ns {
        XattrNs::Trusted => XattrNames {
            prefix: b"trusted.overlay.",
            opaque: c"trusted.overlay.opaque",
            whiteout: c"trusted.overlay.whiteout",
        },
        XattrNs::User => XattrNames {
            prefix: b"user.overlay.",
            opaque: c"user.overlay.opaque",
            whiteout: c"user.overlay.whiteout",
        },
    }
}

/// What `prefix + ESCAPE` means in a layer: an overlay xattr that belongs to the *merged*
/// view (a nested overlay's marker), stored escaped, as the kernel does since Linux 6.7.
const ESCAPE: &[u8] = b"overlay.";

/// Is this real xattr one of the overlay's own (hidden from the merged view, never copied
/// up)? Escaped names (`trusted.overlay.overlay.*`) are user data and are not.
pub fn is_private_xattr(ns: XattrNs, real: &[u8]) -> bool {
    from_real_xattr(ns, real).is_none()
}

/// The real name that stores the merged view's xattr `name`: names in the overlay's own
/// namespace are escaped (`trusted.overlay.X` is kept as `trusted.overlay.overlay.X`).
pub fn to_real_xattr(ns: XattrNs, name: &[u8]) -> Vec<u8> {
    let prefix = xattr_names(ns).prefix;
    match name.strip_prefix(prefix) {
        Some(rest) => [prefix, ESCAPE, rest].concat(),
        None => name.to_vec(),
    }
}

/// The merged view's name for a real xattr, or None for the overlay's own markers.
pub fn from_real_xattr(ns: XattrNs, real: &[u8]) -> Option<Vec<u8>> {
    let prefix = xattr_names(ns).prefix;
    match real.strip_prefix(prefix) {
        Some(rest) => rest.strip_prefix(ESCAPE).map(|r| [prefix, r].concat()),
        None => Some(real.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aufs_names() {
        assert_eq!(aufs_hidden_name(b".wh.foo"), Some(&b"foo"[..]));
        assert_eq!(aufs_hidden_name(b".wh..wh..opq"), None);
        assert_eq!(aufs_hidden_name(b"foo"), None);
        assert_eq!(aufs_whiteout_for(b"x").unwrap(), b".wh.x");
        assert!(aufs_whiteout_for(&[b'a'; 252]).is_none());
        assert!(is_aufs_special(b".wh.x"));
    }

    #[test]
    fn formats() {
        for f in [Format::Chardev, Format::File] {
            assert_eq!(Format::parse(f.name().as_bytes()), Some(f));
        }
        assert_eq!(Format::parse(b"aufs"), None);
    }

    #[test]
    fn choosing_a_format() {
        use Format::{Chardev, File};
        // Nothing known: 0/0 devices where they can be made, else files.
        assert_eq!(Format::choose(None, None, true), Ok((Chardev, None)));
        assert_eq!(Format::choose(None, None, false), Ok((File, None)));
        // An upper keeps its format, even where devices could be made.
        assert_eq!(Format::choose(None, Some(File), true), Ok((File, None)));
        assert_eq!(
            Format::choose(None, Some(Chardev), true),
            Ok((Chardev, None))
        );
        // An upper of 0/0 devices where none can be made now: refused, not mixed.
        assert!(Format::choose(None, Some(Chardev), false).is_err());
        // The option wins, and says so when it mixes.
        assert_eq!(
            Format::choose(Some(File), Some(Chardev), true),
            Ok((File, Some(Chardev)))
        );
        assert_eq!(Format::choose(Some(File), None, true), Ok((File, None)));
        assert!(Format::choose(Some(Chardev), None, false).is_err());
    }

    #[test]
    fn opacity() {
        assert_eq!(opacity_from_value(b"y"), Opacity::Opaque);
        assert_eq!(opacity_from_value(b"x"), Opacity::XWhiteouts);
        assert_eq!(opacity_from_value(b"n"), Opacity::None);
    }

    #[test]
    fn private_xattrs() {
        assert!(is_private_xattr(
            XattrNs::Trusted,
            b"trusted.overlay.opaque"
        ));
        assert!(!is_private_xattr(XattrNs::Trusted, b"user.overlay.opaque"));
        assert!(is_private_xattr(XattrNs::User, b"user.overlay.opaque"));
        assert!(!is_private_xattr(XattrNs::Trusted, b"user.foo"));
        assert!(!is_private_xattr(
            XattrNs::Trusted,
            b"trusted.overlay.overlay.opaque"
        ));
    }

    #[test]
    fn escaping() {
        let t = XattrNs::Trusted;
        assert_eq!(
            to_real_xattr(t, b"trusted.overlay.opaque"),
            b"trusted.overlay.overlay.opaque"
        );
        assert_eq!(to_real_xattr(t, b"user.x"), b"user.x");
        assert_eq!(
            from_real_xattr(t, b"trusted.overlay.overlay.opaque").unwrap(),
            b"trusted.overlay.opaque"
        );
        assert_eq!(from_real_xattr(t, b"trusted.overlay.opaque"), None);
        assert_eq!(
            from_real_xattr(XattrNs::User, b"user.overlay.overlay.x").unwrap(),
            b"user.overlay.x"
        );
    }
}
