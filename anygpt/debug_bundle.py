"""Tiny randomly initialised bundles, built through the same factories as real models.

A debug bundle exercises every code path (tokenization, generation, every codec, file output) in a
few seconds on a CPU.  Its outputs are noise: the weights are random.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from anygpt.bundle import BundleConfig, ModalityEntry
from anygpt.layout import (
    ANYGPT_AUDIO,
    ANYGPT_IMAGE,
    ANYGPT_MUSIC,
    ANYGPT_SPEECH,
    extended_vocabulary,
)
from anygpt.paths import tokenizers_dir
from anygpt.text_tokenizer import TextTokenizer

DEBUG_SPM = "debug-spm.model"
ALL_MODALITIES = ("speech", "music", "audio", "image")


def tiny_speechtokenizer_config() -> dict:
    """SpeechTokenizer at toy width: same strides (hop 320), 8 RVQ layers of 1024 codes."""
    return {
        "n_filters": 4,
        "strides": [8, 5, 4, 2],
        "dimension": 32,
        "semantic_dimension": 32,
        "bidirectional": True,
        "dilation_base": 2,
        "residual_kernel_size": 3,
        "n_residual_layers": 1,
        "lstm_layers": 1,
        "activation": "Snake",
        "codebook_size": 1024,
        "n_q": 8,
        "sample_rate": 16000,
        "sampling_rate": 16000,
    }


def _fill_codebooks(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Random codebooks (new RVQ codebooks are all zeros, which gives one code for everything)."""
    for name, buf in module.named_buffers():
        if name.endswith(".embed") or name.endswith("embed_avg"):
            buf.copy_(torch.randn(buf.shape, generator=gen) * 0.5)
        elif name.endswith("inited"):
            buf.fill_(1)
        elif name.endswith("cluster_size"):
            buf.fill_(1)


def _write_speech(root: Path, gen: torch.Generator, with_soundstorm: bool) -> ModalityEntry:
    from anygpt.modalities.speech import build_speechtokenizer

    d = root / "speechtokenizer"
    d.mkdir(parents=True)
    cfg = tiny_speechtokenizer_config()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = build_speechtokenizer(cfg)
    with torch.no_grad():
        _fill_codebooks(model, gen)
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    # the released file is a plain torch state dict named ckpt.dev; keep that layout
    torch.save(model.state_dict(), d / "ckpt.dev")
    files = {"config": "speechtokenizer/config.json", "checkpoint": "speechtokenizer/ckpt.dev"}
    if with_soundstorm:
        files.update(_write_soundstorm(root, gen))
    return ModalityEntry("speechtokenizer", ANYGPT_SPEECH, files)


def _write_soundstorm(root: Path, gen: torch.Generator) -> dict[str, str]:
    try:
        from anygpt.models import soundstorm as ss
    except ImportError:  # SoundStorm support not installed in this tree
        return {}
    from safetensors.torch import save_file

    d = root / "soundstorm"
    d.mkdir(parents=True)
    # speech-sized vocabulary (1024 codes, 7 acoustic levels) at toy width
    cfg = ss.SoundStormConfig(
        codebook_size=1024,
        num_quantizers=7,
        dim=32,
        depth=1,
        heads=2,
        dim_head=16,
        num_semantic_tokens=1024,
    )
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = ss.build_soundstorm(cfg)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(d / "soundstorm.safetensors"),
    )
    (d / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return {
        "soundstorm": "soundstorm/soundstorm.safetensors",
        "soundstorm_config": "soundstorm/config.json",
    }


def _write_encodec(
    root: Path,
    gen: torch.Generator,
    name: str,
    folder: str,
    sample_rate: int,
    ratios: list[int],
    codebook_size: int,
    bandwidths: list[float],
) -> None:
    from transformers import EncodecConfig, EncodecModel

    cfg = EncodecConfig(
        sampling_rate=sample_rate,
        audio_channels=1,
        num_filters=4,
        hidden_size=16,
        codebook_dim=16,
        codebook_size=codebook_size,
        num_lstm_layers=1,
        upsampling_ratios=ratios,
        target_bandwidths=bandwidths,
        normalize=False,
        use_conv_shortcut=False,
    )
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = EncodecModel(cfg)
    with torch.no_grad():
        _fill_codebooks(model, gen)
    model.save_pretrained(str(root / folder))


def _write_llm(root: Path, vocab_tokens: list[str], gen: torch.Generator, hidden: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    d = root / "llm"
    spm_path = tokenizers_dir() / DEBUG_SPM
    base = TextTokenizer(spm_path, {})
    added = {tok: base.base_size + i for i, tok in enumerate(vocab_tokens)}
    tok = TextTokenizer(spm_path, added)
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=0,
    )
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(d))
    tok.save(d)


def write_debug_bundle(
    out_dir: str | Path,
    *,
    modalities: tuple[str, ...] = ALL_MODALITIES,
    seed: int = 0,
    hidden: int = 64,
    soundstorm: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a tiny random bundle to ``out_dir`` (built in a temporary folder, then moved in place)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (use --overwrite)")
        shutil.rmtree(out)
    unknown = sorted(set(modalities) - set(ALL_MODALITIES) - {"units"})
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {ALL_MODALITIES + ('units',)}")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    try:
        entries: dict[str, ModalityEntry] = {}
        if "image" in modalities:
            from anygpt.modalities.image import write_tiny_image_tokenizer

            entries["image"] = write_tiny_image_tokenizer(tmp, ANYGPT_IMAGE, seed=seed)
        if "speech" in modalities:
            entries["speech"] = _write_speech(tmp, gen, soundstorm)
        elif "units" in modalities:
            from anygpt.modalities.units import write_tiny_units

            entries["speech"] = write_tiny_units(tmp, seed=seed)
        if "music" in modalities:
            _write_encodec(tmp, gen, "music", "encodec_32khz", 32000, [8, 5, 4, 4], 2048, [2.2])
            entries["music"] = ModalityEntry(
                "encodec", ANYGPT_MUSIC, {"model": "encodec_32khz"}, {"num_codebooks": 4}
            )
        if "audio" in modalities:
            _write_encodec(
                tmp, gen, "audio", "encodec_24khz", 24000, [8, 5, 4, 2], 1024, [1.5, 3.0, 6.0]
            )
            entries["audio"] = ModalityEntry(
                "encodec", ANYGPT_AUDIO, {"model": "encodec_24khz"}, {"num_codebooks": 4}
            )
        order = [m for m in ("image", "speech", "music", "audio") if m in entries]
        vocab = extended_vocabulary([entries[m].tokens for m in order])
        _write_llm(tmp, vocab, gen, hidden)
        BundleConfig(modalities={m: entries[m] for m in order}, name="anygpt-debug").save(tmp)
        (tmp / "README.md").write_text(
            "# anygpt debug bundle\n\nRandomly initialised tiny models for tests. Outputs are noise.\n"
        )
        tmp.rename(out) if not out.exists() else (shutil.rmtree(out), tmp.rename(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
