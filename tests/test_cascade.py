"""Cascaded spoken chat (anygpt/runtime/cascade.py): stage order, per-sentence streaming, bundles."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import anygpt
from anygpt.runtime.cascade import Cascade, split_sentences
from anygpt.runtime.requests import parse_chat_line

NANO = Path(__file__).resolve().parents[1] / "models" / "anygpt-nano"


@pytest.fixture()
def engine(debug_bundle):
    return anygpt.load(debug_bundle, device="cpu", seed=0)


@pytest.fixture()
def wav(tmp_path) -> str:
    path = tmp_path / "q.wav"
    sf.write(path, 0.2 * np.sin(np.arange(16000) / 5.0), 16000)
    return str(path)


def scripted_reply(engine, text: str, log: list):
    """A generate_ids whose chat replies (the calls with a step hook) 'write' ``text`` token by
    token, calling the hook like the real loop; the base model's calls (ASR, TTS) stay real."""
    ids = engine.tokenizer.encode(text, add_bos=False)
    real = engine.generate_ids

    def generate_ids(prompts, cfg, *, seed=None, stop_texts=(), on_step=None):
        if on_step is None:
            return real(prompts, cfg, seed=seed, stop_texts=stop_texts)
        log.append("llm")
        for t in range(1, len(ids) + 1):
            if on_step is not None:
                on_step(torch.tensor([ids[:t]]))
        log.append("llm done")
        return [list(ids)]

    return generate_ids


def spy_stages(cascade: Cascade, log: list, heard: str = "what is this"):
    def transcribe(paths):
        log.append("asr")
        return heard

    real_speak = cascade.speak

    def speak(sentence, voice):
        log.append(f"tts:{sentence}")
        return real_speak(sentence, voice)

    cascade.transcribe, cascade.speak = transcribe, speak


def test_sentences_split_on_ends_and_flush_the_rest():
    assert split_sentences("One. Two! Thr", final=False) == (["One.", "Two!"], "Thr")
    assert split_sentences("One. Two! Thr", final=True) == (["One.", "Two!", "Thr"], "")
    assert split_sentences("no end at all", final=False) == ([], "no end at all")
    assert split_sentences("   ", final=True) == ([], "")


def test_stages_run_in_order_and_audio_streams_per_sentence(engine, wav):
    log: list = []
    cascade = Cascade(engine)
    spy_stages(cascade, log)
    engine.generate_ids = scripted_reply(engine, "one two. three four. five", log)
    audio = []
    result = cascade.turn(
        engine.chat(),
        parse_chat_line(f"interleaved||speech|||{wav}"),
        on_audio=lambda s, w, r: (audio.append((s, w.shape[0], r)), log.append(f"audio:{s}")),
    )
    assert result.outcome.ok, result.outcome.error
    assert log[0] == "asr" and log[1] == "llm"
    spoken = [e for e in log if e.startswith("tts:")]
    assert len(spoken) == 3 and spoken[-1].endswith("five")
    # the first sentence was heard while the reply was still being written
    assert log.index("audio:" + spoken[0][4:]) < log.index("llm done") < log.index(spoken[-1])
    assert [a[0] for a in audio] == [s[4:] for s in spoken]
    total = sum(n for _, n, _ in audio)
    assert result.outcome.media[0].data.shape[-1] == total
    assert result.transcript == "what is this"
    assert result.turn.decoding.num_beams == 1  # the debug chat config's 5 beams cannot stream
    assert result.outcome.text.startswith("one two.")


def test_an_empty_reply_speaks_nothing(engine, wav):
    log: list = []
    cascade = Cascade(engine)
    spy_stages(cascade, log)
    engine.generate_ids = scripted_reply(engine, "", log)
    result = cascade.turn(engine.chat(), parse_chat_line(f"interleaved||speech|||{wav}"))
    assert result.outcome.ok
    assert result.outcome.text == "" and result.outcome.media == []
    assert not [e for e in log if e.startswith("tts:")]


