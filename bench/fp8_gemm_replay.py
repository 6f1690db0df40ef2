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
import time
from collections import defaultdict

SCALED_MM = "aten::_scaled_mm"
GEMMS = (SCALED_MM, "aten::mm")  # the bf16 head's and any unconverted linear's gemms are plain mm
DTYPES = {"c10::Float8_e4m3fn": "float8_e4m3fn", "c10::Float8_e5m2": "float8_e5m2", "c10::BFloat16": "bfloat16", "float": "float32"}


def load_trace(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)["traceEvents"]


def gemm_calls(events: list[dict]) -> list[dict]:
    """Every gemm CPU op (GEMMS) with its operands and the device kernels it launched.

    A kernel carries the `External id` of the innermost CPU op that launched it; that op is the
    gemm itself or one nested in it on the same thread, so ops are matched by containment."""
    ops_by_thread: dict = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op" and e.get("ph") == "X":
            ops_by_thread[e["tid"]].append(e)
    owner = {}  # External id of any op inside a gemm -> that call
    calls = []
    for ops in ops_by_thread.values():
        ops.sort(key=lambda e: e["ts"])
        starts = [e["ts"] for e in ops]
        for op in ops:
            if op["name"] not in GEMMS:
                continue
            args = op.get("args", {})
            call = {"op": op["name"], "ts": op["ts"], "end": op["ts"] + op["dur"], "tid": op["tid"],
                    "dims": args.get("Input Dims", []), "strides": args.get("Input Strides", []),
                    "types": args.get("Input type", []), "concrete": args.get("Concrete Inputs", []), "kernels": []}
            calls.append(call)
            for inner in ops[bisect.bisect_left(starts, call["ts"]): bisect.bisect_right(starts, call["end"])]:
                if inner["ts"] + inner.get("dur", 0) <= call["end"] and "External id" in inner.get("args", {}):
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


def describe(call: dict) -> dict:
    """What identifies a call's gemm: op, sizes, strides and dtypes of a and b, the scales' sizes,
    and use_fast_accum ("-" for a plain mm)."""
    (m, k), (_, n) = call["dims"][:2]
    types = call["types"]
    return {
        "op": call["op"], "m_k_n": [m, k, n], "a_strides": list(call["strides"][0]), "b_strides": list(call["strides"][1]),
        "a_dtype": DTYPES.get(types[0], types[0]), "b_dtype": DTYPES.get(types[1], types[1]),
        "scale_dims": [list(d) for d in call["dims"][2:4]],
        "use_fast_accum": str(call["concrete"][7]) if call["op"] == SCALED_MM and len(call["concrete"]) > 7 else "-",
    }


def row_key(row: dict) -> tuple:
    """describe()'s fields of a row (or of a call's description), hashable."""
    return tuple((name, json.dumps(row[name])) for name in ("op", "m_k_n", "a_strides", "b_strides", "a_dtype", "b_dtype",
                                                            "scale_dims", "use_fast_accum"))


def summarize(calls: list[dict], iterations: int) -> list[dict]:
    groups: dict = defaultdict(list)
    for call in calls:
        groups[row_key(describe(call))].append(call)
    rows = []
    for members in groups.values():
        kernel_us = [sum(d for _, d in c["kernels"]) for c in members if c["kernels"]]
        rows.append(describe(members[0]) | {
            "calls_per_iteration": len(members) / iterations,
            "program_us": round(statistics.mean(kernel_us), 1) if kernel_us else None,
            "program_us_min_max": [round(min(kernel_us), 1), round(max(kernel_us), 1)] if kernel_us else None,
            "program_kernels": sorted({n for c in members for n, _ in c["kernels"]}),
        })
    return sorted(rows, key=lambda r: -(r["program_us"] or 0) * r["calls_per_iteration"])


def operand(torch, dims, strides, dtype, device):
    """A tensor of exactly these sizes and strides holding values spread like a tensorwise cast's."""
    t = torch.empty_strided(dims, strides, dtype=getattr(torch, dtype), device=device)
    top = torch.finfo(t.dtype).max if t.dtype.itemsize == 1 else 1.0  # fp8: the cast's full range
    values = torch.randn(dims, device=device) * (top / 4.5)  # amax of ~16M normals is ~5.5 sigma
    t.copy_(values.clamp(-top, top).to(t.dtype))
    assert t.stride() == tuple(strides) or t.numel() == 0
    return t


def canonical_strides(m: int, k: int, n: int) -> tuple[list[int], list[int]]:
    """The layouts cuBLAS's fp8 gemm takes without a copy: a row-major, b column-major."""
    return [k, 1], [1, k]


def make_call(torch, row: dict, device, strides: tuple[list[int], list[int]] | None = None):
    """The row's gemm as a closure over fresh operands (the row's own strides unless given)."""
    m, k, n = row["m_k_n"]
    a_strides, b_strides = strides or (row["a_strides"], row["b_strides"])
    a = operand(torch, [m, k], a_strides, row["a_dtype"], device)
    b = operand(torch, [k, n], b_strides, row["b_dtype"], device)
    if row["op"] != SCALED_MM:
        return lambda: torch.mm(a, b)
    scale_a, scale_b = (torch.full(d, 1e-2, device=device, dtype=torch.float32) for d in row["scale_dims"])
    fast = row["use_fast_accum"] == "True"
    return lambda: torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16, use_fast_accum=fast)


