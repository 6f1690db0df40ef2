"""A checkpoint taken at one world size resumes at another and continues the same run.

The 4-process Hybrid ZeRO run (2 replicas x 2 shards) checkpoints at step 3; runs resumed from it
at 2 processes (FSDP) and at 1 must log its steps 4-6 and end with its weights and AdamW moments.
The other way, the one-process run's checkpoint resumes at 2 processes (replicas, no sharding).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

import internlm
from internlm.runtime import checkpoint
from launch import assert_same_run, assert_same_state, checkpoint_state, launch, relative_difference

RESUMED = range(4, 7)


def step(run_dir, number: int):
    return run_dir / "checkpoints" / f"step-{number:08d}"


def resume(run_dir, source, *overrides, devices):
    return launch(run_dir, *overrides, f"trainer.resume={step(source, 3)}", devices=devices)


def test_resume_at_2_processes_from_4(runs_dir, hsdp4, reference):
    ours = resume(runs_dir / "4to2", runs_dir / "hsdp4", "strategy=fsdp", devices=2)
    assert sorted(ours) == list(RESUMED)
    assert_same_run(ours, hsdp4, RESUMED)
    assert_same_run(ours, reference, RESUMED)
    assert_same_state(checkpoint_state(step(runs_dir / "4to2", 6)), checkpoint_state(step(runs_dir / "hsdp4", 6)))


def test_resume_at_1_process_from_4(runs_dir, hsdp4, reference):
    ours = resume(runs_dir / "4to1", runs_dir / "hsdp4", devices=1)
    assert_same_run(ours, hsdp4, RESUMED)
    assert_same_state(checkpoint_state(step(runs_dir / "4to1", 6)), checkpoint_state(step(runs_dir / "hsdp4", 6)))


def test_resume_at_2_processes_from_1(runs_dir, reference):
    ours = resume(runs_dir / "1to2", runs_dir / "single", "strategy=hybrid_zero", "strategy.shard_group_size=1", devices=2)
    assert_same_run(ours, reference, RESUMED)
    assert_same_state(checkpoint_state(step(runs_dir / "1to2", 6)), checkpoint_state(step(runs_dir / "single", 6)))


def test_a_sharded_checkpoint_loads_in_one_cpu_process(runs_dir, hsdp4, reference):
    model, _ = internlm.load(runs_dir / "hsdp4")  # the newest checkpoint: step 6, written by 4 ranks
    expected = checkpoint_state(step(runs_dir / "single", 6))["model"]
    weights = model.state_dict()
    assert weights.keys() == expected.keys()
    for name, tensor in weights.items():
        assert relative_difference(tensor, expected[name]) <= 1e-3, name


def test_an_async_save_is_committed_only_once_written(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    one_process = SimpleNamespace(is_global_zero=True, barrier=lambda: None)
    state = {"model": model, "optimizer": optimizer, "step": 1}
    final = checkpoint.save(one_process, tmp_path, 1, state, OmegaConf.create({}), {}, keep=2, async_save=True)
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on while the background write runs
    checkpoint.wait_for_pending()
    assert checkpoint.complete_checkpoints(tmp_path) == [final]
    written = checkpoint_state(final)["model"]
    assert all(torch.equal(written[name], saved[name]) for name in saved)


def test_ddp_at_4_processes_resumes_bitwise(runs_dir):
    """DDP re-buckets its gradients after the first step unless told not to; a resumed run's first
    step would then reduce four ranks' values in another order than the uninterrupted run did at
    that step (last-bit differences). `strategy.exact_resume` (default) keeps the first layout."""
    straight = launch(runs_dir / "ddp4", "strategy=ddp", devices=4)
    resumed = resume(runs_dir / "ddp4-resumed", runs_dir / "ddp4", "strategy=ddp", devices=4)
    assert {s: resumed[s] for s in RESUMED} == {s: straight[s] for s in RESUMED}  # loss and grad norm, exactly
    ours, theirs = checkpoint_state(step(runs_dir / "ddp4-resumed", 6)), checkpoint_state(step(runs_dir / "ddp4", 6))
    for name, tensor in ours["model"].items():
        assert torch.equal(tensor, theirs["model"][name]), name
