"""Training data: tokenization with loss spans, stage-1 pairs, stage-2 masks, mixture, packing."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from anygpt.layout import ANYGPT_IMAGE, ANYGPT_MUSIC, ANYGPT_SPEECH, TokenLayout
from anygpt.prompts import ANYGPT_TEMPLATE, MMGPT_TEMPLATE
from anygpt.train.config import DataSpec, PretrainConfig, SFTConfig, TrainError
from anygpt.train.data import (
    SkipExample,
    group_weights,
    mixture_order,
    prepare_data,
    split_validation,
)
from anygpt.train.packing import (
    IGNORE,
    PackedCollator,
    labels_for,
    pack_first_fit,
    pack_greedy,
)
from anygpt.train.pretrain_data import PretrainExamples, default_x2t_prob
from anygpt.train.sft_data import SFTExamples, conversation_turns, render_with_spans
from anygpt.train.tokens import encode_with_loss

ROOT = Path(__file__).resolve().parent.parent
PRETRAIN = ROOT / "data" / "pretrain"
SPEECH_SEG = "<sosp><🗣️1><🗣️20><🗣️300><eosp>"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread, and the machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok(fixture_tokenizer):
    return fixture_tokenizer


@pytest.fixture(scope="module")
def modalities(tok):
    return TokenLayout([ANYGPT_IMAGE, ANYGPT_SPEECH, ANYGPT_MUSIC], tok).modalities


def runs(ids, loss):
    """Contiguous runs of trained ids."""
    out, cur = [], []
    for i, flag in zip(ids.tolist(), loss.tolist()):
        if flag:
            cur.append(i)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


# ---------------------------------------------------------------------- tokenization
@pytest.mark.parametrize(
    "text",
    [
        "[Human]: hello wörld 🗣️ x<eoh> [MMGPT]: fine<eos>",
        "sys line\n[Human]: <sosp><🗣️1><🗣️2><eosp> Please acknowledge<eoh>\n[AnyGPT]: ok<eom>",
        "a literal </s> and <s> inside, <unk> too, and <eom>\n\n",
        "<-Ins-> hello, how are you\n <-Res-> I am fine <sosp><🗣️2><eosp> ",
    ],
)
def test_ids_are_exactly_the_tokenizers(tok, text):
    ids, loss = encode_with_loss(tok, text, [(0, len(text))])
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert ids[1:-1].tolist() == tok.encode(text, add_bos=False)
    assert not loss[0] and loss[1:].all()


def test_no_span_no_loss_but_eos(tok):
    ids, loss = encode_with_loss(tok, "[Human]: hi<eoh>", [])
    assert loss.tolist() == [False] * (len(ids) - 1) + [True]


# ---------------------------------------------------------------------- stage 1
def test_modality_key_is_the_one_known_modality(tok, modalities):
    fn = PretrainExamples(tok, modalities, 4096)
    spec = DataSpec("x.jsonl", name="mls")
    rng = random.Random(0)
    # extra columns, before or after the modality key, are ignored (AnyGPT broke on them)
    ex = fn({"speech": SPEECH_SEG, "text": "hello world", "id": 3, "lang": "en"}, spec, rng)
    assert tok.token_to_id("<sosp>") in ex.ids
    bad = {
        "no modality key": {"text": "hello", "id": 1},
        "several modality keys": {"text": "hi", "speech": SPEECH_SEG, "image": "<soim><eoim>"},
        "no text": {"speech": SPEECH_SEG, "text": "  "},
        "malformed speech segment": {"speech": "<👀1>", "text": "hi"},
        "modality 'audio' not in the model's vocabulary": {"audio": "<soau><eoau>", "text": "x"},
    }
    for reason, row in bad.items():
        with pytest.raises(SkipExample, match=reason.replace("(", r"\(").replace(")", r"\)")):
            fn(row, spec, rng)


def _direction(tok, ex):
    body = tok.decode(ex.ids.tolist())
    return "t2x" if "This is input:" in body else "x2t"


def test_direction_mixture_is_anygpts_intended_one(tok, modalities):
    fn = PretrainExamples(tok, modalities, 4096)
    image = "<soim>" + "".join(f"<👀{i}>" for i in range(32)) + "<eoim>"
    count = Counter()
    for name, modality, seg in [
        ("laion-coco-caption", "image", image),
        ("journeydb", "image", image),
        ("mls", "speech", SPEECH_SEG),
    ]:
        for k in range(200):
            ex = fn({"text": "a cat", modality: seg}, DataSpec("x", name=name), random.Random(k))
            assert ex.ids[0] == tok.bos_id and ex.ids[-1] == tok.eos_id  # </s> always
            assert ex.ids[-2] == tok.token_to_id("<eos>")
            count[name, _direction(tok, ex)] += 1
    assert count["laion-coco-caption", "x2t"] == 200  # caption datasets: x2t only
    assert count["journeydb", "t2x"] == 200  # other image datasets: t2x only
    assert 70 <= count["mls", "x2t"] <= 130  # speech: 50/50
    assert default_x2t_prob("music", "music-1m") == 0.5
    forced = DataSpec("x", name="mls", x2t_prob=1.0)
    assert all(
        _direction(tok, fn({"text": "a", "speech": SPEECH_SEG}, forced, random.Random(k))) == "x2t"
        for k in range(20)
    )


def test_answer_only_loss(tok, modalities):
    fn = PretrainExamples(tok, modalities, 4096, train_on_prompt=False)
    eos_tag = tok.token_to_id("<eos>")
    x2t = DataSpec("x", name="cap", x2t_prob=1.0)
    ex = fn({"text": "hello world", "speech": SPEECH_SEG}, x2t, random.Random(0))
    assert ex.ids[ex.loss].tolist() == tok.sp.encode("hello world") + [eos_tag, tok.eos_id]
    t2x = DataSpec("x", name="gen", x2t_prob=0.0)
    ex = fn({"text": "hello world", "speech": SPEECH_SEG}, t2x, random.Random(0))
    seg_ids = tok.encode(SPEECH_SEG, add_bos=False)
    sep, *rest = ex.ids[ex.loss].tolist()  # the prompt ends at ":", the answer opens " <sosp>"
    assert tok.decode([sep]).strip() == "" and rest == seg_ids + [eos_tag, tok.eos_id]
    full = PretrainExamples(tok, modalities, 4096)(
        {"text": "hi", "speech": SPEECH_SEG}, t2x, random.Random(0)
    )
    assert not full.loss[0] and full.loss[1:].all()  # AnyGPT: labels = inputs


def test_long_pairs_are_dropped(tok, modalities):
    fn = PretrainExamples(tok, modalities, block_size=40)
    long_seg = "<sosp>" + "<🗣️5>" * 50 + "<eosp>"
    with pytest.raises(SkipExample, match="longer than block_size"):
        fn({"text": "a", "speech": long_seg}, DataSpec("x", name="mls"), random.Random(0))


# ---------------------------------------------------------------------- stage 2
TURNS = [
    ("user", "hi there"),
    ("assistant", "hello friend"),
    ("user", "how are you"),
    ("assistant", "fine thanks"),
]


def test_mmgpt_mask_token_by_token(tok):
    """Expected ids and loss built piece by piece (the tags are added tokens)."""
    t = MMGPT_TEMPLATE
    sp = tok.sp.encode
    colon = sp(":")
    ids, loss = [tok.bos_id], [False]

    def add(pieces, flag):
        ids.extend(pieces)
        loss.extend([flag] * len(pieces))

    add(sp(t.system + "\n"), False)
    for i, (role, msg) in enumerate(TURNS):
        if role == "user":
            add([tok.token_to_id("[Human]")], False)
            add(sp(": " + msg), False)
            add([tok.token_to_id("<eoh>")], False)
            add(sp("\n"), False)
        else:
            add([tok.token_to_id("[MMGPT]")], False)
            piece = sp(": " + msg)
            assert piece[: len(colon)] == colon  # ":" is its own token with this model
            add(colon, False)
            add(piece[len(colon) :], True)  # the message (with its separating space)
            add([tok.token_to_id("<eos>")], True)
            if i < len(TURNS) - 1:
                add(sp("\n"), False)
    add([tok.eos_id], True)
    ex = SFTExamples(tok, t, 4096).encode(TURNS)
    assert ex.ids.tolist() == ids
    assert ex.loss.tolist() == loss


def test_the_separator_before_a_reply_opening_with_a_tag_is_trained(tok):
    """Generation prompts end at ``[MMGPT]:``; a reply that opens with a tag starts with a lone
    separator token, which the model must learn to write (else it never starts such a reply)."""
    turns = [("user", "hi"), ("assistant", "<-Res-> fine")]
    ex = SFTExamples(tok, MMGPT_TEMPLATE, 4096).encode(turns)
    ids = ex.ids.tolist()
    res = ids.index(tok.token_to_id("<-Res->"))
    assert tok.decode([ids[res - 1]]).strip() == "" and ids[res - 2] == tok.sp.encode(":")[-1]
    assert ex.loss[res - 1] and ex.loss[res] and not ex.loss[res - 2]
    # a plain reply: the space lives in the first word's token, ':' stays untrained
    plain = SFTExamples(tok, MMGPT_TEMPLATE, 4096).encode([("user", "hi"), ("assistant", "fine")])
    ids = plain.ids.tolist()
    colon = ids.index(tok.sp.encode(":")[-1], ids.index(tok.token_to_id("[MMGPT]")))
    assert not plain.loss[: colon + 1].any() and plain.loss[colon + 1]
    # a lone space before a tag that does not open a loss span carries none
    text = "[Human]: hi <eoh> x"
    ids2, loss2 = encode_with_loss(tok, text, [(len(text) - 1, len(text))], add_eos=False)
    eoh = ids2.tolist().index(tok.token_to_id("<eoh>"))
    assert (
        tok.decode([int(ids2[eoh - 1])]).strip() == "" or tok.decode([int(ids2[eoh - 1])]) == "hi"
    )
    assert not loss2[: eoh + 1].any() and loss2[-1]


def test_anygpt_template_mask_with_plain_text_tags(tok):
    ex = SFTExamples(tok, ANYGPT_TEMPLATE, 4096).encode(TURNS)
    text, _ = render_with_spans(ANYGPT_TEMPLATE, TURNS)
    assert ex.ids[1:-1].tolist() == tok.encode(text, add_bos=False)
    got = [tok.decode(r) for r in runs(ex.ids, ex.loss)]
    # "<eom>" is several SentencePiece tokens, all trained; the "\n" after it is not
    assert got == ["hello friend<eom>", "fine thanks<eom>"]
    nl = tok.sp.encode("\n")[-1]
    first_run_end = next(i for i in range(1, len(ex.ids)) if ex.loss[i - 1] and not ex.loss[i])
    assert ex.ids[first_run_end] == nl
    assert "[AnyGPT]" not in "".join(got) and "[Human]" not in "".join(got)


def test_speech_reply_from_the_sample_file(tok):
    row = json.loads((ROOT / "data" / "instruction" / "anyinstruct_speech.jsonl").read_text())
    turns, notes = conversation_turns(row)  # nested [[...]] shape
    assert [r for r, _ in turns] == ["user", "assistant"] and not notes
    for template, end in ((MMGPT_TEMPLATE, "<eos>"), (ANYGPT_TEMPLATE, "<eom>")):
        ex = SFTExamples(tok, template, 4096)(row, DataSpec("x"), random.Random(0))
        (run,) = runs(ex.ids, ex.loss)
        assert run[-1] == tok.eos_id
        assert tok.decode(run) == turns[1][1] + end  # <-Ins-> ... <-Res-> ... <sosp>...<eosp>
        assert tok.token_to_id("<-Ins->") in run and tok.token_to_id("<-Res->") in run


def test_roles_and_shapes(tok):
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert conversation_turns(sharegpt)[0] == [("user", "q"), ("assistant", "a")]
    upper = {
        "conversation": [{"role": "User", "message": "q"}, {"role": "ASSISTANT", "message": "a"}]
    }
    assert conversation_turns(upper)[0] == [("user", "q"), ("assistant", "a")]
    trailing = {"conversation": [*upper["conversation"], {"role": "user", "message": "more"}]}
    turns, notes = conversation_turns(trailing)
    assert len(turns) == 2 and notes == ("trailing user turn dropped",)
    bad = [
        ({"conversation": [{"role": "assistant", "message": "a"}]}, "alternate"),
        (
            {"conversation": [{"role": "user", "message": "a"}, {"role": "user", "message": "b"}]},
            "alternate",
        ),
        ({"conversation": [{"role": "system", "message": "a"}]}, "unknown role"),
        ({"conversation": [{"role": "user", "message": 3}]}, "not text"),
        ({"conversation": []}, "no conversation"),
        ({"id": 1}, "no conversation"),
        ({"conversation": [{"role": "user", "message": "only"}]}, "no assistant turn"),
    ]
    for row, reason in bad:
        with pytest.raises(SkipExample, match=reason):
            conversation_turns(row)


def test_long_conversations_lose_later_turns(tok):
    turns = []
    for k in range(6):
        turns += [("user", f"question {k} " * 5), ("assistant", f"answer {k} " * 5)]
    row = {"conversation": [{"role": r, "message": m} for r, m in turns]}
    full = SFTExamples(tok, MMGPT_TEMPLATE, 10_000).encode(turns)
    limit = len(full.ids) - 10
    ex = SFTExamples(tok, MMGPT_TEMPLATE, limit)(row, DataSpec("x"), random.Random(0))
    assert len(ex.ids) <= limit and ex.notes == ("truncated (later turns dropped)",)
    shorter = SFTExamples(tok, MMGPT_TEMPLATE, 10_000).encode(turns[:10])
    assert ex.ids.tolist() == shorter.ids.tolist()  # whole pairs dropped, ends with </s>
    with pytest.raises(SkipExample, match="first turn longer"):
        SFTExamples(tok, MMGPT_TEMPLATE, 20)(row, DataSpec("x"), random.Random(0))


def test_sft_replays_stage_one_pairs(tok, modalities):
    replay = PretrainExamples(tok, modalities, 4096, train_on_prompt=False)
    fn = SFTExamples(tok, MMGPT_TEMPLATE, 4096, replay)
    pair = {"text": "hello world", "speech": SPEECH_SEG}
    spec = DataSpec("x", name="cap", x2t_prob=1.0)
    ex = fn(pair, spec, random.Random(0))
    want = replay(pair, spec, random.Random(0))
    assert ex.ids.tolist() == want.ids.tolist() and ex.loss.tolist() == want.loss.tolist()
    assert ex.notes == ("replay", "speech x2t")
    # conversations still go through the chat template; without a replay builder a pair is skipped
    row = {
        "conversation": [{"role": "user", "message": "hi"}, {"role": "assistant", "message": "yo"}]
    }
    assert (
        fn(row, spec, random.Random(0)).ids.tolist()
        == fn.encode([("user", "hi"), ("assistant", "yo")]).ids.tolist()
    )
    with pytest.raises(SkipExample, match="no conversation"):
        SFTExamples(tok, MMGPT_TEMPLATE, 4096)(pair, spec, random.Random(0))
    with pytest.raises(SkipExample, match="no conversation"):  # neither a pair nor a chat
        fn({"conv": [], "id": 3}, spec, random.Random(0))


# ---------------------------------------------------------------------- mixture and split
def test_validation_split():
    tr, va = split_validation(10, 5, 42)
    assert len(va) == 5 and sorted(set(tr) | set(va)) == list(range(10))
    assert split_validation(10, 5, 42)[1].tolist() == va.tolist()  # seeded
    assert len(split_validation(3, 10, 42)[1]) == 1  # at most half
    assert len(split_validation(1, 10, 42)[1]) == 0


def test_mixture_weights_and_groups():
    pools = {"a": [(0, i) for i in range(10)], "b": [(1, i) for i in range(3)]}
    order = mixture_order(pools, {"a": 0.25, "b": 0.75}, 4000, seed=1)
    share_b = sum(d == 1 for d, _ in order) / len(order)
    assert abs(share_b - 0.75) < 0.03
    assert Counter(order[:3000]) and set(order) == set(pools["a"]) | set(pools["b"])
    assert order == mixture_order(pools, {"a": 0.25, "b": 0.75}, 4000, seed=1)
    specs = [DataSpec("x/mls.jsonl", group="speech"), DataSpec("x/cv.jsonl", group="speech")]
    assert group_weights(specs, [4, 6], {}) == {"speech": 10.0}
    with pytest.raises(TrainError, match="no weight for group"):
        group_weights([DataSpec("x/music.jsonl")], [3], {"speech": 1.0})


# ---------------------------------------------------------------------- packing
def test_packing_keeps_every_token_and_never_splits():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 900, size=500).tolist()
    greedy = pack_greedy(lengths, 4500)
    first_fit = pack_first_fit(lengths, 4500, window=64)
    for blocks in (greedy, first_fit):
        flat = [i for b in blocks for i in b]
        assert sorted(flat) == list(range(len(lengths)))  # each example exactly once
        assert all(sum(lengths[i] for i in b) <= 4500 for b in blocks)
    assert [i for b in greedy for i in b] == list(range(len(lengths)))  # greedy keeps order

    def padding(blocks):
        return 1 - sum(lengths) / (len(blocks) * 4500)

    assert padding(first_fit) < padding(greedy) and padding(first_fit) < 0.05
    with pytest.raises(ValueError, match="longer than the block"):
        pack_greedy([10, 5000], 4500)


def test_collator_positions_labels_and_padding():
    coll = PackedCollator(pad_id=0, pad_to_multiple_of=8)
    a = labels_for(np.array([1, 5, 6, 2]), np.array([False, True, True, True]))
    b = labels_for(np.array([1, 7, 2]), np.array([False, False, True]))
    row = {"input_ids": [1, 5, 6, 2, 1, 7, 2], "labels": [*a, *b], "seq_lens": [4, 3]}
    batch = coll([row, {"input_ids": [1, 9], "labels": [IGNORE, 9], "seq_lens": [2]}])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert batch["labels"].tolist() == [
        [IGNORE, 5, 6, 2, IGNORE, IGNORE, 2, IGNORE],  # no label at an example's first token
        [IGNORE, 9, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE],
    ]
    assert coll.real_tokens == 9 and coll.pad_tokens == 7


def test_packed_examples_do_not_see_each_other():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, use_cache=False,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    seqs = [torch.randint(3, 64, (n,)) for n in (7, 5, 9)]
    rows = [
        {
            "input_ids": s.tolist(),
            "labels": labels_for(s.numpy(), np.ones(len(s), bool)).tolist(),
            "seq_lens": [len(s)],
        }
        for s in seqs
    ]
    packed = {k: sum((r[k] for r in rows), []) for k in ("input_ids", "labels", "seq_lens")}
    coll = PackedCollator(0, 8)
    batch = coll([packed])
    with torch.no_grad():
        out = model(**batch)
        start = 0
        total, count = 0.0, 0
        for s, r in zip(seqs, rows):
            alone = model(**coll([r]))
            n = len(s)
            torch.testing.assert_close(
                out.logits[0, start : start + n], alone.logits[0, :n], atol=1e-5, rtol=1e-5
            )
            total += float(alone.loss) * (n - 1)
            count += n - 1
            start += n
    assert abs(float(out.loss) - total / count) < 1e-5  # same loss as the examples one by one


# ---------------------------------------------------------------------- the whole pipeline
def test_prepare_pretrain_data_from_the_samples(tok, modalities, tmp_path):
    files = [
        "speech/mls.jsonl",
        "speech/gigaspeech.jsonl",
        "image/laion-coco-caption.jsonl",
        "music/music-1m.jsonl",
    ]
    cfg = PretrainConfig(
        model="unused",
        output_dir=str(tmp_path),
        datasets=[DataSpec(str(PRETRAIN / f)) for f in files],
        block_size=4500,
    )
    logs = []
    data = prepare_data(cfg, tok, PretrainExamples(tok, modalities, 4500), log=logs.append)
    st = data.stats
    assert st["train"]["kept"] == 20 and st["validation"]["kept"] == 20  # 5 held out of 10 each
    assert not st["train"]["skipped"]
    assert sum(len(r) for r in data.train["input_ids"]) == st["train"]["tokens"]  # nothing lost
    n_labels = sum(sum(x != IGNORE for x in r) for r in data.train["labels"])
    assert n_labels == st["train"]["loss_tokens"]
    assert all(len(r) <= 4500 for r in data.train["input_ids"])
    assert sum(len(s) for s in data.train["seq_lens"]) == 20
    assert any("packed into blocks of 4500" in line for line in logs)
    again = prepare_data(cfg, tok, PretrainExamples(tok, modalities, 4500), log=logs.append)
    assert "cached" in logs[-2] and again.train["input_ids"] == data.train["input_ids"]


def test_prepare_sft_data_counts_bad_rows(tok, tmp_path):
    good = json.loads((ROOT / "data" / "instruction" / "anyinstruct_speech.jsonl").read_text())
    rows = [good] * 3 + [
        {"conversation": [{"role": "assistant", "message": "x"}]},
        {"no": "conversation"},
    ]
    path = tmp_path / "conv.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{broken\n")
    cfg = SFTConfig(
        model="unused", output_dir=str(tmp_path), datasets=[DataSpec(str(path))], val_set_size=0
    )
    data = prepare_data(cfg, tok, SFTExamples(tok, MMGPT_TEMPLATE, 4096), log=lambda m: None)
    st = data.stats["train"]
    assert st["kept"] == 3 and data.validation is None
    assert st["skipped"] == {
        "roles do not alternate starting with user": 1,
        "no conversation": 1,
        "malformed JSON line": 1,
    }


def test_parallel_tokenization_gives_the_same_data(tok, modalities, tmp_path):
    files = ["speech/mls.jsonl", "image/journeydb.jsonl"]
    built = []
    for workers in (1, 2):
        cfg = PretrainConfig(
            model="unused",
            output_dir=str(tmp_path / f"w{workers}"),
            datasets=[DataSpec(str(PRETRAIN / f)) for f in files],
            mixture={"mls": 1.0, "journeydb": 1.0},
            num_examples=300,  # two chunks of 256, so the pool is used
            preprocessing_num_workers=workers,
        )
        fn = PretrainExamples(tok, modalities, cfg.block_size)
        built.append(prepare_data(cfg, tok, fn, log=lambda m: None))
    assert built[0].stats["train"]["kept"] == 300
    assert built[0].train["input_ids"] == built[1].train["input_ids"]
    assert built[0].train["labels"] == built[1].train["labels"]
