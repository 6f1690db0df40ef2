"""task=eval end to end: a tiny model trained on a small multiple-choice set scores it
perfectly; 2 ranks give 1 rank's records; the run folder gets the table, results and
predictions; task.mode=score re-scores them without a model; bad input fails before any model."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from internlm import registry
from internlm.api import compose, run
from internlm.components.eval.answers import gsm8k_prediction
from internlm.components.eval.runner import load_suite, merge, predict, score
from internlm.errors import ConfigError
from internlm.inference.scoring import for_internlm

sys.path.insert(0, str(Path(__file__).parents[1] / "components" / "eval"))
from evalhelpers import DATA, compose_suite  # noqa: E402

FAST = ["data.seq_len=64", "data.global_batch_size=4", "trainer.log_every=1", "trainer.val_every=0",
        "trainer.loggers=[]", "trainer.sample_tokens=0", "trainer.progress_bar=false"]
CHOICE_SETS = ["bustm", "cluewsc", "mmlu", "commonsenseqa"]  # short prompts: a few seconds of training


def choice_datasets(convention: str = "ppl"):
    out = []
    for name in CHOICE_SETS:
        out += load_suite(compose_suite(name, f"task.eval.datasets.{name}.fewshot=0",
                                        f"task.eval.datasets.{name}.options.choice.convention={convention}"))
    return out


@pytest.fixture(scope="module")
def memorized():
    """The tiny model (random init) trained on the gold-answer texts of the sample items."""
    torch.manual_seed(0)
    config = OmegaConf.to_object(compose([]))
    model, tokenizer = registry.build(config.model), registry.build(config.tokenizer)
    lm = for_internlm("tiny", model, tokenizer)
    texts = [p.prompt + p.continuations[item.gold] for d in choice_datasets() for p, item in zip(d.prompts(lm), d.items)]
    rows = [[tokenizer.bos_id] + tokenizer.encode(t) for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    targets = torch.tensor([r[1:] + [-100] * (width - len(r)) for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(100):
        loss = F.cross_entropy(model(ids)[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return lm


@pytest.mark.parametrize("convention,metric", [("ppl", "accuracy"), ("loglikelihood", "acc")])
def test_a_model_trained_on_a_choice_set_scores_it_perfectly(memorized, convention, metric):
    for dataset in choice_datasets(convention):
        metrics = score(dataset, predict(dataset, memorized))
        assert metrics[metric] == 100.0, (dataset.name, metrics)


def test_two_ranks_give_the_records_of_one(memorized):
    for dataset in choice_datasets():
        one = predict(dataset, memorized)
        two = merge([predict(dataset, memorized, rank, 2) for rank in (1, 0)])
        assert [r["id"] for r in two] == [r["id"] for r in one]
        for a, b in zip(one, two):
            assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-5) and a["tokens"] == b["tokens"]
        assert score(dataset, one) == score(dataset, two)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    run(FAST + ["trainer.max_steps=2"], folder)
    return folder


def eval_overrides(*extra: str) -> list[str]:
    return ["task=eval", "eval@task.eval=cluewsc", f"task.eval.data_dir={DATA}", *extra]


def test_eval_writes_one_column_per_model_and_rescoring_needs_no_model(checkpoint, tmp_path, capsys):
    first = run(eval_overrides(f"task.models=[{checkpoint},{checkpoint}]"), tmp_path / "eval")
    table = capsys.readouterr().out
    name = checkpoint.name
    assert first["models"] == {name: str(checkpoint), f"{name}-2": str(checkpoint)}
    values = first["datasets"]["cluewsc"]["metrics"]
    assert values[name] == values[f"{name}-2"] and set(values[name]) == {"accuracy"}
    header = table.splitlines()[0].split()
    assert header == ["dataset", "version", "metric", "mode", name, f"{name}-2"]
    md = (tmp_path / "eval" / "summary.md").read_text()
    assert md.startswith(f"| dataset | version | metric | mode | {name} | {name}-2 |")
    assert (tmp_path / "eval" / "summary.csv").read_text().splitlines()[0] == f"dataset,version,metric,mode,{name},{name}-2"
    lines = [json.loads(line) for line in (tmp_path / "eval" / "predictions" / "cluewsc.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {"prompt", "choices", "extracted", "gold", "correct", "model"} <= set(lines[0])
    assert lines[0]["choices"] == ["否", "是"] and lines[0]["extracted"] in ("否", "是")

    rescored = run(eval_overrides("task.mode=score", f"task.predictions={tmp_path / 'eval'}"), tmp_path / "score")
    assert rescored["datasets"] == first["datasets"]


def test_checkpoint_eval_through_the_cli_default(checkpoint, tmp_path):
    result = run(["task=eval", f"checkpoint={checkpoint}", "eval@task.eval=bustm", f"task.eval.data_dir={DATA}"], tmp_path)
    assert 0.0 <= result["datasets"]["bustm"]["metrics"][checkpoint.name]["accuracy"] <= 100.0


def test_score_mode_without_predictions(tmp_path):
    with pytest.raises(ConfigError, match="no saved predictions for 'cluewsc'"):
        run(eval_overrides("task.mode=score"), tmp_path)


def test_a_chat_dataset_for_a_model_without_a_chat_template_fails_before_loading(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # not even a loadable model: the check comes first
    (folder / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no chat template"):
        run(eval_overrides(f"checkpoint=hf:{folder}", "task.eval.chat=true"), tmp_path / "run")


def test_missing_model_and_missing_data(tmp_path):
    with pytest.raises(ConfigError, match="task=eval needs a model"):
        run(eval_overrides(), tmp_path / "a")
    with pytest.raises(ConfigError, match="no Hugging Face model"):
        run(eval_overrides(f"checkpoint=hf:{tmp_path / 'none'}"), tmp_path / "b")
    with pytest.raises(ConfigError, match="data folder not found"):
        run(["task=eval", f"checkpoint=hf:{tmp_path}", "eval@task.eval=ceval", f"task.eval.data_dir={tmp_path / 'x'}"], tmp_path / "c")


def test_unknown_dataset_names(tmp_path, monkeypatch):
    from internlm import preflight

    with pytest.raises(ConfigError, match="no config 'mmlx' in group 'eval'") as error:
        preflight.check_overrides(["task=eval", "eval@task.eval=mmlx"])
    assert "mmlu" in error.value.fix
    # a suite file that names a dataset which does not exist
    conf = tmp_path / "conf"
    shutil.copytree(preflight.conf_dir(), conf)
    (conf / "eval" / "my_suite.yaml").write_text("defaults:\n  - eval_schema\n  - mmlu\n  - nosuch\n  - _self_\n")
    monkeypatch.setattr(preflight, "conf_dir", lambda: conf)
    with pytest.raises(ConfigError, match="In 'eval/my_suite': Could not load 'eval/nosuch'"):
        preflight.check_overrides(["task=eval", "eval@task.eval=my_suite"])


def test_generation_on_the_engine_equals_plain_greedy_decoding(memorized):
    from internlm.components.eval.protocol import GenerationRequest
    from internlm.inference.scoring import CausalLM

    plain = CausalLM("plain", memorized.forward, memorized.codec, memorized.device, memorized.max_length)
    requests = [GenerationRequest("语句一：“今天天气怎么样”", 12, ("\n",)), GenerationRequest("Where is salt water found?", 8)]
    assert memorized.generate(requests) == plain.generate(requests)


def test_generative_datasets_write_generations_and_extractions(checkpoint, tmp_path):
    result = run(["task=eval", f"checkpoint={checkpoint}", "eval@task.eval=gsm8k", f"task.eval.data_dir={DATA}",
                  "task.eval.datasets.gsm8k.fewshot=1", "task.eval.datasets.gsm8k.options.generate.max_new_tokens=6"], tmp_path)
    assert set(result["datasets"]["gsm8k"]["metrics"][checkpoint.name]) == {"accuracy"}
    lines = [json.loads(line) for line in (tmp_path / "predictions" / "gsm8k.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in lines] == ["12", "5500"] and all(isinstance(r["generation"], str) for r in lines)
    assert all(r["extracted"] == gsm8k_prediction(r["generation"]) for r in lines)


def test_humaneval_completions_run_in_the_sandbox(checkpoint, tmp_path):
    result = run(["task=eval", f"checkpoint={checkpoint}", "eval@task.eval=humaneval", "task.eval.limit=2",
                  "task.eval.datasets.humaneval.options.code.max_new_tokens=4"], tmp_path)
    assert result["datasets"]["humaneval"]["mode"] == "gen"
    lines = [json.loads(line) for line in (tmp_path / "predictions" / "humaneval.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == ["HumanEval/0", "HumanEval/1"]
    assert all(len(r["completions"]) == 1 and len(r["passed"]) == 1 for r in lines)
    expected = 100.0 * sum(r["passed"][0] for r in lines) / 2
    assert result["datasets"]["humaneval"]["metrics"][checkpoint.name]["pass@1"] == expected


def test_bits_per_byte_equals_a_direct_computation(memorized):
    import math

    from internlm.components.eval.config import DatasetConfig, EvalSuiteConfig
    from internlm.components.eval.runner import load_dataset

    dataset = load_dataset("held_out", DatasetConfig(format="text", path="text", evaluator="bits_per_byte"),
                           EvalSuiteConfig(data_dir=str(DATA)))
    metrics = score(dataset, predict(dataset, memorized))
    logprob, tokens, size = 0.0, 0, 0
    tokenizer_encode, bos = memorized.codec.encode, memorized.codec.bos_id
    for item in dataset.items:
        ids = [bos] + tokenizer_encode(item.fields["text"])
        with torch.no_grad():
            logits = memorized.forward(torch.tensor([ids]))[0].log_softmax(-1)
        logprob += sum(logits[i, t].item() for i, t in enumerate(ids[1:]))
        tokens, size = tokens + len(ids) - 1, size + len(item.fields["text"].encode())
    assert metrics["bits_per_byte"] == pytest.approx(-logprob / (math.log(2) * size), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(-logprob / tokens), rel=1e-5)
