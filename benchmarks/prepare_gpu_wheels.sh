#!/usr/bin/env bash
# Prepare, on a machine WITH network access, every wheel that benchmarks/gpu_check.sh needs on a
# GPU machine that has only a base PyTorch environment (Python 3.12 x86_64; torch 2.11,
# torchvision, timm, pyarrow, fsspec, click, safetensors, numpy, pillow) and no network.
#
#   bash benchmarks/prepare_gpu_wheels.sh [OUT_DIR]     # default: gpu_wheels/ (git-ignored)
#
# What it brings (all pinned; ~4 MiB in all, the limit is 64 MiB):
#   * sam2 1.1.0, built from its sdist here (`pip wheel --no-deps --no-build-isolation`, with
#     SAM2_BUILD_CUDA=0: no CUDA extension, so the wheel is pure Python: py3-none-any);
#   * SAM2's pure-Python runtime dependencies the base environment lacks: hydra-core, omegaconf,
#     antlr4-python3-runtime (4.9.x, hydra's pin), iopath, portalocker, tqdm, packaging;
#   * the compiled ones, as cp312 manylinux x86_64 wheels: PyYAML (omegaconf), pycocotools (RLE
#     cross-check: the benchmark itself runs without it);
#   * setuptools + wheel, so `pip install --no-index` can build this package there;
#   * ntt_batch itself is NOT prebuilt: gpu_check.sh installs the working tree it runs in.
# Ray is deliberately absent (its wheel alone is ~79 MB): the GPU check never imports it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${1:-gpu_wheels}"
LIMIT_BYTES=$((64 * 1024 * 1024))
mkdir -p "$OUT"
rm -f "$OUT"/*.whl

# Versions tested with this repository (scripts/install.sh environment).
PURE=(
  "hydra-core==1.3.8"
  "omegaconf==2.3.1"
  "antlr4-python3-runtime==4.9.3"
  "iopath==0.1.10"
  "portalocker==4.4.2"
  "tqdm==4.70.1"
  "packaging==26.4"
  "setuptools==84.2.1"
  "wheel==0.48.0"
)
COMPILED=(
  "PyYAML==6.0.3"
  "pycocotools==2.0.11"
)

echo "== sam2 1.1.0 from its sdist (SAM2_BUILD_CUDA=0, no build isolation: builds against this torch)"
# --no-binary forces the sdist; --no-cache-dir so a wheel cached by an earlier install is not reused.
SAM2_BUILD_CUDA=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --no-binary sam2 --no-cache-dir \
  -w "$OUT" "sam2==1.1.0"

echo "== pure-Python dependencies (wheels from the index, sdists built here)"
"$PY" -m pip wheel --quiet --no-deps -w "$OUT" "${PURE[@]}"

echo "== compiled dependencies for the GPU machine: CPython 3.12, manylinux x86_64"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$OUT" "${COMPILED[@]}"

# Every wheel must install on the GPU machine: pure (py3-none-any) or cp312 manylinux x86_64.
bad=0
for w in "$OUT"/*.whl; do
  case "$(basename "$w")" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp312-cp312-manylinux*x86_64*.whl|*-cp3[0-9]*-abi3-manylinux*x86_64*.whl) ;;
    *) echo "ERROR: $(basename "$w") will not install on CPython 3.12 x86_64" >&2; bad=1 ;;
  esac
done
total=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
ls -l "$OUT"
echo "total: $total bytes ($(( total / 1024 )) KiB) in $(ls "$OUT"/*.whl | wc -l) wheels; limit $LIMIT_BYTES"
if (( total > LIMIT_BYTES )); then
  echo "ERROR: the wheels exceed 64 MiB" >&2
  exit 1
fi
exit "$bad"
