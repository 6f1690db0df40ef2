"""Do the program's fp8 gemms run slower inside the program than alone? (issue 16)

The 16-layer fp8 program spends ~370 ms a step in gemms; the same gemms timed alone
(bench/fp8_fast_accum.py, plus the forward's and the head's) add up to ~300 ms. This finds where
the difference sits. From a Chrome trace of the program recorded with input shapes
(`bench/profile_program.py --trace --shapes`) it reads every `aten::_scaled_mm` call: its operands'
sizes, strides and dtypes, `use_fast_accum`, and the cuBLAS kernel it ran with that kernel's time.
Then it replays each distinct call alone on tensors of exactly those sizes and strides (random
fp8 values under tensorwise scales), back to back as the program runs them, and reports both
times and both kernels side by side.

    python bench/fp8_gemm_replay.py --trace $OUT/trace_fp8master.json.gz --out $OUT/replay_fp8master.json
    python bench/fp8_gemm_replay.py --trace trace.json.gz --no-replay    # the table from the trace alone (any machine)
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import statistics
from collections import defaultdict

SCALED_MM = "aten::_scaled_mm"
GEMMS = (SCALED_MM, "aten::mm")  # the bf16 head's and any unconverted linear's gemms are plain mm
DTYPES = {"c10::Float8_e4m3fn": "float8_e4m3fn", "c10::Float8_e5m2": "float8_e5m2", "c10::BFloat16": "bfloat16", "float": "float32"}


def load_trace(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)["traceEvents"]


def scaled_mm_calls(events: list[dict]) -> list[dict]:
    """Every `_scaled_mm` CPU op with its operands and the device kernels it launched.

    A kernel carries the `External id` of the innermost CPU op that launched it; that op is the
    `_scaled_mm` itself or one nested in it on the same thread, so ops are matched by containment."""
    ops_by_thread: dict = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op" and e.get("ph") == "X":
            ops_by_thread[e["tid"]].append(e)
    owner = {}  # External id of any op inside a _scaled_mm -> that call
    calls = []
    for ops in ops_by_thread.values():
        ops.sort(key=lambda e: e["ts"])
        starts = [e["ts"] for e in ops]
        for op in ops:
            if op["name"] not in GEMMS:
                continue
            args = op.get("args", {})
            call = {"op": op["name"], "ts": op["ts"], "end": op["ts"] + op["dur"], "tid": op["tid"], "dims": args.get("Input Dims", []), "strides": args.get("Input Strides", []),
                    "types": args.get("Input type", []), "concrete": args.get("Concrete Inputs", []), "kernels": []}
            calls.append(call)
            end = op["ts"] + op["dur"]
            for inner in ops[bisect.bisect_left(starts, op["ts"]): bisect.bisect_right(starts, end)]:
                if inner["ts"] + inner.get("dur", 0) <= end and "External id" in inner.get("args", {}):
                    owner[inner["args"]["External id"]] = call
    # a kernel without that id is found through its launch (same correlation), inside the op's span
    launches = {e["args"]["correlation"]: e for e in events if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    spans = defaultdict(list)
    for call in calls:
        spans[call["tid"]].append(call)
    for e in events:
        if e.get("cat") != "kernel":
            continue
        args = e.get("args", {})
        if args.get("External id") in owner:
            owner[args["External id"]]["kernels"].append((e["name"], e["dur"]))
            continue
        launch = launches.get(args.get("correlation"))
        if launch is None:
            continue
        for call in spans.get(launch["tid"], []):
            if call["ts"] <= launch["ts"] <= call["end"]:
                call["kernels"].append((e["name"], e["dur"]))
                break
    return sorted(calls, key=lambda c: c["ts"])


def signature(call: dict) -> tuple:
    """Sizes, strides and dtypes of a, b, the scales' sizes, and use_fast_accum."""
    fast = str(call["concrete"][7]) if call["op"] == SCALED_MM and len(call["concrete"]) > 7 else "-"
    return (call["op"], tuple(map(tuple, call["dims"][:2])), tuple(map(tuple, call["strides"][:2])), tuple(call["types"][:2]),
            tuple(map(tuple, call["dims"][2:4])), fast)


