"""load_engine reads run folders, checkpoint folders and hf: exports alike; bad sources fail first."""

from __future__ import annotations


import pytest

import internlm
from internlm.errors import ConfigError
from internlm.inference import SamplingParams, load_engine
from internlm.runtime.checkpoint import complete_checkpoints

from inference_helpers import uncached

GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


def test_run_checkpoint_and_hf_folders_generate_alike(trained_run, hf_export):
    model, tokenizer = internlm.load(trained_run)
    prompt = tokenizer.encode("O Romeo", bos=True)
    expected = uncached(model, prompt, GREEDY)
    checkpoint = complete_checkpoints(trained_run)[-1]
    for source, name in [(trained_run, trained_run.name), (checkpoint, trained_run.name), (f"hf:{hf_export}", hf_export.name)]:
        with load_engine(source, device="cpu", max_batch=2) as engine:
            assert engine.model_id == name
            assert engine.max_context == model.config.attention.rotary.max_position
            assert engine.generate([prompt], GREEDY)[0].token_ids == expected


@pytest.mark.parametrize("source, problem", [("/no/such/run", "does not exist"), ("hf:/no/such/export", "no config.json")])
def test_missing_sources_are_one_clear_error(source, problem):
    with pytest.raises(ConfigError, match=problem):
        load_engine(source)


def test_an_empty_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        load_engine(tmp_path)


def test_bad_engine_options(trained_run):
    with pytest.raises(ConfigError, match="max_batch"):
        load_engine(trained_run, max_batch=0)
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_engine(trained_run, dtype="fp7")
    with pytest.raises(ConfigError, match="unknown device"):
        load_engine(trained_run, device="gpu0")


def test_original_internlm_shards_load_with_the_configured_model(trained_run, tmp_path):
    from internlm.api import run
    from internlm.interop import save_internlm_checkpoint

    model, tokenizer = internlm.load(trained_run)
    shards = tmp_path / "internlm-shards"
    save_internlm_checkpoint(model.state_dict(), model.config, shards, tp=2, pp=2)
    prompt = tokenizer.encode("O Romeo", bos=True)
    expected = uncached(model, prompt, GREEDY)
    with load_engine(f"internlm:{shards}", device="cpu", max_batch=1, model_config=model.config, tokenizer=tokenizer) as engine:
        assert engine.generate([prompt], GREEDY)[0].token_ids == expected
    with pytest.raises(ConfigError, match="no model config or tokenizer"):
        load_engine(f"internlm:{shards}")
    # task=generate reads them with the run's configured model (the default tiny one) and tokenizer.
    text = run(["task=generate", f"checkpoint=internlm:{shards}", "task.prompt=O Romeo", "task.max_new_tokens=12"],
               tmp_path / "gen")
    assert text == tokenizer.decode([t for t in expected if t != tokenizer.eos_id])
