"""adamw_bf16: exactly torch's AdamW on fp32 weights; on bf16 weights small steps are not lost.

The fused (compiled) path is checked on CPU with the aot_eager backend: the same fullgraph
capture, functionalisation and dynamic shapes as on CUDA, without inductor's code generation
(which takes ~20 s cold on CPU); bench/adamw_bf16_step.py runs the generated kernel on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from internlm.components.optimizer import adamw_bf16
from internlm.components.optimizer.adamw_bf16 import StochasticAdamW, stochastic_round_


@pytest.fixture
def compiles(monkeypatch):
    """The fused path on CPU; returns a function that counts the graphs it compiled (not the empty
    graph aot_eager also passes to the backend)."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(adamw_bf16, "COMPILE_BACKEND", counter)
    yield lambda: sum(any(node.op == "call_function" for node in g.graph.nodes) for g in counter.graphs)
    torch._dynamo.reset()


def run_steps(param: torch.Tensor, optimizer: torch.optim.Optimizer, grads: list[torch.Tensor], lrs=None) -> None:
    for index, grad in enumerate(grads):
        param.grad = grad.to(param.dtype)
        if lrs is not None:  # as a scheduler does
            for group in optimizer.param_groups:
                group["lr"] = lrs[index]
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


def test_the_fused_path_follows_torch_adamw_and_compiles_once(monkeypatch, compiles):
    # two shapes, chunks of 500 and a shorter last one, a learning rate that changes every step
    monkeypatch.setattr(adamw_bf16, "FUSED_CHUNK", 500)
    torch.manual_seed(0)
    starts = [torch.randn(64, 32), torch.randn(7, 100)]
    grads = [[torch.randn_like(s) for s in starts] for _ in range(4)]
    lrs = [1e-2, 8e-3, 5e-3, 1e-3]
    ours = [torch.nn.Parameter(s.clone()) for s in starts]
    theirs = [torch.nn.Parameter(s.clone()) for s in starts]
    fused = StochasticAdamW(ours, lr=1e-2, weight_decay=0.1, fused=True)
    reference = torch.optim.AdamW(theirs, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for step, lr in enumerate(lrs):
        for optimizer, params in ((fused, ours), (reference, theirs)):
            for param, grad in zip(params, grads[step]):
                param.grad = grad.clone()
            optimizer.param_groups[0]["lr"] = lr
            optimizer.step()
    for mine, torch_s in zip(ours, theirs):
        torch.testing.assert_close(mine.data, torch_s.data, rtol=1e-6, atol=1e-7)
    assert compiles() == 1  # 7 chunk lengths and offsets, 4 steps: one graph


def test_stochastic_rounding_is_unbiased():
    value = torch.full((200_000,), 1.0 + 1e-3)  # between two bf16 values 1.0 and 1.0078125
    out = torch.empty_like(value, dtype=torch.bfloat16)
    stochastic_round_(out, value)
    assert set(out.float().unique().tolist()) == {1.0, 1.0078125}
    assert abs(out.float().mean().item() - (1.0 + 1e-3)) < 1e-4


def test_the_fused_bf16_step_is_the_fp32_step_in_expectation(compiles):
    # every element starts alike and gets the same gradients (exact in bf16): the mean over elements estimates the
    # expectation of one stochastically rounded element; fp32 AdamW gives the exact values
    n, lr = 200_000, 3e-3
    ours = torch.nn.Parameter(torch.full((n,), 0.75, dtype=torch.bfloat16))
    exact = torch.nn.Parameter(torch.full((n,), 0.75))
    optimizers = [StochasticAdamW([ours], lr=lr, fused=True), torch.optim.AdamW([exact], lr=lr, betas=(0.9, 0.95), weight_decay=0.0)]

    def step(grad: float) -> list[tuple[torch.Tensor, float]]:
        for param, optimizer in zip((ours, exact), optimizers):
            param.grad = torch.full_like(param, grad)
            optimizer.step()
        mine, theirs = optimizers[0].state[ours], optimizers[1].state[exact]
        return [(ours.data.float(), exact[0].item())] + [(mine[k].float(), theirs[k][0].item()) for k in ("exp_avg", "exp_avg_sq")]

    # one step: each element is one of the two bf16 neighbours of the exact value
    for values, target in step(0.296875):  # 19/64: 0.1 g and 0.05 g^2 fall between bf16 values
        low, high = values.unique().tolist()
        assert low < target < high  # rounded both ways, not to nearest
        # the mean of n roundings: standard error <= (high - low) / (2 sqrt n); allow 6 of them
        assert abs(values.mean().item() - target) < 6 * (high - low) / (2 * n**0.5)
    # further steps: the elements' paths part (their moments were rounded apart), the mean holds
    for grad in (-0.15625, 0.625, 0.046875):
        results = step(grad)
    for values, target in results:
        assert values.std().item() > 0
        assert abs(values.mean().item() - target) < 6 * values.std().item() / n**0.5
    assert compiles() == 1


@pytest.mark.parametrize("fused", [False, True])
def test_small_steps_add_up_in_bf16_where_round_to_nearest_loses_them(fused, request):
    if fused:
        request.getfixturevalue("compiles")
    # A constant gradient makes every Adam step exactly lr: 100 steps of 1e-4 move 1.0 to 0.99.
    grads = [torch.ones(20_000)] * 100
    nearest = torch.nn.Parameter(torch.ones(20_000, dtype=torch.bfloat16))
    run_steps(nearest, StochasticAdamW([nearest], lr=1e-4, stochastic_rounding=False, fused=fused), grads)
    assert torch.all(nearest.data == 1.0)  # each step is below half a bf16 ulp: all lost
    rounded = torch.nn.Parameter(torch.ones(20_000, dtype=torch.bfloat16))
    run_steps(rounded, StochasticAdamW([rounded], lr=1e-4, fused=fused), grads)
    assert abs(rounded.data.float().mean().item() - 0.99) < 1e-3


@pytest.mark.parametrize("fused", [False, True])
def test_master_weights_are_torch_adamw_on_an_fp32_copy(fused, request, monkeypatch):
    """master_weights: the fp32 copy follows torch.optim.AdamW started from the bf16 weights, to
    fp32 rounding; the bf16 weight is that copy rounded to nearest; lr 1e-6 steps are all kept."""
    if fused:
        request.getfixturevalue("compiles")
    monkeypatch.setattr(adamw_bf16, "FUSED_CHUNK" if fused else "CHUNK", 700)  # 2048 elements: 3 chunks
    torch.manual_seed(0)
    start = torch.randn(64, 32).bfloat16()
    grads = [torch.randn(64, 32).bfloat16() for _ in range(6)]  # what bf16 backward hands over
    lrs = [1e-2, 1e-3, 1e-6, 1e-6, 1e-6, 1e-6]
    ours = torch.nn.Parameter(start.clone())
    exact = torch.nn.Parameter(start.float())
    optimizer = StochasticAdamW([ours], lr=1e-2, weight_decay=0.1, fused=fused, master_weights=True)
    reference = torch.optim.AdamW([exact], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for grad, lr in zip(grads, lrs):
        ours.grad, exact.grad = grad.clone(), grad.float()
        for o in (optimizer, reference):
            o.param_groups[0]["lr"] = lr
            o.step()
    state = optimizer.state[ours]
    assert state["master"].dtype == state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    torch.testing.assert_close(state["master"], exact.data, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(state["exp_avg_sq"], reference.state[exact]["exp_avg_sq"], rtol=1e-6, atol=1e-12)
    assert torch.equal(ours.data, exact.data.bfloat16())  # rounded to nearest, from the exact value


def test_master_weights_survive_a_state_dict_round_trip_in_fp32():
    """torch's load_state_dict casts floating states to the parameter's dtype (bf16): the fp32
    master and moments are restored in fp32, and the resumed steps equal the uninterrupted ones."""
    torch.manual_seed(1)
    start = torch.randn(300).bfloat16()
    grads = [torch.randn(300).bfloat16() for _ in range(4)]

    def fresh():
        param = torch.nn.Parameter(start.clone())
        return param, StochasticAdamW([param], lr=1e-3, master_weights=True)

    straight, straight_opt = fresh()
    run_steps(straight, straight_opt, grads)
    first, first_opt = fresh()
    run_steps(first, first_opt, grads[:2])
    saved_weight, saved_state = first.data.clone(), first_opt.state_dict()
    resumed, resumed_opt = fresh()
    resumed.data.copy_(saved_weight)
    resumed_opt.load_state_dict(saved_state)
    assert all(resumed_opt.state[resumed][k].dtype == torch.float32 for k in ("master", "exp_avg", "exp_avg_sq"))
    run_steps(resumed, resumed_opt, grads[2:])
    assert torch.equal(resumed.data, straight.data)
    assert torch.equal(resumed_opt.state[resumed]["master"], straight_opt.state[straight]["master"])
