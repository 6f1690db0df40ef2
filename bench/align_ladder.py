"""The alignment memory/speed ladder: internlm_7b SFT and DPO on one GPU, rung by rung (as
torchtune's table: baseline -> fused loss -> checkpointing -> bf16 + stochastic-rounding AdamW ->
LoRA, with compile as a side rung), and TRL's DPOTrainer + PEFT LoRA on the same card in the same
call, at the same pairs, sequence length and batch.

Each rung is a real `python -m internlm` run in its own process (random-init 7B weights: speed and
memory do not depend on the values; synthetic chats and pairs sized so that one pair, or two
chats, fill most of a row). Per rung: the plan's memory estimate (plan.yaml), torch's peak
*reserved* and allocated memory, tokens/s and pairs/s (median over the steps after `--warmup`),
and a time log (process wall time, first step). The rungs run in priority order (the DPO goals
first) and stop when `--budget` seconds are spent; a skipped rung says so. The last line is
`RESULT {json}`.

    python bench/align_ladder.py --out results.json   # one H200: the ladder + TRL
    python bench/align_ladder.py --smoke              # CPU, the tiny model, seconds per rung
    python bench/align_ladder.py --only dpo --no-trl  # a part of it

Needs the project installed (hydra, lightning) and, for the TRL row, trl + peft + datasets.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "internlm/assets/tokenizer/bundled.model"
WORDS = "king queen moon river sword crown night day love blood heart rose star sea".split()
ALL_PROJECTIONS = "adapter.targets=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
FULL_BF16 = ["trainer.precision=bf16-true", "optimizer=adamw_bf16", "loss=chunked", "trainer.activation_checkpointing=full"]
LORA = ["adapter=lora", "adapter.rank=16", "adapter.alpha=32", ALL_PROJECTIONS, "trainer.precision=bf16-true",
        "optimizer=adamw", "loss=chunked", "trainer.activation_checkpointing=none"]

# (kind, name, overrides), in the order they run: what the goals need first
RUNGS = [
    ("dpo", "full, precompute reference, bf16-true + adamw_bf16, AC", ["task.reference=precompute", *FULL_BF16]),
    ("dpo", "LoRA r16 all projections, adapter_off reference", ["task.reference=adapter_off", *LORA]),
    ("trl", "TRL DPOTrainer + PEFT LoRA r16 all projections", []),
    ("sft", "1 baseline: bf16-mixed (fp32 weights + AdamW), cross-entropy", ["trainer.precision=bf16-mixed", "loss=cross_entropy"]),
    ("sft", "2 + fused (chunked) loss", ["trainer.precision=bf16-mixed", "loss=chunked"]),
    ("sft", "3 + activation checkpointing", ["trainer.precision=bf16-mixed", "loss=chunked", "trainer.activation_checkpointing=full"]),
    ("sft", "4 + bf16 weights, stochastic-rounding AdamW (adamw_bf16)", FULL_BF16),
    ("sft", "5 LoRA r16 all projections (frozen bf16 base)", LORA),
    ("dpo", "full, frozen reference copy", ["task.reference=frozen", *FULL_BF16]),
    ("sft", "4 + torch.compile", [*FULL_BF16, "trainer.compile=true"]),
]

# A rung's process: the program as `python -m internlm` runs it, then torch's peak reserved memory
WRAPPER = """
import atexit, json, runpy, sys, torch
def report():
    if torch.cuda.is_available():
        print("PEAK " + json.dumps({"reserved": torch.cuda.max_memory_reserved() / 2**30,
                                    "allocated": torch.cuda.max_memory_allocated() / 2**30}), flush=True)
