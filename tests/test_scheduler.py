"""Continuous batching: requests joining and leaving a running batch give one-by-one results."""

import threading

import pytest

from anygpt.bundle import Bundle
from anygpt.config import DecodingConfig
from anygpt.generation import generate
from anygpt.runtime.scheduler import Scheduler

GREEDY = DecodingConfig(do_sample=False, max_new_tokens=12)
SAMPLED = DecodingConfig(do_sample=True, temperature=0.9, top_k=40, max_new_tokens=12)


@pytest.fixture(scope="module")
def bundle(debug_bundle):
    return Bundle(debug_bundle, device="cpu")


@pytest.fixture(scope="module")
def prompts(bundle):
    tok = bundle.tokenizer
    texts = [
        "[Human]: hello<eoh> [MMGPT]:",
        "[Human]: tell me a long story about a red circle<eoh> [MMGPT]:",
        "[Human]: speak<eoh> [MMGPT]: <sosp>",
        "[Human]: play some music<eoh> [MMGPT]: <somu>",
        "[Human]: a picture please<eoh> [MMGPT]: <soim>",
        "[Human]: why<eoh> [MMGPT]:",
    ]
    return [tok.encode(t) for t in texts]


def _alone(bundle, prompt, cfg, **kw):
    scheduler = Scheduler(bundle.llm, bundle.layout, max_batch=1, max_length=128)
    request = scheduler.submit(prompt, cfg, stop_ids=[2], **kw)
    scheduler.run_until_idle()
    return request.tokens


def test_staggered_batched_greedy_equals_one_by_one(bundle, prompts):
    limits = [12, 5, 9, 12, 7, 3]
    alone = [
        _alone(bundle, p, GREEDY, max_new_tokens=n) for p, n in zip(prompts, limits, strict=True)
    ]
    scheduler = Scheduler(bundle.llm, bundle.layout, max_batch=3, max_length=128)
    requests, sizes = [], []
    for step in range(200):  # one new request every other step; at most three run at once
        if step % 2 == 0 and len(requests) < len(prompts):
            i = len(requests)
            requests.append(
                scheduler.submit(prompts[i], GREEDY, stop_ids=[2], max_new_tokens=limits[i])
            )
        if not scheduler.has_work and len(requests) == len(prompts):
            break
        scheduler.step()
        sizes.append(scheduler.running)
    assert [r.tokens for r in requests] == alone
    assert max(sizes) == 3 and all(r.finish_reason in ("stop", "length") for r in requests)
    assert alone[0] == generate(bundle.llm, bundle.layout, prompts[:1], GREEDY, stop_ids=[2])[0]


def test_seeded_sampling_in_a_batch_equals_alone(bundle, prompts):
    alone = [_alone(bundle, p, SAMPLED, seed=10 + i) for i, p in enumerate(prompts)]
    scheduler = Scheduler(bundle.llm, bundle.layout, max_batch=4, max_length=128)
    requests = [
        scheduler.submit(p, SAMPLED, stop_ids=[2], seed=10 + i) for i, p in enumerate(prompts)
    ]
    scheduler.run_until_idle()
    assert [r.tokens for r in requests] == alone
    assert len({tuple(t) for t in alone}) == len(alone)


def test_stop_ids_cut_and_limits_and_callbacks_are_per_request(bundle, prompts):
    free = _alone(bundle, prompts[1], GREEDY)
    stop = free[4]
    streamed, finished = [], []
    scheduler = Scheduler(bundle.llm, bundle.layout, max_batch=2, max_length=128)
    stopped = scheduler.submit(
        prompts[1],
        GREEDY,
        stop_ids=[2, stop],
        on_tokens=lambda r, new, done: (streamed.extend(new), done and finished.append(r.id)),
    )
    short = scheduler.submit(prompts[0], GREEDY, stop_ids=[2], max_new_tokens=2)
    outputs = list(scheduler.iter_steps())
    assert stopped.tokens == free[: free.index(stop)] and stopped.finish_reason == "stop"
    assert streamed == stopped.tokens and finished == [stopped.id]
    assert len(short.tokens) == 2 and short.finish_reason == "length"
    assert [o.new_tokens for o in outputs if o.request is short] == [[t] for t in short.tokens]
    assert stopped.wait(0) and short.first_token_at <= short.finished_at


