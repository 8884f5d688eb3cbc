"""Delta debugging of a diverging case: first the op list, then the layer stack, then the
attributes of what is left. A reduction is kept when a replay from the reduced case still
diverges with the same signature. Every test is a full replay (fresh layers, fresh mounts).
"""

import copy
import math
import time


class Budget:
    def __init__(self, seconds, max_runs):
        self.deadline = time.monotonic() + seconds
        self.runs = 0
        self.max_runs = max_runs

    def ok(self):
        return self.runs < self.max_runs and time.monotonic() < self.deadline


def ddmin(items, test, budget):
    """Smallest sublist (1-minimal within budget) for which test() holds; test(items) is
    assumed true. Removes chunks (complements), halving their size, then single items."""
    if budget.ok() and items and test([]):
        return []
    n = 2
    while len(items) >= 2 and budget.ok():
        chunk = math.ceil(len(items) / n)
        reduced = False
        for start in range(0, len(items), chunk):
            if not budget.ok():
                break
            comp = items[:start] + items[start + chunk:]
            if test(comp):
                items = comp
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if n >= len(items):
                break
            n = min(len(items), n * 2)
    return items


def closure(entries):
    """Drops entries whose parent directory is gone, and hard links whose source is gone."""
    kept = []
    present = {""}
    files = set()
    for e in entries:
        p = e["p"]
        parent = p.rsplit("/", 1)[0] if "/" in p else ""
        if p != "" and parent not in present:
            continue
        if e["t"] == "h" and e["src"] not in files:
            continue
        kept.append(e)
        if e["t"] == "d":
            present.add(p)
        if e["t"] == "f":
            files.add(p)
    return kept


def spec_with(spec, lowers=None, units=None):
    """A copy of spec keeping the given lower layers (indices) and entries (layer, index)."""
    s = copy.deepcopy(spec)
    s.pop("names", None)
    layers = [("u", s["upper"])] + [(i, l) for i, l in enumerate(s["lowers"])]
    if units is not None:
        keep = set(map(tuple, units))
        for key, entries in layers:
            entries[:] = closure([e for j, e in enumerate(entries)
                                  if e["p"] == "" or (key, j) in keep])
    if lowers is not None:
        s["lowers"] = [s["lowers"][i] for i in lowers]
    return s


def entry_units(spec):
    out = []
    for j, e in enumerate(spec["upper"]):
        if e["p"] != "":
            out.append(("u", j))
    for i, l in enumerate(spec["lowers"]):
        for j, e in enumerate(l):
            if e["p"] != "":
                out.append((i, j))
    return out


SIMPLIFY = ["xattrs", "uid", "mode", "mtime", "decoy_opaque"]


def shrink(spec, ops, fails, budget, log=lambda s: None):
    """fails(spec, ops) -> bool. Returns (spec, ops), reduced."""
    def test_ops(o):
        budget.runs += 1
        return fails(spec, o)

    n0 = len(ops)
    ops = ddmin(list(ops), test_ops, budget)
    log("ops %d -> %d (%d runs)" % (n0, len(ops), budget.runs))

    spec = spec_with(spec)
    if len(spec["lowers"]) > 1 and budget.ok():
        def test_layers(idx):
            if not idx:
                return False
            budget.runs += 1
            return fails(spec_with(spec, lowers=idx), ops)
        idx = ddmin(list(range(len(spec["lowers"]))), test_layers, budget)
        spec = spec_with(spec, lowers=idx)
        log("lowers -> %d (%d runs)" % (len(spec["lowers"]), budget.runs))

    units = entry_units(spec)
    if units and budget.ok():
        def test_units(u):
            budget.runs += 1
            return fails(spec_with(spec, units=u), ops)
        kept = ddmin(units, test_units, budget)
        spec = spec_with(spec, units=kept)
        log("layer entries %d -> %d (%d runs)" % (len(units), len(entry_units(spec)),
                                                  budget.runs))

    # drop incidental attributes one at a time
    for layer in [spec["upper"]] + spec["lowers"]:
        for e in layer:
            for key in SIMPLIFY:
                if key not in e or not budget.ok():
                    continue
                saved = {k: e[k] for k in (key, "gid") if k in e}
                for k in saved:
                    if k == "gid" and key != "uid":
                        continue
                    del e[k]
                budget.runs += 1
                if not fails(spec, ops):
                    e.update(saved)
    # the ops once more: fewer layer entries can make more ops removable
    if budget.ok() and len(ops) > 1:
        ops = ddmin(ops, test_ops, budget)
    # and their incidental parameters: umask, the unprivileged caller
    ops = [dict(o) for o in ops]
    for o in ops:
        for keys in (("umask",), ("uid", "gid", "groups")):
            if keys[0] not in o or not budget.ok():
                continue
            saved = {k: o.pop(k) for k in keys if k in o}
            budget.runs += 1
            if not fails(spec, ops):
                o.update(saved)
    log("done: %d ops, %d runs" % (len(ops), budget.runs))
    return spec, ops
