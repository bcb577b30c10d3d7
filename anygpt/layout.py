"""Token layout: how modality codes become LLM token ids and back.

Each modality owns a block of added tokens ``<{prefix}{value}>`` wrapped in a start and an end tag,
for example ``<sosp><🗣️12><🗣️7><eosp>``.  Multi-codebook modalities (music, audio) are flattened
frame by frame: frame ``t`` becomes ``K`` consecutive tokens whose values are
``codes[k, t] + k * codebook_size`` for ``k = 0..K-1``::

    codes (K=4, T=2)          token values
    [[1, 2],                   1, 2049, 4099, 6151,   2, 2050, 4100, 6152
     [1, 2],        ->         \\___ frame 0 ___/     \\___ frame 1 ___/
     [3, 4],
     [7, 8]]

Ids are never assumed: every token string is looked up in the model's text tokenizer, so the layout
works with any id order a checkpoint happens to use.  Parsing goes from ids, never from decoded text,
and multi-codebook frames are validated by each token's codebook (its value range), not by its position,
so a missing token drops one frame instead of shifting every later one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from anygpt.paths import tokenizers_dir
from anygpt.text_tokenizer import TextTokenizer

ROLE_TAGS = ("[Human]", "[MMGPT]", "<eoh>", "<eos>")
SFT_TAGS = ("<-Res->", "<-Ins->")


class LayoutError(ValueError):
    """Codes or tokens that do not fit the layout."""


@dataclass(frozen=True)
class ModalityTokens:
    """The LLM-facing token format of one modality.

    Attributes:
        name: modality name (``speech``, ``image``, ``music``, ``audio``, ...).
        prefix: the emoji prefix of the code tokens, e.g. ``"🗣️"`` (U+1F5E3 U+FE0F).
        start_tag / end_tag: the segment tags, e.g. ``<sosp>`` / ``<eosp>``.
        codebook_size: codes per codebook.
        num_codebooks: codebooks the LLM sees per frame (1 for speech and image).
        fixed_length: number of frames every segment must have (32 for SEED images), or ``None``.
    """

    name: str
    prefix: str
    start_tag: str
    end_tag: str
    codebook_size: int
    num_codebooks: int = 1
    fixed_length: int | None = None

    @property
    def vocab_size(self) -> int:
        return self.codebook_size * self.num_codebooks

    def token(self, value: int) -> str:
        return f"<{self.prefix}{int(value)}>"

    def all_tokens(self) -> list[str]:
        """Code tokens in value order, then the two tags (AnyGPT's order of addition)."""
        return [self.token(v) for v in range(self.vocab_size)] + [self.start_tag, self.end_tag]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModalityTokens:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def tokenizer_definition(name: str) -> dict:
    """A modality tokenizer definition from ``tokenizers/{name}.json``."""
    path = tokenizers_dir() / f"{name}.json"
    if not path.is_file():
        raise LayoutError(f"no modality tokenizer definition '{name}' in {tokenizers_dir()}")
    return json.loads(path.read_text(encoding="utf-8"))


def _tokens(name: str) -> ModalityTokens:
    return ModalityTokens.from_dict(tokenizer_definition(name)["tokens"])


# AnyGPT's four modality blocks, in the order its vocabulary was extended.
ANYGPT_IMAGE = _tokens("seed")
ANYGPT_SPEECH = _tokens("speechtokenizer")
ANYGPT_MUSIC = _tokens("encodec_32khz")
ANYGPT_AUDIO = _tokens("encodec_24khz")
ANYGPT_MODALITIES = (ANYGPT_IMAGE, ANYGPT_SPEECH, ANYGPT_MUSIC, ANYGPT_AUDIO)
ANYGPT_DEFINITIONS = ("seed", "speechtokenizer", "encodec_32khz", "encodec_24khz")


@dataclass
class Segment:
    """A modality span found in a sequence of ids.

    ``start`` is the index of the start tag, ``end`` the index of the end tag (``None`` when the
    span is not closed), and ``body`` the ids between them.
    """

    modality: str
    start: int
    end: int | None
    body: list[int] = field(default_factory=list)


@dataclass
class ParsedCodes:
    """Codes recovered from a span: ``codes`` [K, T] plus how many tokens had to be dropped."""

    codes: torch.Tensor
    dropped_tokens: int = 0


class TokenLayout:
    """Maps modality codes to token ids of one text tokenizer, and back.

    Args:
        modalities: the modality blocks this model uses.
        tokenizer: the model's text tokenizer; every token string must exist in it.
    """

    def __init__(self, modalities: Iterable[ModalityTokens], tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.modalities: dict[str, ModalityTokens] = {m.name: m for m in modalities}
        vocab = tokenizer.vocab_size
        # id -> modality index (-1: not a code) and id -> value, for vectorised parsing
        self._id_modality = torch.full((vocab,), -1, dtype=torch.long)
        self._id_value = torch.full((vocab,), -1, dtype=torch.long)
        self.code_ids: dict[str, torch.Tensor] = {}
        self.start_ids: dict[str, int] = {}
        self.end_ids: dict[str, int] = {}
        self._names = list(self.modalities)
        for index, (name, spec) in enumerate(self.modalities.items()):
            missing = [t for t in (spec.start_tag, spec.end_tag) if not tokenizer.has_token(t)]
            ids = []
            for v in range(spec.vocab_size):
                tok = spec.token(v)
                if not tokenizer.has_token(tok):
                    missing.append(tok)
                    if len(missing) > 3:
                        break
                    continue
                ids.append(tokenizer.token_to_id(tok))
            if missing:
                raise LayoutError(
                    f"the text tokenizer has no token {missing[0]!r} (modality '{name}'); "
                    "its vocabulary was not extended for this modality"
                )
            ids_t = torch.tensor(ids, dtype=torch.long)
            self.code_ids[name] = ids_t
            self._id_modality[ids_t] = index
            self._id_value[ids_t] = torch.arange(spec.vocab_size)
            self.start_ids[name] = tokenizer.token_to_id(spec.start_tag)
            self.end_ids[name] = tokenizer.token_to_id(spec.end_tag)
        self._start_to_name = {i: n for n, i in self.start_ids.items()}
        self._end_to_name = {i: n for n, i in self.end_ids.items()}

    # ------------------------------------------------------------------ named ids
    def tag_id(self, tag: str) -> int:
        """Id of a text tag such as ``[MMGPT]`` or ``<eos>``."""
        return self.tokenizer.token_to_id(tag)

    @property
    def eos_tag_id(self) -> int:
        """Id of the ``<eos>`` string token that ends an assistant turn (not LLaMA's ``</s>``)."""
        return self.tag_id("<eos>")

    @property
    def all_code_ids(self) -> torch.Tensor:
        return torch.cat([self.code_ids[n] for n in self._names]) if self._names else torch.empty(0)

    def spec(self, modality: str) -> ModalityTokens:
        if modality not in self.modalities:
            raise LayoutError(
                f"unknown modality '{modality}'; this model has: {', '.join(self.modalities)}"
            )
        return self.modalities[modality]

    # ------------------------------------------------------------------ codes -> ids / text
    def flatten(self, modality: str, codes: torch.Tensor) -> torch.Tensor:
        """Codes [K, T] -> token values [T*K], frame-major with per-codebook offsets."""
        spec = self.spec(modality)
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.dim() == 1:
            codes = codes.unsqueeze(0)
        if codes.dim() != 2 or codes.shape[0] != spec.num_codebooks:
            raise LayoutError(
                f"{modality} codes must have shape [{spec.num_codebooks}, T], got {list(codes.shape)}"
            )
        if codes.numel() and (codes.min() < 0 or codes.max() >= spec.codebook_size):
            raise LayoutError(f"{modality} codes must lie in [0, {spec.codebook_size})")
        offsets = torch.arange(spec.num_codebooks).unsqueeze(1) * spec.codebook_size
        return (codes + offsets).t().reshape(-1)

    def unflatten(self, modality: str, values: Sequence[int] | torch.Tensor) -> ParsedCodes:
        """Token values -> codes [K, T]; keeps only complete frames whose codebooks cycle 0..K-1."""
        spec = self.spec(modality)
        values = [int(v) for v in values]
        k_total = spec.num_codebooks
        if k_total == 1:
            ok = [v for v in values if 0 <= v < spec.codebook_size]
            codes = torch.tensor(ok, dtype=torch.long).reshape(1, -1)
            return ParsedCodes(codes, len(values) - len(ok))
        frames: list[list[int]] = []
        current: list[int] = []
        dropped = 0
        for v in values:
            layer, code = divmod(v, spec.codebook_size)
            if not 0 <= layer < k_total:
                dropped += 1
                continue
            if layer == len(current):
                current.append(code)
                if len(current) == k_total:
                    frames.append(current)
                    current = []
            elif layer == 0:  # a frame restarted early: drop the broken one, resynchronise
                dropped += len(current)
                current = [code]
            else:
                dropped += 1 + len(current)
                current = []
        dropped += len(current)
        codes = torch.tensor(frames, dtype=torch.long).reshape(-1, k_total).t().contiguous()
        return ParsedCodes(codes, dropped)

    def segment_ids(self, modality: str, codes: torch.Tensor) -> list[int]:
        """Codes [K, T] -> ids of ``<start> tokens... <end>``."""
        values = self.flatten(modality, codes)
        body = self.code_ids[modality][values].tolist()
        return [self.start_ids[modality], *body, self.end_ids[modality]]

    def segment_text(self, modality: str, codes: torch.Tensor) -> str:
        """Codes [K, T] -> the token string AnyGPT's prompts and data files use."""
        spec = self.spec(modality)
        values = self.flatten(modality, codes).tolist()
        return spec.start_tag + "".join(spec.token(v) for v in values) + spec.end_tag

    # ------------------------------------------------------------------ ids -> codes
    def find_segments(self, ids: Sequence[int] | torch.Tensor) -> list[Segment]:
        """All modality spans in ``ids``, in order (an unclosed span runs to the end)."""
        ids = [int(i) for i in ids]
        segments: list[Segment] = []
        open_seg: Segment | None = None
        for pos, i in enumerate(ids):
            if open_seg is None:
                if i in self._start_to_name:
                    open_seg = Segment(self._start_to_name[i], pos, None)
                continue
            if i == self.end_ids[open_seg.modality]:
                open_seg.end = pos
                segments.append(open_seg)
                open_seg = None
            elif i in self._start_to_name:  # a new span opens before the old one closed
                segments.append(open_seg)
                open_seg = Segment(self._start_to_name[i], pos, None)
            else:
                open_seg.body.append(i)
        if open_seg is not None:
            segments.append(open_seg)
        return segments

    def codes_from_ids(self, modality: str, ids: Sequence[int] | torch.Tensor) -> ParsedCodes:
        """Ids of one span body -> codes [K, T]; ids of other modalities or text are dropped."""
        index = self._names.index(self.spec(modality).name)
        ids_t = torch.as_tensor(list(ids), dtype=torch.long)
        if ids_t.numel() == 0:
            return self.unflatten(modality, [])
        in_range = (ids_t >= 0) & (ids_t < self._id_modality.numel())
        safe = ids_t.clamp(0, self._id_modality.numel() - 1)
        keep = in_range & (self._id_modality[safe] == index)
        parsed = self.unflatten(modality, self._id_value[safe[keep]].tolist())
        parsed.dropped_tokens += int((~keep).sum())
        return parsed

    def codes_from_text(self, modality: str, text: str) -> ParsedCodes:
        """Parse the first span of ``modality`` in a token string (as stored in data files)."""
        ids = self.tokenizer.encode(text, add_bos=False)
        for seg in self.find_segments(ids):
            if seg.modality == modality:
                return self.codes_from_ids(modality, seg.body)
        raise LayoutError(f"no {self.spec(modality).start_tag} segment found")

    # ------------------------------------------------------------------ constrained decoding
    def allowed_next(self, modality: str, generated_in_span: int) -> tuple[torch.Tensor, bool]:
        """Ids allowed after ``generated_in_span`` code tokens of an open span, and whether the
        end tag is allowed.

        Speech: any code, end after at least one code.  Fixed-length modalities (images): exactly
        ``fixed_length`` codes, then only the end tag.  Multi-codebook: codebook ``n % K`` only, in
        order, and the end tag only at a frame boundary.
        """
        spec = self.spec(modality)
        ids = self.code_ids[modality]
        n = generated_in_span
        if spec.fixed_length is not None and n >= spec.fixed_length * spec.num_codebooks:
            return ids[:0], True
        k = n % spec.num_codebooks
        block = ids[k * spec.codebook_size : (k + 1) * spec.codebook_size]
        end_ok = n > 0 and k == 0 and spec.fixed_length is None
        return block, end_ok


def extended_vocabulary(
    modalities: Iterable[ModalityTokens], with_sft_tags: bool = True
) -> list[str]:
    """The tokens AnyGPT adds to a LLaMA tokenizer, in its order of addition."""
    tokens = list(ROLE_TAGS) + (list(SFT_TAGS) if with_sft_tags else [])
    for m in modalities:
        tokens.extend(m.all_tokens())
    return tokens
