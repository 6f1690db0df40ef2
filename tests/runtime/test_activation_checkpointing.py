"""Activation checkpointing policies: same outputs and gradients as none, and the recomputation
each policy promises (counted, not timed)."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from internlm.components.model.attention import AttentionConfig
from internlm.components.model.mlp import MLPConfig
from internlm.components.model.transformer import Transformer, TransformerConfig
from internlm.errors import ConfigError
from internlm.runtime.activation_checkpointing import apply_activation_checkpointing


def tiny_model(layers=4) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=64, hidden_size=32, num_layers=layers,
        attention=AttentionConfig(num_heads=4, num_kv_heads=2, backend="sdpa"), mlp=MLPConfig(intermediate_size=48),
    )
    return Transformer(cfg)


def batch():
    g = torch.Generator().manual_seed(1)
    positions = torch.tensor([list(range(10)) + list(range(14)), list(range(24))])
    return torch.randint(0, 64, (2, 24), generator=g), positions


def loss_and_grads(model):
    ids, positions = batch()
    out = model(ids, positions)
    out.square().mean().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters()}


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def backward_op_counts(model) -> Counter:
    ids, positions = batch()
    loss = model(ids, positions).square().mean()
    with OpCounter() as counter:
        loss.backward()
    return counter.counts


def mlp_calls(model, policy, every=1) -> list[int]:
    apply_activation_checkpointing(model, policy, every)
    calls = [0] * len(model.layers)
    for i, block in enumerate(model.layers.values()):
        # a pre-hook: recomputation stops early, inside the last module it needs
        block.mlp.register_forward_pre_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    loss_and_grads(model)
    return calls


@pytest.mark.parametrize("policy,every", [("full", 1), ("selective", 2), ("selective", 3), ("op", 1)])
def test_policy_keeps_outputs_and_gradients(policy, every):
    reference = tiny_model()
    model = copy.deepcopy(reference)
    apply_activation_checkpointing(model, policy, every)
    out_ref, grads_ref = loss_and_grads(reference)
    out, grads = loss_and_grads(model)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-6, atol=1e-7)


def test_which_blocks_recompute():
    assert mlp_calls(tiny_model(), "none") == [1, 1, 1, 1]
    assert mlp_calls(tiny_model(), "full") == [2, 2, 2, 2]
    assert mlp_calls(tiny_model(), "selective", 2) == [2, 1, 2, 1]
    assert mlp_calls(tiny_model(), "selective", 3) == [2, 1, 1, 2]


def test_op_policy_recomputes_elementwise_ops_but_no_matmul():
    none = backward_op_counts(tiny_model())
    full_model = tiny_model()
    apply_activation_checkpointing(full_model, "full")
    full = backward_op_counts(full_model)
    op_model = tiny_model()
    apply_activation_checkpointing(op_model, "op")
    op = backward_op_counts(op_model)
    matmuls = lambda c: c["mm"] + c["addmm"] + c["bmm"]  # noqa: E731
    assert matmuls(full) > matmuls(none)  # full recomputes the forward matmuls
    assert matmuls(op) == matmuls(none)  # op keeps them
    assert op["silu"] > none["silu"] == 0 and op["rsqrt"] + op["_fused_rms_norm"] + op["rms_norm"] > 0


def test_parameter_names_are_unchanged():
    model = tiny_model()
    names = list(model.state_dict())
    apply_activation_checkpointing(model, "full")
    assert list(model.state_dict()) == names


def test_bad_policy_and_every_are_config_errors():
    with pytest.raises(ConfigError, match="choose one of: none, full, selective, op"):
        apply_activation_checkpointing(tiny_model(), "sometimes")
    with pytest.raises(ConfigError, match="activation_checkpointing_every"):
        apply_activation_checkpointing(tiny_model(), "selective", 0)
