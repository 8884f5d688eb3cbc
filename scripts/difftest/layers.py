"""Random layer stacks as data (a JSON-able spec), and building a spec on disk.

A spec is generated from a seed and then materialised twice, once for each mount, by the same
code: the copies hold the same names, data, modes, owners, xattrs, times and hard links.

spec = {
  "userxattr": bool,           # markers live in user.overlay.* instead of trusted.overlay.*
  "lowers": [[entry, ...], ...],   # index 0 is the top (leftmost) lower
  "upper": [entry, ...],       # pre-populated upper (at least its root entry)
  "names": [name, ...],        # every name the generator used (ops reuse them)
  "layover_opts": [opt, ...],  # optional: more -o options for layover's mounts (run.py's
                               # --layover-opts; "passthrough=0" shows, as root, what a mount
                               # without passthrough does: the writeback cache)
}
entry = {"p": relpath, "t": kind, ...} where kind is
  "d" directory   ("opaque": "y"|"x" writes <ns>.overlay.opaque; "decoy_opaque": true
                  writes the other namespace's marker, which must mean nothing)
  "f" file        ("data": [[offset, dataspec], ...], "size": N; gaps are holes)
  "l" symlink     ("target")
  "h" hard link   ("src": an earlier "f" entry of the same layer)
  "p" fifo
  "w" whiteout, a 0/0 character device
  "xw" xattr whiteout: empty file with <ns>.overlay.whiteout, in a dir with opaque "x"
and optional "mode", "uid", "gid", "mtime" (ns), "xattrs" {name: hex value}.
Entries are listed parents first. The layer root itself is entry p="".
"""

import os
import stat

from common import EXPLICIT_TIME_MAX_NS, data_bytes

LONG255 = "L" * 250 + "-255x"  # 255 bytes: the longest legal name
NAMES_PLAIN = ["a", "b", "c", "d", "e", "f", "g", "h", "dir", "sub", "x", "y", "z",
               "data.txt", "cfg", "bin", "lib", "etc", "k1", "k2"]
NAMES_ODD = ["sp ace", "new\nline", "tab\tname", "\udcff\udcfe-raw", "caf\u00e9", "-dash",
             ".hidden", LONG255, "a:b,c\\d", "#hash", "*star?", "..dots"]
# AUFS/OCI-looking names: the kernel gives them no meaning; they are ordinary names.
NAMES_AUFS = [".wh.a", ".wh..wh..opq"]

FILE_MODES = [0o644] * 6 + [0o600, 0o755, 0o400, 0o000, 0o4755, 0o2755, 0o6711, 0o666,
                            0o640, 0o1644, 0o444, 0o700]
DIR_MODES = [0o755] * 6 + [0o777] * 2 + [0o700, 0o1777, 0o2775, 0o555, 0o711, 0o750, 0o3777,
                             0o000]
OWNERS = [(0, 0)] * 4 + [(1000, 1000)] * 3 + [(1001, 1001), (1000, 1001), (65534, 65534),
                                             (0, 1000)]
XATTR_NAMES = ["user.a", "user.b", "user.mime_type", "user." + "n" * 40]


def overlay_prefix(userxattr):
    return "user.overlay." if userxattr else "trusted.overlay."


