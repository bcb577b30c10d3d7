"""How much of a world melody survives the music codec, as the music judge hears it.

    .venv/bin/python scripts/music_codec_check.py CODEC_FOLDER JUDGE_FOLDER HELDOUT.jsonl [--limit N]

Encodes and decodes every held-out clip through the ``encodec`` modality family (the path the
LLM's codes take), then prints the judge's per-attribute accuracy on the originals and on the
reconstructions, the reconstruction losses and the codes per clip, as one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("codec")
    p.add_argument("judge")
    p.add_argument("heldout", help="JSON-lines manifest with audio and caption columns")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", help="write the reconstructions here (16 kHz wav)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from anygpt.eval.music_judge import MusicJudge, accuracy, read_labelled
    from anygpt.layout import ModalityTokens
    from anygpt.modalities.base import Codes
    from anygpt.modalities.registry import ModalityEntry, build
    from anygpt.train.codec_losses import MultiResolutionSpectralLoss, si_snr_db

    judge = MusicJudge.load(args.judge)
    clips, captions = read_labelled(args.heldout, None, "caption", 48000, 16000)
    if args.limit:
        clips, captions = clips[: args.limit], captions[: args.limit]
    waves = clips.float() / 32767
    folder = Path(args.codec)
    tokens = ModalityTokens.from_dict(json.loads((folder / "tokens.json").read_text("utf-8")))
    entry = ModalityEntry("encodec", tokens, {"model": str(folder)}, {})
    codec = build("music", entry, {"model": folder}, device=torch.device("cpu"))
    recon, n_codes = [], 0
    for chunk in waves.split(32):
        codes = codec.encode(list(chunk))
        n_codes = int(codes.codes.shape[1] * codes.lengths[0])
        again = codec.decode(Codes(codes.codes, codes.lengths))
        recon.append(torch.stack([a[:48000] for a in again]))
    recon_t = torch.cat(recon)
    spectral = MultiResolutionSpectralLoss(16000)
    losses = spectral(recon_t.unsqueeze(1), waves.unsqueeze(1))
    report = {
        "clips": len(waves),
        "codes_per_clip": n_codes,
        "judge_on_originals": accuracy(judge, waves, captions),
        "judge_on_reconstructions": accuracy(judge, recon_t, captions),
        "mel_l1_log": round(float(losses["mel"]), 4),
        "spectral_convergence": round(float(losses["sc"]), 4),
        "waveform_l1": round(float((recon_t - waves).abs().mean()), 5),
        "si_snr_db": round(float(si_snr_db(recon_t, waves).mean()), 2),
    }
    if args.save:
        import soundfile as sf

        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        for i, w in enumerate(recon_t[:20]):
            sf.write(out / f"{i:03d}.wav", w.numpy(), 16000)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
