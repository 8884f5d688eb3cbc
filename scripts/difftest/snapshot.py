"""Normalised snapshots of a tree (a merged view, or a layer on disk) and their comparison.

What is compared, per entry: type, permission bits (with set-id/sticky), uid, gid; size,
content hash and nlink for non-directories; symlink target; rdev of devices; every xattr the
view shows (user.* and others; for layers on disk the overlay's own bookkeeping is dropped,
its opaque/whiteout markers kept); mtime only when one side shows a time in the "set on
purpose" range (see common.EXPLICIT_TIME_MAX_NS); which names share an inode (never the
numbers themselves); d_type; whether d_ino equals st_ino.

Never compared: inode numbers, st_dev, directory sizes and nlink, atime, ctime, readdir order.
"""

import hashlib
import os
import stat

from common import EXPLICIT_TIME_MAX_NS, HASH_LIMIT, errname

TYPE_CHARS = [(stat.S_ISREG, "f"), (stat.S_ISDIR, "d"), (stat.S_ISLNK, "l"),
              (stat.S_ISFIFO, "p"), (stat.S_ISCHR, "c"), (stat.S_ISBLK, "b"),
              (stat.S_ISSOCK, "s")]

# Kernel bookkeeping in a layer that says nothing about the merged tree's meaning (and that
# layover need not write): origin file handles, the impure/nlink/uuid/upper hints.
IGNORED_MARKERS = {"origin", "impure", "uuid", "nlink", "upper"}


def type_char(mode):
    for pred, c in TYPE_CHARS:
        if pred(mode):
            return c
    return "?"


def dtype_char(entry):
    """The type readdir reported for a DirEntry (d_type), without a stat."""
    try:
        if entry.is_symlink():
            return "l"
        if entry.is_dir(follow_symlinks=False):
            return "d"
        if entry.is_file(follow_symlinks=False):
            return "f"
        return "o"
    except OSError as e:
        return "err:" + errname(e.errno)


def file_hash(path):
    h = hashlib.sha1()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        n = 0
        while n < HASH_LIMIT:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
    finally:
        os.close(fd)
    return h.hexdigest()[:20]


