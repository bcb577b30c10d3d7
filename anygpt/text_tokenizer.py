"""Text tokenization identical to what AnyGPT's checkpoints were trained with.

AnyGPT used transformers 4.34's *slow* ``LlamaTokenizer`` (legacy mode) with its tags and modality
tokens added through ``add_tokens``.  That tokenizer:

1. cuts the raw text at every added token and at the special strings ``<s>``, ``</s>`` and
   ``<unk>`` (longest match first, scanning left to right);
2. encodes each remaining text piece with SentencePiece on its own, so each piece gets the dummy
   ``▁`` prefix, and whitespace next to an added token stays in the piece;
3. prepends BOS.

Recent transformers releases changed this behaviour, so it is reproduced here directly on top of
``sentencepiece``.  Decoding works on ids: text pieces are decoded by SentencePiece and added tokens
are inserted verbatim, with none of the spaces the slow tokenizer used to put around them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

SPECIAL_STRINGS = ("<unk>", "<s>", "</s>")


class TextTokenizerError(ValueError):
    """The tokenizer files are missing or inconsistent."""


class _Trie:
    """Character trie for longest-match search of added tokens."""

    def __init__(self, words: Iterable[str]) -> None:
        self.root: dict = {}
        for w in words:
            node = self.root
            for ch in w:
                node = node.setdefault(ch, {})
            node[""] = w

    def split(self, text: str) -> list[tuple[str, bool]]:
        """Split ``text`` into ``(piece, is_token)`` runs, longest token match first."""
        out: list[tuple[str, bool]] = []
        start = i = 0
        n = len(text)
        while i < n:
            node = self.root
            j = i
            match_end = -1
            while j < n and text[j] in node:
                node = node[text[j]]
                j += 1
                if "" in node:
                    match_end = j
            if match_end < 0:
                i += 1
                continue
            if start < i:
                out.append((text[start:i], False))
            out.append((text[i:match_end], True))
            i = start = match_end
        if start < n:
            out.append((text[start:], False))
        return out


class TextTokenizer:
    """SentencePiece model + AnyGPT added tokens, with slow-LLaMA (4.34, legacy) semantics.

    Args:
        sp_model_path: the SentencePiece ``tokenizer.model``.
        added_tokens: ``{token string: id}`` for every added token (tags and modality codes).
    """

    def __init__(self, sp_model_path: str | Path, added_tokens: dict[str, int]) -> None:
        sp_model_path = Path(sp_model_path)
        if not sp_model_path.is_file():
            raise TextTokenizerError(f"SentencePiece model not found: {sp_model_path}")
        self.sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
        self.base_size = self.sp.get_piece_size()
        self.added = dict(added_tokens)
        for tok, idx in self.added.items():
            if idx < self.base_size:
                raise TextTokenizerError(
                    f"added token {tok!r} has id {idx} inside the base vocabulary"
                )
        self.id_to_added = {i: t for t, i in self.added.items()}
        if len(self.id_to_added) != len(self.added):
            raise TextTokenizerError("two added tokens share an id")
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.unk_id = self.sp.unk_id()
        self.pad_id = 0  # AnyGPT pads with id 0 (<unk>)
        self._special = {
            "<unk>": self.unk_id,
            "<s>": self.bos_id,
            "</s>": self.eos_id,
        }
        self._trie = _Trie(list(self.added) + list(SPECIAL_STRINGS))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dir(cls, path: str | Path) -> TextTokenizer:
        """Load ``tokenizer.model`` plus ``added_tokens.json`` from a Hugging Face LLaMA folder."""
        path = Path(path)
        added_file = path / "added_tokens.json"
        if not added_file.is_file():
            raise TextTokenizerError(
                f"{added_file} is missing: an AnyGPT model folder must hold tokenizer.model and "
                "added_tokens.json (the token -> id map of its extended vocabulary)"
            )
        added = json.loads(added_file.read_text(encoding="utf-8"))
        if isinstance(added, list):  # [[token, id], ...] in addition order
            added = {t: int(i) for t, i in added}
        return cls(path / "tokenizer.model", {t: int(i) for t, i in added.items()})

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.model`` and ``added_tokens.json`` into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "tokenizer.model").write_bytes(self.sp.serialized_model_proto())
        ordered = dict(sorted(self.added.items(), key=lambda kv: kv[1]))
        (path / "added_tokens.json").write_text(
            json.dumps(ordered, ensure_ascii=False, indent=0) + "\n", encoding="utf-8"
        )

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self.base_size + len(self.added)

    @property
    def vocab_size(self) -> int:
        """Total vocabulary (base pieces + added tokens); the LLM's embedding rows must cover it."""
        return max(self.base_size, max(self.added.values(), default=-1) + 1)

    def token_to_id(self, token: str) -> int:
        """Id of an added token or special string (raises ``KeyError`` if it is neither)."""
        if token in self.added:
            return self.added[token]
        if token in self._special:
            return self._special[token]
        raise KeyError(f"{token!r} is not a token of this tokenizer")

    def has_token(self, token: str) -> bool:
        return token in self.added or token in self._special

    # ------------------------------------------------------------------ encode / decode
    def split_added(self, text: str) -> list[tuple[str, bool]]:
        """``text`` cut into ``(piece, is_token)`` runs at added tokens and special strings.

        Each non-token piece is what SentencePiece encodes on its own (see the module docstring).
        """
        return self._trie.split(text)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Ids for ``text`` exactly as AnyGPT's training saw them (BOS first by default)."""
        ids = [self.bos_id] if add_bos else []
        for piece, is_token in self.split_added(text):
            if is_token:
                ids.append(self.added.get(piece, self._special.get(piece)))
            else:
                ids.extend(self.sp.encode(piece))
        return ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True) -> list[list[int]]:
        return [self.encode(t, add_bos=add_bos) for t in texts]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text for ``ids``; added tokens are written verbatim, BOS/EOS/UNK dropped by default."""
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i in self.id_to_added:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                out.append(self.id_to_added[i])
            elif i in (self.bos_id, self.eos_id, self.unk_id) and skip_special:
                continue
            elif 0 <= i < self.base_size:
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)
