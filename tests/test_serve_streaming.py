"""Windowed speech decoding: the streamed waveform against the whole-utterance decode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anygpt.modalities.base import Codes
from anygpt.serve.streaming import WindowedSpeech, mel_distance, stream_decode

NANO = Path(__file__).resolve().parents[1] / "models" / "anygpt-nano"
# Streamed speech of the shipped model stays within this mean |log-mel| difference of the whole
# decode (measured 0.15; two whole decodes with different Griffin-Lim seeds differ by 0.09).
TOLERANCE = 0.25


@pytest.mark.parametrize("total,step", [(1, 1), (7, 1), (40, 1), (40, 3), (41, 7), (95, 50)])
def test_windows_cover_every_frame_once_in_order(total, step):
    state = WindowedSpeech(hop=4, chunk=8, left_context=5, lookahead=3, first_chunk=4)
    covered, n = [], 0
    while not state.planned_all:
        n = min(total, n + step)
        for w in state.plan(n, final=n >= total):
            assert w.start <= w.emit_from < w.emit_to <= w.stop <= n
            assert w.emit_from - w.start <= 5
            assert w.final or w.stop - w.emit_to == 3  # a chunk waits for its lookahead
            covered.extend(range(w.emit_from, w.emit_to))
            piece = state.accept(w, torch.ones(4 * (w.stop - w.start)))
            assert piece.shape[0] == 4 * (w.emit_to - w.emit_from)
    assert covered == list(range(total))
    assert state.samples == 4 * total


def test_windows_must_be_stitched_in_order():
    state = WindowedSpeech(hop=2, chunk=2, left_context=1, lookahead=1, first_chunk=None)
    first, second = state.plan(10, final=False)[:2]
    with pytest.raises(ValueError):
        state.accept(second, torch.zeros(2 * (second.stop - second.start)))
    state.accept(first, torch.zeros(2 * (first.stop - first.start)))


@pytest.fixture(scope="module")
def nano_speech():
    if not (NANO / "bundle.json").is_file():
        pytest.skip("the shipped model is not in this checkout")
    from anygpt.bundle import Bundle

    tok = Bundle(NANO, device="cpu").modality("speech", checked=True)
    wave = tok.load(NANO / "demo" / "question.wav")
    codes = tok.encode([wave]).unbatch()[0]
    return tok, torch.cat([codes, codes], dim=1)  # [1, 80]: 3.2 s


def whole(tok, codes, seed):
    return tok.decode(Codes.from_list([codes]), generator=torch.Generator().manual_seed(seed))[0]


def test_streamed_nano_speech_matches_the_whole_decode(nano_speech):
    tok, codes = nano_speech
    reference = whole(tok, codes, 0)
    streamed, ready = stream_decode(tok, codes, generator_seed=0)
    assert streamed.shape == reference.shape
    assert ready[0] <= 20 < codes.shape[1]  # first audio after 0.8 s of codes, not at the end
    distance = mel_distance(streamed, reference, tok.sample_rate)
    seeds = mel_distance(whole(tok, codes, 1), reference, tok.sample_rate)
    assert distance <= TOLERANCE
    assert distance <= 2.5 * seeds
    # the bound means something: other speech is far outside it
    other = whole(tok, codes.flip(1), 0)
    assert mel_distance(other, reference, tok.sample_rate) > 2 * TOLERANCE


def test_streamed_speechtokenizer_speech_has_the_whole_length(debug_bundle):
    from anygpt.bundle import Bundle

    tok = Bundle(debug_bundle, device="cpu").modality("speech", checked=True)
    codes = torch.randint(0, 1024, (1, 37), generator=torch.Generator().manual_seed(0))
    reference = whole(tok, codes, 0)
    streamed, ready = stream_decode(tok, codes, generator_seed=0, chunk=8, left_context=8,
                                    lookahead=4, first_chunk=4)  # fmt: skip
    assert streamed.shape == reference.shape and torch.isfinite(streamed).all()
    assert len(ready) > 2
