#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The local search provider is also tested on a real corpus: Debian's Python documentation.
if [ ! -f /usr/share/doc/python3.11/html/library/json.html ]; then
    bash scripts/apt-install.sh python3.11-doc
fi
exec .venv/bin/python -m pytest -q "$@"
