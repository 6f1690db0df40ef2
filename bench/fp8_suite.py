"""One device call of the fp8 work (issue 16): ours bf16 / fp8 tensorwise / fp8 rowwise at the
16-layer InternLM-7B shape, loss parity on real text at ~1B, compile-cache start-up, and the
torchtitan peer (bf16 and its own float8) at equal settings, each in its own process, in
priority order under a wall-clock budget. Prints a compact table last; logs go to --out.

    python bench/fp8_suite.py main --out "$OUT" --budget 540

Every "ours" run gets its own TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR under --cache: a
"cold" run starts from an empty folder; a "warm" run reuses an earlier run's folder (the same
config run a second time), which is what the compile-cache row measures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gpu_suite  # noqa: E402  (its run_step runs and parses the torchtitan peer)

L16 = ["--layers", "16", "--seq", "4096", "--batch", "4", "--ac", "none", "--loss", "chunked", "--warmup", "4", "--steps", "10"]
PARITY = ["--shape", "1b", "--tokens", os.path.join(ROOT, ".fp8data", "tokens.npy"), "--seq", "2048", "--batch", "4",
          "--warmup", "0", "--steps", "300", "--lr", "3e-4", "--lr-warmup", "30", "--loss", "chunked"]
PEER = ["llama2_7b_l16", "--activation_checkpoint.mode", "none", "--training.local_batch_size", "4"]
PEER_FP8 = PEER + ["--model.converters", "quantize.linear.float8", "--quantize.linear.float8.filter_fqns", "output"]

# (kind, tag, cache folder name, arguments); kind: ours | peer
PLANS: dict[str, list[tuple[str, str, str | None, list[str]]]] = {
    "cpu": [
        ("ours", "cpu-fp8-tw", "cpu", ["--device", "cpu", "--tiny", "--matmul", "fp8_tensorwise", "--emulate"]),
    ],
    "smoke": [
        ("ours", "smoke-tw", "smoke", ["--matmul", "fp8_tensorwise", "--layers", "2", "--seq", "2048", "--batch", "1", "--warmup", "1", "--steps", "2"]),
        ("ours", "smoke-rw", "smoke", ["--matmul", "fp8_rowwise", "--layers", "2", "--seq", "2048", "--batch", "1", "--warmup", "1", "--steps", "2"]),
        ("ours", "smoke-parity", "smoke", ["--matmul", "fp8_tensorwise"] + PARITY[:-8] + ["--layers", "2", "--warmup", "0", "--steps", "3"]),
    ],
    "parity": [
        ("ours", "parity-bf16", "p-bf16", ["--matmul", "bf16"] + PARITY),
        ("ours", "parity-fp8tw", "p-fp8tw", ["--matmul", "fp8_tensorwise"] + PARITY),
        ("ours", "parity-fp8rw", "p-fp8rw", ["--matmul", "fp8_rowwise"] + PARITY),
    ],
    # fast accumulation in the backward's gemms too (model.kernels.fp8_fast_accum=all) against the default and bf16
    "parity-fast": [
        ("ours", "parity-fp8tw-fastall", "p-fp8tw-fast", ["--matmul", "fp8_tensorwise", "--fast-accum", "all"] + PARITY),
        ("ours", "parity-fp8tw", "p-fp8tw", ["--matmul", "fp8_tensorwise"] + PARITY),
        ("ours", "parity-bf16", "p-bf16", ["--matmul", "bf16"] + PARITY),
    ],
    "main": [
        ("ours", "l16-bf16-cold", "l16-bf16", ["--matmul", "bf16"] + L16),
        ("ours", "l16-fp8tw-cold", "l16-fp8tw", ["--matmul", "fp8_tensorwise"] + L16),
        ("ours", "l16-fp8rw-cold", "l16-fp8rw", ["--matmul", "fp8_rowwise"] + L16),
        ("ours", "parity-bf16", "p-bf16", ["--matmul", "bf16"] + PARITY),
        ("ours", "parity-fp8tw", "p-fp8tw", ["--matmul", "fp8_tensorwise"] + PARITY),
        ("ours", "l16-bf16-warm", "l16-bf16", ["--matmul", "bf16"] + L16),
        ("peer", "peer-fp8tw-b4", None, PEER_FP8),
        ("ours", "parity-fp8rw", "p-fp8rw", ["--matmul", "fp8_rowwise"] + PARITY),
        ("peer", "peer-bf16-b4", None, PEER),
        ("ours", "l16-fp8tw-warm", "l16-fp8tw", ["--matmul", "fp8_tensorwise"] + L16),
    ],
}


def run_ours(tag: str, cache: str, extra: list[str], out_dir: str, cache_root: str, deadline: float, log) -> dict:
    left = deadline - time.time()
    if left < 60:
        return {"kind": "ours", "tag": tag, "status": f"skipped: {left:.0f} s of budget left"}
    folder = os.path.join(cache_root, cache)
    warm = os.path.isdir(folder)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCHINDUCTOR_CACHE_DIR=folder, TRITON_CACHE_DIR=os.path.join(folder, "triton"))
    loss_log = os.path.join(out_dir, f"{tag}.json") if tag.startswith("parity") else None
    cmd = [sys.executable, os.path.join(HERE, "fp8_train.py"), "--tag", tag] + extra + (["--loss-log", loss_log] if loss_log else [])
    start = time.time()
    text, status = gpu_suite.run_logged(cmd, env, log, left - 15, f"{tag} (cache {'warm' if warm else 'cold'}: {folder})")
    log.write(text)
    log.flush()
    result = {"kind": "ours", "tag": tag, "status": status, "seconds": round(time.time() - start), "cache_warm": warm}
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if lines:
        result.update(json.loads(lines[-1][len("RESULT ") :]))
    else:
        result["tail"] = text[-800:]
    print(f"[{time.strftime('%H:%M:%S')}] {tag}: {status} in {result['seconds']} s", flush=True)
    return result


def table(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        if r["kind"] == "ours" and "tokens_per_device_per_s" in r:
            lines.append(
                f"{r['tag']:16s} {r['matmul']:15s} tok/s {r['tokens_per_device_per_s']:8,.0f} step {r['step_ms']:7.1f} ms "
                f"MFU {100 * (r['mfu_causal_bf16_peak'] or 0):5.1f}% peak {r['peak_alloc_gib'] or 0:5.1f}/{r['peak_reserved_gib'] or 0:5.1f} GiB "
                f"setup {r['setup_s']:5.1f}s step0 {r['first_step_s']:6.1f}s done@{r['to_first_step_done_s']:6.1f}s "
                f"cache {'warm' if r['cache_warm'] else 'cold'} graphs {r['graphs']}(+{r['graphs_added_after_warmup']}) "
                f"fp8 {r['fp8_layers']} loss {r['loss_first_last'][0]:.3f}->{r['loss_first_last'][1]:.3f} last50 {r['loss_mean_last50']:.4f}"
            )
        elif r["kind"] == "peer":
            lines.append(f"{r['tag']:16s} {r.get('summary', r['status'])} ({r.get('seconds', '-')} s)")
        else:
            lines.append(f"{r['tag']:16s} {r['status']} {r.get('tail', '')[-700:]}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("plan", choices=sorted(PLANS))
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/fp8_out"))
    p.add_argument("--cache", default="/tmp/fp8_compile_cache", help="root of the per-run compile-cache folders")
    p.add_argument("--budget", type=float, default=540, help="seconds for all runs together")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    deadline = time.time() + args.budget
    results = []
    with open(os.path.join(args.out, "logs.txt"), "a") as log:
        for kind, tag, cache, extra in PLANS[args.plan]:
            if kind == "ours":
                results.append(run_ours(tag, cache, extra, args.out, args.cache, deadline, log))
            else:
                results.append(gpu_suite.run_step("peer", tag, extra, args.out, deadline, log))
            with open(os.path.join(args.out, "suite.json"), "w") as f:
                json.dump(results, f, indent=1)
    print("\n===== fp8 suite", args.plan)
    for line in table(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
