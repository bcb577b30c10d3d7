"""Chat dialogues of the nano world for stage-2 fine-tuning (``anygpt sft``).

Rows are what :mod:`anygpt.train.sft_data` reads, with media as placeholders that
``anygpt tokenize-chat`` replaces by token segments (see :mod:`anygpt.train.tokenize_chat`)::

    {"id": "train-000001", "kind": "image_qa",
     "conversation": [{"role": "user", "message": "{image:images/000012.png} what colour is the star"},
                      {"role": "assistant", "message": "the star is red"}],
     "turns": [{"kind": "image_qa", "image": "images/000012.png",
                "question": "what colour is the star", "answer": "the star is red", ...}]}

Placeholders are ``{MODALITY:PATH}`` with PATH relative to the dialogue file's folder.  ``turns``
says, for each assistant turn, what it must contain (for evaluation); training ignores it.

User messages are built by :func:`anygpt.prompts.interleaved_user_message`, exactly as the chat
command builds them (media first, then the text; with speech, AnyGPT's ``Speech-Instruction``
prompt).  A spoken request is answered in AnyGPT's speech-instruction form (the published sample
data's spacing: a space before ``<-Res->`` on the new line and a trailing space)::

    <-Ins-> what colour is the star\\n <-Res-> the star is red {speech:speech/000040.wav}

Kinds (:data:`KIND_WEIGHTS`): ``image_qa`` (picture + text question -> text answer),
``image_caption``, ``draw`` (text request -> picture), ``spoken_image_qa`` (picture + spoken
question -> spoken answer), ``spoken_qa`` (picture described first, then a spoken question about it
-> spoken answer), ``spoken_request`` (spoken drawing or music request -> the picture or melody),
``music_request`` (text -> melody), ``music_caption`` (melody -> text) and ``multi_turn`` (two or
three questions about one picture, or a drawing then a question about it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from anygpt.prompts import TASK_PROMPTS, interleaved_user_message
from anygpt.train.tokenize_chat import placeholder
from anygpt.world import text as wt

KIND_WEIGHTS = {
    "image_qa": 0.16,
    "image_caption": 0.06,
    "draw": 0.09,
    "spoken_image_qa": 0.14,
    "spoken_qa": 0.05,
    "spoken_request": 0.03,
    "music_request": 0.08,
    "music_caption": 0.06,
    "multi_turn": 0.09,
    "video_caption": 0.08,
    "video_qa": 0.06,
    "background": 0.07,
    "background_image": 0.03,
}
# what each kind needs beyond pictures and melodies
NEEDS = {"video_caption": "videos", "video_qa": "videos", "background": "background"}
NEEDS["background_image"] = "background"


@dataclass
class ImageItem:
    """A world picture: ``path`` relative to the split folder, its scene and caption."""

    path: str
    scene: Any
    caption: str


@dataclass
class MusicItem:
    path: str
    melody: Any
    caption: str


@dataclass
class VideoItem:
    path: str
    motion: Any
    caption: str


@dataclass
class BackgroundItem:
    """A background sound: ``kind`` is ``chatter`` or a noise name; ``text`` what chatter says."""

    path: str
    kind: str
    text: str


@dataclass
class SpeechJob:
    """One utterance to synthesize into ``path`` (relative to the split folder)."""

    text: str
    voice: str
    rate: int
    path: str
    kind: str


@dataclass
class SpeechBank:
    """Hands out speech files for dialogue sentences and records what to synthesize.

    Questions are said in a random voice and rate of the split; answers in the split's one
    assistant voice, so an answer sentence said twice reuses its file.
    """

    voices: tuple[str, ...]
    rates: tuple[int, ...]
    answer_voice: str
    answer_rate: int
    next_index: int
    jobs: list[SpeechJob] = field(default_factory=list)
    _answers: dict[str, str] = field(default_factory=dict)

    def _new(self, text: str, voice: str, rate: int, kind: str) -> str:
        path = f"speech/{self.next_index:06d}.wav"
        self.next_index += 1
        self.jobs.append(SpeechJob(text, voice, rate, path, kind))
        return path

    def question(self, text: str, rng: random.Random) -> str:
        return self._new(text, rng.choice(self.voices), rng.choice(self.rates), "dialogue_question")

    def answer(self, text: str) -> str:
        if text not in self._answers:
            self._answers[text] = self._new(
                text, self.answer_voice, self.answer_rate, "dialogue_answer"
            )
        return self._answers[text]


def speech_reply(instruction: str, response: str, media: str) -> str:
    """AnyGPT's speech-instruction reply: transcript, answer text, then the answer's media."""
    return TASK_PROMPTS["Speech-Response"].format(
        instruction=instruction, response=f"{response} {media} "
    )


def _turn(role: str, message: str) -> dict:
    return {"role": role, "message": message}


class DialogueMaker:
    """Builds dialogue rows from a split's pictures and melodies (deterministic for an rng)."""

    def __init__(
        self,
        images: list[ImageItem],
        music: list[MusicItem],
        bank: SpeechBank,
        videos: list[VideoItem] | None = None,
        background: list[BackgroundItem] | None = None,
    ) -> None:
        if not images or not music:
            raise ValueError("dialogues need at least one picture and one melody")
        self.images = images
        self.music = music
        self.bank = bank
        self.videos = videos or []
        self.background = background or []

    def make(self, index: int, kind: str, rng: random.Random, split: str) -> dict:
        conv, turns = getattr(self, f"_{kind}")(rng)
        return {"id": f"{split}-{index:06d}", "kind": kind, "conversation": conv, "turns": turns}

    def random_kind(self, rng: random.Random) -> str:
        have = {"videos": bool(self.videos), "background": bool(self.background)}
        kinds = [k for k in KIND_WEIGHTS if have.get(NEEDS.get(k, ""), True)]
        return rng.choices(kinds, weights=[KIND_WEIGHTS[k] for k in kinds])[0]

    # ------------------------------------------------------------------ single turn
    def _image_qa(self, rng):
        item = rng.choice(self.images)
        qa = wt.random_question(item.scene, rng)
        msg = interleaved_user_message(qa.question, [placeholder("image", item.path)])
        meta = {"kind": "image_qa", "image": item.path, "question": qa.question}
        meta |= {"answer": qa.answer, "question_kind": qa.kind}
        return [_turn("user", msg), _turn("assistant", qa.answer)], [meta]

    def _image_caption(self, rng):
        item = rng.choice(self.images)
        prompt = rng.choice(wt.DESCRIBE_IMAGE)
        msg = interleaved_user_message(prompt, [placeholder("image", item.path)])
        answer = wt.phrase(item.caption)
        meta = {"kind": "image_caption", "image": item.path, "question": prompt, "answer": answer}
        return [_turn("user", msg), _turn("assistant", answer)], [meta]

    def _draw(self, rng):
        item = rng.choice(self.images)
        request = wt.random_draw_request(item.caption, rng)
        meta = {"kind": "draw", "request": request, "caption": wt.phrase(item.caption)}
        meta["image"] = item.path
        return [_turn("user", request), _turn("assistant", placeholder("image", item.path))], [meta]

    def _music_request(self, rng):
        item = rng.choice(self.music)
        request = wt.random_music_request(item.caption, rng)
        meta = {"kind": "music_request", "request": request, "caption": wt.phrase(item.caption)}
        meta["music"] = item.path
        return [_turn("user", request), _turn("assistant", placeholder("music", item.path))], [meta]

    def _music_caption(self, rng):
        item = rng.choice(self.music)
        prompt = rng.choice(wt.DESCRIBE_MUSIC)
        msg = interleaved_user_message(prompt, music=[placeholder("music", item.path)])
        answer = wt.phrase(item.caption)
        meta = {"kind": "music_caption", "music": item.path, "question": prompt, "answer": answer}
        return [_turn("user", msg), _turn("assistant", answer)], [meta]

    # ------------------------------------------------------------------ spoken
    def _spoken_answer(self, qa: wt.QA, rng, image: str | None, kind: str):
        """User speech (with the picture when ``image``) -> speech-instruction reply."""
        q_path = self.bank.question(qa.question, rng)
        a_path = self.bank.answer(qa.answer)
        images = [placeholder("image", image)] if image else []
        msg = interleaved_user_message("", images, speech=[placeholder("speech", q_path)])
        reply = speech_reply(qa.question, qa.answer, placeholder("speech", a_path))
        meta = {"kind": kind, "question": qa.question, "answer": qa.answer}
        meta |= {"question_kind": qa.kind, "question_speech": q_path, "answer_speech": a_path}
        if image:
            meta["image"] = image
        return _turn("user", msg), _turn("assistant", reply), meta

    def _spoken_image_qa(self, rng):
        item = rng.choice(self.images)
        qa = wt.random_question(item.scene, rng)
        user, reply, meta = self._spoken_answer(qa, rng, item.path, "spoken_image_qa")
        return [user, reply], [meta]

    def _spoken_qa(self, rng):
        """A picture described in the first turn, then a spoken question about it."""
        conv, turns = self._image_caption(rng)
        item = next(i for i in self.images if i.path == turns[0]["image"])
        qa = wt.random_question(item.scene, rng)
        user, reply, meta = self._spoken_answer(qa, rng, None, "spoken_qa")
        meta["image"] = item.path
        return [*conv, user, reply], [*turns, meta]

    def _spoken_request(self, rng):
        """A spoken drawing or music request, answered with the picture or the melody."""
        if rng.random() < 0.5:
            item, modality = rng.choice(self.images), "image"
            request = wt.random_draw_request(item.caption, rng)
        else:
            item, modality = rng.choice(self.music), "music"
            request = wt.random_music_request(item.caption, rng)
        q_path = self.bank.question(request, rng)
        msg = interleaved_user_message("", speech=[placeholder("speech", q_path)])
        reply = TASK_PROMPTS["Speech-Response"].format(
            instruction=request, response=f"{placeholder(modality, item.path)} "
        )
        meta = {"kind": "spoken_request", "request": request, "caption": wt.phrase(item.caption)}
        meta |= {modality: item.path, "question_speech": q_path}
        return [_turn("user", msg), _turn("assistant", reply)], [meta]

    # ------------------------------------------------------------------ video
    def _video_caption(self, rng):
        from anygpt.world.clips import DESCRIBE_VIDEO

        item = rng.choice(self.videos)
        return video_turn(item, "video_caption", rng.choice(DESCRIBE_VIDEO), item.caption)

    def _video_qa(self, rng):
        from anygpt.world.clips import video_qa

        item = rng.choice(self.videos)
        return video_turn(item, "video_qa", *video_qa(item.motion, rng))

    # ------------------------------------------------------------------ not addressed
    def _background(self, rng, with_image: bool = False):
        """Sound not addressed to the assistant: the reply is empty (it stays silent)."""
        item = rng.choice(self.background)
        images = [placeholder("image", rng.choice(self.images).path)] if with_image else []
        msg = interleaved_user_message("", images, speech=[placeholder("speech", item.path)])
        meta = {"kind": "background", "speech": item.path, "sound": item.kind, "answer": ""}
        return [_turn("user", msg), _turn("assistant", "")], [meta]

    def _background_image(self, rng):
        return self._background(rng, with_image=True)

    # ------------------------------------------------------------------ multi-turn
    def _multi_turn(self, rng):
        if rng.random() < 0.5:  # draw, then ask about the drawing
            conv, turns = self._draw(rng)
            item = next(i for i in self.images if i.path == turns[0]["image"])
            qas = [wt.random_question(item.scene, rng)]
        else:  # a picture and two or three different questions about it
            item = rng.choice(self.images)
            pool = wt.scene_questions(item.scene)
            n = min(len(pool), rng.choice((2, 3)))
            first = wt.random_question(item.scene, rng)
            rest = [q for q in pool if q != first]
            qas = [first, *rng.sample(rest, min(n - 1, len(rest)))]
            conv, turns = [], []
        for qa in qas:
            image = [placeholder("image", item.path)] if not conv else []
            conv += [
                _turn("user", interleaved_user_message(qa.question, image)),
                _turn("assistant", qa.answer),
            ]
            meta = {"kind": "image_qa", "image": item.path, "question": qa.question}
            turns.append(meta | {"answer": qa.answer, "question_kind": qa.kind})
        return conv, turns


