"""Every layout optimises the same objective: 2 or 4 processes give the one-process losses.

The small model is built whole from the seed and then sharded, so every layout starts from the
same weights as the one-process run; the losses then agree to fp32 rounding (sharded reductions
sum in another order). The global batch is the same everywhere (8 rows), however it is split.
"""

from __future__ import annotations

from launch import assert_same_run, launch

STEPS = range(1, 7)


def test_ddp_at_2_processes_in_one_run_folder(tmp_path, reference):
    # ${now:...} to the microsecond: a rank that resolved it again would write elsewhere.
    ours = launch(None, "strategy=ddp", "hydra.run.dir=outputs/${now:%H-%M-%S-%f}", devices=2, cwd=tmp_path)
    assert_same_run(ours, reference, STEPS)
    assert_same_run(ours, reference, STEPS, key="grad_norm")
    logs = sorted(p.name for p in next((tmp_path / "outputs").iterdir()).glob("*.log"))
    assert logs == ["__main__.log", "train_ddp_process_1.log"]  # both ranks in the one folder


def test_hybrid_zero_2_replicas_of_2_shards(hsdp4, reference):
    assert_same_run(hsdp4, reference, STEPS)
    assert_same_run(hsdp4, reference, STEPS, key="grad_norm")


def test_fsdp_zero2_at_2_processes_with_gradient_accumulation(tmp_path, reference):
    # ZeRO-2 style (weights stay gathered to the backward), 2 blocks prefetched, and micro batches
    # of 1 row: 4 accumulation steps per rank
    zero2 = ["strategy.reshard_after_forward=false", "strategy.prefetch=2", "data.micro_batch_size=1"]
    ours = launch(tmp_path / "fsdp2", "strategy=fsdp", *zero2, devices=2)
    assert_same_run(ours, reference, STEPS)
    assert_same_run(ours, reference, STEPS, key="grad_norm")
