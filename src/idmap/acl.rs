//! The POSIX ACL xattr value (`system.posix_acl_access`, `system.posix_acl_default`): a
//! 4-byte little-endian version (2), then 8-byte entries `{ tag: u16, perm: u16, id: u32 }`.
//! Only `ACL_USER` and `ACL_GROUP` entries carry an id (a uid and a gid); the others carry
//! `ACL_UNDEFINED_ID`. The value comes from outside (a caller's setxattr, a layer's disk):
//! malformed input is an error, never a panic.

/// The only version the kernel reads or writes (`POSIX_ACL_XATTR_VERSION`).
const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;
/// `ACL_USER`: the entry's id is a uid.
const TAG_USER: u16 = 0x02;
/// `ACL_GROUP`: the entry's id is a gid.
const TAG_GROUP: u16 = 0x08;

/// Which kind of id an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclId {
    Uid,
    Gid,
}

/// Whether `name` is an xattr whose value is a POSIX ACL.
pub fn is_acl_name(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

/// Rewrites the id of every `ACL_USER`/`ACL_GROUP` entry of `value` with `map` (which may
/// refuse an id). `None` when `value` is not a well-formed ACL (the kernel's
/// `posix_acl_from_xattr` refuses the same: no header, another version, a size that is not
/// a whole number of entries); other tags are left as they are.
pub fn map_ids<E>(
    value: &[u8],
    mut map: impl FnMut(AclId, u32) -> Result<u32, E>,
) -> Option<Result<Vec<u8>, E>> {
    let (head, body) = value.split_at_checked(HEADER)?;
    if u32::from_le_bytes(head.try_into().ok()?) != VERSION || !body.len().is_multiple_of(ENTRY) {
        return None;
    }
    let mut out = value.to_vec();
    for (i, e) in body.chunks_exact(ENTRY).enumerate() {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let kind = match tag {
            TAG_USER => AclId::Uid,
            TAG_GROUP => AclId::Gid,
            _ => continue,
        };
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let new = match map(kind, id) {
            Ok(n) => n,
            Err(err) => return Some(Err(err)),
        };
        let at = HEADER + i * ENTRY + 4;
        out[at..at + 4].copy_from_slice(&new.to_le_bytes());
    }
    Some(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for (t, p, id) in entries {
            v.extend_from_slice(&t.to_le_bytes());
            v.extend_from_slice(&p.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    #[test]
    fn maps_user_and_group_entries_only() {
        let u = u32::MAX;
        let v = acl(&[
            (1, 6, u),
            (2, 4, 5),
            (4, 4, u),
            (8, 4, 7),
            (0x10, 4, u),
            (0x20, 0, u),
        ]);
        let out = map_ids(&v, |k, id| {
            Ok::<_, ()>(match k {
                AclId::Uid => id + 100,
                AclId::Gid => id + 200,
            })
        });
        let want = acl(&[
            (1, 6, u),
            (2, 4, 105),
            (4, 4, u),
            (8, 4, 207),
            (0x10, 4, u),
            (0x20, 0, u),
        ]);
        assert_eq!(out, Some(Ok(want)));
    }

    #[test]
    fn refuses_malformed_values_and_passes_errors() {
        let id = |_, i| Ok::<u32, ()>(i);
        assert_eq!(map_ids(b"", id), None);
        assert_eq!(map_ids(&[2, 0, 0], id), None);
        assert_eq!(map_ids(&[1, 0, 0, 0], id), None);
        assert_eq!(map_ids(&[2, 0, 0, 0, 2, 0, 4], id), None);
        assert_eq!(map_ids(&[2, 0, 0, 0], id), Some(Ok(vec![2, 0, 0, 0])));
        let v = acl(&[(2, 4, 5)]);
        assert_eq!(map_ids(&v, |_, _| Err::<u32, _>("no")), Some(Err("no")));
    }
}
