#!/bin/sh
# Benchmark layover against the kernel's overlayfs and fuse-overlayfs: see scripts/bench.py
# and docs/performance.md. Run as root. Example: scripts/bench.sh --quick
exec python3 "$(dirname "$0")/bench.py" "$@"
