#!/usr/bin/env bash
# Sets everything up, then runs the main job: a swarm run on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/swarm run "${@:-Compare the founding year of Riton and Quun. Which one was founded most recently?}"