def test_a_sentence_tts_cannot_speak_is_noted_and_the_rest_is_spoken(engine, wav):
    from anygpt.runtime.requests import RequestError

    cascade = Cascade(engine)
    spy_stages(cascade, [])
    real = cascade.speak

    def speak(sentence, voice):
        if sentence.startswith("three"):
            raise RequestError("speaking 'three four.': no speech")
        return real(sentence, voice)

    cascade.speak = speak
    engine.generate_ids = scripted_reply(engine, "one two. three four. five", [])
    result = cascade.turn(engine.chat(), parse_chat_line(f"interleaved||speech|||{wav}"))
    assert result.outcome.ok and result.outcome.text.startswith("one two. three four.")
    assert result.sentences == ["one two.", result.outcome.text.split(". ")[-1]]
    assert "not spoken: speaking 'three four.': no speech" in result.outcome.notes
    assert result.outcome.media


def test_speech_with_no_words_is_a_clear_error_and_keeps_the_history(engine, wav):
    cascade = Cascade(engine)
    spy_stages(cascade, [], heard="")
    session = engine.chat()
    result = cascade.turn(session, parse_chat_line(f"interleaved||speech|||{wav}"))
    assert result.outcome.error == "no words were recognised in the speech input"
    assert session.conversation.messages == []


def test_separate_asr_and_tts_bundles_are_used(engine, debug_bundle, wav):
    calls: dict[str, list] = {"chat": [], "asr": [], "tts": []}
    asr = anygpt.load(debug_bundle, device="cpu", seed=1)
    tts = anygpt.load(debug_bundle, device="cpu", seed=2)
    for name, eng in (("chat", engine), ("asr", asr), ("tts", tts)):
        real = eng.run_base
        eng.run_base = lambda lines, *a, _r=real, _n=name, **k: (
            calls[_n].append(lines),
            _r(lines),
        )[1]
    engine.generate_ids = scripted_reply(engine, "a reply. another", [])
    result = Cascade(engine, asr=asr, tts=tts).turn(
        engine.chat(), parse_chat_line(f"interleaved||speech|||{wav}")
    )
    assert result.outcome.ok, result.outcome.error
    assert calls["chat"] == []
    assert [ln[0].split("|")[:2] for ln in calls["asr"]] == [["speech", "text"]]
    assert [ln[0].split("|")[:2] for ln in calls["tts"]] == [["text", "speech"]] * 2


def test_a_bundle_without_speech_cannot_be_the_tts(engine, tmp_path):
    from anygpt.debug_bundle import write_debug_bundle

    no_speech = anygpt.load(write_debug_bundle(tmp_path / "b", seed=0, modalities=("image",)))
    with pytest.raises(ValueError, match="no speech modality"):
        Cascade(engine, tts=no_speech)


def test_the_reply_is_bounded_by_max_tokens(debug_bundle, wav):
    eng = anygpt.load(debug_bundle, device="cpu", seed=0, max_new_tokens=12)
    cascade = Cascade(eng)
    spy_stages(cascade, [])
    result = cascade.turn(eng.chat(), parse_chat_line(f"interleaved||speech|||{wav}"))
    assert result.outcome.ok, result.outcome.error
    assert len(result.ids) <= 12


def test_the_nano_cascade_hears_words_of_the_nano_world():
    eng = anygpt.load(NANO, device="cpu", seed=0)
    heard = Cascade(eng).transcribe([str(NANO / "demo" / "question.wav")])
    assert heard == "how many objects are there"


