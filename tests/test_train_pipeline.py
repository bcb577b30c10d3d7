"""The whole chain as a user runs it: tokenize media, stage-1 script, stage-2 script, chat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_tokenize_pretrain_sft_chat(debug_bundle, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MAX_STEPS": "2", "PRECISION": "fp32"}
    media = tmp_path / "media"
    media.mkdir()
    with (media / "manifest.jsonl").open("w") as f:
        for i, text in enumerate(["hello world", "good morning", "see you soon"]):
            t = np.arange(16000 + 4000 * i) / 16000
            sf.write(media / f"u{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t), 16000)
            f.write(json.dumps({"speech": f"u{i}.wav", "text": text}) + "\n")
        f.write(json.dumps({"speech": "missing.wav", "text": "lost"}) + "\n")

    def run(*argv, **kw):
        r = subprocess.run(argv, capture_output=True, text=True, env={**env, **kw}, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    tok = tmp_path / "tok" / "speech.jsonl"
    r = run(sys.executable, "-m", "anygpt", "tokenize", str(media / "manifest.jsonl"),
            "--model", str(debug_bundle), "-o", str(tok))  # fmt: skip
    assert "4 rows: 3 written" in r.stdout
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    run("bash", str(ROOT / "scripts" / "stage1_pretrain.sh"), "--model", str(debug_bundle),
        "--data", f"{tok},group=speech", OUTPUT_DIR=str(s1))  # fmt: skip
    stats = json.loads((s1 / "data_stats.json").read_text())
    assert stats["train"]["kept"] + stats["validation"]["kept"] == 73  # 70 samples + 3 tokenized
    run("bash", str(ROOT / "scripts" / "stage2_sft.sh"), "--model", str(s1 / "final"),
        OUTPUT_DIR=str(s2))  # fmt: skip
    r = run(sys.executable, "-m", "anygpt", "chat", "--model", str(s2 / "final"), "--seed", "0",
            "--max-new-tokens", "8", "--output-dir", str(tmp_path / "chat"), "hello")  # fmt: skip
    assert "results: " in r.stdout
