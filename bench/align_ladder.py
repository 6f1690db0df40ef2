"""The alignment memory/speed ladder: internlm_7b SFT and DPO on one GPU, rung by rung (as
torchtune's table: baseline -> fused loss -> compile -> checkpointing -> bf16 + stochastic-rounding
AdamW -> LoRA), and TRL's DPOTrainer + PEFT LoRA beside it at the same sequence length and batch.

Each rung is a real `python -m internlm` run (random-init 7B weights, synthetic pairs and chats that
fill the rows), timed from its metrics.csv (median tokens/s after warm-up, peak GiB); an
out-of-memory rung is reported as such. The last line is `RESULT {json}`.

    python bench/align_ladder.py                          # one H200: the full ladder + TRL
    python bench/align_ladder.py --smoke                  # CPU, the tiny model, seconds per rung
    python bench/align_ladder.py --only dpo --no-trl      # a part of it

Needs the project installed (hydra, lightning) and, for the TRL row, `pip install trl peft`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = "king queen moon river sword crown night day love blood heart rose star sea".split()

SFT_RUNGS = [
    ("baseline (bf16-mixed, AdamW fp32)", ["trainer.precision=bf16-mixed", "loss=cross_entropy", "trainer.compile=false"]),
    ("+ fused loss", ["trainer.precision=bf16-mixed", "loss=chunked", "trainer.compile=false"]),
    ("+ compile", ["trainer.precision=bf16-mixed", "loss=chunked", "trainer.compile=true"]),
    ("+ activation checkpointing", ["trainer.precision=bf16-mixed", "loss=chunked", "trainer.activation_checkpointing=full"]),
    ("+ bf16-true, adamw_bf16 (stochastic rounding)", ["trainer.precision=bf16-true", "loss=chunked", "trainer.activation_checkpointing=full", "optimizer=adamw_bf16"]),
    ("LoRA r16 (all projections)", ["trainer.precision=bf16-true", "loss=chunked", "adapter=lora", "adapter.targets=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"]),
]
DPO_RUNGS = [
    ("full, precompute reference, bf16-true + adamw_bf16, AC", ["task.reference=precompute", "trainer.precision=bf16-true", "loss=chunked", "trainer.activation_checkpointing=full", "optimizer=adamw_bf16"]),
    ("full, frozen reference copy", ["task.reference=frozen", "trainer.precision=bf16-true", "loss=chunked", "trainer.activation_checkpointing=full", "optimizer=adamw_bf16"]),
    ("LoRA r16, adapter_off reference", ["adapter=lora", "task.reference=adapter_off", "trainer.precision=bf16-true", "loss=chunked", "adapter.targets=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"]),
]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_data(folder: Path, answer_words: int, count: int = 256) -> tuple[Path, Path]:
    rng = random.Random(0)
    chats, pairs = folder / "chats.jsonl", folder / "pairs.jsonl"
    with chats.open("w") as f:
        for _ in range(count):
            f.write(json.dumps({"messages": [{"role": "user", "content": words(rng, 8)}, {"role": "assistant", "content": words(rng, 2 * answer_words)}]}) + "\n")
    with pairs.open("w") as f:
        for _ in range(count):
            f.write(json.dumps({"prompt": words(rng, 8), "chosen": words(rng, answer_words) + " so be it", "rejected": words(rng, answer_words)}) + "\n")
    return chats, pairs


def run_rung(name: str, base: list[str], extra: list[str], run_dir: Path, warmup: int) -> dict:
    cmd = [sys.executable, "-m", "internlm", *base, *extra, f"hydra.run.dir={run_dir}", "trainer.loggers=[csv]",
           "trainer.log_every=1", "trainer.checkpoint_every=-1", "trainer.val_every=0", "trainer.progress_bar=false"]
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    row = {"rung": name, "overrides": " ".join(extra), "wall_s": round(time.time() - started, 1)}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-600:]
        row["status"] = "OOM" if "out of memory" in tail.lower() else f"failed (rc {proc.returncode})"
        row["error"] = tail.strip().splitlines()[-1] if tail.strip() else ""
        return row
    rows = list(csv.DictReader((run_dir / "metrics" / "metrics.csv").open()))
    speeds = [float(r["perf/tokens_per_s"]) for r in rows[warmup:] if r.get("perf/tokens_per_s")]
    row |= {
        "status": "ok",
        "tokens_per_s": round(statistics.median(speeds), 1) if speeds else None,
        "peak_gib": round(max(float(r["perf/peak_memory_gib"]) for r in rows if r.get("perf/peak_memory_gib")), 2),
        "final_loss": float(rows[-1]["train/loss"]),
    }
    return row


def trl_lora_dpo(args, pairs: Path, tokenizer_dir: Path | None) -> dict:
    """TRL's DPOTrainer + PEFT LoRA on a random-init LlamaForCausalLM of the same shape."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    sys.path.insert(0, str(ROOT))
    from omegaconf import OmegaConf

    from internlm.api import compose
    from internlm.interop.hf_config import hf_config_dict

    model_cfg = OmegaConf.to_object(compose([f"model={args.model}"]).model)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    hf = LlamaConfig(**{k: v for k, v in hf_config_dict(model_cfg, dtype=dtype).items() if k not in ("architectures", "torch_dtype", "dtype")})
    with torch.device("cpu" if args.smoke else "cuda"):  # a 7B initialised on the GPU: seconds, not minutes
        model = LlamaForCausalLM(hf).to(dtype)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    steps_seen: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            steps_seen.append(time.perf_counter())

    config = DPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=args.global_batch // args.micro_batch,
        max_steps=args.steps, max_length=args.seq_len, bf16=not args.smoke, use_cpu=args.smoke, logging_steps=1, report_to=[],
        save_strategy="no", learning_rate=5e-5, beta=0.1, padding_free=False,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=load_dataset("json", data_files=str(pairs), split="train"),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[Clock()])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    laps = [b - a for a, b in zip(steps_seen, steps_seen[1:])][args.warmup:]
    tokens_per_step = args.global_batch * args.seq_len  # upper bound: TRL pads to the longest pair
    return {
        "rung": "TRL DPOTrainer + PEFT LoRA r16", "status": "ok",
        "tokens_per_s": round(tokens_per_step / statistics.median(laps), 1) if laps else None,
        "peak_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, 3 steps per rung")
    parser.add_argument("--only", choices=["sft", "dpo", "all"], default="all")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    args.model = "tiny" if args.smoke else "internlm_7b"
    args.seq_len = 128 if args.smoke else 4096
    args.global_batch, args.micro_batch = (2, 1) if args.smoke else (4, 1)
    args.steps = args.steps or (3 if args.smoke else 12)
    args.warmup = 1 if args.smoke else 4
    work = Path(tempfile.mkdtemp(prefix="align_ladder-"))
    # answers long enough that a pair fills most of a row (prompt twice + two answers)
    chats, pairs = write_data(work, answer_words=(args.seq_len // 2 - 40) // 2)
    base = [f"model={args.model}", f"data.seq_len={args.seq_len}", f"data.global_batch_size={args.global_batch}",
            f"data.micro_batch_size={args.micro_batch}", f"trainer.max_steps={args.steps}", "trainer.sample_tokens=0"]
    if args.smoke:
        base += ["trainer.accelerator=cpu"]
    smoke_strip = ("trainer.precision=", "trainer.compile=true")  # CPU: fp32, no compile
    results = []
    ladders = {"sft": (SFT_RUNGS, ["+experiment=tiny_sft", f"data.paths=[{chats}]"]),
               "dpo": (DPO_RUNGS, ["+experiment=tiny_dpo", f"data.paths=[{pairs}]"])}
    for kind, (rungs, head) in ladders.items():
        if args.only not in (kind, "all"):
            continue
        for i, (name, extra) in enumerate(rungs):
            if args.smoke:
                extra = [e for e in extra if not e.startswith(smoke_strip)]
            row = run_rung(f"{kind}: {name}", head + base, extra, work / f"{kind}-{i}", args.warmup)
            print(json.dumps(row), flush=True)
            results.append(row)
    if not args.no_trl and args.only in ("dpo", "all"):
        sys.path.insert(0, str(ROOT))
        from internlm.components.tokenizer.chat_template import JINJA_CHAT_TEMPLATE
        from internlm.interop.hf_tokenizer import write_hf_tokenizer

        tok_dir = work / "hf"
        tok_dir.mkdir()
        write_hf_tokenizer(ROOT / "internlm/assets/tokenizer/bundled.model", tok_dir, JINJA_CHAT_TEMPLATE, args.seq_len)
        try:
            row = trl_lora_dpo(args, pairs, tok_dir)
        except Exception as exc:  # report, do not hide: the row says what failed
            row = {"rung": "TRL DPOTrainer + PEFT LoRA r16", "status": f"failed: {type(exc).__name__}: {exc}"[:300]}
        print(json.dumps(row), flush=True)
        results.append(row)
    print("RESULT " + json.dumps({"device": "cpu" if args.smoke else "cuda", "seq_len": args.seq_len, "global_batch": args.global_batch, "rows": results}))


if __name__ == "__main__":
    main()