def summarize(calls: list[dict], iterations: int) -> list[dict]:
    groups: dict = defaultdict(list)
    for call in calls:
        groups[signature(call)].append(call)
    rows = []
    for (op, dims, strides, types, scale_dims, fast), members in groups.items():
        kernel_us = [sum(d for _, d in c["kernels"]) for c in members if c["kernels"]]
        names = sorted({n for c in members for n, _ in c["kernels"]})
        (m, k), (_, n) = dims
        rows.append({
            "op": op, "m_k_n": [m, k, n], "a_strides": list(strides[0]), "b_strides": list(strides[1]),
            "a_dtype": DTYPES.get(types[0], types[0]), "b_dtype": DTYPES.get(types[1], types[1]),
            "scale_dims": [list(d) for d in scale_dims], "use_fast_accum": fast,
            "calls_per_iteration": len(members) / iterations,
            "program_us": round(statistics.mean(kernel_us), 1) if kernel_us else None,
            "program_us_min_max": [round(min(kernel_us), 1), round(max(kernel_us), 1)] if kernel_us else None,
            "program_kernels": names,
        })
    return sorted(rows, key=lambda r: -(r["program_us"] or 0) * r["calls_per_iteration"])


def operand(torch, dims, strides, dtype):
    """A tensor of exactly these sizes and strides holding fp8 values spread like a tensorwise cast's."""
    import math

    t = torch.empty_strided(dims, strides, dtype=getattr(torch, dtype), device="cuda")
    top = torch.finfo(t.dtype).max if t.dtype.itemsize == 1 else 1.0  # fp8: the cast's full range
    values = torch.randn(dims, device="cuda") * (top / 4.5)  # amax of ~16M normals is ~5.5 sigma
    t.copy_(values.clamp(-top, top).to(t.dtype))
    assert t.stride() == tuple(strides) or math.prod(dims) == 0
    return t


def replay(rows: list[dict], repeat: int) -> None:
    import torch

    for row in rows:
        m, k, n = row["m_k_n"]
        a = operand(torch, [m, k], row["a_strides"], row["a_dtype"])
        b = operand(torch, [k, n], row["b_strides"], row["b_dtype"])
        scales = [torch.ones(d, device="cuda", dtype=torch.float32) * 1e-2 for d in row["scale_dims"]]
        fast = row["use_fast_accum"] == "True"

        def call():
            if row["op"] != SCALED_MM:
                return torch.mm(a, b)
            return torch._scaled_mm(a, b, scale_a=scales[0], scale_b=scales[1], out_dtype=torch.bfloat16, use_fast_accum=fast)

        for _ in range(10):
            call()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            call()
        stop.record()
        torch.cuda.synchronize()
        row["alone_back_to_back_us"] = round(start.elapsed_time(stop) * 1e3 / repeat, 1)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
        row["alone_kernels"] = sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
        row["tflops_program"] = round(2 * m * k * n / row["program_us"] / 1e6) if row["program_us"] else None
        row["tflops_alone"] = round(2 * m * k * n / row["alone_back_to_back_us"] / 1e6)


def print_table(rows: list[dict]) -> None:
    print(f"{'m x k x n':22s} {'a strides':16s} {'b strides':16s} {'a/b':10s} fast  calls  {'program us':>10s} {'alone us':>9s}  kernel (program | alone)")
    for r in rows:
        dt = f"{r['a_dtype'].replace('float8_', '')}/{r['b_dtype'].replace('float8_', '')}"
        kernels = " ".join(k[:60] for k in r["program_kernels"])
        alone = " ".join(k[:60] for k in r.get("alone_kernels", []))
        print(f"{'x'.join(map(str, r['m_k_n'])):22s} {str(r['a_strides']):16s} {str(r['b_strides']):16s} {dt:10s} "
              f"{r['use_fast_accum'][:1]:4s} {r['calls_per_iteration']:5.1f}  {r['program_us'] or 0:10.1f} "
              f"{r.get('alone_back_to_back_us', 0):9.1f}  {kernels} | {alone}")
    total_program = sum((r["program_us"] or 0) * r["calls_per_iteration"] for r in rows) / 1e3
    line = f"per iteration: program {total_program:.1f} ms"
    if rows and "alone_back_to_back_us" in rows[0]:
        total_alone = sum(r["alone_back_to_back_us"] * r["calls_per_iteration"] for r in rows) / 1e3
        line += f", the same calls alone {total_alone:.1f} ms"
    print(line)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", required=True, help="a Chrome trace from profile_program.py --trace --shapes")
    p.add_argument("--iterations", type=int, default=2, help="training steps the trace holds (profile_program's --steps)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--no-replay", action="store_true", help="only read the trace")
    args = p.parse_args()
    calls = scaled_mm_calls(load_trace(args.trace))
    if not calls:
        raise SystemExit(f"{args.trace}: no {' or '.join(GEMMS)} calls with shapes; record it with profile_program.py --trace --shapes")
    rows = summarize(calls, args.iterations)
    if not args.no_replay:
        replay(rows, args.repeat)
    print_table(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
