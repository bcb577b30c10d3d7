import json
import random
from pathlib import Path

from anygpt.prompts import (
    ANYGPT_TEMPLATE,
    Conversation,
    base_t2x_prompt,
    base_x2t_prompt,
    choose_instruction,
    instruction_lists,
    interleaved_user_message,
    task_message,
)

ASSETS = Path(__file__).parent / "assets"

CASES = {
    c["name"]: c
    for c in map(
        json.loads,
        (ASSETS / "tokenization" / "cases.jsonl").read_text(encoding="utf-8").splitlines(),
    )
}
SYSTEM = (
    "You are an AI assistant named MMGPT who can understand and generate multimodal content, "
    "including text, speech, images and audio."
)


def _between(text, start, end):
    return text[text.index(start) : text.index(end) + len(end)]


def test_base_templates_exact():
    assert (
        base_x2t_prompt("Describe.", "<sosp><eosp>")
        == "[Human]: Describe. <sosp><eosp><eoh> [MMGPT]:"
    )
    assert base_t2x_prompt("Draw.", "a cat") == "[Human]: Draw. This is input: a cat<eoh> [MMGPT]:"
    case = CASES["base_x2t_image_train"]["text"]
    seg = _between(case, "<soim>", "<eoim>")
    assert (
        base_x2t_prompt("Write a caption for this image.", seg, "a cat sitting on a sofa") == case
    )
    case = CASES["base_t2x_music_train"]["text"]
    seg = _between(case, "<somu>", "<eomu>")
    assert (
        base_t2x_prompt(
            "Transform this caption into a musical journey.", "calm piano, 80 bpm.", seg
        )
        == case
    )
    case = CASES["base_t2x_image"]["text"]
    assert (
        base_t2x_prompt(
            "Make an image that corresponds to the text.", "A red circle on a white table."
        )
        == case
    )


def test_instruction_lists_as_trained():
    x2t, t2x = instruction_lists("x2t"), instruction_lists("t2x")
    assert {k: len(v) for k, v in x2t.items()} == {
        "speech": 236,
        "image": 211,
        "music": 99,
        "audio": 100,
    }
    assert {k: len(v) for k, v in t2x.items()} == {
        "speech": 212,
        "image": 109,
        "music": 89,
        "audio": 58,
    }
    assert len(set(x2t["speech"])) == 66 and len(set(t2x["music"])) == 83
    # instructions seen in AnyGPT's own prompts
    assert "Convert the speech into a written transcript." in x2t["speech"]
    assert "Write a caption for this image." in x2t["image"]
    assert "Make an image that corresponds to the text." in t2x["image"]
    assert "Transform this caption into a musical journey." in t2x["music"]


def test_instruction_choice_is_seedable():
    a = [choose_instruction("t2x", "speech", random.Random(3)) for _ in range(3)]
    b = [choose_instruction("t2x", "speech", random.Random(3)) for _ in range(3)]
    assert a == b


def test_chat_template_exact():
    case = CASES["chat_two_turns"]["text"]
    seg = _between(case, "<soim>", "<eoim>")
    conv = Conversation()
    conv.add_user(f"What is in the picture? {seg}")
    conv.add_assistant("A dog running on the beach.")
    conv.add_user("Draw it at night.")
    assert conv.render() == case
    assert conv.render().startswith(SYSTEM + "\n")


def test_chat_speech_reply_exact():
    case = CASES["chat_speech_reply"]["text"]
    user_seg = case[case.index("[Human]: ") + 9 : case.index("<eosp>") + 6]
    reply_seg = case[case.rindex("<sosp>") : case.rindex("<eosp>") + 6]
    conv = Conversation()
    conv.add_user(task_message("Speech-Instruction", speech=user_seg))
    conv.add_assistant(
        task_message(
            "Speech-Response",
            instruction="what is the weather like",
            response=f"It is sunny today. {reply_seg} ",
        )
    )
    assert conv.render() == case


def test_interleaved_order_images_music_speech_text():
    msg = interleaved_user_message("hi", images=["<I>"], music=["<M>"], speech=[])
    assert msg == "<I> <M> hi"
    # AnyGPT's chat line puts a space after each segment, then wraps the whole message, so an
    # empty text leaves two spaces before the task words
    msg = interleaved_user_message("", speech=["<S>"])
    assert msg == "<S>  Please recognize the voice command and give reply and voice"
    msg = interleaved_user_message("now", images=["<I>"], speech=["<S>"])
    assert msg == "<I> <S> now Please recognize the voice command and give reply and voice"


def test_anygpt_template_and_typos_kept():
    conv = Conversation(ANYGPT_TEMPLATE, [("user", "q"), ("assistant", "a")])
    assert conv.render().endswith("[Human]: q<eoh>\n[AnyGPT]: a<eom>")
    assert (
        task_message("Text-to-Image Generation", caption="a cat")
        == "a cat. Please generation an image."
    )
    assert "concisedescription" in task_message("Image Captioning", image="<I>")
