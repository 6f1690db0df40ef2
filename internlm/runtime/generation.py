"""Token-by-token decoding: greedy, or temperature + nucleus (top-p) sampling.

Recomputes the whole prefix at every step (no KV cache): simple and exact, fine for the short
samples of training runs and the reference some tests compare against. Everything else (generate,
chat, serve, web demo, eval) runs on the cached engine in `internlm.inference`.
"""

from __future__ import annotations

import torch


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token id from the last position's logits [vocab]; temperature 0 means greedy."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p  # smallest set with mass >= top_p
    sorted_probs = sorted_probs * keep
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])


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
    """The new token ids (without the prompt), stopping after a stop id or max_new_tokens."""
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    ids = list(prompt_ids)
    new: list[int] = []
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            context = ids[-max_context:] if max_context else ids
            logits = model(torch.tensor([context], device=device))[0, -1]
            token = sample_next(logits.cpu(), temperature, top_p, generator)
            ids.append(token)
            new.append(token)
            if token in stop_ids:
                break
    finally:
        model.train(was_training)
    return new