def video_turn(item: VideoItem, kind: str, question: str, answer: str):
    """A question about a clip and its text answer: (conversation, turns)."""
    msg = interleaved_user_message(question, [placeholder("video", item.path)])
    meta = {"kind": kind, "video": item.path, "question": question, "answer": answer}
    meta["direction"] = item.motion.direction
    return [_turn("user", msg), _turn("assistant", answer)], [meta]


def clip_dialogues(videos: list[VideoItem], rng: random.Random, split: str) -> list[dict]:
    """Two dialogues per clip: described (alternating prompts) and asked about.

    The mixed dialogues draw clips at random and see only a fraction of them; motion is learnt
    from every clip shown in both forms (``video_dialogues.jsonl``, read like ``dialogues.jsonl``).
    """
    from anygpt.world.clips import DESCRIBE_VIDEO, video_qa

    rows = []
    for i, item in enumerate(videos):
        caption = ("video_caption", DESCRIBE_VIDEO[i % len(DESCRIBE_VIDEO)], item.caption)
        for kind, question, answer in (caption, ("video_qa", *video_qa(item.motion, rng))):
            conv, turns = video_turn(item, kind, question, answer)
            rows.append(
                {"id": f"{split}-clip-{len(rows) + 1:06d}", "kind": kind, "conversation": conv}
                | {"turns": turns}
            )
    return rows
