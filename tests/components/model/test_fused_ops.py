"""Op implementations are selectable by config; the plain ones equal the model's own modules."""

from __future__ import annotations

import pytest
import torch

from internlm.components.model import fused_ops
from internlm.components.model.attention import AttentionConfig
from internlm.components.model.mlp import MLPConfig, SwiGLU
from internlm.components.model.norm import NormConfig, RMSNorm
from internlm.components.model.rotary import apply_rotary
from internlm.components.model.transformer import Transformer, TransformerConfig
from internlm.errors import ConfigError

CPU = torch.device("cpu")


def test_auto_is_plain_torch_on_cpu():
    kernels = fused_ops.resolve_kernels(fused_ops.KernelsConfig(), CPU)
    assert kernels.names == {"rms_norm": "torch", "swiglu": "torch", "rotary": "torch"}


def test_torch_rms_norm_is_the_definition():
    x, w = torch.randn(5, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(fused_ops.torch_rms_norm(x, w, 1e-6).double(), expected, rtol=1e-6, atol=1e-6)
    norm = RMSNorm(NormConfig(eps=1e-6), 8)
    torch.testing.assert_close(fused_ops.torch_rms_norm(x.float(), norm.weight, 1e-6), norm(x.float()))


def test_torch_swiglu_and_rotary_match_the_modules():
    gate, up = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(fused_ops.torch_silu_mul(gate, up), gate * torch.sigmoid(gate) * up)
    q, k = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 2, 8)
    cos, sin = torch.randn(2, 5, 1, 8), torch.randn(2, 5, 1, 8)
    rq, rk = fused_ops.torch_rotary(q, k, cos, sin)
    torch.testing.assert_close(rq, apply_rotary(q, cos, sin))
    torch.testing.assert_close(rk, apply_rotary(k, cos, sin))


@pytest.mark.parametrize("op", ["rms_norm", "swiglu", "rotary"])
def test_liger_on_cpu_is_a_clear_config_error(op):
    config = fused_ops.KernelsConfig(**{op: "liger"})
    with pytest.raises(ConfigError, match=f"model.kernels.{op}"):
        fused_ops.resolve_kernels(config, CPU)


def test_unknown_implementation_is_a_config_error():
    with pytest.raises(ConfigError, match="choose one of: auto, torch, liger"):
        fused_ops.resolve_kernels(fused_ops.KernelsConfig(swiglu="apex"), CPU)


def test_apply_kernels_installs_non_default_implementations():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=32, hidden_size=16, num_layers=2, attention=AttentionConfig(num_heads=2), mlp=MLPConfig(24))
    model = Transformer(cfg)
    ids = torch.randint(0, 32, (1, 8))
    before = model(ids)
    calls = {"norm": 0, "gate": 0}

    def counting_norm(x, w, eps):
        calls["norm"] += 1
        return fused_ops.torch_rms_norm(x, w, eps)

    def counting_gate(g, u):
        calls["gate"] += 1
        return fused_ops.torch_silu_mul(g, u)

    kernels = fused_ops.Kernels({"rms_norm": "test", "swiglu": "test", "rotary": "torch"}, counting_norm, counting_gate, fused_ops.torch_rotary)
    fused_ops.apply_kernels(model, kernels)
    torch.testing.assert_close(model(ids), before)
    assert calls == {"norm": 2 * 2 + 1, "gate": 2}
    assert isinstance(model.layers["0"].mlp, SwiGLU)  # patched in place, same module types and names
