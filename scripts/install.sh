#!/usr/bin/env bash
# Install ntt-batch and its dependencies into the active Python environment.
# Order matters: the `sam2` PyPI package is an sdist whose build imports torch, so torch goes
# in first and sam2 is built against it without build isolation (otherwise pip fetches a
# second multi-GB torch just to build it). SAM2_BUILD_CUDA=0 skips the optional CUDA
# extension (only used for hole filling, which the method does not use).
#
# Fast when nothing changed: a stamp file inside the environment (sys.prefix) records a hash of
# this script and pyproject.toml (the pins and the declared dependencies); when it matches, the
# packages import, ntt_batch is this checkout and `pip check` finds no broken requirement in our
# dependency tree (scripts/pip_check.py), the
# script only prints the versions (a few seconds). Anything else reinstalls. NTT_FORCE_INSTALL=1
# skips the check.
# Usage: bash scripts/install.sh [--test]     (--test adds the test extras)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
PY="${PYTHON:-python3}"
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
# --test: Chromium from the system's packages for the review page's browser test (quick when present)
[[ -n "$extras" ]] && bash scripts/install_browser.sh

TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")  # a matching pair (same CUDA build)
SAM2_PIN="sam2==1.1.0"

prefix="$("$PY" -c 'import sys; print(sys.prefix)')"
stamp="$prefix/.ntt-batch-install.stamp"
key="$(cat scripts/install.sh pyproject.toml | "$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
report='import torch, torchvision, sam2, timm, ray, ntt_batch; print("ntt-batch", ntt_batch.__version__, "| torch", torch.__version__, "| torchvision", torchvision.__version__, "| timm", timm.__version__, "| ray", ray.__version__)'

up_to_date() {
  [[ -z "${NTT_FORCE_INSTALL:-}" && -f "$stamp" ]] || return 1
  local stamped_key stamped_extras
  read -r stamped_key stamped_extras < "$stamp" || return 1
  [[ "$stamped_key" == "$key" ]] || return 1
  [[ -z "$extras" || "${stamped_extras:-}" == "$extras" ]] || return 1
  # The imports (and that ntt_batch is this checkout) and pip check, run side by side.
  "$PY" scripts/pip_check.py > /dev/null 2>&1 &
  local pip_check=$!
  local ok=0
  # Run from / : a `python -c` started in the checkout has the checkout first on sys.path and
  # would import ./ntt_batch whatever is installed (the `ntt-batch` command would not).
  versions="$(cd / && "$PY" -c "$report"'
import os, sys
sys.exit(0 if os.path.samefile(os.path.dirname(ntt_batch.__file__), sys.argv[1]) else 1)' "$repo/ntt_batch" 2> /dev/null)" || ok=1
  wait "$pip_check" || ok=1
  return "$ok"
}

if up_to_date; then
  echo "$versions (already installed; NTT_FORCE_INSTALL=1 reinstalls)"
  exit 0
fi

rm -f "$stamp"
"$PY" -m pip install --quiet "${TORCH_PINS[@]}"
"$PY" -m pip install --quiet "setuptools>=61" wheel
if ! "$PY" -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=0 "$PY" -m pip install --quiet --no-build-isolation "$SAM2_PIN"
fi
"$PY" -m pip install --quiet --no-build-isolation -e ".${extras}"
"$PY" scripts/pip_check.py  # `pip check` on ntt-batch's dependency tree (unrelated tools' pins are not ours)
"$PY" -c "$report"
echo "$key $extras" > "$stamp"
