"""The folded update (clip and skip inside torch's fused AdamW) trains as the separate clip + step
does: same losses, same skips, weights untouched by a skipped step. CPU has a fused AdamW too, so
`optimizer.fused=true` takes the folded path here as the GPU does by default."""

from __future__ import annotations

import math

import pytest
import torch

from internlm.api import run
from internlm.components.optimizer.adamw_bf16 import StochasticAdamW
from internlm.runtime import optimizer_step


@pytest.fixture
def folded_calls(monkeypatch):
    calls = []
    original = optimizer_step._folded

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(optimizer_step, "_folded", spy)
    return calls


def test_folded_clip_trains_as_the_separate_clip(tmp_path, fast_overrides, folded_calls):
    # grad_clip 0.05: every step of the tiny model is clipped (its norms are ~0.5-3)
    overrides = fast_overrides + ["trainer.max_steps=6", "trainer.grad_clip=0.05", "trainer.checkpoint_every=0",
                                  "trainer.loggers=[csv]"]
    separate = run(overrides + ["optimizer.fused=false"], tmp_path / "separate")["losses"]
    assert not folded_calls
    folded = run(overrides + ["optimizer.fused=true"], tmp_path / "folded")["losses"]
    assert len(folded_calls) == 6
    assert folded == pytest.approx(separate, rel=1e-5, abs=1e-6)
    assert folded[-1] != pytest.approx(folded[0], rel=1e-3)  # it trains at all


class _Fabric:  # what update() asks of Fabric on the separate path: torch's own clip
    _precision = None

    def clip_gradients(self, model, optimizer, max_norm, error_if_nonfinite):
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def _two_steps(fused: bool, max_norm: float, ours: bool = False) -> torch.Tensor:
    """Two AdamW steps on a linear layer, a large gradient (clipped) then a small one: Adam is
    blind to one constant scale, not to the ratio of two, so clipping shows in the weights.
    `ours`: optimizer=adamw_bf16's optimizer (fp32 weights: torch's AdamW arithmetic)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    if ours:
        optimizer = StochasticAdamW(model.parameters(), lr=0.1, betas=(0.9, 0.999), weight_decay=0.01)  # torch's defaults
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
    for magnitude in (50.0, 0.01):
        for p in model.parameters():
            p.grad = torch.randn_like(p) * magnitude
        loss = torch.tensor(1.0)
        optimizer_step.update(_Fabric(), model, optimizer, max_norm, loss, {}, lambda loss, norm: True)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("ours", [False, True], ids=["torch-fused-adamw", "adamw_bf16"])
def test_the_folded_clip_equals_torchs_clip_then_step(folded_calls, ours):
    reference = _two_steps(fused=False, max_norm=1.0)  # clip_grad_norm_, then AdamW's for-loop update
    assert not folded_calls
    folded = _two_steps(fused=True, max_norm=1.0, ours=ours)
    assert len(folded_calls) == 2
    torch.testing.assert_close(folded, reference, rtol=1e-6, atol=1e-7)
    unclipped = _two_steps(fused=False, max_norm=0.0)
    assert (unclipped - reference).abs().max() > 1e-3  # the clip matters in this example


@pytest.mark.parametrize("optimizer", [
    ["optimizer.fused=true"],
    # bf16 weights, fp32 master copies: the skip leaves those and the bf16 weights alone, and the step counts go back
    ["trainer.precision=bf16-true", "optimizer=adamw_bf16", "optimizer.master_weights=true", "optimizer.lr=1e-3"],
], ids=["torch-fused-adamw", "adamw_bf16-master-weights"])
def test_a_nan_step_is_skipped_inside_the_fused_kernel(tmp_path, fast_overrides, folded_calls, optimizer):
    import internlm

    overrides = fast_overrides + ["trainer.max_steps=4", "trainer.checkpoint_every=1", *optimizer,
                                  "trainer.keep_checkpoints=10", "debug.inject_nan_steps=[3]"]
    losses = run(overrides, tmp_path)["losses"]
    assert len(folded_calls) == 4
    assert [math.isnan(x) for x in losses] == [False, False, True, False]
    ckpts = tmp_path / "checkpoints"

    def state(step):
        model, _ = internlm.load(ckpts / f"step-{step:08d}")
        return {k: v.clone() for k, v in model.state_dict().items()}

    before, after = state(2), state(3)
    assert all(torch.equal(before[k], after[k]) for k in before)  # step 3 left the weights alone
    assert _adam_steps(ckpts / "step-00000003", tmp_path) == {2.0}  # nor the step counts
    assert not all(torch.equal(after[k], state(4)[k]) for k in after)


def _adam_steps(checkpoint, tmp_path) -> set[float]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(checkpoint / "state", tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=False)
    return {float(s["step"]) for s in saved["optimizer"]["state"].values()}
