"""A small random model and the plain uncached reference loop the engine is checked against."""

from __future__ import annotations

import torch

from internlm.components.model.attention import AttentionConfig
from internlm.components.model.mlp import MLPConfig
from internlm.components.model.rotary import RotaryConfig
from internlm.components.model.transformer import Transformer, TransformerConfig
from internlm.sampling import SamplingParams, request_generator, uncached_tokens


def random_model(seed: int = 0, dtype: torch.dtype = torch.float64, num_kv_heads: int | None = 2) -> Transformer:
    """Grouped-query attention (4 q heads, 2 kv heads) with biases; weights large enough that the
    next token varies from step to step."""
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=4096, hidden_size=64, num_layers=2, init_std=0.2,
        attention=AttentionConfig(num_heads=4, num_kv_heads=num_kv_heads, backend="eager",
                                  rotary=RotaryConfig(max_position=256)),
        mlp=MLPConfig(intermediate_size=96),
    )
    model = Transformer(config).to(dtype).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(std=0.1)
    return model


@torch.no_grad()
def uncached(model, prompt: list[int], params: SamplingParams) -> list[int]:
    """Recompute the whole sequence for every token (the model's own forward, no cache)."""
    return list(uncached_tokens(model, prompt, params, request_generator(params, torch.device("cpu"))))
