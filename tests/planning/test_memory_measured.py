"""task=plan's memory estimate against peaks measured on one H200 (torch's peak reserved GiB):
internlm_7b, rows of 2,048 tokens, 2 rows per step in micro batches of 1, chunked loss. The
issue's rule: every estimate within 15% of the reserved peak."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from internlm.planning.memory import GIB, estimate_per_device
from tests.planning.test_plan import H200, P_7B, plan_for

RUN = ["model=internlm_7b", "data.seq_len=2048", "data.global_batch_size=2", "data.micro_batch_size=1", "loss=chunked"]
BF16 = ["trainer.precision=bf16-true", "optimizer=adamw_bf16", "trainer.activation_checkpointing=full"]
DPO = ["task=dpo", "objective=dpo", "data=preference"]
LORA = ["adapter=lora", "adapter.targets=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"]
MEASURED = {  # rung: (overrides, reserved, allocated)
    "bf16-mixed + adamw + full AC": (["trainer.precision=bf16-mixed", "trainer.activation_checkpointing=full"], 132.96, 125.09),
    "bf16-true + adamw_bf16 + full AC": (BF16, 59.07, 57.15),
    "LoRA r16, bf16-true, no AC": (["trainer.precision=bf16-true", *LORA], 26.16, 25.74),
    "DPO, frozen reference": ([*DPO, "task.reference=frozen", *BF16], 72.68, 71.17),
    "DPO, precomputed reference": ([*DPO, "task.reference=precompute", *BF16], 59.4, 57.5),
}


@pytest.mark.parametrize("rung", MEASURED)
def test_the_estimate_is_within_15_percent_of_the_reserved_peak(rung):
    overrides, reserved, _ = MEASURED[rung]
    total = plan_for(*RUN, *overrides, facts=H200).memory_per_device_gib["total"]
    assert abs(total - reserved) / reserved < 0.15


def test_bf16_mixed_with_full_recompute_counts_autocasts_copies_when_micro_batches_accumulate():
    # the rung that was 17% under: 110.8 planned; the copies (2 B/param) bring it to the allocated peak
    planned = plan_for(*RUN, *MEASURED["bf16-mixed + adamw + full AC"][0], facts=H200).memory_per_device_gib
    assert planned["autocast_weights"] == round(2 * P_7B / GIB, 3)
    assert planned["total"] == pytest.approx(MEASURED["bf16-mixed + adamw + full AC"][2], rel=0.02)


MODEL_7B = SimpleNamespace(hidden_size=4096, num_layers=32, vocab_size=103168, mlp=SimpleNamespace(intermediate_size=11008),
                           attention=SimpleNamespace(num_heads=32))
ONE_DEVICE = SimpleNamespace(shard=1, tensor=1)


@pytest.mark.parametrize("precision,checkpointing,accumulation,copies", [
    ("bf16-mixed", "full", 1, False),  # one micro batch: the cache is gone before the gradients exist
    ("bf16-mixed", "full", 2, True),
    ("bf16-mixed", "full", None, True),  # not known: the larger
    ("bf16-mixed", "none", 1, True),  # saved for backward
    ("bf16-true", "full", 2, False),  # no autocast
])
def test_autocast_copies_count_where_they_meet_the_gradients(precision, checkpointing, accumulation, copies):
    parts = estimate_per_device(MODEL_7B, P_7B, ONE_DEVICE, 1, 2048, precision, checkpointing, full_logits=False,
                                grad_accumulation=accumulation)
    assert parts["autocast_weights"] == (round(2 * P_7B / GIB, 3) if copies else 0.0)