def seconds(torch, device, fn, repeat: int) -> float:
    """Mean seconds of fn() run back to back (CUDA events on a GPU: no host time counted)."""
    for _ in range(min(10, repeat)):
        fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - start) / repeat
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / 1e3 / repeat


def kernel_names(torch, fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})


def replay(rows: list[dict], repeat: int, device: str = "cuda") -> dict[tuple, object]:
    """Each row's gemm alone, back to back: with the program's strides, and (where those differ)
    with the canonical ones. Returns the calls by row_key, for `replay_sequence`."""
    import torch

    device = torch.device(device)
    calls = {}
    for row in rows:
        m, k, n = row["m_k_n"]
        call = calls[row_key(row)] = make_call(torch, row, device)
        row["alone_us"] = round(seconds(torch, device, call, repeat) * 1e6, 1)
        canonical = canonical_strides(m, k, n)
        if row["op"] == SCALED_MM and (row["a_strides"], row["b_strides"]) != canonical:
            row["canonical_us"] = round(seconds(torch, device, make_call(torch, row, device, canonical), repeat) * 1e6, 1)
        if device.type == "cuda":
            row["alone_kernels"] = kernel_names(torch, call)
        row["tflops_program"] = round(2 * m * k * n / row["program_us"] / 1e6) if row["program_us"] else None
        row["tflops_alone"] = round(2 * m * k * n / row["alone_us"] / 1e6) if row["alone_us"] else None
    return calls


def replay_sequence(trace_calls: list[dict], iterations: int, calls: dict[tuple, object], device: str = "cuda",
                    min_seconds: float = 2.0) -> dict:
    """One iteration's gemms in the program's order, replayed over and over for >= min_seconds, as a
    sustained load like the program's (clocks and power settle as they do in training)."""
    import torch

    device = torch.device(device)
    order = [calls[row_key(describe(c))] for c in trace_calls[: len(trace_calls) // iterations]]

    def iteration():
        for call in order:
            call()

    once = seconds(torch, device, iteration, 1)
    rounds = max(2, int(min_seconds / max(once, 1e-6)))
    return {"gemms_per_iteration": len(order), "rounds": rounds,
            "sequence_ms_per_iteration": round(seconds(torch, device, iteration, rounds) * 1e3, 2)}


def print_table(rows: list[dict], sequence: dict | None = None) -> None:
    print(f"{'m x k x n':22s} {'a strides':16s} {'b strides':16s} {'a/b':10s} fast  calls  {'program us':>10s} {'alone us':>9s} {'canon. us':>9s}  kernel (program | alone)")
    for r in rows:
        dt = f"{r['a_dtype'].replace('float8_', '')}/{r['b_dtype'].replace('float8_', '')}"
        kernels = " ".join(k[:60] for k in r["program_kernels"])
        alone = " ".join(k[:60] for k in r.get("alone_kernels", []))
        print(f"{'x'.join(map(str, r['m_k_n'])):22s} {str(r['a_strides']):16s} {str(r['b_strides']):16s} {dt:10s} "
              f"{r['use_fast_accum'][:1]:4s} {r['calls_per_iteration']:5.1f}  {r['program_us'] or 0:10.1f} "
              f"{r.get('alone_us', 0):9.1f} {r.get('canonical_us', r.get('alone_us', 0)):9.1f}  {kernels} | {alone}")
    total_program = sum((r["program_us"] or 0) * r["calls_per_iteration"] for r in rows) / 1e3
    line = f"per iteration: program {total_program:.1f} ms"
    if rows and "alone_us" in rows[0]:
        total_alone = sum(r["alone_us"] * r["calls_per_iteration"] for r in rows) / 1e3
        total_canonical = sum(r.get("canonical_us", r["alone_us"]) * r["calls_per_iteration"] for r in rows) / 1e3
        line += f", the same calls alone {total_alone:.1f} ms (canonical layouts {total_canonical:.1f} ms)"
    if sequence:
        line += (f", one iteration's {sequence['gemms_per_iteration']} gemms in order, sustained over "
                 f"{sequence['rounds']} rounds: {sequence['sequence_ms_per_iteration']:.1f} ms")
    print(line)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", required=True, help="a Chrome trace from profile_program.py --trace --shapes")
    p.add_argument("--iterations", type=int, default=2, help="training steps the trace holds (profile_program's --steps)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--no-replay", action="store_true", help="only read the trace")
    p.add_argument("--device", default="cuda", help="where to replay (cpu: a smoke test of this script)")
    args = p.parse_args()
    calls = gemm_calls(load_trace(args.trace))
    if not calls:
        raise SystemExit(f"{args.trace}: no {' or '.join(GEMMS)} calls with shapes; record it with profile_program.py --trace --shapes")
    rows = summarize(calls, args.iterations)
    sequence = None
    if not args.no_replay:
        replayed = replay(rows, args.repeat, args.device)
        sequence = replay_sequence(calls, args.iterations, replayed, args.device)
    print_table(rows, sequence)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "sequence": sequence}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
