#!/usr/bin/env bash
# Install everything (idempotent) and run the main job end to end on a small COCO sample:
# references -> memory bank -> segment -> COCO eval, with embedded CPU-sized defaults.
# Real weights are downloaded (sha256-verified) on first use. On a machine that cannot download
# them, the command says exactly which files to put where; or pass --random-weights.
# Extra arguments go to `ntt-batch demo` (see `ntt-batch demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export NTT_SHARED_DATA="${NTT_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
exec ntt-batch demo "$@"
