"""Human-readable output: ops, divergences, reproducer files."""

import json
import os
import re

from common import show_path

FORMAT = "layover-difftest/1"


def fmt_op(op):
    name = op["op"]
    parts = [name]
    if "slot" in op:
        parts.append("#%d" % op["slot"])
    if "p" in op:
        parts.append("'%s'" % show_path(op["p"]))
    if "p2" in op:
        parts.append("-> '%s'" % show_path(op["p2"]))
    if "target" in op:
        parts.append("target='%s'" % show_path(op["target"]))
    for k in ("flags",):
        if op.get(k):
            parts.append("[%s]" % ",".join(op[k]))
    if "mode" in op:
        parts.append("mode=%s" % (oct(op["mode"]) if isinstance(op["mode"], int) else op["mode"]))
    if "owner" in op:
        parts.append("owner=%d:%d" % tuple(op["owner"]))
    if "off" in op:
        parts.append("off=%s" % ("append" if op["off"] is None else op["off"]))
    for k in ("len", "size", "rlen"):
        if k in op:
            parts.append("%s=%s" % (k, op[k]))
    if "data" in op:
        d = op["data"]
        parts.append("data=%d bytes%s" % (d["len"], " of 0x%02x" % d["fill"] if "fill" in d else ""))
    if "name" in op:
        parts.append("name=%s" % op["name"])
    if "value" in op:
        parts.append("value=%d bytes" % (len(op["value"]) // 2))
    if op.get("flag"):
        parts.append(op["flag"])
    if "ns" in op:
        parts.append("times=%s" % ("now" if op["ns"] is None else op["ns"]))
    if op.get("follow") is False:
        parts.append("nofollow")
    if "uid" in op:
        parts.append("as %d:%d%s" % (op["uid"], op["gid"],
                                     " groups=%s" % op["groups"] if op.get("groups") else ""))
    if "umask" in op:
        parts.append("umask=%03o" % op["umask"])
    return " ".join(parts)


def fmt_value(v, limit=600):
    s = json.dumps(v, sort_keys=True, ensure_ascii=True)
    return s if len(s) <= limit else s[:limit] + "..."


def describe(out, indent="  "):
    """Lines describing an Outcome's divergence."""
    lines = ["%ssignature: %s" % (indent, out.sig)]
    d = out.detail
    if out.index is not None:
        lines.append("%sat: op #%d%s" % (indent, out.index,
                                           " (after the last op)" if out.kind not in ("op", "hang", "crash") else ""))
    if d.get("op"):
        lines.append("%sop: %s" % (indent, fmt_op(d["op"])))
    if "kernel" in d:
        lines.append("%skernel:  %s" % (indent, fmt_value(d["kernel"])))
        lines.append("%slayover: %s" % (indent, fmt_value(d["layover"])))
    for diff in d.get("diffs", [])[:15]:
        p, f, a, b = diff
        lines.append("%s'%s' %s: kernel %s | layover %s" % (indent, show_path(p), f,
                                                          fmt_value(a, 200), fmt_value(b, 200)))
    for k in ("error", "leftovers", "problems"):
        if k in d:
            lines.append("%s%s: %s" % (indent, k, fmt_value(d[k])))
    if d.get("threads"):
        lines.append("%sdaemon threads (it had not exited 10 s after umount):" % indent)
        lines += [indent + "  " + l for l in d["threads"]]
    if d.get("log"):
        lines.append("%sdaemon log tail:" % indent)
        lines += [indent + "  " + l for l in d["log"].strip().splitlines()[-15:]]
    return lines


def slug(sig):
    return re.sub(r"[^A-Za-z0-9]+", "-", sig).strip("-").lower()[:60]


def write_repro(out_dir, seed, spec, ops, outcome):
    os.makedirs(out_dir, exist_ok=True)
    name = "seed%s-%s" % (seed, slug(outcome.sig))
    path = os.path.join(out_dir, name + ".json")
    doc = {
        "format": FORMAT,
        "name": name,
        "seed": seed,
        "signature": outcome.sig,
        "summary": describe(outcome, ""),
        "ops_readable": [fmt_op(o) for o in ops],
        "spec": spec,
        "ops": ops,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return path


def load_repro(path):
    with open(path) as f:
        doc = json.load(f)
    if doc.get("format") != FORMAT:
        raise ValueError("%s: not a %s file" % (path, FORMAT))
    return doc


def fmt_spec(spec):
    """A short listing of a (shrunk) layer stack."""
    lines = []
    layers = [("upper", spec["upper"])] + [("lower%d" % i, l) for i, l in enumerate(spec["lowers"])]
    for name, entries in layers:
        items = []
        for e in entries:
            if e["p"] == "" and len(e) <= 3:
                continue
            desc = "%s:%s" % (e["t"], show_path(e["p"]) or "/")
            extras = []
            if "opaque" in e:
                extras.append("opaque=" + e["opaque"])
            if "mode" in e:
                extras.append(oct(e["mode"]))
            if "uid" in e:
                extras.append("%d:%d" % (e["uid"], e["gid"]))
            if e["t"] == "f":
                extras.append("%dB" % e.get("size", 0))
            if e["t"] == "l":
                extras.append("->" + show_path(e["target"]))
            if e["t"] == "h":
                extras.append("=" + show_path(e["src"]))
            if "xattrs" in e:
                extras.append("xattrs=" + ",".join(sorted(e["xattrs"])))
            if extras:
                desc += "(" + " ".join(extras) + ")"
            items.append(desc)
        lines.append("  %s: %s" % (name, " ".join(items) if items else "(empty)"))
    if spec.get("userxattr"):
        lines.append("  (userxattr)")
    if spec.get("layover_opts"):
        lines.append("  (layover -o %s)" % ",".join(spec["layover_opts"]))
    return lines
