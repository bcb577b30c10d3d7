"""Sharded Parquet tokenization (streamed, resumable per shard) and streamed training rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from anygpt.train.config import DataSpec, PretrainConfig
from anygpt.train.packing import pack
from anygpt.train.streaming import OnlinePacker


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from anygpt.debug_bundle import write_debug_bundle

    root = tmp_path_factory.mktemp("shards") / "bundle"
    return write_debug_bundle(root, modalities=("speech",), soundstorm=False, seed=1, hidden=32)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shard-media")
    t = np.arange(4000) / 16000
    for k in range(3):
        sf.write(d / f"s{k}.wav", 0.3 * np.sin(2 * np.pi * (200 + 60 * k) * t), 16000)
    path = d / "manifest.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(23):
            media = "missing.wav" if i == 5 else f"s{i % 3}.wav"
            f.write(json.dumps({"id": i, "text": f"row number {i}", "speech": media}) + "\n")
    return path


def _tokenize(manifest, bundle, out, shards, index, **kw):
    from anygpt.train.shards import ShardPlan, tokenize_to_shards
    from anygpt.train.tokenize_media import TokenizeConfig

    cfg = TokenizeConfig(str(manifest), str(bundle), str(out), batch_size=3, device="cpu", **kw)
    return tokenize_to_shards(cfg, ShardPlan.resolve(shards, index, rows_per_part=4))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith("progress")
    }


def test_online_packing_gives_the_blocks_of_whole_list_packing():
    rng = np.random.default_rng(0)
    for trial in range(30):
        lengths = rng.integers(1, 90, size=int(rng.integers(1, 200))).tolist()
        for strategy, window in (
            ("greedy", 1),
            ("first_fit", 1),
            ("first_fit", 4),
            ("first_fit", 64),
        ):
            packer = OnlinePacker(100, strategy, window)
            blocks = [b for i, n in enumerate(lengths) for b in packer.add(i, n)]
            blocks += packer.finish()
            assert blocks == pack(lengths, 100, strategy, window), (trial, strategy, window)


def test_shard_plan_defaults_to_the_launchers_rank(monkeypatch):
    from anygpt.train.config import TrainError
    from anygpt.train.shards import ShardPlan

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert ShardPlan.resolve(None, None, 10) == ShardPlan(4, 3, 10)
    assert ShardPlan.resolve(2, 1, 10) == ShardPlan(2, 1, 10)  # explicit values win
    with pytest.raises(TrainError, match="shard-index"):
        ShardPlan.resolve(2, 2, 10)


def test_shards_cover_every_row_once_and_datasets_loads_them(manifest, bundle, tmp_path):
    import datasets

    out = tmp_path / "tok"
    summaries = [_tokenize(manifest, bundle, out, 2, s) for s in (0, 1)]
    assert sum(s.written for s in summaries) == 22 and sum(s.failed for s in summaries) == 1
    ds = datasets.load_dataset("parquet", data_files=str(out / "*.parquet"), split="train")
    assert sorted(ds["text"]) == sorted(f"row number {i}" for i in range(23) if i != 5)
    assert all(s.startswith("<sosp><🗣️") and s.endswith("<eosp>") for s in ds["speech"])
    errors = (out / ".tokenize" / "errors-00001.jsonl").read_text().splitlines()
    assert [json.loads(e)["row"] for e in errors] == [5]  # row 5 belongs to shard 1 of 2


def test_a_killed_shard_resumes_to_identical_files(manifest, bundle, tmp_path, monkeypatch):
    import anygpt.train.shards as shards

    whole = tmp_path / "whole"
    _tokenize(manifest, bundle, whole, 2, 1)

    cut = tmp_path / "cut"
    real = shards._write_part
    calls = []

    def dies_on_the_third_part(path, modality, rows):
        calls.append(path)
        if len(calls) == 3:
            path.with_name(path.name + ".tmp").write_bytes(b"half a part")
            raise KeyboardInterrupt  # the process is killed while writing
        real(path, modality, rows)

    monkeypatch.setattr(shards, "_write_part", dies_on_the_third_part)
    with pytest.raises(KeyboardInterrupt):
        _tokenize(manifest, bundle, cut, 2, 1)
    assert len(list(cut.glob("*.parquet"))) == 2
    monkeypatch.setattr(shards, "_write_part", real)
    again = _tokenize(manifest, bundle, cut, 2, 1)
    assert again.skipped > 0  # it continued, it did not start again
    assert _files(cut) == _files(whole)
    with pytest.raises(shards.TrainError, match="other settings"):
        _tokenize(manifest, bundle, cut, 3, 1)


# ---------------------------------------------------------------------- streamed training rows
@pytest.fixture(scope="module")
def pair_sources(tmp_path_factory) -> list[Path]:
    """The same kind of pairs twice: as JSON Lines and as Parquet parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    d = tmp_path_factory.mktemp("pairs")
    words = ["hello", "world", "speech", "token", "music", "model", "train", "test"]

    def rows(n):
        out = []
        for _ in range(n):
            units = "".join(f"<🗣️{rng.randrange(1024)}>" for _ in range(rng.randrange(4, 30)))
            text = " ".join(rng.choice(words) for _ in range(rng.randrange(2, 7)))
            out.append({"text": text, "speech": f"<sosp>{units}<eosp>"})
        return out

    jsonl = d / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(20)))
    parts = d / "b"
    parts.mkdir()
    for k in range(2):
        pq.write_table(pa.Table.from_pylist(rows(9)), parts / f"part-00000-{k:05d}.parquet")
    return [jsonl, parts]


