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
