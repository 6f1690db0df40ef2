"""fp8 training (internlm/runtime/float8.py) on the CPU: the config is refused where fp8 cannot run,
and the conversion swaps exactly the blocks' linear layers, keeps every parameter and its name,
and (with torchao's emulated fp8 casts) computes what the bf16/fp32 model computes up to fp8
rounding."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from internlm.components.model.attention import AttentionConfig
from internlm.components.model import matmul_precision
from internlm.components.model.fused_ops import KernelsConfig
from internlm.components.model.mlp import MLPConfig
from internlm.components.model.transformer import Transformer, TransformerConfig
from internlm.errors import ConfigError
from internlm.runtime import float8

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed (pip install 'internlm[fp8]')")

BLOCK_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def small_model(ffn: int = 96, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=256, hidden_size=64, num_layers=2, attention=AttentionConfig(num_heads=4), mlp=MLPConfig(intermediate_size=ffn)
    )
    return Transformer(config)


def test_kernels_config_defaults_to_bf16():
    assert KernelsConfig().matmul == "bf16"
    float8.check_matmul("bf16", capability=None)  # bf16 runs anywhere


@pytest.mark.parametrize(
    "matmul, capability, tensor_parallel, message",
    [
        ("fp16", (9, 0), 1, "unknown matmul precision 'fp16'"),
        ("fp8_tensorwise", None, 1, "found no CUDA device"),
        ("fp8_rowwise", (8, 0), 1, "found a device of compute capability 8.0"),  # A100: no fp8 tensor cores
        ("fp8_tensorwise", (9, 0), 2, "not supported with tensor parallelism"),
    ],
)
def test_refusals_name_the_key_and_the_fix(matmul, capability, tensor_parallel, message, monkeypatch):
    monkeypatch.setattr(matmul_precision, "torchao_unavailable", lambda: None)  # judge the device alone
    with pytest.raises(ConfigError) as info:
        float8.check_matmul(matmul, capability, tensor_parallel)
    assert message in str(info.value)
    assert info.value.where == "model.kernels.matmul"
    assert info.value.fix


def test_missing_torchao_is_refused_with_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as info:
        float8.check_matmul("fp8_tensorwise", (9, 0))
    assert "torchao is not installed" in str(info.value) and "internlm[fp8]" in str(info.value)


def test_ada_and_hopper_are_accepted():
    if float8.torchao_unavailable():
        pytest.skip("torchao is not installed")
    for capability in ((8, 9), (9, 0), (10, 0)):
        float8.check_matmul("fp8_rowwise", capability)


@needs_torchao
@pytest.mark.parametrize("matmul", ["fp8_tensorwise", "fp8_rowwise"])
def test_conversion_swaps_exactly_the_block_linears(matmul):
    from torchao.float8.float8_linear import Float8Linear

    model = small_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    converted = float8.convert_to_float8(model, matmul, emulate=True)

    expected = [f"layers.{i}.{name}" for i in range(2) for name in BLOCK_LINEARS]
    assert sorted(converted) == sorted(expected)
    fp8 = sorted(name for name, m in model.named_modules() if isinstance(m, Float8Linear))
    assert fp8 == sorted(expected)
    assert type(model.lm_head) is nn.Linear and type(model.embed_tokens) is nn.Embedding  # stay bf16
    # Same parameters under the same names (checkpoints and sharding plans unchanged), biases kept.
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    assert model.state_dict().keys() == small_model().state_dict().keys()  # checkpoints load either way
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert model.layers["0"].self_attn.q_proj.bias is not None
    expected_recipe = "AXISWISE" if matmul == "fp8_rowwise" else "TENSORWISE"
    assert model.layers["1"].mlp.down_proj.config.cast_config_weight.scaling_granularity.name == expected_recipe


@needs_torchao
def test_bf16_converts_nothing():
    model = small_model()
    assert float8.convert_to_float8(model, "bf16") == []
    assert all(type(m) is not nn.Module and "Float8" not in type(m).__name__ for m in model.modules())


@needs_torchao
def test_layers_with_a_dimension_not_divisible_by_16_stay_bf16():
    from torchao.float8.float8_linear import Float8Linear

    model = small_model(ffn=100)  # gate/up/down are 64 x 100: not fp8-able
    converted = float8.convert_to_float8(model, "fp8_tensorwise", emulate=True)
    assert sorted({name.split(".", 2)[2] for name in converted}) == sorted(BLOCK_LINEARS[:4])
    assert type(model.layers["0"].mlp.up_proj) is nn.Linear
    assert isinstance(model.layers["0"].self_attn.o_proj, Float8Linear)


@needs_torchao
def test_fp8_all_gather_only_for_tensorwise():
    assert float8.float8_config("fp8_tensorwise", fp8_all_gather=True).enable_fsdp_float8_all_gather
    assert not float8.float8_config("fp8_rowwise", fp8_all_gather=True).enable_fsdp_float8_all_gather
    assert not float8.float8_config("fp8_tensorwise").enable_fsdp_float8_all_gather


@needs_torchao
@pytest.mark.parametrize("fast_accum, output, grad_input, grad_weight", [
    ("forward", True, False, False),  # torchao's own default, unchanged
    ("all", True, True, True),
    ("none", False, False, False),
])
def test_fast_accum_choice_reaches_each_gemm(fast_accum, output, grad_input, grad_weight):
    from torchao.float8 import Float8LinearConfig

    for matmul in ("fp8_tensorwise", "fp8_rowwise"):
        config = float8.float8_config(matmul, fast_accum=fast_accum)
        got = (config.gemm_config_output.use_fast_accum, config.gemm_config_grad_input.use_fast_accum, config.gemm_config_grad_weight.use_fast_accum)
        assert got == (output, grad_input, grad_weight), matmul
    assert float8.float8_config("fp8_tensorwise") == Float8LinearConfig.from_recipe_name("tensorwise")  # the default is torchao's recipe
    model = small_model()
    float8.convert_to_float8(model, "fp8_tensorwise", emulate=True, fast_accum=fast_accum)
    assert {m.config.gemm_config_grad_weight.use_fast_accum for m in float8.float8_layers(model)} == {grad_weight}


def test_unknown_fast_accum_choice_is_refused_with_the_key():
    with pytest.raises(ConfigError) as info:
        float8.check_matmul("bf16", None, fast_accum="backward")
    assert "unknown fp8 fast-accumulation choice 'backward'" in str(info.value)
    assert info.value.where == "model.kernels.fp8_fast_accum" and "forward, all, none" in info.value.fix


@needs_torchao
def test_register_scale_precompute_only_with_fp8_all_gather():
    model = small_model()
    float8.convert_to_float8(model, "fp8_tensorwise", emulate=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert float8.register_scale_precompute(model, optimizer) is None  # no fp8 gathers configured


@needs_torchao
@pytest.mark.parametrize("matmul", ["fp8_tensorwise", "fp8_rowwise"])
def test_emulated_fp8_matches_the_reference_model_up_to_fp8_rounding(matmul):
    reference = small_model()
    model = copy.deepcopy(reference)
    float8.convert_to_float8(model, matmul, emulate=True)
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (2, 32))
    losses, grads = [], []
    for m in (reference, model):
        loss = m(ids, labels=ids) / ids.numel()
        loss.backward()
        losses.append(loss.detach())
        grads.append(m.layers["0"].mlp.down_proj.weight.grad.clone())
    # e4m3 keeps 3 mantissa bits (relative rounding up to 2^-4): the loss moves far less than
    # that, the gradients by a few percent, and fp8 is not a no-op.
    assert abs(losses[1] - losses[0]) / losses[0] < 2e-3
    relative = (grads[1] - grads[0]).norm() / grads[0].norm()
    assert 1e-4 < relative < 0.1


def fp8_loss_and_grads(matmul: str, policy: str, backend: str | None):
    from internlm.runtime.activation_checkpointing import apply_activation_checkpointing
    from internlm.runtime.torch_compile import compile_blocks

    model = small_model()
    float8.convert_to_float8(model, matmul, emulate=True)
    apply_activation_checkpointing(model, policy)
    if backend is not None:
        compile_blocks(model, backend=backend)
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (2, 32))
    loss = model(ids, labels=ids) / ids.numel()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@needs_torchao
@pytest.mark.parametrize(
    "matmul, policy, backend, rtol",
    [
        ("fp8_tensorwise", "full", "aot_eager", 0.0),
        ("fp8_tensorwise", "op", "aot_eager", 0.0),
        ("fp8_rowwise", "full", "aot_eager", 0.0),
        ("fp8_rowwise", "op", "aot_eager", 0.0),
        # inductor fuses the casts and reorders fp32 sums: 5e-7 in norm measured
        ("fp8_tensorwise", "full", "inductor", 1e-5),
    ],
)
def test_fp8_recomputed_under_activation_checkpointing_equals_fp8_kept(matmul, policy, backend, rtol):
    """The recompute casts the same values with the same dynamic scales (no state between the two
    forwards), so checkpointed and compiled fp8 blocks give the eager, no-checkpointing gradients."""
    loss, grads = fp8_loss_and_grads(matmul, "none", None)
    got_loss, got_grads = fp8_loss_and_grads(matmul, policy, backend)
    assert abs(got_loss - loss) <= rtol * abs(loss)
    for name, grad in grads.items():  # relative in norm: an element-wise bound trips on near-zero entries
        assert (got_grads[name] - grad).norm() <= rtol * grad.norm(), name


@needs_torchao
def test_layers_changed_by_an_adapter_are_refused_not_silently_dropped():
    class AdaptedLinear(nn.Linear):  # what an adapter (LoRA) turns a projection into
        pass

    model = small_model()
    model.layers["1"].self_attn.v_proj.__class__ = AdaptedLinear
    with pytest.raises(ConfigError) as info:
        float8.convert_to_float8(model, "fp8_tensorwise", emulate=True)
    assert "layers.1.self_attn.v_proj" in str(info.value) and info.value.where == "model.kernels.matmul"


def test_the_program_refuses_fp8_on_a_cpu_before_training(tmp_path):
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "internlm", "model.kernels.matmul=fp8_rowwise", "trainer.max_steps=1", f"hydra.run.dir={run}"],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stdout + result.stderr
    assert "model.kernels.matmul=fp8_rowwise needs fp8 tensor cores" in message and "use model.kernels.matmul=bf16" in message
    assert not (run / "checkpoints").exists()  # nothing trained, nothing saved
