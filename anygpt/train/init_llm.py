"""``anygpt init-llm``: a new SentencePiece tokenizer and a randomly initialised LLaMA, from text.

The output folder is a Hugging Face LLaMA folder in the form ``anygpt extend-vocab`` takes as its
source: ``config.json`` + ``model.safetensors`` (``LlamaForCausalLM``, untied LM head),
``tokenizer.model`` (SentencePiece), an empty ``added_tokens.json`` (so the project's
:class:`~anygpt.text_tokenizer.TextTokenizer` loads the folder as it is) and ``init_llm.json``
(the settings and a fingerprint of the corpus).

The tokenizer follows LLaMA's SentencePiece settings: BPE, byte fallback (any text encodes, unseen
characters become byte pieces), digits split, no normalisation, a dummy ``▁`` prefix, whitespace
kept as it is, ``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2 and no pad piece (AnyGPT pads with id 0).
The vocabulary size is a soft limit: a small corpus (the nano world has a few dozen words) may
support fewer merges than asked, and the tokenizer is then smaller (said in the summary).

Corpus files: plain text (one sentence per non-blank line) or JSON Lines (``.jsonl``/``.json``:
the ``"text"`` field of each row; rows without a string ``text`` are skipped and counted).

Everything is deterministic under ``seed``: the tokenizer is trained from an in-memory sentence
stream on one thread (its bytes do not depend on file paths), and the weights are drawn from a
seeded generator.  The folder is written under a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from anygpt.train.config import TrainError

# LLaMA's special pieces; byte fallback adds 256 <0xNN> pieces after them
SPECIAL_PIECES = 3
BYTE_PIECES = 256


@dataclass
class InitLLMConfig:
    """Settings of ``anygpt init-llm`` (saved as ``init_llm.json`` in the output folder).

    ``intermediate=None`` takes LLaMA's rule: 8/3 of ``hidden``, rounded up to a multiple of 256.
    """

    output: str
    corpus: tuple[str, ...]
    vocab_size: int = 512
    model_type: str = "bpe"
    hidden: int = 256
    layers: int = 6
    heads: int = 8
    kv_heads: int = 4
    intermediate: int | None = None
    max_context: int = 512
    rms_norm_eps: float = 1e-5
    init_std: float = 0.02
    seed: int = 0

    def intermediate_size(self) -> int:
        if self.intermediate is not None:
            return self.intermediate
        return -(-(8 * self.hidden // 3) // 256) * 256

    def validate(self) -> None:
        if not self.corpus:
            raise TrainError("no corpus: pass --corpus FILE [FILE ...]")
        if self.model_type not in ("bpe", "unigram"):
            raise TrainError("model type must be 'bpe' or 'unigram'")
        if self.vocab_size <= SPECIAL_PIECES + BYTE_PIECES:
            raise TrainError(
                f"vocab size {self.vocab_size} leaves no room for text pieces: <unk> <s> </s> and "
                f"the 256 byte pieces take {SPECIAL_PIECES + BYTE_PIECES}; use at least 300"
            )
        for name in ("hidden", "layers", "heads", "kv_heads", "max_context"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1")
        if self.hidden % self.heads:
            raise TrainError(f"--hidden {self.hidden} is not a multiple of --heads {self.heads}")
        if (self.hidden // self.heads) % 2:
            raise TrainError(
                f"head size {self.hidden // self.heads} (hidden / heads) must be even for rotary "
                "position embeddings"
            )
        if self.heads % self.kv_heads:
            raise TrainError(
                f"--heads {self.heads} is not a multiple of --kv-heads {self.kv_heads}"
            )
        if self.intermediate is not None and self.intermediate < 1:
            raise TrainError("--intermediate must be at least 1")


# ---------------------------------------------------------------------- corpus
@dataclass
class CorpusStats:
    """What was read: sentences used, rows skipped (no text), characters, a content hash."""

    sentences: int = 0
    skipped: int = 0
    characters: int = 0
    sha256: str = ""


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".json")


def read_corpus(files: Sequence[str | Path], stats: CorpusStats | None = None) -> list[str]:
    """Sentences of ``files`` in order (see the module docstring); raises :class:`TrainError`."""
    stats = stats if stats is not None else CorpusStats()
    out: list[str] = []
    digest = hashlib.sha256()
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise TrainError(f"corpus file not found: {path}")
        found = 0
        with path.open("r", encoding="utf-8", errors="strict") as fh:
            try:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    if _is_jsonl(path):
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:
                            raise TrainError(f"{path}:{n}: not a JSON line") from None
                        text = row.get("text") if isinstance(row, dict) else None
                        if not isinstance(text, str) or not text.strip():
                            stats.skipped += 1
                            continue
                    else:
                        text = line
                    text = text.strip()
                    out.append(text)
                    found += 1
                    digest.update(text.encode("utf-8") + b"\n")
            except UnicodeDecodeError:
                raise TrainError(f"{path} is not UTF-8 text") from None
        if not found:
            what = "no 'text' fields" if _is_jsonl(path) else "no text lines"
            raise TrainError(f"corpus file {path} has {what}")
    stats.sentences = len(out)
    stats.characters = sum(len(s) for s in out)
    stats.sha256 = digest.hexdigest()
    return out


# ---------------------------------------------------------------------- tokenizer
def train_sentencepiece(
    sentences: Sequence[str], vocab_size: int, model_type: str = "bpe", seed: int = 0
) -> bytes:
    """A serialized SentencePiece model (LLaMA settings, see the module docstring)."""
    import sentencepiece as spm

    if not sentences:
        raise TrainError("the corpus is empty")

    def stream() -> Iterator[str]:
        yield from sentences

    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=stream(),
            model_writer=buf,
            model_type=model_type,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a small corpus gives fewer pieces instead of an error
            byte_fallback=True,
            split_digits=True,
            character_coverage=0.99995,  # LLaMA's: very rare characters go to bytes
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            input_sentence_size=0,  # every sentence, no sampling
            shuffle_input_sentence=False,
            num_threads=1,  # the merge order must not depend on thread timing
            minloglevel=2,
        )
    except RuntimeError as exc:  # SentencePiece reports problems as RuntimeError
        raise TrainError(f"SentencePiece training failed: {str(exc).splitlines()[-1]}") from None
    return buf.getvalue()


# ---------------------------------------------------------------------- model
def llama_config(cfg: InitLLMConfig, vocab_size: int):
    """The ``LlamaConfig`` of the new model (untied head; ids as the tokenizer's)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate_size(),
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_context,
        rms_norm_eps=cfg.rms_norm_eps,
        initializer_range=cfg.init_std,
        tie_word_embeddings=False,  # extend-vocab initialises head rows on their own
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        use_cache=True,
    )


