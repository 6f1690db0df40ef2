"""Alignment end to end on CPU: SFT then DPO learns a preference rule; the precomputed and the
frozen reference agree; a crashed DPO run resumes bitwise with its reference cache; bad input is
refused before any step."""

from __future__ import annotations

import csv
import json
import random
import shutil

import pytest

import internlm
from internlm.api import run
from internlm.config import RootConfig
from internlm.errors import ConfigError

WORDS = "king queen moon river sword crown night day love blood heart rose star sea".split()
RULE = " so be it"  # every chosen answer ends with it; the rejected one is the same answer without


def sentence(rng, low, high):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def write_data(folder, seed=0):
    rng = random.Random(seed)
    with open(folder / "chats.jsonl", "w") as f:
        for _ in range(48):
            messages = [{"role": "user", "content": sentence(rng, 2, 2)}, {"role": "assistant", "content": sentence(rng, 2, 4)}]
            f.write(json.dumps({"messages": messages}) + "\n")
    for name, count in (("pairs", 64), ("held_out", 24)):
        with open(folder / f"{name}.jsonl", "w") as f:
            for _ in range(count):
                answer = sentence(rng, 2, 4)
                f.write(json.dumps({"prompt": sentence(rng, 2, 2), "chosen": answer + RULE, "rejected": answer}) + "\n")
    return folder


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path)


FAST = ["model.num_layers=2", "data.seq_len=128", "data.global_batch_size=4", "trainer.log_every=1",
        "trainer.progress_bar=false", "trainer.loggers=[csv]", "trainer.val_every=0"]


def dpo(data, *extra):
    return ["+experiment=tiny_dpo", f"data.paths=[{data / 'pairs.jsonl'}]", *FAST, *extra]


def last_row(run_dir):
    rows = list(csv.DictReader((run_dir / "metrics" / "metrics.csv").open()))
    return {k: float(v) for k, v in rows[-1].items() if v}


def greedy_answers(run_dir, prompts, max_new_tokens=24):
    """(answer, stopped at <eoa>) per prompt, greedy, through the inference engine."""
    model, tokenizer = internlm.load(run_dir)
    out = []
    for prompt in prompts:
        answer, _ = model.chat(tokenizer, prompt, do_sample=False, max_new_tokens=max_new_tokens)
        out.append((answer, len(tokenizer.encode(answer)) < max_new_tokens))
    return out


def test_sft_then_dpo_learns_the_rule_on_held_out_pairs(data, tmp_path):
    sft_dir = tmp_path / "sft"
    sft = run(["+experiment=tiny_sft", f"data.paths=[{data / 'chats.jsonl'}]", *FAST, "trainer.max_steps=40", "optimizer.lr=3e-3"], sft_dir)
    assert sft["losses"][-1] < sft["losses"][0] - 1.0
    prompts = [json.loads(line)["prompt"] for line in (data / "held_out.jsonl").read_text().splitlines()[:8]]
    # SFT answers in the template: words of the chats, then <eoa>; none follows the rule yet
    before = greedy_answers(sft_dir, prompts)
    assert all(stopped for _, stopped in before) and not any(a.endswith(RULE.strip()) for a, _ in before)
    assert sum(bool(a) and set(a.split()) <= set(WORDS) for a, _ in before) >= 6
    dpo_dir = tmp_path / "dpo"
    # RPO (DPO + the chosen answer's NLL): plain DPO on this rule learns it by pushing <eoa> down
    # everywhere, and its greedy answers stop ending at all
    run(dpo(data, f"model.init_from=run:{sft_dir}", f"data.val_paths=[{data / 'held_out.jsonl'}]", "objective.sft_weight=1.0",
            "optimizer.lr=1e-3", "trainer.max_steps=30", "trainer.val_every=30", "trainer.val_batches=8"), dpo_dir)
    final = last_row(dpo_dir)
    assert final["val/rewards/accuracies"] >= 0.9 and final["val/rewards/margins"] > 0
    after = greedy_answers(dpo_dir, prompts)  # held-out prompts, greedy: the answers end with the phrase
    assert sum(stopped and a.endswith(RULE.strip()) for a, stopped in after) >= 6, after


def test_precomputed_and_frozen_references_give_the_same_losses(data, tmp_path):
    pre = run(dpo(data, "trainer.max_steps=3", "task.reference=precompute"), tmp_path / "pre")
    frozen = run(dpo(data, "trainer.max_steps=3", "task.reference=frozen"), tmp_path / "frozen")
    assert pre["losses"][0] == pytest.approx(0.6931, abs=1e-4)  # policy = reference at step 0: -log sigmoid(0)
    assert frozen["losses"] == pytest.approx(pre["losses"], rel=1e-5, abs=1e-6)
    assert not (tmp_path / "frozen" / "reference").exists()


