"""compile_blocks: same numbers as eager, one graph for all blocks, and no recompiles when every
batch brings a new document layout (counted with torch._dynamo's counters)."""

from __future__ import annotations

import copy

import pytest
import torch

from internlm.components.model.attention import AttentionConfig
from internlm.components.model.mlp import MLPConfig
from internlm.components.model.transformer import Transformer, TransformerConfig
from internlm.runtime.activation_checkpointing import apply_activation_checkpointing
from internlm.runtime.torch_compile import compile_blocks, compile_stats


def packed_positions(seed: int, batch=2, seq=32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        row: list[int] = []
        while len(row) < seq:
            row += list(range(int(torch.randint(1, 12, (1,), generator=g))))
        rows.append(row[:seq])
    return torch.tensor(rows)


@pytest.mark.parametrize("policy", ["none", "op"])
def test_compiled_blocks_match_eager_without_recompiles(policy):
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=64, hidden_size=32, num_layers=3,
        attention=AttentionConfig(num_heads=4, num_kv_heads=2, backend="sdpa"), mlp=MLPConfig(intermediate_size=48),
    )
    reference = Transformer(cfg)
    model = copy.deepcopy(reference)
    names = list(model.state_dict())
    apply_activation_checkpointing(model, policy)
    compile_blocks(model, backend="aot_eager")  # traces and partitions like inductor, no codegen
    before = compile_stats()  # the counters are per process, summed over earlier tests
    graphs = []
    for step in range(4):
        ids = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(step))
        positions = packed_positions(step)
        out, expected = model(ids, positions), reference(ids, positions)
        out.square().mean().backward()
        expected.square().mean().backward()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        graphs.append(compile_stats()["unique_graphs"] - before["unique_graphs"])
    assert graphs == [1, 1, 1, 1]  # one graph serves every block and every layout
    assert compile_stats()["recompiles"] == before["recompiles"]
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert list(model.state_dict()) == names  # module names unchanged