def _config(bundle, sources, out, **kw):
    base = dict(
        model=str(bundle), output_dir=str(out), datasets=[DataSpec(str(p)) for p in sources],
        precision="fp32", warmup_ratio=0.0, logging_steps=1, save_steps=1000, val_set_size=2,
        eval_steps=1000, block_size=192, pack_window=4, max_steps=4, learning_rate=1e-3,
        per_device_train_batch_size=2,
    )  # fmt: skip
    base.update(kw)
    return PretrainConfig(**base)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"packing": "greedy", "mixture": {"a": 1.0, "b": 3.0}, "num_examples": 40},
        {"pack": False},
    ],
)
def test_streamed_rows_are_the_cached_rows_in_order(bundle, pair_sources, tmp_path, kw):
    from anygpt.bundle import Bundle
    from anygpt.layout import ROLE_TAGS, TokenLayout
    from anygpt.train.data import prepare_data
    from anygpt.train.pretrain_data import PretrainExamples
    from anygpt.train.streaming import prepare_streaming
    from anygpt.train.vocab import extend_tokenizer

    cfg = _config(bundle, pair_sources, tmp_path, **kw)
    b = Bundle(cfg.model, device="cpu")
    tokenizer, _ = extend_tokenizer(b.tokenizer, list(ROLE_TAGS))
    layout = TokenLayout(b.layout.modalities.values(), tokenizer)
    fn = PretrainExamples(tokenizer, layout.modalities, cfg.max_length, True)
    cached = prepare_data(cfg, tokenizer, fn, log=lambda m: None)
    streamed = prepare_streaming(cfg, tokenizer, fn, log=lambda m: None)
    rows = list(streamed.train)
    assert len(rows) == len(cached.train) > 3
    assert rows == [cached.train[i] for i in range(len(cached.train))]
    assert streamed.train.kept == cached.stats["train"]["kept"]
    assert streamed.validation[:] == cached.validation[:]
    if cfg.pack:
        assert max(len(r["seq_lens"]) for r in rows) > 1  # packing happened


def test_streaming_training_equals_the_cached_rows_read_in_order(
    bundle, pair_sources, tmp_path, monkeypatch
):
    import anygpt.train.engine as engine

    losses = {}
    real = engine.training_arguments

    def in_order(cfg, has_eval):
        args = real(cfg, has_eval)
        args.train_sampling_strategy = "sequential"  # the cached rows in built order
        return args

    losses["stream"] = engine.run_training(
        _config(bundle, pair_sources, tmp_path / "s", streaming=True), record_losses=True
    ).losses
    monkeypatch.setattr(engine, "training_arguments", in_order)
    losses["cached"] = engine.run_training(
        _config(bundle, pair_sources, tmp_path / "c"), record_losses=True
    ).losses
    assert len(losses["stream"]) == 4
    assert losses["stream"] == pytest.approx(losses["cached"], abs=1e-6, rel=0)
    assert len(set(np.round(losses["stream"], 4))) == 4  # four different batches
