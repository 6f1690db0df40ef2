"""A trained run leaves through task=export_hf and comes back through model.init_from."""

from __future__ import annotations

import pytest
import torch

import internlm
from internlm.api import run
from internlm.errors import ConfigError
from internlm.runtime.generation import generate


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.conftest import FAST

    folder = tmp_path_factory.mktemp("run")
    run(FAST + ["trainer.max_steps=6"], folder)
    return folder


def test_export_answers_the_same_greedy_continuation_in_stock_transformers(trained_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "hf"
    run(["task=export_hf", f"checkpoint={trained_run}", f"task.dir={out}", "task.dtype=float32"], tmp_path / "export")
    hf_model = AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(out)

    ours, tokenizer = internlm.load(trained_run)
    prompt = tokenizer.encode("To be, or not to be", bos=True)
    assert hf_tokenizer("To be, or not to be")["input_ids"] == prompt
    expected = generate(ours, prompt, 24)  # what task=generate prints (greedy)
    produced = hf_model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None)
    assert produced[0, len(prompt) :].tolist() == expected


def test_export_refuses_to_overwrite_a_folder_with_content(trained_run, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError):
        run(["task=export_hf", f"checkpoint={trained_run}", f"task.dir={out}"], tmp_path / "export")
    assert (out / "keep.txt").read_text() == "mine"


def test_init_from_hf_starts_from_the_exported_weights(trained_run, tmp_path):
    out = tmp_path / "hf"
    run(["task=export_hf", f"checkpoint={trained_run}", f"task.dir={out}", "task.dtype=float32"], tmp_path / "export")
    from tests.conftest import FAST

    continued = run(FAST + ["trainer.max_steps=1", f"model.init_from=hf:{out}", "trainer.checkpoint_every=0"], tmp_path / "continued")
    # The first loss of the continued run is that of the trained model, far below a random init's ~8.3.
    trained = run(FAST + ["trainer.max_steps=1", "trainer.checkpoint_every=0"], tmp_path / "fresh")
    assert continued["losses"][0] < trained["losses"][0] - 0.3
