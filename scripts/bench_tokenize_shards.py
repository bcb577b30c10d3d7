"""Peak memory of sharded ``anygpt tokenize`` as the manifest grows (is it flat?).

For each row count, a fresh process writes a synthetic JSON Lines manifest (rows of text and one
short WAV file) and tokenizes it into Parquet parts; it reports its peak resident memory
(``ru_maxrss``) and rows/s.  ``--encoder stub`` (default) replaces only the media encoder by one
that returns fixed codes, so that 100k rows take seconds on a small CPU: everything else (the
streamed manifest, reading and resampling each file, the errors file, parts, progress) is the
real pipeline.  ``--encoder real`` runs the bundle's speech tokenizer.

    python scripts/bench_tokenize_shards.py --rows 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(rows: int, encoder: str, work: Path, bundle: Path) -> dict:
    import numpy as np
    import soundfile as sf

    import anygpt.train.shards as shards
    from anygpt.train.tokenize_media import TokenizeConfig

    sf.write(work / "a.wav", 0.3 * np.sin(2 * np.pi * 220 * np.arange(1600) / 16000), 16000)
    manifest = work / f"m{rows}.jsonl"
    with manifest.open("w") as f:
        for i in range(rows):
            media = "missing.wav" if i % 997 == 0 else "a.wav"  # some rows fail, as in life
            f.write(json.dumps({"id": i, "text": f"row {i} says hello", "speech": media}) + "\n")
    if encoder == "stub":
        import torch

        def fixed_codes(tok, layout, modality, media):
            codes = torch.arange(25).remainder(layout.modalities[modality].codebook_size)
            return [layout.segment_text(modality, codes) for _ in media]

        shards._encode = fixed_codes
    out = work / f"out{rows}"
    cfg = TokenizeConfig(str(manifest), str(bundle), str(out), batch_size=64, device="cpu")
    start = time.perf_counter()
    summary = shards.tokenize_to_shards(cfg, shards.ShardPlan(1, 0, 4096))
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rows": rows,
        "encoder": encoder,
        "written": summary.written,
        "failed": summary.failed,
        "parts": len(list(out.glob("*.parquet"))),
        "peak_rss_mib": round(peak_mib, 1),
        "rows_per_s": round(rows / seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--encoder", choices=("stub", "real"), default="stub")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        work = Path(args.work)
        print(json.dumps(child(args.child, args.encoder, work, work / "bundle")))
        return
    from anygpt.debug_bundle import write_debug_bundle

    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    try:
        write_debug_bundle(work / "bundle", modalities=("speech",), soundstorm=False, hidden=32)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for rows in args.rows:
            cmd = [sys.executable, __file__, "--child", str(rows), "--work", str(work)]
            cmd += ["--encoder", args.encoder]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            print(res.stdout.strip().splitlines()[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
