"""strategy.reduce_dtype: the dtype FSDP2 reduces gradients in, checked on a real one-process
gloo group (the policy FSDP2 holds), and refused at layout time when unknown."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from internlm.components.model.attention import AttentionConfig
from internlm.components.model.mlp import MLPConfig
from internlm.components.model.transformer import Transformer, TransformerConfig
from internlm.components.strategy.hybrid_zero import HybridZero, HybridZeroConfig
from internlm.errors import ConfigError
from internlm.runtime.parallelize import apply_fsdp


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def small_model() -> Transformer:
    config = TransformerConfig(vocab_size=64, hidden_size=32, num_layers=2, attention=AttentionConfig(num_heads=2), mlp=MLPConfig(intermediate_size=64))
    return Transformer(config)


@pytest.mark.parametrize("reduce_dtype, expected", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_fsdp_reduces_gradients_in_the_chosen_dtype(one_process_group, reduce_dtype, expected):
    from torch.distributed.device_mesh import init_device_mesh

    options = HybridZero(HybridZeroConfig(reduce_dtype=reduce_dtype)).sharding_options("bf16-mixed")
    model = small_model()
    mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("shard",))
    apply_fsdp(model, mesh, bf16_compute=options["bf16_compute"], reduce_dtype=options["reduce_dtype"])
    for unit in (model, model.layers["0"], model.embed_tokens):
        policy = unit._get_fsdp_state()._mp_policy
        assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == expected


def test_unknown_reduce_dtype_is_refused_at_layout_time():
    with pytest.raises(ConfigError) as info:
        HybridZero(HybridZeroConfig(reduce_dtype="fp16")).layout(world_size=2)
    assert info.value.where == "strategy.reduce_dtype" and "bf16" in info.value.fix
