#!/usr/bin/env bash
# Chromium from the system's packages, for the review page's browser test (tests/test_review.py).
# Idempotent and quick when it is already there; never fails the install: without apt (or root)
# it says what to do, and the test then skips with that reason (CI=true makes it fail instead).
set -uo pipefail
for b in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$b" > /dev/null 2>&1; then exit 0; fi
done
if ! command -v apt-get > /dev/null 2>&1; then
  echo "install_browser: no Chromium and no apt-get: install Chromium by hand for the browser test" >&2
  exit 0
fi
SUDO=""
if [[ "$(id -u)" != "0" ]]; then
  if command -v sudo > /dev/null 2>&1 && sudo -n true 2> /dev/null; then SUDO="sudo -n"; else
    echo "install_browser: no Chromium, and apt-get needs root: sudo apt-get install chromium" >&2
    exit 0
  fi
fi
echo "install_browser: installing Chromium (apt-get install chromium) for the browser test" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get install -y chromium > /dev/null 2>&1 ||
       { $SUDO apt-get update -qq > /dev/null 2>&1 && $SUDO apt-get install -y chromium > /dev/null 2>&1; }; }; then
  echo "install_browser: apt-get install chromium failed; the browser test will skip (or fail under CI)" >&2
fi
exit 0
