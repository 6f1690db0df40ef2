"""The compiled decode step with fused projections (what runs, under CUDA graphs, on a GPU) gives
the uncached tokens, and compiles once for all layers, batch sizes >= 2 and attended lengths (plus
once for batch 1): that is what lets a 7B model compile in seconds. The backend is aot_eager: the
same dynamo trace, guards and functionalised graph (the in-place cache writes) as on the GPU,
without inductor's C++ code generation, which costs minutes on the CPU and is not the GPU's Triton
code anyway (that ran on the H200: bench/RESULTS.md)."""

from __future__ import annotations

from internlm.inference import Engine, SamplingParams

from inference_helpers import random_model, uncached


def test_compiled_decode_equals_the_uncached_forward_and_compiles_twice(tokenizer):
    import torch
    from torch._dynamo.utils import counters

    model = random_model(seed=1, dtype=torch.float64)
    short, longer = [1, 50, 60], [1, *range(200, 320)]  # 121 tokens: decoding crosses the 128 length bucket
    params = SamplingParams(max_new_tokens=10, temperature=0)
    graphs_before = counters["stats"]["unique_graphs"]
    reference = random_model(seed=1, dtype=torch.float64)  # the same weights, left unfused
    with Engine(model, tokenizer, model_id="random", max_batch=4, compile="aot_eager", fuse_projections=True) as engine:
        alone = engine.generate([short], params)  # batch 1
        together = engine.generate([short, longer, short], params)  # batch bucket 4, lengths 128 then 256
        assert engine.compiled  # it did not fall back to eager
    assert alone[0].token_ids == uncached(reference, short, params)
    assert [c.token_ids for c in together] == [uncached(reference, p, params) for p in (short, longer, short)]
    assert counters["stats"]["unique_graphs"] - graphs_before == 2  # batch 1; batch >= 2 (any length, any layer)
