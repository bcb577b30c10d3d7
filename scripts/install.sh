#!/usr/bin/env bash
# Create .venv and install anygpt with its test tools (CPU build of torch unless one is present).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
# A CPU torch keeps the install small; on a GPU machine install your CUDA build of torch first.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install "torch==2.13.0"
# speechtokenizer's declared dependencies pull in torchaudio and its trainer; its model code
# needs only torch, numpy and einops, so it is installed without them (see README).
$PIP install --no-deps "speechtokenizer==1.0.1"
$PIP install -e ".[dev]"
echo "installed: $(.venv/bin/anygpt --help | head -1)"
