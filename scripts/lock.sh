#!/usr/bin/env bash
# Refreshes requirements.lock, the exact versions the README's two commands install: bash scripts/lock.sh
# It resolves pyproject.toml's ranges (with the dev and browser extras) in a throw-away virtualenv, on top of the
# CPU build of torch, and writes what got installed. pyproject.toml keeps the ranges for `pip install kimi-swarm`.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install -q torch==2.13.0
"$scratch/venv/bin/pip" install -q ".[dev,browser]"
{
    echo "# Exact versions for the README's set-up (scripts/setup.sh); refresh with: bash scripts/lock.sh"
    "$scratch/venv/bin/pip" freeze --exclude kimi-swarm
} > requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
