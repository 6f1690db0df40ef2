"""The one sampling rule and the one uncached token loop (internlm/sampling.py), against plain
torch written out here, and the floors that use them agreeing with the cached engine."""

from __future__ import annotations

import torch

from internlm.inference import Engine, SamplingParams
from internlm.sampling import next_token, uncached_tokens

VOCAB = 6
# logits of the next token, by the last token: 0 -> 3 -> 1 -> 4 -> 2 -> 5 -> 0 ... under greedy
CHAIN = {0: 3, 3: 1, 1: 4, 4: 2, 2: 5, 5: 0}


class ChainForward:
    """A forward whose last-position argmax follows CHAIN; it records every context it saw."""

    def __init__(self):
        self.contexts: list[list[int]] = []

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.contexts.append(ids[0].tolist())
        logits = torch.zeros(1, ids.shape[1], VOCAB)
        logits[0, -1, CHAIN[int(ids[0, -1])]] = 5.0
        return logits


def test_greedy_loop_follows_the_argmax_and_is_bounded_by_max_new_tokens():
    forward = ChainForward()
    tokens = list(uncached_tokens(forward, [0], SamplingParams(max_new_tokens=4, temperature=0), None))
    assert tokens == [3, 1, 4, 2]
    assert forward.contexts == [[0], [0, 3], [0, 3, 1], [0, 3, 1, 4]]  # the whole sequence each time, no cache


def test_a_stop_id_is_yielded_and_ends_the_loop():
    params = SamplingParams(max_new_tokens=10, temperature=0, stop_ids=(4,))
    assert list(uncached_tokens(ChainForward(), [0], params, None)) == [3, 1, 4]


def test_max_context_keeps_the_last_tokens():
    forward = ChainForward()
    list(uncached_tokens(forward, [5, 0], SamplingParams(max_new_tokens=3, temperature=0), None, max_context=2))
    assert forward.contexts == [[5, 0], [0, 3], [3, 1]]


def test_sampling_without_top_p_draws_from_the_plain_softmax():
    logits = torch.tensor([0.3, -1.0, 2.0, 0.0, 1.1, -0.4])
    params = SamplingParams(temperature=0.7, top_p=1.0)
    got = [next_token(logits, params, None, torch.Generator().manual_seed(s)) for s in range(20)]
    probs = torch.softmax(logits / 0.7, dim=-1)  # no sort when top_p is 1: the draw over the vocabulary order
    expected = [int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(s))) for s in range(20)]
    assert got == expected and len(set(got)) > 2


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])  # sorted: 0.4 (1), 0.3 (3), 0.15 (4), ...
    params = SamplingParams(temperature=1.0, top_p=0.7)  # 0.4 + 0.3 = 0.7 reaches it: tokens 1 and 3 only
    seen = {next_token(probs.log(), params, None, torch.Generator().manual_seed(s)) for s in range(200)}
    assert seen == {1, 3}


def test_training_samples_and_eval_generation_equal_the_engine_for_one_seed(model64, tokenizer):
    """runtime.generation (training-time samples) and the evaluators' uncached generation draw
    the engine's tokens for the same seed: one rule, one CPU generator seeded alike."""
    from internlm.components.eval.causal_lm import CausalLM, TextCodec
    from internlm.components.eval.protocol import GenerationRequest
    from internlm.runtime.generation import generate

    prompt = [1, 50, 60, 70]
    for top_p in (1.0, 0.9):  # 1.0: no sort, 0.9: nucleus
        params = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=top_p, seed=11)
        with Engine(model64, tokenizer, model_id="random", max_batch=1) as engine:
            expected = engine.generate([prompt], params)[0].token_ids
        assert len(set(expected)) > 3
        assert generate(model64, prompt, 16, temperature=0.9, top_p=top_p, seed=11) == expected

        codec = TextCodec(encode=lambda text: prompt, decode=lambda ids: " ".join(map(str, ids)), bos_id=None,
                          eos_id=None, add_bos=False)
        lm = CausalLM("random", model64, codec, torch.device("cpu"), max_length=256)
        text = lm.generate([GenerationRequest("p", 16, temperature=0.9, top_p=top_p, seed=11)])[0]
        assert text == " ".join(map(str, expected))
