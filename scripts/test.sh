#!/usr/bin/env bash
# Install everything (idempotent), check formatting and lint (ruff, configured in pyproject.toml), then run
# the whole test suite. CI runs exactly this.
# Needs the shared test data beside the repo (../shared/data) or NTT_SHARED_DATA pointing at it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
"${PYTHON:-python3}" -m ruff format --check .  # to fix: ruff format .
"${PYTHON:-python3}" -m ruff check .           # to fix: ruff check --fix . (and by hand what it cannot)
export NTT_SHARED_DATA="${NTT_SHARED_DATA:-$(cd .. && pwd)/shared/data}"
exec "${PYTHON:-python3}" -m pytest -q "$@"
