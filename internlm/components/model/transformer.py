"""The InternLM decoder: embedding, pre-norm blocks (attention + SwiGLU), final norm, LM head.

The model takes tensors, not files, and knows nothing of devices or meshes: parallelism and
activation checkpointing are applied to it from outside (internlm/runtime/parallelize.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from internlm.components.model.attention import AttentionConfig, SelfAttention, build_rotary
from internlm.document_layout import DocumentLayout
from internlm.components.model.fused_ops import KernelsConfig
from internlm.components.model.mlp import MLPConfig, SwiGLU
from internlm.components.model.norm import NormConfig, RMSNorm
from internlm.registry import register


@dataclass
class TransformerConfig:
    vocab_size: int = 103168  # rows of the embedding and the LM head; >= the tokenizer's vocab
    hidden_size: int = 4096  # model width
    num_layers: int = 32  # transformer blocks
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)  # RMSNorm / SwiGLU / rotary implementations
    tie_embeddings: bool = False  # share the embedding matrix with the LM head (SmolLM2: yes)
    init_std: float = 0.02  # std of the normal init of every weight matrix
    init_from: str | None = None  # start from weights: run:<run or checkpoint folder>, hf:<dir> or internlm:<dir>; null = random init


class DecoderBlock(nn.Module):
    """x + attn(norm1(x)), then + mlp(norm2(x))."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.norm, config.hidden_size)
        self.self_attn = SelfAttention(config.attention, config.hidden_size)
        self.post_attention_layernorm = RMSNorm(config.norm, config.hidden_size)
        self.mlp = SwiGLU(config.mlp, config.hidden_size)

    def forward(self, x: torch.Tensor, layout: DocumentLayout, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), layout, rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class ReferenceCrossEntropy:
    """Plain fp32 cross-entropy from the hidden states (the model's default loss; the configured
    loss component is passed in by the assembly pipeline)."""

    ignore_index = -100

    def _logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(hidden, weight)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def __call__(self, hidden, weight, labels) -> tuple[torch.Tensor, torch.Tensor]:
        loss = torch.nn.functional.cross_entropy(self._logits(hidden, weight), labels, ignore_index=self.ignore_index, reduction="sum")
        return loss, (labels != self.ignore_index).sum()

    def token_losses(self, hidden, weight, labels) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self._logits(hidden, weight), labels, ignore_index=self.ignore_index, reduction="none")


@register("model", "transformer", TransformerConfig)
class Transformer(nn.Module):
    """Decoder-only transformer; module names follow Hugging Face Llama so exports are a rename-free copy."""

    def __init__(self, config: TransformerConfig, loss: Callable | None = None):
        """`loss(hidden [N, H], head_weight [V, H], labels [N]) -> (summed loss, count)` computes the
        loss from the final hidden states inside forward (a fused loss never materialises the
        logits); with `token_losses(...) -> [N]` it also serves `reduction="none"`. Default: the
        plain fp32 cross-entropy."""
        super().__init__()
        self.config = config
        self.loss = loss if loss is not None else ReferenceCrossEntropy()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = build_rotary(config.attention, config.hidden_size)
        # A ModuleDict keyed by str(index) keeps FQNs stable ("layers.3.mlp...") under sharding.
        self.layers = nn.ModuleDict({str(i): DecoderBlock(config) for i in range(config.num_layers)})
        self.norm = RMSNorm(config.norm, config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, std) for matrices, zeros for biases, ones for norms; output projections scaled
        by 1/sqrt(2 * layers) (GPT-2 style) so the residual stream does not grow with depth."""
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_out = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, std=out_std if is_out else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif hasattr(module, "reset_parameters") and not isinstance(module, nn.Linear):
                module.reset_parameters()

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, S, hidden]; position ids restart at 0 per packed document."""
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        layout = DocumentLayout.from_positions(position_ids, cu_seqlens, max_seqlen)
        x = self.embed_tokens(input_ids)
        rope = self.rotary.cos_sin(position_ids, x.dtype)
        for block in self.layers.values():
            x = block(x, layout, rope)
        return self.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        reduction: str = "sum",
        **kwargs,
    ) -> torch.Tensor:
        """Logits [B, S, vocab]; or, given labels, the next-token loss: summed over labelled tokens
        (`reduction="sum"`), or per token [B, S] with 0 where unlabelled (`reduction="none"`:
        log-probabilities for objectives such as DPO).

        The loss is computed inside forward so that sharded or fused implementations see the
        gathered head weight, and a fused loss never materialises the full logits.
        """
        hidden = self.hidden_states(input_ids, position_ids, **kwargs)
        if labels is None:
            return self.lm_head(hidden)
        flat_hidden, flat_labels = hidden.flatten(0, 1), labels.flatten()
        if reduction == "none":
            return self.loss.token_losses(flat_hidden, self.lm_head.weight, flat_labels).view_as(labels)
        if reduction != "sum":
            raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
        return self.loss(flat_hidden, self.lm_head.weight, flat_labels)[0]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
