"""q/k/v and gate/up joined into one matmul each (`model.kernels.joint_projections`): the model
computes what the separate layers compute, its parameters and checkpoint keys stay as they were,
and with torchao's fp8 layers the joined matmul is torchao's own fp8 linear over the concatenated
weight; where it cannot apply it is refused with the key and the fix."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from internlm.components.model.attention import AttentionConfig
from internlm.components.model.joint_projection import JointProjection, join_projections
from internlm.components.model.mlp import MLPConfig
from internlm.components.model.transformer import Transformer, TransformerConfig
from internlm.errors import ConfigError

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed (pip install 'internlm[fp8]')")


def small_model(num_kv_heads: int | None = None, qkv_bias: bool = True) -> Transformer:
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=256, hidden_size=64, num_layers=2, mlp=MLPConfig(intermediate_size=96),
                               attention=AttentionConfig(num_heads=4, num_kv_heads=num_kv_heads, qkv_bias=qkv_bias))
    return Transformer(config)


def loss_and_grads(model: Transformer, ids: torch.Tensor):
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=ids) / ids.numel()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("num_kv_heads, qkv_bias", [(None, True), (2, False)])  # InternLM; grouped k/v without biases
def test_joined_model_computes_what_the_separate_layers_compute(num_kv_heads, qkv_bias):
    reference = small_model(num_kv_heads, qkv_bias)
    model = copy.deepcopy(reference)
    assert join_projections(model) == 4  # 2 attentions + 2 SwiGLUs
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    expected_loss, expected = loss_and_grads(reference, ids)
    loss, grads = loss_and_grads(model, ids)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == expected.keys()
    for name in expected:  # the gradient of every original parameter, including q/k/v biases
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_parameters_and_checkpoint_keys_are_unchanged():
    model = small_model()
    keys = list(model.state_dict())
    params = [id(p) for p in model.parameters()]
    join_projections(model)
    assert list(model.state_dict()) == keys
    assert [id(p) for p in model.parameters()] == params  # the optimizer sees the same tensors
    assert "joint" not in " ".join(keys)


def test_joined_call_splits_in_the_layers_order():
    q, k = nn.Linear(8, 6), nn.Linear(8, 2)
    x = torch.randn(3, 8)
    out_q, out_k = JointProjection([q, k])(x)
    torch.testing.assert_close(out_q, q(x))
    torch.testing.assert_close(out_k, k(x))


def test_layers_with_and_without_bias_are_not_joined():
    with pytest.raises(ValueError, match="only some have a bias"):
        JointProjection([nn.Linear(8, 4), nn.Linear(8, 4, bias=False)])


def test_tensor_parallelism_is_refused_with_the_key_and_the_fix():
    with pytest.raises(ConfigError) as info:
        join_projections(small_model(), tensor_parallel=2)
    assert info.value.where == "model.kernels.joint_projections" and "=false" in info.value.fix


def test_an_adapted_layer_is_refused_naming_it():
    model = small_model()

    class Adapted(nn.Linear):  # what an adapter's layer looks like to the check: not a plain Linear
        pass

    attn = model.layers["1"].self_attn
    attn.k_proj = Adapted(attn.k_proj.in_features, attn.k_proj.out_features)
    with pytest.raises(ConfigError, match=r"layers\.1\.self_attn: Adapted is not a plain linear layer"):
        join_projections(model)
    assert model.layers["0"].self_attn.joint_qkv is None  # nothing joined when any group is refused


@needs_torchao
@pytest.mark.parametrize("matmul", ["fp8_tensorwise", "fp8_rowwise"])
def test_fp8_joined_matmul_is_torchaos_linear_over_the_concatenated_weight(matmul):
    """The reference: one torchao Float8Linear whose weight is the three weights stacked."""
    from torchao.float8 import convert_to_float8_training

    from internlm.runtime.float8 import float8_config

    config = float8_config(matmul, emulate=True)
    torch.manual_seed(0)
    separate = nn.ModuleList([nn.Linear(32, 48), nn.Linear(32, 16), nn.Linear(32, 16)])
    stacked = nn.Sequential(nn.Linear(32, 80))
    with torch.no_grad():
        stacked[0].weight.copy_(torch.cat([m.weight for m in separate]))
        stacked[0].bias.copy_(torch.cat([m.bias for m in separate]))
    convert_to_float8_training(separate, config=config)
    convert_to_float8_training(stacked, config=config)
    x = torch.randn(4, 8, 32)
    parts = JointProjection(list(separate))(x)
    expected = stacked(x)
    torch.testing.assert_close(torch.cat(parts, dim=-1), expected, rtol=0, atol=0)
    grad = torch.randn_like(expected)
    torch.autograd.backward(parts, grad.split([48, 16, 16], dim=-1))
    expected.backward(grad)
    torch.testing.assert_close(torch.cat([m.weight.grad for m in separate]), stacked[0].weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([m.bias.grad for m in separate]), stacked[0].bias.grad, rtol=0, atol=0)


@needs_torchao
def test_fp8_all_gather_is_refused():
    from internlm.runtime import float8

    model = small_model()
    float8.convert_to_float8(model, "fp8_tensorwise", fp8_all_gather=True, emulate=True)
    with pytest.raises(ConfigError, match="gathers its weight in fp8"):
        join_projections(model)


def test_one_compiled_graph_serves_every_joined_block():
    """Each block holds its own JointProjection: compile must not specialise on it (more blocks
    than dynamo's cache limit would then run eager)."""
    from internlm.runtime.torch_compile import compile_blocks, compile_stats

    torch._dynamo.reset()
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=64, hidden_size=32, num_layers=10, mlp=MLPConfig(intermediate_size=48),
                               attention=AttentionConfig(num_heads=4, num_kv_heads=2, backend="sdpa"))
    reference = Transformer(config)
    model = copy.deepcopy(reference)
    join_projections(model)
    compile_blocks(model, backend="aot_eager")
    before = compile_stats()
    ids = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    out = model(ids)
    torch.testing.assert_close(out, reference(ids), rtol=1e-5, atol=1e-5)
    assert compile_stats()["unique_graphs"] - before["unique_graphs"] == 1
    assert compile_stats()["recompiles"] == before["recompiles"]
