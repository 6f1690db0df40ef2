"""One device call for issue 16's kernel margin: the README's 16-layer program (`python -m internlm`)
profiled in bf16 and fp8 tensorwise, beside torchtitan (bf16 and its own float8) at equal settings
(batch 4 x 4096, no activation checkpointing). (Its first run, 2026-12-02, also timed q/k/v and
gate/up fused into one matmul each: not faster, so that variant is gone; bench/NOTES.md.)

    python bench/speed_call.py --out "$OUT" --budget 420
    python bench/speed_call.py --out "$OUT" --budget 430 --only bf16master,peer-bf16,fp8master,peer-fp8
    python bench/speed_call.py --out "$OUT" --before .before --only bf16master,bf16masterbefore   # an A/B
    python bench/speed_call.py --out "$OUT" --before .before --only bf16masterlong,bf16masterlongbefore   # one document per row
    python bench/speed_call.py --out /tmp/speed --cpu       # smoke test of this driver (tiny model, CPU)

1. Warm-up, all at once: every configuration once at ONE layer for two steps. Every block has the
   same compiled graph, so this fills inductor's and Triton's caches for the 16-layer runs, and the
   compiles (CPU work) overlap instead of costing ~70 s each in turn.
2. Timed, one at a time: each 16-layer run with the warm cache; the program's runs are profiled
   over steps 11-12 (bench/profile_program.py) and their throughput is the median of the
   metrics.csv steps outside the warm-up and the profiled window.
Everything lands in --out (at most 8 files come back from the device): suite.json, logs.txt,
profile_<tag>.txt and two Chrome traces.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gpu_suite  # noqa: E402  (the peer's command, its summary, and logged subprocess runs)

PROGRAM = [
    "model=internlm_7b", "data.seq_len=4096", "data.global_batch_size=4", "loss=chunked", "optimizer.lr=1e-4",
    "trainer.log_every=1", "trainer.val_every=0", "trainer.checkpoint_every=-1", "trainer.sample_tokens=0",
    "trainer.loggers=[csv]", "trainer.progress_bar=false",
]
CPU_PROGRAM = ["trainer.accelerator=cpu", "trainer.log_every=1", "trainer.val_every=0", "trainer.checkpoint_every=-1",
               "trainer.sample_tokens=0", "trainer.loggers=[csv]", "trainer.progress_bar=false"]
PEER = ["--activation_checkpoint.mode", "none", "--training.local_batch_size", "4"]
PEER_FP8 = PEER + ["--model.converters", "quantize.linear.float8", "--quantize.linear.float8.filter_fqns", "output"]
VARIANTS = {  # tag -> the program's overrides beyond PROGRAM
    "bf16": [],
    "fp8": ["model.kernels.matmul=fp8_tensorwise"],
    "bf16before": [],  # the same run on the code of an earlier commit (--before DIR): an A/B of one change
    # bf16 weights, gradients and activations (no autocast casts, a bf16 residual stream, as
    # torchtitan's FSDP mixed precision computes), AdamW with stochastically rounded bf16 states
    "bf16true": ["trainer.precision=bf16-true", "optimizer=adamw_bf16"],
    "fp8true": ["trainer.precision=bf16-true", "optimizer=adamw_bf16", "model.kernels.matmul=fp8_tensorwise"],
    # the same bf16 compute with fp32 master weights and moments in the optimizer: torchtitan's numerics
    "bf16master": ["trainer.precision=bf16-true", "optimizer=adamw_bf16", "optimizer.master_weights=true"],
    "fp8master": ["trainer.precision=bf16-true", "optimizer=adamw_bf16", "optimizer.master_weights=true",
                  "model.kernels.matmul=fp8_tensorwise"],
}
VARIANTS["fp8masterfast"] = VARIANTS["fp8master"] + ["model.kernels.fp8_fast_accum=all"]  # the backward's gemms unpromoted too
VARIANTS["bf16masterbefore"] = VARIANTS["bf16master"]  # A/B of a change on the bf16master program
# Long documents: the bundled corpus as ONE document, so every row holds a single document (the
# bundled corpus packed holds one in 12% of its 4096-token rows). Attention's causal path for such
# rows (flex -> SDPA causal, cuDNN) against the code before it (--before, flex's causal block mask).
LONG_DOCUMENT = "/tmp/speed_long_document.jsonl"
VARIANTS["bf16masterlong"] = VARIANTS["bf16master"] + [f"data.paths=[{LONG_DOCUMENT}]"]
VARIANTS["bf16masterlongbefore"] = VARIANTS["bf16masterlong"]
# Packed documents on cuDNN's ragged kernel (attention_backends `cudnn`) instead of flex's block mask:
# through cudnn-frontend's graphs where that package is installed (torch 2.11's own path is refused)
VARIANTS["bf16mastercudnn"] = VARIANTS["bf16master"] + ["model.attention.backend=cudnn"]
VARIANTS["fp8mastercudnn"] = VARIANTS["fp8master"] + ["model.attention.backend=cudnn"]
VARIANTS["bf16mastergemm"] = VARIANTS["bf16master"]  # + VARIANT_ENV: inductor's gemm autotuning
# inductor's tuning of its own Triton kernels (the fp8 casts and amax reductions, element-wise ops)
VARIANTS["fp8mastercdt"] = VARIANTS["fp8master"]  # + VARIANT_ENV: coordinate-descent tuning of each kernel's tiling
VARIANTS["fp8masterpw"] = VARIANTS["fp8master"]  # + VARIANT_ENV: more tilings timed for pointwise and reduction kernels
# inductor's code generation for the fp8 casts (they write a transposed fp8 copy too): VARIANT_INDUCTOR
for _name in ("nd", "bp", "td", "nocoal", "ndtr"):
    VARIANTS[f"fp8master{_name}"] = VARIANTS["fp8master"]
SHAPES = {"on": False}  # set by --shapes: the traces record input sizes and strides (bench/fp8_gemm_replay.py)
BEFORE = {"dir": None}  # set by --before: a folder holding `internlm/` and `conf/` of the earlier commit
PROFILE_START, PROFILE_STEPS, STEPS = 11, 2, 14  # steps 11-13 are left out of the throughput (13 ends the profiler)
TIMED = [  # (kind, tag, what) in order; "repeat" rows run only while the budget lasts
    ("ours", "bf16", True), ("peer", "peer-bf16", PEER), ("ours", "bf16before", False), ("ours", "fp8", True),
    ("peer", "peer-fp8", PEER_FP8), ("ours", "bf16-2", False), ("ours", "bf16before-2", False), ("ours", "fp8-2", False),
    ("ours", "bf16true", True), ("ours", "fp8true", False), ("ours", "bf16true-2", False), ("ours", "fp8true-2", False),
    ("ours", "bf16master", True), ("ours", "bf16master-2", False), ("ours", "fp8master", True), ("ours", "fp8master-2", False),
    ("ours", "bf16masterbefore", False), ("ours", "bf16masterbefore-2", False),
    ("ours", "bf16masterlong", True), ("ours", "bf16masterlongbefore", False),
    ("ours", "bf16masterlong-2", False), ("ours", "bf16masterlongbefore-2", False),
    ("ours", "bf16mastercudnn", True), ("ours", "bf16mastercudnn-2", False),
    ("ours", "fp8mastercudnn", True), ("ours", "fp8mastercudnn-2", False),
    ("ours", "bf16mastergemm", True), ("ours", "bf16mastergemm-2", False),
    ("ours", "fp8mastercdt", True), ("ours", "fp8mastercdt-2", False),
    ("ours", "fp8masterpw", True), ("ours", "fp8masterpw-2", False),
    *[("ours", f"fp8master{name}", True) for name in ("nd", "bp", "td", "nocoal", "ndtr")],
    ("ours", "fp8masterfast", True), ("ours", "fp8masterfast-2", False),
]
PROFILED = {"bf16", "fp8", "bf16true", "bf16master", "fp8master", "bf16masterlong", "bf16mastercudnn", "fp8mastercudnn", "bf16mastergemm",
            "fp8mastercdt", "fp8masterpw", "fp8masterfast", *(f"fp8master{name}" for name in ("nd", "bp", "td", "nocoal", "ndtr"))}  # the first run of these is profiled


# Inductor settings of a variant, through its environment: the program's code is unchanged
VARIANT_ENV = {"bf16mastergemm": {"TORCHINDUCTOR_MAX_AUTOTUNE_GEMM": "1"},  # Triton/ATen gemms timed per shape
               "fp8mastercdt": {"TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1"},
               "fp8masterpw": {"TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE": "1"}}
# torch._inductor.config settings of a variant (profile_program.py --inductor), the code unchanged
VARIANT_INDUCTOR = {
    "fp8masternd": ["triton.prefer_nd_tiling=True"],  # tile every dimension: a transposed store gets a 2-D tile
    "fp8masterbp": ["triton.use_block_ptr=True"],  # block pointers for loads and stores
    "fp8mastertd": ["triton.use_tensor_descriptor=True", "assume_aligned_inputs=True"],  # TMA loads and stores
    "fp8masternocoal": ["triton.coalesce_tiling_analysis=False"],  # the older tiling heuristic
    "fp8masterndtr": ["triton.prefer_nd_tiling=True", "triton.tile_reductions=True"],  # the amax reductions tiled too
}


def program_env(tag: str) -> dict:
    # TORCH_LOGS=recompiles: a new batch layout must not recompile a block (logs.txt shows any)
    return dict(os.environ, PYTHONUNBUFFERED="1", TORCH_LOGS="recompiles") | VARIANT_ENV.get(tag.split("-")[0], {})


def program_cmd(tag: str, layers: int, steps: int, out: str, cpu: bool, profile: bool, trace: bool) -> list[str]:
    variant = VARIANTS[tag.split("-")[0]]
    inductor = [f"--inductor={option}" for option in VARIANT_INDUCTOR.get(tag.split("-")[0], [])]
    overrides = (CPU_PROGRAM if cpu else PROGRAM + [f"model.num_layers={layers}"]) + variant
    overrides += [f"trainer.max_steps={steps}", f"hydra.run.dir=/tmp/speed_runs/{tag}-L{layers}"]
    if tag.split("-")[0].endswith("before"):  # `-m` would put the checkout's package first on sys.path
        boot = f"import runpy, sys; sys.path.insert(0, {os.path.abspath(BEFORE['dir'])!r}); runpy.run_module('internlm', run_name='__main__', alter_sys=True)"
        return [sys.executable, "-c", boot] + overrides
    if not profile and not inductor:
        return [sys.executable, "-m", "internlm"] + overrides
    start = (2 if cpu else PROFILE_START) if profile else 10**6  # never reached: the knobs without the profiler
    head = [sys.executable, os.path.join(HERE, "profile_program.py"), "--out", out, "--tag", tag, "--start", str(start),
            "--steps", "1" if cpu else str(PROFILE_STEPS)] + (["--trace"] if trace else []) + (["--shapes"] if trace and SHAPES["on"] else []) + inductor
    return head + (["--gaps"] if profile and not cpu else []) + ["--"] + overrides


def throughput(run_dir: str, skip: int, exclude: set[int]) -> dict:
    """Median tokens/s and MFU from the program's metrics.csv, steps > skip and not in `exclude`."""
    path = os.path.join(run_dir, "metrics", "metrics.csv")
    if not os.path.exists(path):
        return {"error": f"no {path}"}
    rows = [r for r in csv.DictReader(open(path)) if r.get("perf/tokens_per_device_per_s")]
    kept = [r for r in rows if int(r["step"]) > skip and int(r["step"]) not in exclude]
    if not kept:
        return {"error": "no steps to time"}
    tps = [float(r["perf/tokens_per_device_per_s"]) for r in kept]
    med = lambda key: statistics.median(float(r[key]) for r in kept if r.get(key))  # noqa: E731
    return {
        "tokens_per_device_per_s": statistics.median(tps),
        "tps_min_max": [min(tps), max(tps)],
        "steps_timed": [int(r["step"]) for r in kept],
        "mfu": med("perf/mfu") if any(r.get("perf/mfu") for r in kept) else None,
        "peak_memory_gib": max(float(r["perf/peak_memory_gib"]) for r in kept if r.get("perf/peak_memory_gib")),
        "losses": [round(float(r["train/loss"]), 4) for r in rows],
    }


