"""``anygpt chat --listen`` on a scripted stream: the nano demo question, silence, interruptions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("silero_vad")

NANO = Path(__file__).resolve().parents[1] / "models" / "anygpt-nano"
SR = 16000


def question() -> np.ndarray:
    return sf.read(NANO / "demo" / "question.wav", dtype="float32")[0]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def chunks(audio: np.ndarray):
    for i in range(0, len(audio), 512):
        yield audio[i : i + 512]


@pytest.fixture(scope="module")
def session():
    from anygpt.bundle import Bundle
    from anygpt.runtime.chat import ChatSession
    from anygpt.runtime.engine import Engine

    return ChatSession(Engine(Bundle(NANO, device="cpu"), seed=0))


def run(session, audio, sink=None, **vad_kw):
    from anygpt.runtime.listen import listen
    from anygpt.runtime.vad import StreamingVAD

    session.clear()
    vad = StreamingVAD(**vad_kw)
    return listen(session, chunks(audio), vad=vad, speed=0, sink=sink, report=lambda *a: None)


def test_turns_are_answered_and_speech_during_a_reply_cuts_it(session, tmp_path):
    from anygpt.runtime.media import FileSink

    q = question()
    # the second question starts 0.6 s after the first one ends: the turn ends 0.5 s into the
    # silence (min_silence_ms), so it starts about 0.1 s into the first reply
    audio = np.concatenate([silence(0.5), q, silence(0.6), q, silence(2.5)])
    events = run(session, audio, FileSink(tmp_path))
    kinds = [e["kind"] for e in events]
    assert kinds.count("speech_stopped") == 2 and kinds.count("reply") == 2
    assert "interrupted" in kinds, events
    cut = next(e for e in events if e["kind"] == "interrupted")
    reply = next(e for e in events if e["kind"] == "reply")
    assert 0 < cut["played_frames"] < reply["frames"]
    for e in events:  # each reply's whole audio is written
        if e["kind"] == "reply":
            (path,) = e["files"]
            wave, rate = sf.read(path)
            rate_hz = session.engine.bundle.modality("speech").frame_rate
            assert rate == SR and len(wave) > 0.8 * e["frames"] / rate_hz * SR
    # the history keeps the played frames only, the span closed; then the second turn
    roles = [r for r, _ in session.conversation.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    lay = session.engine.layout
    ids = lay.tokenizer.encode(session.conversation.messages[1][1], add_bos=False)
    (span,) = [s for s in lay.find_segments(ids) if s.modality == "speech"]
    assert span.end is not None
    assert lay.codes_from_ids("speech", span.body).codes.shape[1] == cut["played_frames"]


def test_silence_makes_no_turn_and_endless_speech_is_cut(session):
    assert run(session, silence(4.0)) == []
    q = question()
    endless = np.concatenate([q] * 5)  # no pause long enough to end a turn
    events = run(session, endless, max_utterance_s=2.5, min_silence_ms=1500)
    assert any(e["kind"] == "speech_stopped" for e in events[:3])
    assert [e for e in events if e["kind"] == "reply"]


def test_command_line_errors_are_one_line(tmp_path):
    bad = tmp_path / "x.wav"
    bad.write_text("not audio")
    for source in (str(bad), "mic"):
        p = subprocess.run(
            [sys.executable, "-m", "anygpt", "chat", "--listen", source, "--output-dir",
             str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if source == "mic" and p.returncode == 0:
            continue  # a machine with a microphone
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert p.stderr.strip().splitlines()[-1].startswith("error:")


def test_command_line_turns_with_the_energy_detector(tmp_path):
    q = question()
    stream = tmp_path / "stream.wav"
    sf.write(stream, np.concatenate([silence(0.5), q, silence(1.5)]), SR)
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "anygpt", "chat", "--listen", str(stream), "--listen-speed", "0",
         "--vad", "energy", "--json", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    events = json.loads(p.stdout)  # the events alone: the progress lines go to stderr
    kinds = [e["kind"] for e in events]
    assert kinds[:2] == ["speech_started", "speech_stopped"] and "reply" in kinds
    (reply,) = [e for e in events if e["kind"] == "reply"]
    assert [Path(f).parent for f in reply["files"]] == [out]