def test_stop_text_ends_a_request_and_stays_in_its_ids(bundle, prompts):
    tok = bundle.tokenizer
    free = _alone(bundle, prompts[1], GREEDY)
    marker = tok.decode(free[:6])[-2:]
    assert marker.strip(), "the debug LLM's reply has text to stop on"
    scheduler = Scheduler(bundle.llm, bundle.layout, max_batch=1, max_length=128)
    request = scheduler.submit(prompts[1], GREEDY, stop_ids=[2], stop_texts=[marker])
    scheduler.run_until_idle()
    assert request.finish_reason == "stop_text" and tok.decode(request.tokens).endswith(marker)
    assert request.tokens == free[: len(request.tokens)] and len(request.tokens) <= 6


def test_cancellation_frees_the_row_and_spares_the_others(bundle, prompts):
    alone = _alone(bundle, prompts[0], GREEDY)
    scheduler = Scheduler(bundle.llm, bundle.layout, max_batch=2, max_length=128)
    keep = scheduler.submit(prompts[0], GREEDY, stop_ids=[])
    drop = scheduler.submit(prompts[1], GREEDY, stop_ids=[])
    waiting = scheduler.submit(prompts[2], GREEDY, stop_ids=[])
    scheduler.step()
    scheduler.step()
    scheduler.cancel(drop)
    scheduler.cancel(waiting.id)
    scheduler.step()
    assert drop.finish_reason == "cancelled" and len(drop.tokens) == 2
    assert waiting.finish_reason == "cancelled" and waiting.tokens == []
    assert scheduler.running == 1
    scheduler.run_until_idle()
    assert keep.tokens == alone


def test_requests_submitted_from_another_thread_join_the_batch(bundle, prompts):
    scheduler = Scheduler.for_bundle(bundle, max_batch=4)
    first = scheduler.submit(prompts[0], GREEDY, stop_ids=[2])
    late = []
    thread = threading.Thread(
        target=lambda: late.append(scheduler.submit(prompts[5], GREEDY, stop_ids=[2]))
    )
    scheduler.step()
    thread.start()
    thread.join()
    scheduler.run_until_idle()
    assert late[0].wait(1) and first.done
    assert late[0].tokens == _alone(bundle, prompts[5], GREEDY)


@pytest.mark.parametrize(
    ("prompt", "cfg", "kw", "message"),
    [
        ([], GREEDY, {}, "empty"),
        ([1] * 200, GREEDY, {}, "holds 128"),
        ([1, 10**6], GREEDY, {}, "must lie in"),
        ([1, 5], GREEDY.with_overrides(num_beams=2), {}, "beam search"),
        ([1, 5], GREEDY, {"max_new_tokens": 0}, "at least 1"),
        ([1, 5], GREEDY, {"span_decoding": {"smell": GREEDY}}, "no span named 'smell'"),
    ],
)
def test_bad_requests_are_one_clear_error(bundle, prompt, cfg, kw, message):
    scheduler = Scheduler(bundle.llm, bundle.layout, max_batch=1, max_length=128)
    with pytest.raises(ValueError, match=message):
        scheduler.submit(prompt, cfg, **kw)
    assert not scheduler.has_work


def test_a_full_cache_ends_the_request_by_length(bundle, prompts):
    scheduler = Scheduler(bundle.llm, bundle.layout, max_batch=1, max_length=len(prompts[0]) + 3)
    request = scheduler.submit(prompts[0], GREEDY, stop_ids=[], max_new_tokens=50)
    scheduler.run_until_idle()
    assert request.finish_reason == "length" and len(request.tokens) == 3


def test_min_new_tokens_holds_back_stop_ids_when_applied(bundle, prompts):
    first = _alone(bundle, prompts[0], GREEDY)[0]
    scheduler = Scheduler(bundle.llm, bundle.layout, max_batch=2, max_length=128)
    held = GREEDY.with_overrides(min_new_tokens=5, apply_min_new_tokens=True)
    early = scheduler.submit(prompts[0], GREEDY, stop_ids=[first])
    late = scheduler.submit(prompts[0], held, stop_ids=[first])
    scheduler.run_until_idle()
    assert early.tokens == [] and early.finish_reason == "stop"
    assert len(late.tokens) >= 5 and first not in late.tokens[:5]
