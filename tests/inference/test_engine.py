"""The engine against the plain uncached forward: token for token, batched, streamed, continuous."""

from __future__ import annotations

import threading
import time

import pytest

from internlm.inference import Engine, SamplingParams

from inference_helpers import uncached

PROMPTS = [[1, 50, 60, 70], [1, 900], [1, *range(100, 130)], [1, 2000, 17, 3000, 5, 6]]
GREEDY = SamplingParams(max_new_tokens=24, temperature=0)
SAMPLED = SamplingParams(max_new_tokens=24, temperature=0.9, top_p=0.9, top_k=50, seed=7)
PENALISED = SamplingParams(max_new_tokens=24, temperature=0, repetition_penalty=1.3)


@pytest.fixture(scope="module")
def engine(model64, tokenizer):
    with Engine(model64, tokenizer, model_id="random", max_batch=3) as engine:
        yield engine


@pytest.mark.parametrize("params", [GREEDY, SAMPLED, PENALISED], ids=["greedy", "sampled", "repetition_penalty"])
def test_cached_equals_uncached(engine, model64, params):
    for prompt in PROMPTS[:2]:
        expected = uncached(model64, prompt, params)
        assert len(set(expected)) > 3  # the model does not just repeat one token
        assert engine.generate([prompt], params)[0].token_ids == expected


def test_batched_equals_one_by_one_with_own_lengths(engine, model64):
    # 4 prompts on 3 slots: one waits for a free slot; each stops at its own stop id or length.
    stop = uncached(model64, PROMPTS[0], GREEDY)[5]
    params = SamplingParams(max_new_tokens=20, temperature=0, stop_ids=(stop,))
    expected = [uncached(model64, p, params) for p in PROMPTS]
    got = engine.generate(PROMPTS, params)
    assert [c.token_ids for c in got] == expected
    assert got[0].finish_reason == "stop" and got[0].token_ids[-1] == stop and len(got[0].token_ids) == 6
    assert [c.finish_reason for c in got] == ["stop" if e[-1] == stop else "length" for e in expected]
    assert [c.prompt_tokens for c in got] == [len(p) for p in PROMPTS]
    assert [c.completion_tokens for c in got] == [len(e) for e in expected]


def test_continuous_batching_with_staggered_arrivals_equals_each_alone(engine, model64):
    params = [SamplingParams(max_new_tokens=30, temperature=0), SamplingParams(max_new_tokens=12, temperature=0.7, seed=3),
              SamplingParams(max_new_tokens=25, temperature=0), SamplingParams(max_new_tokens=18, temperature=1.0, seed=11)]
    expected = [uncached(model64, p, q) for p, q in zip(PROMPTS, params)]
    results: dict[int, list[int]] = {}

    def client(index: int) -> None:
        time.sleep(0.02 * index)  # arrive while others are mid-decode
        results[index] = [t for d in engine.submit(PROMPTS[index], params[index]) for t in d.token_ids]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [results[i] for i in range(4)] == expected


def test_stream_joins_to_generate(engine, tokenizer):
    prompt = tokenizer.encode("你好，世界", bos=True)
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=5)
    deltas = list(engine.stream(prompt, params))
    final = engine.generate([prompt], params)[0]
    assert "".join(d.text for d in deltas) == final.text == tokenizer.decode(final.token_ids)
    assert [t for d in deltas for t in d.token_ids] == final.token_ids
    assert [d.finish_reason for d in deltas] == [None] * (len(deltas) - 1) + ["length"]


def test_stop_strings_cut_the_text(engine, model64, tokenizer):
    prompt = PROMPTS[1]
    ids = uncached(model64, prompt, GREEDY)
    full = tokenizer.decode(ids)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = full.index(stop)
    params = SamplingParams(max_new_tokens=24, temperature=0, stop_strings=(stop,))
    completion = engine.generate([prompt], params)[0]
    assert completion.text == full[:cut] and completion.finish_reason == "stop"
    assert "".join(d.text for d in engine.stream(prompt, params)) == full[:cut]


def test_completion_stops_at_the_context(model64, tokenizer):
    with Engine(model64, tokenizer, model_id="random", max_batch=1, max_context=10) as small:
        completion = small.generate([PROMPTS[0]], SamplingParams(max_new_tokens=50, temperature=0))[0]
    assert completion.finish_reason == "length" and completion.completion_tokens == 10 - len(PROMPTS[0])
    assert completion.token_ids == uncached(model64, PROMPTS[0], SamplingParams(max_new_tokens=6, temperature=0))


def test_cancel_frees_the_slot(model64, tokenizer):
    with Engine(model64, tokenizer, model_id="random", max_batch=1) as one_slot:
        handle = one_slot.submit(PROMPTS[0], SamplingParams(max_new_tokens=200, temperature=0))
        next(iter(handle))
        handle.cancel()
        list(handle)  # ends
        # The only slot is free again: a second request runs to its end.
        done = one_slot.generate([PROMPTS[1]], SamplingParams(max_new_tokens=5, temperature=0))[0]
    assert done.completion_tokens == 5
