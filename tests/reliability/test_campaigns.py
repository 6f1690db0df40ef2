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


def test_generated_bad_data_files_are_each_refused_with_file_and_line_and_write_nothing():
    from bench.campaigns import data_fuzz

    results = data_fuzz.campaign(count=40, seed=1, cli=1)
    assert {r["kind"] for r in results} >= {"binary_file", "bad_utf8", "bad_utf8_text", "huge_line", "truncated_json"}
    assert [(r["name"], r["problems"]) for r in results if r["problems"]] == []


def test_the_data_fuzz_checker_notices_an_accepted_file_and_a_wrong_line(tmp_path):
    """Guards the campaign: a good file, or a message naming another line, is a failure."""
    from bench.campaigns import data_fuzz

    tokenizer = data_fuzz.default_tokenizer()
    good = data_fuzz.Case("good", "good.jsonl", b'{"text": "the king and the queen"}\n' * 40, 1)
    (tmp_path / "a").mkdir()
    assert any("accepted" in p for p in data_fuzz.check_in_process(good, tmp_path / "a", tokenizer))
    wrong_line = data_fuzz.Case("bad_utf8", "bad.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n', 1)
    (tmp_path / "b").mkdir()
    assert any("does not name bad.jsonl:1" in p for p in data_fuzz.check_in_process(wrong_line, tmp_path / "b", tokenizer))


def test_kill_9_of_two_gloo_processes_then_resume_at_one_equals_the_uninterrupted_run(tmp_path):
    """Both ranks killed at once (the process group), resumed on one process: every step sees the
    same global batch, only the order of the gradient sums changes (fp32 rounding)."""
    for attempt in (1, 2):  # a gloo launch rarely aborts while connecting: retried once
        result = kill9.campaign(kills=1, seed=3, max_steps=6, workdir=tmp_path / str(attempt), devices=2, resume_devices=1,
                                kill_moments=("checkpoint write",))
        if not result["bad_exits"]:
            break
    assert result["kills_by_moment"]["checkpoint write"] == 1  # killed inside a checkpoint write
    assert result["bad_exits"] == [] and result["damaged_checkpoints"] == []
    assert result["resume_devices"] == 1 and result["largest_relative_difference"] <= 1e-4
