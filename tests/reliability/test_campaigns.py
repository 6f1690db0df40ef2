"""The campaigns of bench/campaigns at a size that fits CI (the full sizes are recorded in docs/reliability.md)."""

from __future__ import annotations

import pytest

from bench.campaigns import config_fuzz, kill9


def test_a_sample_of_generated_bad_command_lines_each_end_in_one_message_and_write_nothing():
    results = config_fuzz.campaign(count=12, seed=1)
    assert len(results) == 12
    failed = [(" ".join(r["line"]), r["problems"], r["stderr"]) for r in results if r["problems"]]
    assert failed == []


def test_the_generator_covers_unknown_keys_at_every_depth_and_bad_values():
    lines = [line[1] for line in config_fuzz.generate(200, seed=0)]
    keys = [line.split("=")[0] for line in lines]
    assert {k.count(".") for k in keys} >= {0, 1, 2}
    assert any(line.startswith("optimizer.lr=") for line in lines) and len(set(lines)) == 200


@pytest.mark.parametrize("attempt", [0])
def test_kill_9_at_random_moments_then_resume_equals_the_uninterrupted_run_bitwise(tmp_path, attempt):
    result = kill9.campaign(kills=2, seed=3, max_steps=8, workdir=tmp_path)
    assert result["kills"] == 2
    assert result["bad_exits"] == [] and result["damaged_checkpoints"] == []
    assert result["final_weights_bitwise_equal"]
