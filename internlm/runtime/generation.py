"""Token-by-token decoding for training-time samples: greedy, or temperature + nucleus (top-p).

Recomputes the whole prefix at every step (no KV cache, `internlm.sampling.uncached_tokens`):
simple and exact, fine for the short samples of training runs and the reference some tests compare
against. Everything else (generate, chat, serve, web demo, eval) runs on the cached engine in
`internlm.inference`.
"""

from __future__ import annotations

import torch

from internlm.sampling import SamplingParams, uncached_tokens


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_ids: tuple[int, ...] = (),
    max_context: int | None = None,
    seed: int | None = None,
) -> list[int]:
    """The new token ids (without the prompt), ending with a stop id or after max_new_tokens.
    Sampling draws from a CPU generator seeded with `seed`, or from torch's global one when None."""
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            stop_ids=tuple(stop_ids), do_sample=temperature > 0)
    was_training = model.training
    model.eval()
    try:
        return list(uncached_tokens(model, prompt_ids, params, generator, device=device, max_context=max_context))
    finally:
        model.train(was_training)
