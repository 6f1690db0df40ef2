"""adamw_bf16: exactly torch's AdamW on fp32 weights; on bf16 weights small steps are not lost."""

from __future__ import annotations

import torch

from internlm.components.optimizer.adamw_bf16 import StochasticAdamW, stochastic_round_


def run_steps(param: torch.Tensor, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor]) -> None:
    for grad in grads:
        param.grad = grad.to(param.dtype)
        optimizer.step()


def test_fp32_weights_follow_torch_adamw(monkeypatch):
    monkeypatch.setattr("internlm.components.optimizer.adamw_bf16.CHUNK", 500)  # 2048 elements: 5 chunks
    torch.manual_seed(0)
    start = torch.randn(64, 32)
    grads = [torch.randn(64, 32) for _ in range(5)]
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    run_steps(ours, StochasticAdamW([ours], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1), grads)
    run_steps(theirs, torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1), grads)
    torch.testing.assert_close(ours.data, theirs.data, rtol=1e-6, atol=1e-7)


def test_stochastic_rounding_is_unbiased():
    value = torch.full((200_000,), 1.0 + 1e-3)  # between two bf16 values 1.0 and 1.0078125
    out = torch.empty_like(value, dtype=torch.bfloat16)
    stochastic_round_(out, value)
    assert set(out.float().unique().tolist()) == {1.0, 1.0078125}
    assert abs(out.float().mean().item() - (1.0 + 1e-3)) < 1e-4


def test_small_steps_add_up_in_bf16_where_round_to_nearest_loses_them():
    # A constant gradient makes every Adam step exactly lr: 100 steps of 1e-4 move 1.0 to 0.99.
    grads = [torch.ones(20_000)] * 100
    nearest = torch.nn.Parameter(torch.ones(20_000, dtype=torch.bfloat16))
    run_steps(nearest, StochasticAdamW([nearest], lr=1e-4, stochastic_rounding=False), grads)
    assert torch.all(nearest.data == 1.0)  # each step is below half a bf16 ulp: all lost
    rounded = torch.nn.Parameter(torch.ones(20_000, dtype=torch.bfloat16))
    run_steps(rounded, StochasticAdamW([rounded], lr=1e-4), grads)
    assert abs(rounded.data.float().mean().item() - 0.99) < 1e-3