atexit.register(report)
sys.argv = ["internlm", *sys.argv[1:]]
runpy.run_module("internlm", run_name="__main__", alter_sys=True)
"""


def sized_text(rng: random.Random, tokens: int, count_tokens) -> str:
    """Random words, as many as make about `tokens` tokens."""
    words: list[str] = []
    while True:
        words += [rng.choice(WORDS) for _ in range(16)]
        if count_tokens(" ".join(words)) >= tokens:
            return " ".join(words)


def write_data(folder: Path, seq_len: int, count: int) -> tuple[Path, Path]:
    """Chats of ~0.44 row each (two per row) and pairs whose chosen and rejected sides are ~0.44
    row each (one pair per row, fewer than seq_len / 2 tokens a side as TRL's max_length takes)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZER))
    count_tokens = lambda text: len(sp.encode(text))
    rng = random.Random(0)
    side = int(0.44 * seq_len) - 48  # the chat template's role markers and the prompt take the rest
    chats, pairs = folder / "chats.jsonl", folder / "pairs.jsonl"
    with chats.open("w") as f:
        for _ in range(count):
            messages = [{"role": "user", "content": sized_text(rng, 16, count_tokens)},
                        {"role": "assistant", "content": sized_text(rng, side, count_tokens)}]
            f.write(json.dumps({"messages": messages}) + "\n")
    with pairs.open("w") as f:
        for _ in range(count):
            f.write(json.dumps({"prompt": sized_text(rng, 16, count_tokens), "chosen": sized_text(rng, side - 4, count_tokens) + " so be it",
                                "rejected": sized_text(rng, side, count_tokens)}) + "\n")
    check_one_pair_per_row(pairs, seq_len)
    return chats, pairs


def check_one_pair_per_row(pairs: Path, seq_len: int) -> None:
    """pairs/s is rows/s only if every pair takes more than half a row: check with our reader."""
    sys.path.insert(0, str(ROOT))
    from internlm import registry
    from internlm.api import compose
    from internlm.components.data.preference import read_preference_pairs
    from internlm.planning import to_typed

    tokenizer = registry.build(to_typed(compose([])).tokenizer)
    lengths = [len(p) for p in read_preference_pairs([str(pairs)], tokenizer, seq_len=seq_len)]
    if not seq_len / 2 < min(lengths) <= max(lengths) <= seq_len:
        raise SystemExit(f"pairs of {min(lengths)}..{max(lengths)} tokens do not fill one row of {seq_len} each")
    print(f"pairs: {len(lengths)} of {min(lengths)}..{max(lengths)} tokens, one per row of {seq_len}", flush=True)


def run_rung(kind: str, name: str, command: list[str], run_dir: Path, args) -> dict:
    started = time.time()
    try:
        proc = subprocess.run([sys.executable, "-c", WRAPPER, *command, f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=args.time_left())
    except subprocess.TimeoutExpired:
        return {"kind": kind, "rung": name, "wall_s": round(time.time() - started, 1), "status": "stopped: --hard-limit reached"}
    row = {"kind": kind, "rung": name, "wall_s": round(time.time() - started, 1)}
    plan = run_dir / "plan.yaml"
    if plan.exists():
        row["plan_gib"] = yaml.safe_load(plan.read_text())["plan"]["memory_per_device_gib"].get("total")
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK "):
            peak = json.loads(line[5:])
            row |= {"reserved_gib": round(peak["reserved"], 2), "allocated_gib": round(peak["allocated"], 2)}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        row["status"] = "OOM" if "out of memory" in tail.lower() else f"failed (rc {proc.returncode})"
        row["error"] = tail.strip().splitlines()[-1][:300] if tail.strip() else ""
        return row
    rows = list(csv.DictReader((run_dir / "metrics" / "metrics.csv").open()))
    speeds = [float(r["perf/tokens_per_s"]) for r in rows if r.get("perf/tokens_per_s") and int(r["step"]) > args.warmup]
    tokens_per_s = statistics.median(speeds) if speeds else None
    first = next((float(r["perf/first_step_s"]) for r in rows if r.get("perf/first_step_s")), None)
    row |= {"status": "ok", "timed_steps": len(speeds), "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
            "first_step_s": round(first, 1) if first is not None else None, "final_loss": float(rows[-1]["train/loss"])}
    if kind == "dpo" and tokens_per_s:  # one pair per row (the data is sized so)
        row["pairs_per_s"] = round(tokens_per_s / args.seq_len, 3)
    return row


def trl_lora_dpo(args, pairs: Path, tokenizer_dir: Path) -> dict:
    """TRL's DPOTrainer + PEFT LoRA on a random-init LlamaForCausalLM of internlm_7b's shape (the
    reference is the base with adapters off, as ours), the same pairs, one pair per micro batch."""
    import torch
    from datasets import load_dataset
    from omegaconf import OmegaConf
    from peft import LoraConfig
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    sys.path.insert(0, str(ROOT))
    from internlm.api import compose
    from internlm.interop.hf_config import hf_config_dict

    started = time.time()
    model_cfg = OmegaConf.to_object(compose([f"model={args.model}"]).model)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    hf = LlamaConfig(**{k: v for k, v in hf_config_dict(model_cfg, dtype=dtype).items() if k not in ("architectures", "torch_dtype", "dtype")})
    torch.set_default_dtype(dtype)  # initialised in bf16 on the GPU: seconds, and no fp32 copy
    with torch.device("cpu" if args.smoke else "cuda"):
        model = LlamaForCausalLM(hf)
    torch.set_default_dtype(torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    laps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            laps.append(time.perf_counter() - self.t)

    config = DPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=1, gradient_accumulation_steps=args.global_batch,
        max_steps=args.steps, max_length=args.seq_len // 2, bf16=not args.smoke, use_cpu=args.smoke, logging_steps=1,
        report_to=[], save_strategy="no", learning_rate=5e-5, beta=0.1, gradient_checkpointing=False,
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                             lora_dropout=0.0, task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=load_dataset("json", data_files=str(pairs), split="train"),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[Clock()])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = laps[args.warmup:]
    step_s = statistics.median(timed) if timed else None
    row = {"kind": "trl", "rung": "TRL DPOTrainer + PEFT LoRA r16 all projections", "status": "ok", "wall_s": round(time.time() - started, 1),
           "timed_steps": len(timed), "trl_attention": getattr(model.config, "_attn_implementation", None)}
    if step_s:
        row["pairs_per_s"] = round(args.global_batch / step_s, 3)
        row["tokens_per_s"] = round(args.global_batch * args.seq_len / step_s, 1)  # as ours: seq_len per pair
    if torch.cuda.is_available():
        row |= {"reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2), "allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return row


def trl_row(args, pairs: Path, work: Path) -> dict:
    from internlm.components.tokenizer.chat_template import JINJA_CHAT_TEMPLATE
    from internlm.interop.hf_tokenizer import write_hf_tokenizer

    tok_dir = work / "hf"
    tok_dir.mkdir(exist_ok=True)
    write_hf_tokenizer(TOKENIZER, tok_dir, JINJA_CHAT_TEMPLATE, args.seq_len)
    # TRL in its own process: its imports and allocations leave nothing behind for our rungs
    code = ("import json, sys; sys.path.insert(0, %r); import align_ladder as L; a = L.parse(sys.argv[1:]); "
            "print('TRLROW ' + json.dumps(L.trl_lora_dpo(a, L.Path(%r), L.Path(%r))))") % (str(ROOT / "bench"), str(pairs), str(tok_dir))
    started = time.time()
    try:
        proc = subprocess.run([sys.executable, "-c", code, *args.argv], cwd=ROOT, capture_output=True, text=True, timeout=args.time_left())
    except subprocess.TimeoutExpired:
        return {"kind": "trl", "rung": "TRL DPOTrainer + PEFT LoRA r16 all projections", "wall_s": round(time.time() - started, 1),
                "status": "stopped: --hard-limit reached"}
    for line in proc.stdout.splitlines():
        if line.startswith("TRLROW "):
            return json.loads(line[7:]) | {"wall_s": round(time.time() - started, 1)}
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    return {"kind": "trl", "rung": "TRL DPOTrainer + PEFT LoRA r16 all projections", "wall_s": round(time.time() - started, 1),
            "status": f"failed (rc {proc.returncode}): {tail[-1][:300] if tail else ''}"}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, 3 steps per rung")
    parser.add_argument("--only", choices=["sft", "dpo", "all"], default="all")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--rungs", default=None, help="comma-separated 1-based positions in RUNGS to run (default: all that --only keeps)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per rung (default 5; smoke 3)")
    parser.add_argument("--warmup", type=int, default=None, help="first steps left out of the timing (default 2; smoke 1)")
    parser.add_argument("--seq-len", type=int, default=None, help="row length (a pair per row; default 2048; smoke 128)")
    parser.add_argument("--global-batch", type=int, default=2, help="rows (pairs) per step, micro batch 1")
    parser.add_argument("--budget", type=float, default=1e9, help="seconds: no rung starts after this much has passed")
    parser.add_argument("--hard-limit", type=float, default=None, help="seconds: a rung still running then is stopped")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows here as JSON")
    args = parser.parse_args(argv)
    args.argv = argv
    args.started = time.time()
    args.time_left = lambda: None if args.hard_limit is None else max(1.0, args.hard_limit - (time.time() - args.started))
    args.model = "tiny" if args.smoke else "internlm_7b"
    args.seq_len = args.seq_len or (192 if args.smoke else 2048)
    args.steps = args.steps or (3 if args.smoke else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    return args


def main() -> None:
    args = parse(sys.argv[1:])
    started = args.started
    work = Path(tempfile.mkdtemp(prefix="align_ladder-"))
    chats, pairs = write_data(work, args.seq_len, count=args.steps * args.global_batch + 4)
    base = [f"model={args.model}", f"data.seq_len={args.seq_len}", f"data.global_batch_size={args.global_batch}", "data.micro_batch_size=1",
            f"trainer.max_steps={args.steps}", "trainer.sample_tokens=0", "trainer.loggers=[csv]", "trainer.log_every=1",
            "trainer.checkpoint_every=-1", "trainer.val_every=0", "trainer.progress_bar=false", "trainer.compile=false"]
    if args.smoke:
        base += ["trainer.accelerator=cpu"]
    heads = {"sft": ["+experiment=tiny_sft", f"data.paths=[{chats}]"], "dpo": ["+experiment=tiny_dpo", f"data.paths=[{pairs}]"]}
    results = []
    chosen = {int(r) for r in args.rungs.split(",")} if args.rungs else None
    for i, (kind, name, extra) in enumerate(RUNGS):
        if args.only not in ("all", "dpo" if kind == "trl" else kind) or (kind == "trl" and args.no_trl):
            continue
        if chosen is not None and i + 1 not in chosen:
            continue
        if time.time() - started > args.budget:
            row = {"kind": kind, "rung": name, "status": "skipped: time budget spent"}
        elif kind == "trl":
            row = trl_row(args, pairs, work)
        else:
            if args.smoke:  # CPU: fp32, no compile
                extra = [e for e in extra if not e.startswith(("trainer.precision=", "trainer.compile="))]
            row = run_rung(kind, name, [*heads[kind], *base, *extra], work / f"rung-{i}", args)
            row["overrides"] = " ".join(extra)
        row["t_end_s"] = round(time.time() - started, 1)
        print(json.dumps(row), flush=True)
        results.append(row)
    summary = {"device": "cpu" if args.smoke else "cuda", "model": args.model, "seq_len": args.seq_len, "global_batch": args.global_batch,
               "micro_batch": 1, "steps": args.steps, "warmup": args.warmup, "rows": results}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
