"""`python -m internlm` as a user types it: from any directory, no chdir, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml


def internlm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "internlm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_plan_of_the_7b_prints_its_exact_parameter_count_from_any_directory(tmp_path):
    result = internlm("task=plan", "model=internlm_7b", "data.seq_len=2048", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "7,321,948,160" in result.stdout
    plan = yaml.safe_load((tmp_path / "run" / "plan.yaml").read_text())
    assert plan["plan"]["parameters"] == 7_321_948_160
    assert plan["config"]["model"]["hidden_size"] == 4096


def test_a_typo_fails_fast_with_a_suggestion_and_writes_nothing(tmp_path):
    result = internlm("optimizer.lrr=0.1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    assert "lrr" in result.stderr and "did you mean 'lr'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = internlm("--cfg", "job", "model=internlm_7b", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["model"]["num_layers"] == 32


def test_multirun_sweeps_locally(tmp_path):
    result = internlm(
        "-m", "task=plan", "model=tiny,internlm_7b", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    params = sorted(yaml.safe_load((p / "plan.yaml").read_text())["plan"]["parameters"] for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert params[1] == 7_321_948_160 and params[0] < 10_000_000


def test_missing_tokenizer_file_is_one_clear_message(tmp_path):
    result = internlm("task=plan", "tokenizer.path=/nonexistent/tok.model", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    assert "/nonexistent/tok.model" in result.stderr and "Traceback" not in result.stderr


def test_bad_data_paths_end_in_one_message_before_training(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for path, expected in [(tmp_path / "missing.jsonl", "missing.jsonl"), (empty, "empty.jsonl")]:
        result = internlm(
            "data=text", f"data.paths=[{path}]", "data.seq_len=64", "trainer.max_steps=2", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path
        )
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert "step 1" not in result.stdout + result.stderr


def test_a_mixture_defined_on_the_command_line_trains_and_logs_its_proportions(tmp_path):
    corpus = Path(__file__).resolve().parents[1] / "internlm" / "assets" / "corpus"
    result = internlm(
        "data=mixture",
        f"+data.sources.plays={{path: {corpus / 'shakespeare.jsonl'}, weight: 0.7, format: text}}",
        f"+data.sources.poems={{path: {corpus / 'tang_song.jsonl'}, weight: 0.3, format: text}}",
        "data.seq_len=64", "data.global_batch_size=40", "trainer.max_steps=5", "trainer.sample_tokens=0",
        "trainer.checkpoint_every=-1", "trainer.loggers=[csv]", f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    import csv

    last = list(csv.DictReader((tmp_path / "run" / "metrics" / "metrics.csv").open()))[-1]
    assert abs(float(last["data/mix/plays"]) - 0.7) <= 0.05 and abs(float(last["data/mix/poems"]) - 0.3) <= 0.05


def test_a_mixture_source_with_a_misspelt_field_is_named(tmp_path):
    result = internlm("data=mixture", "+data.sources.web={pth: x}", "data.seq_len=64", "trainer.max_steps=1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    assert "data.sources.web" in result.stderr and "pth" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_every_group_and_its_options_without_importing_the_training_stack(tmp_path):
    result = internlm("--help", cwd=tmp_path)
    assert result.returncode == 0
    model_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("model "))
    assert "internlm_7b" in model_line and "tiny" in model_line and "base" not in model_line
    assert "task=components" in result.stdout
    probe = "import sys, internlm.__main__ as m; m.help_text(); print('lightning' in sys.modules, 'internlm.program' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_deprecated_prepare_spelling_still_works_with_a_note(tmp_path):
    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"text": "To be, or not to be"}\n{"text": "that is the question"}\n')
    result = internlm("task=prepare_data", f"prepare.input=[{corpus}]", f"prepare.output={tmp_path / 'store'}", "task.progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'prepare.input' is deprecated; use 'task.input'" in result.stderr
    assert (tmp_path / "store").is_dir()


def test_a_refused_run_leaves_no_folder_and_a_users_folder_untouched(tmp_path):
    bad = ["data=text", "data.paths=[/nonexistent/corpus.jsonl]", "trainer.max_steps=2"]
    result = internlm(*bad, f"hydra.run.dir={tmp_path / 'new-run'}", cwd=tmp_path)
    assert result.returncode == 2 and "data file not found" in result.stderr
    assert not (tmp_path / "new-run").exists()  # no .hydra/, no plan.yaml, no folder
    mine = tmp_path / "my-folder"
    mine.mkdir()
    result = internlm(*bad, f"hydra.run.dir={mine}", cwd=tmp_path)
    assert result.returncode == 2 and mine.is_dir()


def test_misleading_command_lines_get_the_right_hint(tmp_path):
    cases = {
        "+trainer.maxsteps=3": "did you mean 'max_steps'",
        "+foo=bar": "'foo' is not a field of the root config",
        "model.num_heads=5": "did you mean 'model.attention.num_heads'",
        "optimizer.lr=1e-3,3e-3": "add -m",
        "hydra.run.dir=/proc/run": "cannot create or write the run folder",
    }
    for arg, hint in cases.items():
        result = internlm(arg, "task=plan", cwd=tmp_path)
        assert result.returncode == 2, arg
        assert hint in result.stderr, (arg, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # nothing written by any of them


def test_a_single_path_or_glob_where_a_list_is_expected_is_that_list():
    from internlm.api import compose
    from internlm.preflight import check_overrides

    argv = ["task=prepare_data", "task.input=raw/*.jsonl", "task.output=out"]
    assert check_overrides(argv) == ["task=prepare_data", "task.input=['raw/*.jsonl']", "task.output=out"]
    assert list(compose(argv).task.input) == ["raw/*.jsonl"]
    assert list(compose(["data=text", "data.paths='my data/a b.jsonl'"]).data.paths) == ["my data/a b.jsonl"]
    assert list(compose(["data=text", "data.paths=[a.jsonl,b.jsonl]"]).data.paths) == ["a.jsonl", "b.jsonl"]


def test_a_key_below_a_plain_value_says_so_instead_of_an_empty_field_list():
    import pytest

    from internlm.errors import ConfigError
    from internlm.preflight import check_overrides

    with pytest.raises(ConfigError) as info:
        check_overrides(["trainer.max_steps.x=1"])
    assert "trainer.max_steps is a value" in info.value.render() and "(none)" not in info.value.render()
