"""Shared prompt prefixes computed once (components/eval/prefix_trie.py): the packed trie's mask is
exactly the ancestor relation, and scores equal every request scored on its own (our
Transformer, MHA and GQA, truncated rows; the real 5-shot MMLU prompts of the tiny model)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

from internlm.components.model.attention import AttentionConfig
from internlm.components.model.mlp import MLPConfig
from internlm.components.model.transformer import Transformer, TransformerConfig
from internlm.components.eval.prefix_trie import internlm_tree_forward, pack, tree_inputs
from internlm.components.eval.causal_lm import CausalLM, TextCodec

sys.path.insert(0, str(Path(__file__).parent))
from evalhelpers import compose_suite  # noqa: E402


def test_the_trie_shares_every_common_prefix_and_masks_exactly_the_ancestors():
    rows = [[5, 1, 2, 3], [5, 1, 2, 4], [5, 1, 9], [5, 1, 2, 3], [7], [5, 1, 2, 3, 8, 8]]
    (chunk,) = pack(rows, chunk_tokens=100)
    # distinct prefixes: 5 / 5 1 / 5 1 2 / 5 1 2 3 / 5 1 2 3 8 / ..8 8 / 5 1 2 4 / 5 1 9 / 7
    assert chunk.size == 9
    tokens, positions, mask = tree_inputs([chunk], torch.device("cpu"))
    for r, path in zip(chunk.rows, chunk.paths):
        assert [int(tokens[0, n]) for n in path] == rows[r] and [int(positions[0, n]) for n in path] == list(range(len(rows[r])))
    ancestors = torch.zeros(9, 9, dtype=torch.bool)  # brute force: j is on some row's path at or before i
    for path in chunk.paths:
        for t, node in enumerate(path):
            ancestors[node, path[: t + 1]] = True
    assert torch.equal(mask[0, 0, :9, :9], ancestors) and not mask[0, 0, :9, 9:].any()  # padded to 64: never attended


def test_chunks_respect_their_size_and_padding_nodes_see_only_themselves():
    rng = random.Random(0)
    rows = [[rng.randrange(4) for _ in range(rng.randrange(1, 30))] for _ in range(60)]
    chunks = pack(rows, chunk_tokens=64)
    assert sorted(r for c in chunks for r in c.rows) == list(range(60))
    assert all(c.size <= 64 for c in chunks)
    _, _, mask = tree_inputs(chunks, torch.device("cpu"))
    for c, chunk in enumerate(chunks):
        pad = torch.arange(chunk.size, mask.shape[-1])
        assert torch.equal(mask[c, 0, pad], torch.eye(mask.shape[-1], dtype=torch.bool)[pad])


def tiny(kv_heads: int) -> Transformer:
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=64, hidden_size=32, num_layers=2,
                               attention=AttentionConfig(num_heads=4, num_kv_heads=kv_heads, backend="sdpa"),
                               mlp=MLPConfig(intermediate_size=48))
    return Transformer(config).eval()


def lm_of(model, max_length=64) -> CausalLM:
    codec = TextCodec(encode=lambda text: [ord(ch) % 60 + 2 for ch in text], decode=lambda ids: "", bos_id=1, eos_id=0, add_bos=True)
    return CausalLM("tiny", lambda ids: model(ids), codec, torch.device("cpu"), max_length, batch_tokens=256,
                    tree_forward=internlm_tree_forward(model))


def mmlu_like_requests() -> list[tuple[str, str]]:
    """Two subjects' few-shot preambles, four options per question, both conventions."""
    requests = []
    for subject in ("algebra", "biology"):
        preamble = f"About {subject}.\nQ: one? A: yes\nQ: two? A: no\n"
        for q in range(3):
            prompt = preamble + f"Q: item {q} of {subject}?\nAnswer:"
            requests += [(prompt, f" {label}") for label in "ABCD"]  # loglikelihood: same context
            requests += [("", prompt + f" option {label}") for label in "AB"]  # ppl: the whole text
    requests.append(("", "x" * 90))  # longer than max_length: truncated from the left
    return requests


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_shared_prefix_scores_equal_each_request_alone(kv_heads):
    lm = lm_of(tiny(kv_heads))
    requests = mmlu_like_requests()
    shared = lm.loglikelihood(requests)
    lm.share_prefixes = False
    alone = lm.loglikelihood(requests)
    for a, b in zip(shared, alone):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4) and a.tokens == b.tokens and a.is_greedy == b.is_greedy


def test_tree_forward_equals_the_models_own_forward():
    """The tree forward on one plain sequence (a chain: causal mask, positions 0..S-1) is the
    model's forward."""
    model = tiny(2)
    ids = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(3))
    (chunk,) = pack([ids[0].tolist()], chunk_tokens=64)
    tokens, positions, mask = tree_inputs([chunk], torch.device("cpu"))
    with torch.no_grad():
        expected = model(ids)
    got = internlm_tree_forward(model)(tokens, positions, mask, torch.arange(20))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_five_shot_mmlu_with_shared_prefixes_equals_unshared():
    """The real 5-shot MMLU sample prompts (shared preamble per subject, shared options per
    question) through the bundled tiny model: same log-likelihoods, same picks."""
    from omegaconf import OmegaConf

    from internlm import registry
    from internlm.api import compose
    from internlm.components.eval.runner import load_suite, predict, score
    from internlm.inference.scoring import for_internlm

    torch.manual_seed(0)
    config = OmegaConf.to_object(compose([]))
    lm = for_internlm("tiny", registry.build(config.model).eval(), registry.build(config.tokenizer), batch_tokens=2048)
    for convention in ("ppl", "loglikelihood"):
        (dataset,) = load_suite(compose_suite("mmlu", "task.eval.datasets.mmlu.fewshot=2",
                                              f"task.eval.datasets.mmlu.options.choice.convention={convention}"))
        lm.share_prefixes = True
        shared = predict(dataset, lm)
        lm.share_prefixes = False
        alone = predict(dataset, lm)
        for a, b in zip(shared, alone):  # ppl sums ~500 tokens in fp32: 1e-4 per token
            assert a["tokens"] == b["tokens"]
            assert [lp / n for lp, n in zip(a["logprobs"], a["tokens"])] == pytest.approx(
                [lp / n for lp, n in zip(b["logprobs"], b["tokens"])], abs=1e-4)
        assert score(dataset, shared) == score(dataset, alone)
        assert [r["extracted"] for r in shared] == [r["extracted"] for r in alone]
