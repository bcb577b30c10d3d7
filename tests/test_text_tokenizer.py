import json
from pathlib import Path

import pytest

from anygpt.text_tokenizer import TextTokenizer, TextTokenizerError

ASSETS = Path(__file__).parent / "assets"

CASES = [
    json.loads(line)
    for line in (ASSETS / "tokenization" / "cases.jsonl").read_text(encoding="utf-8").splitlines()
]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_ids_match_slow_llama_tokenizer(fixture_tokenizer, case):
    assert fixture_tokenizer.encode(case["text"]) == case["ids"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_decode_keeps_added_tokens_verbatim(fixture_tokenizer, case):
    text = fixture_tokenizer.decode(case["ids"])
    # re-encoding what we decoded gives the same added-token ids in the same order
    again = fixture_tokenizer.encode(text)
    added = set(fixture_tokenizer.id_to_added)
    assert [i for i in again if i in added] == [i for i in case["ids"] if i in added]


def test_plain_tags_stay_text(fixture_tokenizer):
    ids = fixture_tokenizer.encode("<eot> [AnyGPT] <eom>", add_bos=False)
    assert not set(ids) & set(fixture_tokenizer.id_to_added)


def test_save_and_reload_round_trip(fixture_tokenizer, tmp_path):
    fixture_tokenizer.save(tmp_path)
    again = TextTokenizer.from_dir(tmp_path)
    text = CASES[0]["text"]
    assert again.encode(text) == fixture_tokenizer.encode(text)


def test_missing_files_are_clear(tmp_path):
    with pytest.raises(TextTokenizerError, match="added_tokens.json"):
        TextTokenizer.from_dir(tmp_path)
    with pytest.raises(TextTokenizerError, match="SentencePiece model not found"):
        TextTokenizer(tmp_path / "nope.model", {})


def test_added_id_inside_base_vocab_rejected():
    with pytest.raises(TextTokenizerError, match="inside the base vocabulary"):
        TextTokenizer(ASSETS / "tokenization" / "spm.model", {"<x>": 5})
