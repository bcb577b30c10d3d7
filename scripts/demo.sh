#!/usr/bin/env bash
# Set up what is missing, then run the scripted demo on the shipped model (models/anygpt-nano).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/anygpt demo "$@"
