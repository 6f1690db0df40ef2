"""Batched and chunked prefill against one-prompt-at-a-time prefill and the uncached forward."""

from __future__ import annotations

import threading

import torch

from internlm.inference import Engine, SamplingParams
from internlm.inference.cached_forward import prefill, prefill_batch
from internlm.inference.kv_cache import KVCache

from inference_helpers import uncached

PROMPTS = [[1, 50, 60, 70], [1, 900], [1, *range(100, 131)], [1, 2000, 17, 3000, 5, 6]]


def new_cache(model, slots: int = 4, context: int = 64) -> KVCache:
    attn = model.layers["0"].self_attn
    return KVCache(model.config.num_layers, slots, attn.num_kv_heads, context, attn.head_dim,
                   dtype=torch.float64, device=torch.device("cpu"))


def filled_rows(cache: KVCache, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    return cache.keys[:, slot, :, :length], cache.values[:, slot, :, :length]


@torch.inference_mode()
def test_a_batch_of_prompts_in_one_prefill_equals_one_by_one(model64):
    alone, together = new_cache(model64), new_cache(model64)
    expected = [prefill(model64, alone, torch.tensor(p), slot) for slot, p in enumerate(PROMPTS)]
    width = max(map(len, PROMPTS))
    padded = torch.tensor([p + [0] * (width - len(p)) for p in PROMPTS])
    slots = [2, 0, 3, 1]  # rows need not be in slot order
    got = prefill_batch(model64, together, padded, slots, [0] * 4, [len(p) for p in PROMPTS])
    for row, (prompt, slot) in enumerate(zip(PROMPTS, slots)):
        torch.testing.assert_close(got[row], expected[row], rtol=0, atol=1e-12)
        for mine, reference in zip(filled_rows(together, slot, len(prompt)), filled_rows(alone, row, len(prompt))):
            torch.testing.assert_close(mine, reference, rtol=0, atol=1e-12)


@torch.inference_mode()
def test_a_prompt_prefilled_in_chunks_equals_it_whole(model64):
    prompt = PROMPTS[2]  # 32 tokens in chunks of 5, beside a second prompt chunked alongside it
    whole, chunked = new_cache(model64), new_cache(model64)
    expected = prefill(model64, whole, torch.tensor(prompt), 0)
    other = PROMPTS[3]
    expected_other = prefill(model64, whole, torch.tensor(other), 1)
    done = [0, 0]
    last = {}
    while done[0] < len(prompt):
        rows = [(0, prompt), (1, other)] if done[1] < len(other) else [(0, prompt)]
        pieces = [p[done[s]:done[s] + 5] for s, p in rows]
        tokens = torch.tensor([piece + [0] * (5 - len(piece)) for piece in pieces])
        logits = prefill_batch(model64, chunked, tokens, [s for s, _ in rows], [done[s] for s, _ in rows],
                               [len(piece) for piece in pieces])
        for index, (slot, _) in enumerate(rows):
            done[slot] += len(pieces[index])
            last[slot] = logits[index]
    torch.testing.assert_close(last[0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(last[1], expected_other, rtol=0, atol=1e-12)
    for slot, length in ((0, len(prompt)), (1, len(other))):
        for mine, reference in zip(filled_rows(chunked, slot, length), filled_rows(whole, slot, length)):
            torch.testing.assert_close(mine, reference, rtol=0, atol=1e-12)


class RecordingEngine(Engine):
    """The real engine, noting the order of its prefill and decode steps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps: list[tuple[str, tuple[int, ...]]] = []

    def _prefill_step(self):
        before = {r.slot: r.prefilled for r in self._prefilling}
        super()._prefill_step()
        if before:
            self.steps.append(("prefill", tuple(sorted(before))))

    def _decode_step(self):
        decoding = tuple(sorted(s for s, r in self._running.items() if not r.prompt_left))
        super()._decode_step()
        if decoding:
            self.steps.append(("decode", decoding))


def test_chunked_prefill_gives_the_uncached_tokens_and_lets_others_decode(model64, tokenizer):
    # A 4-token budget: the 32-token prompt takes 8 prefill steps, short prompts share one.
    greedy = SamplingParams(max_new_tokens=16, temperature=0)
    sampled = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=3)
    params = [greedy, sampled, greedy, sampled]
    expected = [uncached(model64, p, q) for p, q in zip(PROMPTS, params)]
    with RecordingEngine(model64, tokenizer, model_id="random", max_batch=4, prefill_chunk=4) as engine:
        first = engine.submit(PROMPTS[0], params[0])
        tokens = {0: list(next(iter(first)).token_ids)}  # request 0 is decoding now, in slot 0
        handles = {i: engine.submit(PROMPTS[i], params[i]) for i in (1, 2, 3)}  # slots 1, 2, 3
        rest = {}

        def client(index: int) -> None:
            rest[index] = [t for d in handles[index] for t in d.token_ids]

        threads = [threading.Thread(target=client, args=(i,)) for i in handles]
        for thread in threads:
            thread.start()
        tokens[0] += [t for d in first for t in d.token_ids]
        for thread in threads:
            thread.join(timeout=60)
        steps = engine.steps
    assert [tokens[0], rest[1], rest[2], rest[3]] == expected
    # The long prompt's prefill is spread over many steps, with decode steps of others between them.
    chunks = [i for i, (kind, slots) in enumerate(steps) if kind == "prefill" and 2 in slots]
    assert len(chunks) >= len(PROMPTS[2]) // 4
    between = [kind for kind, slots in steps[chunks[0]:chunks[-1]] if kind == "decode" and 0 in slots]
    assert len(between) >= len(chunks) - 1


def test_fused_projections_give_the_unfused_tokens_and_keep_the_weights(tokenizer):
    from inference_helpers import random_model

    model, reference = random_model(seed=2), random_model(seed=2)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    params = SamplingParams(max_new_tokens=12, temperature=0)
    with Engine(model, tokenizer, model_id="random", max_batch=2, fuse_projections=True) as engine:
        got = engine.generate(PROMPTS[:2], params)
    assert [c.token_ids for c in got] == [uncached(reference, p, params) for p in PROMPTS[:2]]
    attn = model.layers["0"].self_attn  # q, k, v are now views of one tensor, with the same values
    assert attn.k_proj.weight.data_ptr() == attn.q_proj.weight.data_ptr() + attn.q_proj.weight.numel() * 8
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
