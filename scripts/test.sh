#!/usr/bin/env bash
# Sets everything up, then lints and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The local search provider is also tested on a real corpus: Debian's Python documentation.
if [ ! -f /usr/share/doc/python3.11/html/library/json.html ]; then
    bash scripts/apt-install.sh python3.11-doc
fi
.venv/bin/ruff check .
# The pytest entry point, not `python -m pytest`: that would put the checkout root on sys.path, where the folder
# kernels/ would shadow Hugging Face's `kernels` package that transformers imports.
exec .venv/bin/pytest -q "$@"
