#!/usr/bin/env bash
# The GPU check in one command, on a GPU machine that has only a base PyTorch environment
# (Python 3.12, torch, torchvision, timm, pyarrow, fsspec, click, safetensors, numpy, pillow) and
# no network. Prepare the wheels beforehand on a machine with network:
#
#   bash benchmarks/prepare_gpu_wheels.sh          # -> gpu_wheels/ (git-ignored, ~4 MiB)
#
# then, on the GPU machine, from the repository root (with gpu_wheels/ copied along):
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]      # e.g. --images 64 --batch 16
#
# It installs what the base environment lacks from gpu_wheels/ into a private folder
# ($NTT_GPU_SITE, default /tmp/ntt_gpu_site; the system site-packages are not touched), installs
# this package there with --no-deps (no Ray: the model benchmark never imports it), then runs
# benchmarks/gpu_check.py, which writes random-weight sam2_hiera_large + dinov2_vitl14
# checkpoints and prints and writes $OUT/gpu_check.json (OUT defaults to gpu_check_out/).
# Everything, installation included, is held to $NTT_GPU_CHECK_LIMIT_S seconds (default 470,
# under 8 minutes); the JSON is rewritten after every phase, so a run cut short keeps its figures.
set -euo pipefail
START=$(date +%s)
cd "$(dirname "$0")/.."
OUTDIR="${OUT:-gpu_check_out}"
WHEELS="${NTT_GPU_WHEELS:-gpu_wheels}"
SITE="${NTT_GPU_SITE:-/tmp/ntt_gpu_site}"
LIMIT_S="${NTT_GPU_CHECK_LIMIT_S:-470}"
mkdir -p "$OUTDIR"
exec > >(tee "$OUTDIR/gpu_check.log") 2>&1

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3 python; do
    if command -v "$cand" >/dev/null && "$cand" -c "import torch" 2>/dev/null; then PY="$cand"; break; fi
  done
fi
[[ -n "$PY" ]] || { echo "no Python with torch found (set PYTHON=...)"; exit 2; }
echo "== $("$PY" -c 'import sys, torch; print(sys.executable, sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())')"

if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "no wheels in $WHEELS/: run 'bash benchmarks/prepare_gpu_wheels.sh' on a machine with network and copy $WHEELS/ here"
  exit 2
fi

# Wheels whose module the base environment cannot import (distribution name -> module name).
missing=$("$PY" - "$WHEELS" <<'EOF'
import glob, importlib.util, os, sys
modules = {"sam2": "sam2", "hydra_core": "hydra", "omegaconf": "omegaconf", "antlr4_python3_runtime": "antlr4",
           "iopath": "iopath", "portalocker": "portalocker", "tqdm": "tqdm", "packaging": "packaging",
           "pyyaml": "yaml", "pycocotools": "pycocotools", "setuptools": "setuptools", "wheel": "wheel"}
def missing(module):
    try:
        return importlib.util.find_spec(module) is None
    except Exception:  # a broken or shadowed install counts as missing
        return True
for whl in sorted(glob.glob(os.path.join(sys.argv[1], "*.whl"))):
    dist = os.path.basename(whl).split("-")[0].lower()
    if missing(modules.get(dist, dist)):
        print(whl)
EOF
)
rm -rf "$SITE" && mkdir -p "$SITE"
if [[ -n "$missing" ]]; then
  echo "== installing into $SITE: $(echo "$missing" | xargs -n1 basename | tr '\n' ' ')"
  # shellcheck disable=SC2086
  if ! "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$SITE" $missing; then
    echo "   one pip call failed: installing one by one (a wheel that does not fit this Python is skipped)"
    for whl in $missing; do
      "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$SITE" "$whl" \
        || echo "   WARNING: $(basename "$whl") not installed"
    done
  fi
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

echo "== installing ntt-batch (--no-deps; build backend setuptools from $WHEELS)"
if ! "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --find-links "$WHEELS" \
     --target "$SITE" . ; then
  echo "   pip could not build it: using the source tree on PYTHONPATH instead"
  export PYTHONPATH="$PWD:$PYTHONPATH"
fi
"$PY" -c "import sam2, ntt_batch; print('== sam2', sam2.__file__, '| ntt_batch', ntt_batch.__version__, ntt_batch.__file__)"

elapsed=$(( $(date +%s) - START ))
left=$(( LIMIT_S - elapsed ))
echo "== set-up took ${elapsed}s; ${left}s left for the check"
# The Python side stops starting phases 25 s before the hard limit; timeout is the backstop.
timeout --signal=TERM --kill-after=10 "$left" "$PY" benchmarks/gpu_check.py --out "$OUTDIR" \
  --budget-s "$(( left - 25 ))" "$@"
