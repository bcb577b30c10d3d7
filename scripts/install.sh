#!/usr/bin/env bash
# Create .venv and install anygpt with its test tools (CPU build of torch unless one is present).
# Idempotent: a second run with unchanged dependencies finishes in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.anygpt-installed
want=$(cat setup.cfg setup.py pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ -x .venv/bin/anygpt ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
# A CPU torch keeps the install small; on a GPU machine install your CUDA build of torch first.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install "torch==2.13.0"
# speechtokenizer's declared dependencies pull in torchaudio and its trainer; its model code
# needs only torch, numpy and einops, so it is installed without them (see README).
$PIP install --no-deps "speechtokenizer==1.0.1"
$PIP install -e ".[dev]"
# espeak-ng speaks the nano world (training data and the speech evaluation); Debian package.
if ! command -v espeak-ng >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) ||
    echo "note: could not install espeak-ng; world speech generation will be unavailable" >&2
fi
# Headless Chromium and its driver run the chat page's browser tests; Debian packages.
if ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } &&
  command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) ||
    echo "note: could not install chromium; the browser tests of the chat page will be skipped" >&2
fi
echo "$want" > "$STAMP"
echo "installed: $(.venv/bin/anygpt --help | head -1)"
