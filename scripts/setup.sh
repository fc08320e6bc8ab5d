#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtualenv in .venv with the CPU build of torch first (a bare torch
# requirement would pull GBs of CUDA wheels), the exact versions of requirements.lock, the package itself
# (editable, one import root: kimi_swarm), and Debian's Chromium for the browser tool (Playwright's own
# browser download does not work offline).
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -r requirements.lock
.venv/bin/pip install -q --no-deps -e .

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    bash scripts/apt-install.sh chromium
fi