def test_resume_after_a_crash_mid_dpo_is_bitwise_with_the_reference_cache(data, tmp_path):
    overrides = dpo(data, "trainer.max_steps=4", "trainer.checkpoint_every=2")
    straight = run(overrides, tmp_path)["losses"]
    [cache] = (tmp_path / "reference").iterdir()
    before = cache.read_bytes()
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000004")  # the crash: only step 2 survives
    resumed = run(overrides + ["trainer.resume=auto"], tmp_path)["losses"]
    assert resumed == straight[2:]
    assert cache.read_bytes() == before and list((tmp_path / "reference").iterdir()) == [cache]
    cache.unlink()  # a trained model is not the reference: refuse instead of recomputing from it
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000004")
    with pytest.raises(ConfigError, match="reference log-probs the run started with"):
        run(overrides + ["trainer.resume=auto"], tmp_path)


BAD_PAIRS = {"missing_chosen": {"prompt": "the king", "rejected": "blood"}, "empty_answer": {"prompt": "the king", "chosen": " ", "rejected": "blood"}}


@pytest.mark.parametrize(
    "extra,message",
    [
        (["task.reference=adapter_off"], "adapter_off needs adapters"),
        (["task.reference=copy"], "unknown reference 'copy'"),
        (["data.seq_len=16"], "pair_too_long"),
        (["bad=missing_chosen"], r"bad\.jsonl:3: missing_answer"),
        (["bad=empty_answer"], r"bad\.jsonl:3: empty_answer"),
        (["adapter=lora", "adapter.targets=[q_proj,qkv_proj]"], "LoRA target 'qkv_proj' matches no linear module"),
    ],
)
def test_bad_dpo_input_is_refused_before_any_step(data, tmp_path, extra, message):
    """The issue's bad-input list: one ConfigError, and the run folder an earlier run left keeps
    every byte (no checkpoint, reference cache or metrics written, nothing replaced)."""
    if extra[0].startswith("bad="):
        lines = (data / "pairs.jsonl").read_text().splitlines()[:2] + [json.dumps(BAD_PAIRS[extra[0][4:]])]
        (data / "bad.jsonl").write_text("\n".join(lines) + "\n")
        extra = [f"data.paths=[{data / 'bad.jsonl'}]"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("an earlier file")
    with pytest.raises(ConfigError, match=message):
        run(dpo(data, "trainer.max_steps=2", *extra), run_dir)
    left = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []
    assert set(left) <= {"notes.txt", "plan.yaml", ".lock"}, left  # no checkpoints, reference, metrics
    assert (run_dir / "notes.txt").read_text() == "an earlier file"


def test_dpo_with_the_next_token_objective_is_refused(data, tmp_path):
    with pytest.raises(ConfigError, match="task=dpo trains with objective=dpo"):
        run(["task=dpo", "data=preference", f"data.paths=[{data / 'pairs.jsonl'}]", *FAST, "trainer.max_steps=2"], tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.skipif(not hasattr(RootConfig, "adapter"), reason="needs the root `adapter` group (the lead's config.py)")
def test_lora_dpo_with_the_adapter_off_reference_matches_precompute(data, tmp_path):
    lora = ["+experiment=tiny_dpo_lora", f"data.paths=[{data / 'pairs.jsonl'}]", *FAST, "trainer.max_steps=3"]
    off = run(lora, tmp_path / "off")
    pre = run(lora + ["task.reference=precompute"], tmp_path / "pre")
    assert off["losses"][0] == pytest.approx(0.6931, abs=1e-4)
    assert off["losses"] == pytest.approx(pre["losses"], rel=1e-5, abs=1e-6)


def test_peft_export_of_a_run_without_lora_is_refused_and_writes_nothing(data, tmp_path):
    run_dir = tmp_path / "run"
    run(dpo(data, "trainer.max_steps=1"), run_dir)
    with pytest.raises(ConfigError, match="trained without LoRA") as err:
        run(["task=export_hf", f"checkpoint={run_dir}", f"task.dir={tmp_path / 'adapter'}", "task.adapter=peft"], tmp_path / "export")
    assert err.value.where == "task.adapter"
    assert not (tmp_path / "adapter").exists()


@pytest.mark.skipif(not hasattr(RootConfig, "adapter"), reason="needs the root `adapter` group (the lead's config.py)")
def test_lora_run_exports_merged_and_as_a_peft_folder_that_agree(data, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    import torch

    run_dir = tmp_path / "run"
    run(["+experiment=tiny_dpo_lora", f"data.paths=[{data / 'pairs.jsonl'}]", *FAST, "trainer.max_steps=2"], run_dir)
    export = ["task=export_hf", f"checkpoint={run_dir}", "task.dtype=float32"]
    run(export + [f"task.dir={tmp_path / 'merged'}", "task.adapter=merge"], tmp_path / "e1")
    run(export + [f"task.dir={tmp_path / 'base'}", "task.adapter=none"], tmp_path / "e2")
    run(export + [f"task.dir={tmp_path / 'adapter'}", "task.adapter=peft"], tmp_path / "e3")
    ids = torch.tensor([[1, 5, 9, 33, 7, 2, 11, 40]])
    merged = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    base = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        merged_logits = merged(ids).logits
        torch.testing.assert_close(adapted(ids).logits, merged_logits, rtol=1e-5, atol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-4  # the adapter trained: the comparison is not vacuous