def explicit_time(rng):
    """A time in the 'set on purpose' range, with nanoseconds."""
    s = rng.randint(1_000_000_000, EXPLICIT_TIME_MAX_NS // 10**9 - 1)
    return s * 10**9 + rng.randrange(10**9)


def gen_data(rng):
    """(data list, size) for a regular file: empty, small, medium, or sparse."""
    r = rng.random()
    if r < 0.12:
        return [], 0
    if r < 0.7:
        n = rng.choice([1, 5, 100, 511, 4096, rng.randint(1, 9000)])
        return [[0, {"seed": rng.randrange(1 << 30), "len": n}]], n
    if r < 0.85:
        n = rng.randint(9000, 200_000)
        return [[0, {"seed": rng.randrange(1 << 30), "len": n}]], n
    # sparse: a few data islands far apart, and maybe a hole at the end
    size = rng.choice([1 << 20, 3 << 19, 2 << 20])
    data = []
    for _ in range(rng.randint(1, 3)):
        off = rng.randrange(0, size, 4096)
        data.append([off, {"seed": rng.randrange(1 << 30), "len": rng.randint(1, 8192)}])
    data.sort(key=lambda d: d[0])
    return data, size


def gen_meta(rng, e, kind):
    if kind in ("f", "d") and rng.random() < 0.5:
        e["mode"] = rng.choice(FILE_MODES if kind == "f" else DIR_MODES)
    if kind in ("f", "d", "l", "p") and rng.random() < 0.4:
        e["uid"], e["gid"] = rng.choice(OWNERS)
    if kind in ("f", "d") and rng.random() < 0.25:
        xa = {}
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(XATTR_NAMES + (["trusted.t1"] if rng.random() < 0.2 else []))
            xa[name] = rng.randbytes(rng.choice([0, 1, 7, 60])).hex()
        e["xattrs"] = xa
    e["mtime"] = explicit_time(rng)


class Universe:
    """Candidate names per directory path, shared by all layers so that layers overlap."""

    def __init__(self, rng, aufs):
        self.rng = rng
        self.children = {}
        self.aufs = aufs

    def names(self, dirpath, depth):
        if dirpath not in self.children:
            rng = self.rng
            k = rng.randint(3, 7) if depth == 0 else rng.randint(2, 5)
            pool = list(NAMES_PLAIN)
            names = rng.sample(pool, k)
            if rng.random() < 0.35:
                names.append(rng.choice(NAMES_ODD))
            if self.aufs and rng.random() < 0.1:
                names.append(rng.choice(NAMES_AUFS))
            self.children[dirpath] = sorted(set(names))
        return self.children[dirpath]

    def all_names(self):
        out = set()
        for v in self.children.values():
            out.update(v)
        return sorted(out)


def merge_view(below, entries):
    """The visible tree {path: kind} after laying `entries` over `below` (overlay lookup
    rules: a whiteout or non-directory hides what is below, an opaque directory hides the
    directory below, other directories merge)."""
    view = dict(below)

    def drop_subtree(p):
        for q in [q for q in view if q.startswith(p + "/") or (p == "" and q != "")]:
            del view[q]
    for e in entries:
        p, t = e["p"], e["t"]
        if p == "":
            if e.get("opaque") == "y":
                drop_subtree("")
            continue
        if t in ("w", "xw"):
            view.pop(p, None)
            drop_subtree(p)
            continue
        if t == "d" and view.get(p) == "d" and e.get("opaque") != "y":
            continue
        view.pop(p, None)
        drop_subtree(p)
        view[p] = "d" if t == "d" else ("f" if t == "h" else t)
    return view


def gen_layer(rng, uni, below, has_below, is_upper, max_depth, stray_whiteouts=False):
    """One layer's entries. `below` is the view of the layers under it: whiteouts are put
    only in directories that merge with a directory below (the kernel shows a whiteout in a
    directory that merges with nothing as a stray entry), unless stray_whiteouts."""
    entries = [{"p": "", "t": "d", "mtime": explicit_time(rng)}]
    r0 = rng.random()
    if r0 < 0.15:
        entries[0]["xattrs"] = {"user.root": rng.randbytes(4).hex()}
    elif r0 < 0.3:
        entries[0]["mode"] = rng.choice([0o777, 0o1777, 0o775])
    elif r0 < 0.4:
        entries[0]["uid"], entries[0]["gid"] = 1000, 1000
    files = []
    p_absent = rng.uniform(0.3, 0.7)

    def walk(dirpath, depth, opaque, merged):
        names = list(uni.names(dirpath, depth))
        for name in names:
            if rng.random() < p_absent:
                continue
            p = name if dirpath == "" else dirpath + "/" + name
            choices = [("f", 30), ("l", 7), ("p", 3)]
            if depth < max_depth:
                choices.append(("d", 35 if depth < 2 else 15))
            if merged or stray_whiteouts:
                choices.append(("w", 25 if p in below else 5))
            if files:
                choices.append(("h", 6))
            if opaque == "x" and merged and not is_upper:
                choices.append(("xw", 20))
            kind = weighted(rng, choices)
            e = {"p": p, "t": kind}
            if kind == "f":
                e["data"], e["size"] = gen_data(rng)
                gen_meta(rng, e, kind)
                files.append(p)
            elif kind == "h":
                e["src"] = rng.choice(files)
            elif kind == "l":
                e["target"] = rng.choice([
                    "a", "../a", "/mnt/a", "/nonexistent-difftest/x", "dir/sub", "nonexistent",
                    "x" * 200, rng.choice(files) if files else "b", "./" + name,
                    "sp ace/\udcff"])
                gen_meta(rng, e, kind)
            elif kind == "p":
                gen_meta(rng, e, kind)
            elif kind == "d":
                r = rng.random()
                if r < 0.15:
                    e["opaque"] = "y"
                elif r < 0.2 and not is_upper:
                    e["opaque"] = "x"
                elif r < 0.23:
                    e["decoy_opaque"] = True  # the other namespace's marker: no meaning
                gen_meta(rng, e, kind)
                entries.append(e)
                walk(p, depth + 1, e.get("opaque"),
                     merged and below.get(p) == "d" and e.get("opaque") != "y")
                continue
            entries.append(e)

    walk("", 0, None, has_below)
    return entries


def weighted(rng, choices):
    total = sum(w for _, w in choices)
    x = rng.uniform(0, total)
    for v, w in choices:
        x -= w
        if x <= 0:
            return v
    return choices[-1][0]


def has_stray_whiteouts(spec):
    """Whether a whiteout sits in a directory that merges with nothing below (what
    gen_layer avoids unless asked): the shrinker must not slide into that case."""
    view = {}
    layers = list(reversed(spec["lowers"])) + [spec["upper"]]
    for i, entries in enumerate(layers):
        merged = {"": i > 0}  # directories of this layer that merge with one below
        for e in entries:
            p = e["p"]
            parent = p.rsplit("/", 1)[0] if "/" in p else ""
            if e["t"] == "d" and p != "":
                merged[p] = (merged.get(parent, False) and view.get(p) == "d"
                             and e.get("opaque") != "y")
            elif e["t"] in ("w", "xw") and not merged.get(parent, False):
                return True
        view = merge_view(view, entries)
    return False


def gen_spec(rng, userxattr=None, aufs=False, stray_whiteouts=False):
    """A random layer stack, generated bottom-up so that each layer knows what lies below."""
    uni = Universe(rng, aufs)
    nlowers = rng.choice([1, 1, 2, 2, 3, 4])
    if userxattr is None:
        userxattr = rng.random() < 0.2
    max_depth = rng.choice([1, 2, 3, 3])
    view = {}
    lowers = []
    for _ in range(nlowers):
        layer = gen_layer(rng, uni, view, bool(lowers), False, max_depth, stray_whiteouts)
        lowers.insert(0, layer)
        view = merge_view(view, layer)
    if rng.random() < 0.5:
        upper = gen_layer(rng, uni, view, True, True, max_depth, stray_whiteouts)
    else:
        upper = gen_layer(rng, uni, view, True, True, 0)[:1]  # the root's attributes only
    return {"userxattr": userxattr, "lowers": lowers, "upper": upper,
            "names": uni.all_names()}


# --- on disk -----------------------------------------------------------------------------------

# Set by run.py in --mode userns: root of a user namespace may not set trusted.* xattrs (EPERM),
# so the layers of both sides are built without them (the overlay's markers are user.overlay.*
# there anyway, see spec_for_seed).
UNPRIVILEGED = False


def _settable(name):
    return not (UNPRIVILEGED and name.startswith("trusted."))


def materialize(entries, root, userxattr):
    """Builds one layer under the existing directory `root`."""
    ns = overlay_prefix(userxattr)
    other_ns = overlay_prefix(not userxattr)
    for e in entries:
        p = e["p"]
        full = root if p == "" else os.path.join(root, p)
        t = e["t"]
        if t == "d":
            if p != "":
                os.mkdir(full, 0o755)
            if "opaque" in e:
                os.setxattr(full, ns + "opaque", e["opaque"].encode())
            if e.get("decoy_opaque") and _settable(other_ns):
                os.setxattr(full, other_ns + "opaque", b"y")
        elif t == "f":
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                for off, ds in e.get("data", []):
                    os.pwrite(fd, data_bytes(ds), off)
                os.ftruncate(fd, e.get("size", 0))
            finally:
                os.close(fd)
        elif t == "l":
            os.symlink(e["target"], full)
        elif t == "h":
            os.link(os.path.join(root, e["src"]), full)
        elif t == "p":
            os.mkfifo(full, 0o644)
        elif t == "w":
            os.mknod(full, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        elif t == "xw":
            os.close(os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            os.setxattr(full, ns + "whiteout", b"y")
        else:
            raise ValueError("unknown entry kind %r" % t)
    # metadata: xattrs, then owner, then mode (chown clears set-id bits), times last and
    # deepest first (creating children moves a directory's mtime).
    for e in entries:
        if e["t"] in ("h", "w"):
            continue
        full = root if e["p"] == "" else os.path.join(root, e["p"])
        for name, val in sorted(e.get("xattrs", {}).items()):
            if _settable(name):
                os.setxattr(full, name, bytes.fromhex(val), follow_symlinks=False)
        if "uid" in e:
            os.chown(full, e["uid"], e["gid"], follow_symlinks=False)
        if "mode" in e and e["t"] != "l":
            os.chmod(full, e["mode"])
    for e in reversed(entries):
        if "mtime" in e and e["t"] not in ("h", "w"):
            full = root if e["p"] == "" else os.path.join(root, e["p"])
            os.utime(full, ns=(e["mtime"], e["mtime"]), follow_symlinks=False)


def build_stack(spec, base):
    """Creates base/l0..lN, base/upper, base/work (empty), base/mnt; returns the paths."""
    os.makedirs(base, exist_ok=False)
    lowers = []
    for i, entries in enumerate(spec["lowers"]):
        d = os.path.join(base, "l%d" % i)
        os.mkdir(d)
        materialize(entries, d, spec["userxattr"])
        lowers.append(d)
    upper = os.path.join(base, "upper")
    os.mkdir(upper)
    if spec["upper"]:
        materialize(spec["upper"], upper, spec["userxattr"])
    work = os.path.join(base, "work")
    os.mkdir(work)
    # The mount point lies in a jail that the executors chroot into: an absolute symlink in
    # the layers (or one that climbs out with ..) then resolves inside the jail, never on
    # the host.
    jail = os.path.join(base, "jail")
    os.mkdir(jail, 0o755)
    mnt = os.path.join(jail, "mnt")
    os.mkdir(mnt)
    return {"lowers": lowers, "upper": upper, "work": work, "mnt": mnt, "jail": jail}