def test_the_server_streams_a_cascaded_reply_sentence_by_sentence(debug_bundle):
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from test_serve import Server, attr

    s = Server(debug_bundle)  # end-to-end by default; the request asks for the cascade
    try:
        log: list = []
        s.engine.generate_ids = scripted_reply(s.engine, "one two. three four. five", log)
        kw = dict(
            model=s.model_id,
            messages=[{"role": "user", "content": "say something"}],
            modalities=["text", "audio"],
            extra_body={"speech_mode": "cascaded"},
        )
        whole = s.client.chat.completions.create(**kw, audio={"voice": "alloy", "format": "wav"})
        msg = whole.choices[0].message
        assert msg.content.startswith("one two.")
        wave, rate = sf.read(io.BytesIO(base64.b64decode(msg.audio.data)))
        assert rate == 16000 and wave.size > 0
        assert msg.audio.transcript == msg.content

        stream = s.client.chat.completions.create(
            **kw, audio={"voice": "alloy", "format": "pcm16"}, stream=True
        )
        text, clips, transcript = "", [], None
        for chunk in stream:
            for ch in chunk.choices:
                text += ch.delta.content or ""
                a = ch.delta.audio
                if a is not None and attr(a, "data"):
                    clips.append(np.frombuffer(base64.b64decode(attr(a, "data")), dtype="<i2"))
                elif a is not None:
                    transcript = attr(a, "transcript")
        assert len(clips) == 3 and all(c.size > 0 for c in clips)  # one delta per sentence
        assert text.startswith("one two.") and transcript == text

        with pytest.raises(openai.BadRequestError):
            s.client.chat.completions.create(**{**kw, "extra_body": {"speech_mode": "both"}})
    finally:
        s.close()


def test_chat_cascade_command_speaks_the_nano_answer(tmp_path, capsys):
    from anygpt.cli import main

    demo = NANO / "demo"
    line = f"interleaved||speech||{demo / 'picture.png'}|{demo / 'question.wav'}"
    argv = ["chat", "--cascade", "--seed", "0", "--json", "--output-dir", str(tmp_path)]
    assert main([*argv, "--model", str(NANO), line]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["notes"][0] == "heard: how many objects are there"
    assert out["text"].startswith("there")  # an answer about objects, in words
    assert len(out["files"]) == 1 and out["files"][0].endswith(".wav")


def test_chat_cascade_refuses_a_tts_bundle_without_speech(debug_bundle, tmp_path, capsys):
    from anygpt.cli import main
    from anygpt.debug_bundle import write_debug_bundle

    no_speech = write_debug_bundle(tmp_path / "b", seed=0, modalities=("image",))
    argv = ["chat", "--model", str(debug_bundle), "--cascade", "--tts-model", str(no_speech)]
    assert main([*argv, "--output-dir", str(tmp_path / "o"), "hello"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no speech modality" in err


def test_a_server_whose_llm_has_no_speech_speaks_through_another_bundle(
    debug_bundle, tmp_path, monkeypatch
):
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from test_serve import Server, b64, wav_bytes

    from anygpt.debug_bundle import write_debug_bundle

    no_speech = write_debug_bundle(tmp_path / "text", seed=0, modalities=("image",))
    heard_by = []
    real = Cascade.transcribe

    def transcribe(self, paths):
        heard_by.append(self.asr.bundle.root)
        return real(self, paths) or "what is this"  # the random ASR may hear nothing

    monkeypatch.setattr(Cascade, "transcribe", transcribe)
    s = Server(
        no_speech, speech_mode="cascaded", asr_model=str(debug_bundle), tts_model=str(debug_bundle)
    )
    try:
        s.engine.generate_ids = scripted_reply(s.engine, "one. two", [])
        audio_part = {"type": "input_audio", "input_audio": {"data": b64(wav_bytes(0.5))}}
        kw = dict(
            model=s.model_id,
            messages=[{"role": "user", "content": [audio_part]}],
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
        )
        msg = s.client.chat.completions.create(**kw).choices[0].message
        assert [Path(r).resolve() for r in heard_by] == [debug_bundle.resolve()]  # its ASR
        assert msg.content == "one. two"
        wave, rate = sf.read(io.BytesIO(base64.b64decode(msg.audio.data)))
        assert rate == 16000 and wave.size > 0

        monkeypatch.setattr(Cascade, "transcribe", lambda self, paths: "")
        with pytest.raises(openai.BadRequestError, match="no words were recognised"):
            s.client.chat.completions.create(**kw)
        # the end-to-end mode cannot speak with this bundle: a clear 400 too
        with pytest.raises(openai.BadRequestError, match="cannot reply with speech"):
            s.client.chat.completions.create(**kw, extra_body={"speech_mode": "end-to-end"})
    finally:
        s.close()