def norm_stat(full, st, layer_ns=None, content=True, xattrs=True):
    """The comparable description of one entry. layer_ns: the overlay xattr prefix when
    `full` lies in a layer on disk (markers are interpreted), None for a merged view."""
    t = type_char(st.st_mode)
    if layer_ns is not None and t == "c" and st.st_rdev == 0:
        return {"t": "whiteout"}
    d = {"t": t, "mode": "%04o" % stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    if t != "d":
        d["size"] = st.st_size
        d["nlink"] = st.st_nlink
    if t in ("c", "b"):
        d["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
    if st.st_mtime_ns < EXPLICIT_TIME_MAX_NS:
        d["mtime"] = st.st_mtime_ns
    if t == "l":
        try:
            d["target"] = os.readlink(full)
        except OSError as e:
            d["target"] = "err:" + errname(e.errno)
    if t == "f" and content:
        try:
            d["sha"] = file_hash(full)
        except OSError as e:
            d["sha"] = "err:" + errname(e.errno)
        if layer_ns is not None:
            d["sparse"] = has_hole(full, st)
    if not xattrs:
        return d
    try:
        names = sorted(os.listxattr(full, follow_symlinks=False))
    except OSError as e:
        names = []
        d["xattrs_err"] = errname(e.errno)
    xa = {}
    for n in names:
        if layer_ns is not None and n.startswith(layer_ns):
            key = n[len(layer_ns):]
            if key in IGNORED_MARKERS:
                continue
        try:
            v = os.getxattr(full, n, follow_symlinks=False)
            xa[n] = v.hex()
        except OSError as e:
            xa[n] = "err:" + errname(e.errno)
    if layer_ns is not None:
        op = xa.pop(layer_ns + "opaque", None)
        if op is not None:
            d["opaque"] = bytes.fromhex(op).decode("latin-1") if not op.startswith("err") else op
        wh = xa.pop(layer_ns + "whiteout", None)
        if wh is not None:
            d["xwhiteout"] = True
    if xa:
        d["xattrs"] = xa
    return d


def snapshot(root, layer_ns=None, content=True, with_dirent=True):
    """{relpath: description} for the whole tree under root (root itself is "")."""
    out = {}
    inos = {}
    try:
        st = os.lstat(root)
    except OSError as e:
        return {"": {"err": errname(e.errno)}}
    out[""] = norm_stat(root, st, layer_ns, content)
    stack = [""]
    while stack:
        rel = stack.pop()
        full = root if rel == "" else root + "/" + rel
        try:
            entries = sorted(os.scandir(full), key=lambda e: e.name)
        except OSError as e:
            out[rel]["listdir_err"] = errname(e.errno)
            continue
        for ent in entries:
            crel = ent.name if rel == "" else rel + "/" + ent.name
            cfull = full + "/" + ent.name
            try:
                cst = os.lstat(cfull)
            except OSError as e:
                out[crel] = {"err": errname(e.errno)}
                continue
            d = norm_stat(cfull, cst, layer_ns, content)
            if with_dirent:
                dt = dtype_char(ent)
                want = {"f": "f", "d": "d", "l": "l"}.get(d["t"], "o")
                if d["t"] == "whiteout":
                    want = "o"
                if dt != want:
                    d["d_type"] = dt
                if ent.inode() != cst.st_ino:
                    d["d_ino_differs"] = True
            out[crel] = d
            if d["t"] == "d":
                stack.append(crel)
            elif d["t"] != "whiteout":
                inos.setdefault(cst.st_ino, []).append(crel)
    for group in inos.values():
        if len(group) > 1:
            g = sorted(group)
            for p in g:
                out[p]["same_inode_as"] = g
    if layer_ns is not None:
        _fold_aufs(out)
    return out


def _fold_aufs(out):
    """In a layer: read `.wh.NAME` as a whiteout of NAME and `.wh..wh..opq` as an opaque
    marker, noting the format, so that two formats of the same meaning compare alike."""
    for p in sorted(out):
        base = p.rsplit("/", 1)[-1]
        parent = p.rsplit("/", 1)[0] if "/" in p else ""
        d = out[p]
        if not base.startswith(".wh.") or d.get("t") != "f" or d.get("size") != 0:
            continue
        if base == ".wh..wh..opq":
            del out[p]
            out[parent]["opaque"] = "y"
            out[parent]["opaque_fmt"] = "aufs"
        elif not base.startswith(".wh..wh."):
            del out[p]
            name = base[4:]
            hidden = name if parent == "" else parent + "/" + name
            out.setdefault(hidden, {"t": "whiteout", "fmt": "aufs"})


NOTE_FIELDS = {"fmt", "opaque_fmt"}


def inode_groups_differ(a, b, ga, gb):
    """Which names share an inode, judged fairly. Names that share an inode in view a (the
    reference) must share one in b. Without index=on the kernel gives the names of one file
    different inode numbers in some cases (a hard link of a copied-up file); b may keep
    them together, but only for names that are observably one file (same type, size,
    content, nlink): equal st_ino must never join different files."""
    if ga and not set(ga) <= set(gb or []):
        return True
    if gb and not ga:
        keys = ("t", "size", "sha", "nlink", "mode", "uid", "gid")
        first = b.get(gb[0], {})
        return any(tuple(b.get(p, {}).get(k) for k in keys) != tuple(first.get(k) for k in keys)
                   for p in gb)
    return False


def _what(entry):
    """A short description of an entry that only one side has: its type, or the error its
    lstat gave (a name listed but not found)."""
    return entry.get("t") or "listed, lstat " + str(entry.get("err"))


def compare(a, b, limit=40):
    """(diffs, notes): diffs are [path, field, value_a, value_b] where the trees disagree;
    notes are format differences of equal meaning (aufs vs kernel whiteouts)."""
    diffs, notes = [], []
    for p in sorted(set(a) | set(b)):
        if p not in a:
            diffs.append([p, "exists", None, _what(b[p])])
            continue
        if p not in b:
            diffs.append([p, "exists", _what(a[p]), None])
            continue
        ea, eb = a[p], b[p]
        for f in sorted(set(ea) | set(eb)):
            va, vb = ea.get(f), eb.get(f)
            if va == vb:
                continue
            if f == "same_inode_as" and not inode_groups_differ(a, b, va, vb):
                continue
            if f == "sparse" and not (va and not vb):
                continue  # only holes lost count: block allocation is otherwise free
            if f in NOTE_FIELDS:
                notes.append([p, f, va, vb])
            else:
                diffs.append([p, f, va, vb])
    return diffs[:limit], notes[:limit]


def has_hole(full, st):
    """Whether a regular file on a layer has a hole before its end (SEEK_HOLE). Not from
    st_blocks: ext4 counts an extent tree's blocks there, which a file keeps after a
    truncation, so a file that was fragmented once can look dense while it has holes."""
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return st.st_blocks * 512 < st.st_size
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) < st.st_size
    except OSError:
        return st.st_blocks * 512 < st.st_size
    finally:
        os.close(fd)


def walk_types(root):
    """[(relpath, type char)] of the tree, sorted; cheap (no hashing, no xattrs)."""
    out = []
    stack = [""]
    while stack:
        rel = stack.pop()
        full = root if rel == "" else root + "/" + rel
        try:
            names = sorted(os.listdir(full))
        except OSError:
            continue
        for n in names:
            crel = n if rel == "" else rel + "/" + n
            try:
                st = os.lstat(full + "/" + n)
            except OSError:
                continue
            t = type_char(st.st_mode)
            out.append([crel, t])
            if t == "d":
                stack.append(crel)
    out.sort()
    return out