@dataclass
class InitReport:
    """What was written: vocabulary, parameter counts (all, embedding + head, the rest)."""

    output: Path
    vocab_size: int
    parameters: int
    embedding_parameters: int
    corpus: CorpusStats

    def line(self, asked_vocab: int) -> str:
        note = (
            ""
            if self.vocab_size == asked_vocab
            else f" (asked {asked_vocab}; the corpus supports no more)"
        )
        c = self.corpus
        skipped = f", {c.skipped} rows without text skipped" if c.skipped else ""
        return (
            f"wrote {self.output}: {self.parameters:,} parameters "
            f"({self.parameters - self.embedding_parameters:,} outside the embeddings and LM head); "
            f"tokenizer of {self.vocab_size} pieces{note} from {c.sentences} sentences{skipped}"
        )


def init_llm(cfg: InitLLMConfig, overwrite: bool = False) -> InitReport:
    """Train the tokenizer, initialise the model, write the folder (see the module docstring)."""
    import sentencepiece as spm
    import torch
    from transformers import LlamaForCausalLM

    from anygpt.text_tokenizer import TextTokenizer

    cfg.validate()
    out = Path(cfg.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use --overwrite)")
    stats = CorpusStats()
    sentences = read_corpus(cfg.corpus, stats)
    proto = train_sentencepiece(sentences, cfg.vocab_size, cfg.model_type, cfg.seed)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    pieces = sp.get_piece_size()
    # LLaMA's id layout, which TextTokenizer and AnyGPT's padding rely on
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)

    # one seeded generator for all weights, whatever the global RNG state is
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        model = LlamaForCausalLM(llama_config(cfg, pieces))
    finally:
        torch.random.set_rng_state(state)
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()

    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(str(tmp))
        (tmp / "tokenizer.model").write_bytes(proto)
        TextTokenizer(tmp / "tokenizer.model", {}).save(tmp)  # + an empty added_tokens.json
        record = {
            **asdict(cfg),
            "intermediate_size": cfg.intermediate_size(),
            "vocab_pieces": pieces,
            "parameters": total,
            "corpus_stats": asdict(stats),
        }
        record["corpus"] = [str(c) for c in cfg.corpus]
        (tmp / "init_llm.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return InitReport(out, pieces, total, emb, stats)


# ---------------------------------------------------------------------- command line
def cmd_init_llm(args: argparse.Namespace) -> int:
    """Handler of ``anygpt init-llm``."""
    cfg = InitLLMConfig(
        output=args.output,
        corpus=tuple(args.corpus),
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate=args.intermediate,
        max_context=args.max_context,
        seed=args.seed,
    )
    report = init_llm(cfg, overwrite=args.overwrite)
    print(report.line(cfg.vocab_size))
    print(
        f"next: anygpt extend-vocab {report.output} OUT_BUNDLE --modalities image,speech,music "
        "--modality-files BUNDLE_WITH_THE_MODALITY_TOKENIZERS"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``init-llm`` to the ``anygpt`` parser."""
    p = sub.add_parser(
        "init-llm",
        help="train a SentencePiece tokenizer on text and write a random LLaMA (extend-vocab source)",
        description="Trains a LLaMA-style SentencePiece tokenizer (BPE, byte fallback, <unk>=0 "
        "<s>=1 </s>=2) on the corpus and writes a randomly initialised LlamaForCausalLM folder "
        "with it, the form 'anygpt extend-vocab' takes as its source. Deterministic under --seed.",
    )
    p.add_argument("output", help="model folder to write")
    p.add_argument(
        "--corpus",
        nargs="+",
        required=True,
        metavar="FILE",
        help="text files (one sentence per line) or .jsonl files (their 'text' fields)",
    )
    d = InitLLMConfig("", ())
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="SentencePiece pieces "
                   f"(a soft limit; default {d.vocab_size})")  # fmt: skip
    p.add_argument("--model-type", choices=("bpe", "unigram"), default=d.model_type)
    p.add_argument("--hidden", type=int, default=d.hidden, help=f"default {d.hidden}")
    p.add_argument("--layers", type=int, default=d.layers, help=f"default {d.layers}")
    p.add_argument("--heads", type=int, default=d.heads, help=f"default {d.heads}")
    p.add_argument("--kv-heads", type=int, default=d.kv_heads, help=f"default {d.kv_heads}")
    p.add_argument(
        "--intermediate", type=int, help="MLP width (default: 8/3 hidden, rounded up to 256)"
    )
    p.add_argument(
        "--max-context", type=int, default=d.max_context, help=f"default {d.max_context}"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(handler=cmd_init_llm)
