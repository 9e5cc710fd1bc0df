#!/usr/bin/env bash
# Install ntt-batch and its dependencies into the active Python environment.
# Order matters: the `sam2` PyPI package is an sdist whose build imports torch, so torch goes
# in first and sam2 is built against it without build isolation (otherwise pip fetches a
# second multi-GB torch just to build it). SAM2_BUILD_CUDA=0 skips the optional CUDA
# extension (only used for hole filling, which the method does not use).
# Usage: bash scripts/install.sh [--test]     (--test adds the test extras)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

"$PY" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
"$PY" -m pip install --quiet "setuptools>=61" wheel
if ! "$PY" -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=0 "$PY" -m pip install --quiet --no-build-isolation "sam2==1.1.0"
fi
"$PY" -m pip install --quiet --no-build-isolation -e ".${extras}"
"$PY" -c "import torch, torchvision, sam2, timm, ray, ntt_batch; print('ntt-batch', ntt_batch.__version__, '| torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__, '| ray', ray.__version__)"
