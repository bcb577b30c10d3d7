"""Video input: reading and sampling clips, the video layout, and video in base, chat and data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from anygpt.video import VideoError, probe_video, read_video, sample_times, write_video

RED = (220, 30, 30)


def moving_dot(n: int, start: float = 52.0, step: float = -5.0) -> list[Image.Image]:
    """``n`` 64x64 frames of a red dot moving by ``step`` pixels per frame along x."""
    out = []
    for i in range(n):
        im = Image.new("RGB", (64, 64), (128, 128, 128))
        x = start + step * i
        ImageDraw.Draw(im).ellipse((x - 6, 26, x + 6, 38), fill=RED)
        out.append(im)
    return out


def red_x(im: Image.Image) -> float:
    a = np.asarray(im).astype(int)
    mask = (a[..., 0] > 170) & (a[..., 1] < 90)
    return float(np.nonzero(mask)[1].mean())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """2 s, 4 fps, a dot moving left; a tone in the first second only, then silence."""
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    t = np.arange(32000) / 16000
    audio = np.where(t < 1.0, 0.3 * np.sin(2 * np.pi * 300 * t), 0.0)
    write_video(path, moving_dot(8), 4, audio=audio)
    return path


@pytest.fixture(scope="module")
def video_bundle(tmp_path_factory):
    from anygpt.debug_bundle import write_debug_bundle

    return write_debug_bundle(tmp_path_factory.mktemp("vb") / "b", video=True)


def test_uniform_and_rate_sampling_times():
    assert sample_times(2.0, 4, None) == [0.25, 0.75, 1.25, 1.75]
    assert sample_times(2.0, None, 2.0) == [0.0, 0.5, 1.0, 1.5]
    with pytest.raises(VideoError):
        sample_times(2.0, 0, None)


def test_reads_sampled_frames_in_order_and_the_soundtrack(clip):
    assert probe_video(clip) == (2.0, True)
    c = read_video(clip, frames=4)
    assert c.times == [0.25, 0.75, 1.25, 1.75] and len(c.frames) == 4
    xs = [red_x(f) for f in c.frames]
    assert xs == sorted(xs, reverse=True) and xs[0] - xs[-1] > 20  # the dot moves left
    assert c.sample_rate == 16000 and abs(c.audio.shape[0] - 32000) < 2048
    loud, quiet = np.abs(c.audio[2000:14000]).mean(), np.abs(c.audio[20000:30000]).mean()
    assert loud > 0.1 and quiet < 0.01
    assert read_video(clip, fps=2).times == [0.0, 0.5, 1.0, 1.5]
    assert read_video(clip, audio_rate=None).audio is None


def test_a_long_clip_is_read_by_seeking_and_bounded(tmp_path):
    path = tmp_path / "long.mp4"
    write_video(path, moving_dot(120, start=60, step=-0.4), 4)  # 30 s
    c = read_video(path, frames=3, max_seconds=20)
    assert c.duration == 20 and c.times == pytest.approx([10 / 3, 10, 50 / 3])
    xs = [red_x(f) for f in c.frames]
    # frame k shows the dot at 60 - 0.4 * k, k = 4 t
    for t, x in zip(c.times, xs, strict=True):
        assert abs(x - (60 - 0.4 * round(4 * t))) < 2.5


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated", "audio only"])
def test_unreadable_videos_fail_with_one_line(tmp_path, clip, kind):
    path = tmp_path / "bad.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a video at all\n" * 50)
    elif kind == "truncated":
        path.write_bytes(clip.read_bytes()[:300])
    elif kind == "audio only":
        import soundfile as sf

        path = tmp_path / "bad.wav"
        sf.write(path, np.zeros(16000, np.float32), 16000)
    with pytest.raises(VideoError) as err:
        read_video(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_video_segment_layout(video_bundle, clip):
    import anygpt

    engine = anygpt.load(video_bundle, device="cpu", seed=0)
    assert "video" in engine.bundle.input_modalities
    seg = engine.encode_media("video", [str(clip)])[0]
    layout = engine.layout
    ids = engine.tokenizer.encode(seg, add_bos=False)
    assert seg.startswith("<sovi><soim>") and seg.endswith("<eoim><eovi>") and " " not in seg
    spans = layout.find_segments(ids)
    kinds = [s.modality for s in spans]
    # four frames; speech only after the frames whose stretch of soundtrack holds the tone
    assert kinds.count("image") == 4 and kinds[0] == "image"
    assert kinds == ["image", "speech", "image", "speech", "image", "image"]
    without = engine.bundle.video
    without.options.audio = False
    try:
        seg2 = engine.encode_media("video", [str(clip)])[0]
    finally:
        without.options.audio = True
    assert "<sosp>" not in seg2 and seg2.count("<soim>") == 4


def test_video_in_base_and_chat(video_bundle, clip, tmp_path):
    import anygpt

    engine = anygpt.load(video_bundle, device="cpu", seed=0, max_new_tokens=4)
    ok, out, bad = engine.base(
        f"video|text|{clip}", "text|video|a circle", f"video|text|{tmp_path / 'none.mp4'}"
    )
    assert ok.ok and isinstance(ok.text, str)
    assert "input only" in out.error and "no such video file" in bad.error
    chat = engine.chat()
    turn = chat.turn(f"interleaved|what moves|||{clip}")
    assert turn.ok, turn.error
    assert chat.conversation.messages[0][1].startswith("<sovi><soim>")


def test_a_bundle_without_video_tags_says_how_to_add_them(debug_bundle, clip):
    import anygpt

    engine = anygpt.load(debug_bundle, device="cpu", seed=0, max_new_tokens=2)
    assert "video" not in engine.bundle.input_modalities
    (out,) = engine.base(f"video|text|{clip}")
    assert "unknown modality 'video'" in out.error
    turn = engine.chat().turn(f"interleaved|what moves|||{clip}")
    assert "extend-vocab" in turn.error and not engine.chat().conversation.messages


def test_tokenize_chat_replaces_video_placeholders(video_bundle, clip, tmp_path):
    from anygpt.train.tokenize_chat import ChatTokenizeConfig, tokenize_chat

    rows = [
        {"conversation": [{"role": "user", "message": f"{{video:{clip}}} what moves"},
                          {"role": "assistant", "message": "the dot"}]},
        {"conversation": [{"role": "user", "message": f"{{video:{tmp_path}/x.mp4}} hi"},
                          {"role": "assistant", "message": "no"}]},
    ]  # fmt: skip
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.jsonl"
    s = tokenize_chat(ChatTokenizeConfig(str(src), str(video_bundle), str(out), device="cpu"))
    assert (s.written, s.skipped) == (1, 1)
    msg = json.loads(out.read_text())["conversation"][0]["message"]
    assert msg.startswith("<sovi><soim>") and msg.endswith("<eovi> what moves")


def test_the_server_reads_video_url_parts(video_bundle, clip):
    """``video_url`` content parts through the official client; unreadable clips are a 400."""
    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    import base64

    from test_serve import Server

    server = Server(video_bundle, max_request_mb=2.0)
    try:
        url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
        content = [{"type": "text", "text": "what moves"},
                   {"type": "video_url", "video_url": {"url": url}}]  # fmt: skip
        r = server.client.chat.completions.create(
            model=server.model_id, messages=[{"role": "user", "content": content}], max_tokens=3
        )
        assert r.choices[0].message.role == "assistant"
        assert r.usage.prompt_tokens > 4 * 34  # four frames of 32 codes and their tags
        bad = [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]
        import openai

        with pytest.raises(openai.BadRequestError) as err:
            server.client.chat.completions.create(
                model=server.model_id, messages=[{"role": "user", "content": bad}], max_tokens=3
            )
        assert "video" in str(err.value)
    finally:
        server.close()
