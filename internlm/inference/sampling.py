"""The next token from one row of logits: repetition penalty, temperature, top-k, top-p (HF's order).

One function, used by every path (batched, streamed, continuous), so their tokens agree.
"""

from __future__ import annotations

import torch

from internlm.inference.params import SamplingParams


def request_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A per-request generator: its tokens do not depend on what else runs in the batch."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def next_token(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None,
               generator: torch.Generator | None) -> int:
    """logits [vocab] (any float dtype); `seen` the ids of the prompt and output so far."""
    logits = logits.float()
    if params.repetition_penalty != 1.0 and seen is not None and seen.numel():
        picked = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.numel():
        threshold = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p  # smallest set with mass >= top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))
