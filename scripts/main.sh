#!/usr/bin/env bash
# Sets everything up, then runs the main job: a swarm run on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/swarm run "${@:-Compare the populations of the three largest cities in the offline web and cite your sources.}"