def first_step_seconds(text: str) -> float | None:
    for line in text.splitlines():
        if "first step took" in line:
            try:
                return float(line.split("first step took")[1].split("s")[0])
            except ValueError:
                return None
    return None


def warm_up(args, log, wanted: set[str]) -> list[dict]:
    """Every configuration of the timed rows at one layer, two steps, all processes at once."""
    procs = []
    for tag in VARIANTS:
        if not any(w.split("-")[0] == tag for w in wanted):
            continue
        cmd = program_cmd(tag, 1, 2, args.out, args.cpu, profile=False, trace=False)
        procs.append((tag, cmd, dict(program_env(tag), PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")))
    if not args.cpu:
        for tag, flags in (("peer-bf16", PEER), ("peer-fp8", PEER_FP8)):
            if tag not in wanted:
                continue
            cmd, penv = gpu_suite.peer_command(f"warm-{tag}", ["llama2_7b_l1"] + flags)
            # torchrun's rendezvous port: two peers at once must not both take the default 29500
            port = str(29_600 + len(procs))
            procs.append((tag, cmd, dict(penv, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True", PET_MASTER_PORT=port)))
    started = []
    for tag, cmd, penv in procs:
        handle = open(f"/tmp/speed_warm_{tag}.log", "w")
        started.append((tag, cmd, subprocess.Popen(cmd, env=penv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT), time.time(), handle))
    results = []
    for tag, cmd, proc, t0, handle in started:
        try:
            rc = proc.wait(timeout=max(10.0, args.warm_timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        handle.close()
        text = open(f"/tmp/speed_warm_{tag}.log", errors="replace").read()
        log.write(f"\n===== warm-up {tag}: {shlex.join(cmd)}\n{text[-6000:]}\n")
        results.append({"kind": "warm", "tag": tag, "status": f"rc={rc}", "seconds": round(time.time() - t0)})
        print(f"[{time.strftime('%H:%M:%S')}] warm-up {tag}: rc={rc} after {time.time() - t0:.0f} s", flush=True)
    return results


def write_long_document(path: str = LONG_DOCUMENT) -> None:
    """The bundled corpus's texts joined into one JSONL record."""
    sys.path.insert(0, ROOT)
    from internlm.components.data.text import bundled_corpus

    texts = [json.loads(line)["text"] for name in bundled_corpus() for line in open(name) if line.strip()]
    with open(path, "w") as f:
        f.write(json.dumps({"text": "\n\n".join(texts)}) + "\n")


def forget_autotune_picks(log) -> int:
    """Delete inductor's stored tiling picks (`*.best_config`) made during the concurrent warm-up:
    timed while six processes shared the GPU, a pick can keep the slower tiling, and every later run
    would reuse it. The compiled kernels stay cached; each timed run re-times its tilings alone."""
    sys.path.insert(0, ROOT)
    from internlm.paths import compile_cache_dirs

    roots = [compile_cache_dirs()["TORCHINDUCTOR_CACHE_DIR"], f"/tmp/torchinductor_{os.environ.get('USER', 'root')}"]  # ours, the peer's
    removed = 0
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                if name.endswith(".best_config"):
                    os.remove(os.path.join(folder, name))
                    removed += 1
    log.write(f"\n===== removed {removed} autotune picks (*.best_config) under {roots}\n")
    return removed


def timed(args, log, deadline: float) -> list[dict]:
    results = []
    for kind, tag, what in TIMED:
        left = deadline - time.time()
        need = 80 if kind == "peer" else 60  # warm compile cache: ~55 s (peer, 30 steps) and ~40 s (ours)
        if left < need:
            results.append({"kind": kind, "tag": tag, "status": f"skipped: {left:.0f} s of budget left"})
            continue
        t0 = time.time()
        if kind == "ours":
            profile = tag in PROFILED
            cmd = program_cmd(tag, 16, 4 if args.cpu else STEPS, args.out, args.cpu, profile, trace=bool(what) and profile)
            text, status = gpu_suite.run_logged(cmd, program_env(tag), log, min(left - 10, 200), tag)
            log.write(text[-20000:])
            exclude = set(range(PROFILE_START, PROFILE_START + PROFILE_STEPS + 1)) if profile else set()
            result = {"kind": kind, "tag": tag, "status": status, "profiled": profile, "first_step_s": first_step_seconds(text)}
            result |= throughput(f"/tmp/speed_runs/{tag}-L16", 0 if args.cpu else 4, exclude)
        else:
            cmd, env = gpu_suite.peer_command(tag, ["llama2_7b_l16"] + what)
            text, status = gpu_suite.run_logged(cmd, env, log, min(left - 10, 240), tag)
            result = {"kind": kind, "tag": tag, "status": status} | gpu_suite.peer_result(text, env, log)
            log.write(text[-4000:])
        log.flush()
        result["seconds"] = round(time.time() - t0)
        results.append(result)
        print(f"[{time.strftime('%H:%M:%S')}] {tag}: {status} in {result['seconds']} s: "
              f"{result.get('tokens_per_device_per_s', result.get('summary', result.get('error')))}", flush=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/speed_out"))
    p.add_argument("--budget", type=float, default=420, help="seconds for everything")
    p.add_argument("--warm-timeout", type=float, default=170)
    p.add_argument("--cpu", action="store_true", help="smoke test: the tiny default model on the CPU, no peer")
    p.add_argument("--only", default=None, help="comma-separated tags of the timed rows to run, in that order (e.g. peer-bf16,peer-fp8,bf16-2)")
    p.add_argument("--before", default=None, help="folder with the earlier commit's internlm/ and conf/ (git archive REV internlm conf | tar -x -C DIR)")
    p.add_argument("--shapes", action="store_true", help="the profiled runs' traces record each op's input sizes and strides")
    args = p.parse_args()
    BEFORE["dir"] = args.before
    SHAPES["on"] = args.shapes
    os.makedirs(args.out, exist_ok=True)
    deadline = time.time() + args.budget
    global TIMED
    if not args.before:
        TIMED = [row for row in TIMED if "before" not in row[1]]
    if args.cpu:
        TIMED = [row for row in TIMED if row[0] == "ours" and row[1] == "bf16"]
    if args.only:  # in the order given
        rows = {row[1]: row for row in TIMED}
        TIMED = [rows[tag] for tag in args.only.split(",")]
    with open(os.path.join(args.out, "logs.txt"), "a") as log:
        if any("long" in row[1] for row in TIMED):
            write_long_document()
        results = warm_up(args, log, {row[1] for row in TIMED})
        results.append({"kind": "warm", "tag": "autotune-picks-removed", "count": forget_autotune_picks(log)})
        results += timed(args, log, deadline)
    with open(os.path.join(args.out, "suite.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("\n===== issue 16 speed call")
    for r in results:
        keep = {k: v for k, v in r.items() if k not in ("losses",)}
        print(json.dumps(keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
