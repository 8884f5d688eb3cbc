"""Small shared pieces: deterministic data, errno names, path encoding, JSON framing.

Paths are `str` everywhere, decoded from the file system's bytes with `surrogateescape`
(Python's default for os.* on Linux), so non-UTF-8 names survive a JSON round trip
(json writes lone surrogates as \\udcXX escapes and reads them back unchanged).
"""

import errno
import hashlib
import json
import os
import struct

# Times we set on purpose (in layer specs and utime ops) all lie before this instant
# (2011-03-13). A time after it was set by the file system itself ("now"), which legitimately
# differs between two mounts, so it is compared only if the other side shows a time we set.
EXPLICIT_TIME_MAX_NS = 1_300_000_000 * 10**9

# Regular files are hashed in full up to this size (ours stay far below).
HASH_LIMIT = 64 << 20


def data_bytes(spec):
    """The bytes a data spec stands for: {"seed": S, "len": N} or {"fill": B, "len": N}."""
    n = int(spec["len"])
    if "fill" in spec:
        return bytes([spec["fill"] & 0xFF]) * n
    return hashlib.shake_128(b"layover-difftest:%d" % spec["seed"]).digest(n)


def short_bytes(b):
    """A compact, comparable description of bytes read: hex when short, else length+hash."""
    if len(b) <= 24:
        return {"len": len(b), "hex": b.hex()}
    return {"len": len(b), "sha1": hashlib.sha1(b).hexdigest()[:20]}


def errname(e):
    return errno.errorcode.get(e, "E%d" % e)


def join(root, rel):
    return root if rel in ("", ".") else root + "/" + rel


def parent_of(rel):
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def show_path(p):
    """A printable form of a path (non-UTF-8 bytes as \\xNN, control chars escaped)."""
    return repr(os.fsencode(p))[2:-1]


# --- framed JSON over pipes (executor protocol) ---------------------------------------------

def send_msg(fd, obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    buf = struct.pack("<I", len(data)) + data
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _read_exact(fd, n):
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError("pipe closed")
        out += chunk
    return bytes(out)


def recv_msg(fd):
    (n,) = struct.unpack("<I", _read_exact(fd, 4))
    return json.loads(_read_exact(fd, n))

