"""Profile training steps of the program itself (`python -m internlm ...`) with torch.profiler.

Runs the program unchanged, with `internlm.runtime.fit.train_step` wrapped so that the profiler
records whole iterations: from the start of step `--start` to the start of step `--start + --steps`
(the data loading, logging and metrics between steps included). Writes to --out:

    profile_<tag>.txt   top kernels by GPU time, time per kernel family, GPU busy vs wall per
                        step, and the largest idle gaps with the kernels around them
    trace_<tag>.json.gz the Chrome trace (--trace), for chrome://tracing or Perfetto

    python bench/profile_program.py --tag bf16 --out /tmp/prof -- model=internlm_7b model.num_layers=16 \\
        data.seq_len=4096 data.global_batch_size=4 loss=chunked trainer.max_steps=14 ...
    python bench/profile_program.py --tag cpu --start 2 --steps 1 --out /tmp/prof -- trainer.max_steps=4  # CPU smoke test
    python bench/profile_program.py --tag fp8 --trace --shapes --out /tmp/prof -- ...   # for bench/fp8_gemm_replay.py
    python bench/profile_program.py --tag nd --inductor triton.prefer_nd_tiling=True --gaps --out /tmp/prof -- ...

--inductor KEY=VALUE (repeatable) sets torch._inductor.config.KEY before anything compiles (a
tiling or codegen choice tried on the program unchanged). --gaps times, with CUDA events and no
profiler, where the GPU waits for the host at every step boundary (gaps_<tag>.txt): from the end
of the previous step's queued work (the optimizer) to the host entering the next step, and from
there to the first block's forward.

The steps inside the window run slower than the others (the profiler's own cost): read
throughput from the program's metrics.csv outside the window (bench/summarize_run.py --skip).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.autograd import DeviceType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FAMILIES = [  # (family, substrings of the kernel name), first match wins
    ("gemm (cuBLAS/CUTLASS)", ("gemm", "nvjet", "cutlass", "xmma", "_scaled_mm", "sm90_", "cublas")),
    ("attention (flex)", ("flex", "attention", "triton_tem")),
    ("optimizer (fused AdamW)", ("adam", "multi_tensor_apply")),
    ("norm / reductions", ("reduce", "norm", "red_fused", "per_fused")),
    ("triton fused element-wise", ("triton_poi", "triton_")),
    ("copies / fills", ("memcpy", "memset", "copy", "fill", "cat")),
]


def family(name: str) -> str:
    low = name.lower()
    for label, keys in FAMILIES:
        if any(k in low for k in keys):
            return label
    return "other"


def kernels(prof) -> list[tuple[float, float, str]]:
    """(start us, end us, name) of every device kernel, sorted by start (user annotations such as
    `Optimizer.step#AdamW.step`, which span kernels on the device timeline, are not kernels)."""
    out = []
    for evt in prof.events():
        if getattr(evt, "is_user_annotation", False) or evt.name.startswith(("Optimizer.", "ProfilerStep")):
            continue
        if evt.device_type == DeviceType.CUDA and evt.time_range.end > evt.time_range.start:
            out.append((evt.time_range.start, evt.time_range.end, evt.name))
    return sorted(out)


def busy_and_gaps(spans: list[tuple[float, float, str]], top: int = 12):
    """Union of kernel time and the largest gaps between consecutive busy intervals."""
    busy, gaps, end, last_name = 0.0, [], None, ""
    for start, stop, name in spans:
        if end is None or start > end:
            if end is not None:
                gaps.append((start - end, end, last_name, name))
            busy += stop - start
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
        if stop >= end:
            last_name = name
    gaps.sort(reverse=True)
    return busy, gaps[:top]


def report(prof, tag: str, steps: int, wall_s: float) -> str:
    spans = kernels(prof)
    lines = [f"# {tag}: {steps} profiled iterations, {wall_s * 1e3 / steps:.1f} ms wall per iteration (profiler on)"]
    if not spans:
        lines.append("no device kernels recorded (a CPU run): CPU ops by self time below")
        lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return "\n".join(lines)
    busy, gaps = busy_and_gaps(spans)
    first, last = spans[0][0], max(s[1] for s in spans)
    lines.append(
        f"GPU busy {busy / 1e3 / steps:.1f} ms per iteration of {wall_s * 1e3 / steps:.1f} ms wall "
        f"({100 * busy / 1e6 / wall_s:.1f}%); kernels span {(last - first) / 1e3 / steps:.1f} ms per iteration; "
        f"{len(spans) / steps:.0f} kernels per iteration"
    )
    totals: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}
    for start, stop, name in spans:
        totals[family(name)] = totals.get(family(name), 0.0) + stop - start
        by_name.setdefault(name, []).append(stop - start)
    lines.append("\n## kernel time by family (ms per iteration, % of kernel time)")
    total = sum(totals.values())
    for label, us in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"{us / 1e3 / steps:9.2f} ms  {100 * us / total:5.1f}%  {label}")
    lines.append("\n## top kernels by GPU time (ms per iteration, calls per iteration, mean us, family)")
    for name, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:40]:
        lines.append(
            f"{sum(times) / 1e3 / steps:9.2f} ms {len(times) / steps:6.0f}x {sum(times) / len(times):9.1f} us  "
            f"{family(name):26s} {name[:150]}"
        )
    lines.append("\n## largest idle gaps on the GPU (us, at ms from the first kernel, kernel before -> after)")
    for length, at, before, after in gaps:
        lines.append(f"{length:9.0f} us at {(at - first) / 1e3:8.1f} ms  {before[:70]}  ->  {after[:70]}")
    lines.append("\n## operators by device time (torch.profiler key_averages)")
    lines.append(prof.key_averages().table(sort_by="device_time_total", row_limit=30, max_name_column_width=70))
    return "\n".join(lines)


def set_inductor(options: list[str]) -> None:
    """KEY=VALUE pairs onto torch._inductor.config (dotted keys reach sub-configs: triton.max_tiles)."""
    import ast

    import torch._inductor.config as config

    for option in options:
        key, _, text = option.partition("=")
        *path, name = key.split(".")
        target = config
        for part in path:
            target = getattr(target, part)
        if not hasattr(target, name):
            raise SystemExit(f"--inductor {option}: torch._inductor.config has no {key} in torch {torch.__version__}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        setattr(target, name, value)
        print(f"inductor config {key} = {value!r}", flush=True)


class StepGaps:
    """CUDA events at each train_step's entry and exit and at its first block's forward; read at
    the end, so the measurement adds no sync to the steps it times."""

    def __init__(self):
        self.steps: list[dict] = []  # per step: events and host clock readings
        self.current: dict | None = None

    def _event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def enter(self):
        self.current = {"entry": self._event(), "entry_t": time.perf_counter()}

    def first_block(self):
        if self.current is not None and "block" not in self.current:
            self.current["block"], self.current["block_t"] = self._event(), time.perf_counter()

    def exit(self):
        self.current["exit"], self.current["exit_t"] = self._event(), time.perf_counter()
        self.steps.append(self.current)
        self.current = None

    def report(self, tag: str, skip: int, window: set[int]) -> str:
        torch.cuda.synchronize()
        lines = [f"# {tag}: GPU waits at step boundaries (ms; CUDA events, steps in the profiler window left out)",
                 "step  boundary_idle  host_exit_to_entry  entry_to_first_block_gpu  host_entry_to_block  block_to_exit_gpu  host_step"]
        rows = []
        for i in range(1, len(self.steps)):
            step, before = self.steps[i], self.steps[i - 1]
            if i + 1 <= skip or (i + 1) in window or "block" not in step:
                continue
            row = (i + 1, before["exit"].elapsed_time(step["entry"]), 1e3 * (step["entry_t"] - before["exit_t"]),
                   step["entry"].elapsed_time(step["block"]), 1e3 * (step["block_t"] - step["entry_t"]),
                   step["block"].elapsed_time(step["exit"]), 1e3 * (step["exit_t"] - before["exit_t"]))
            rows.append(row)
            lines.append(f"{row[0]:4d}  " + "  ".join(f"{v:9.2f}" for v in row[1:]))
        if rows:
            import statistics

            lines.append("median " + "  ".join(f"{statistics.median(r[k] for r in rows):9.2f}" for k in range(1, 7)))
        return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--tag", default="run")
    p.add_argument("--start", type=int, default=10, help="first profiled step (1-based calls of train_step)")
    p.add_argument("--steps", type=int, default=2, help="iterations recorded")
    p.add_argument("--trace", action="store_true", help="also write the Chrome trace (gzipped)")
    p.add_argument("--shapes", action="store_true", help="record each op's input sizes and strides (bench/fp8_gemm_replay.py reads them)")
    p.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE", help="a torch._inductor.config setting")
    p.add_argument("--gaps", action="store_true", help="time the GPU's waits at step boundaries (CUDA only)")
    args = p.parse_args(argv[:cut])
    overrides = argv[cut + 1 :]
    os.makedirs(args.out, exist_ok=True)
    set_inductor(args.inductor)

    from internlm.runtime import fit, torch_compile

    original = fit.train_step
    state = {"calls": 0, "prof": None, "t0": 0.0}
    cuda = torch.cuda.is_available()
    gaps = StepGaps() if args.gaps and cuda else None

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def finish():
        sync()
        wall = time.perf_counter() - state["t0"]
        prof = state["prof"]
        prof.__exit__(None, None, None)
        state["prof"] = None
        try:
            text = report(prof, args.tag, args.steps, wall)
        except Exception as exc:  # a report that fails must not fail the run it measured
            text = f"# {args.tag}: report failed: {type(exc).__name__}: {exc}"
        with open(os.path.join(args.out, f"profile_{args.tag}.txt"), "w") as f:
            f.write(text + "\n")
        print(text.split("\n## operators")[0], flush=True)
        if args.trace:
            prof.export_chrome_trace(os.path.join(args.out, f"trace_{args.tag}.json.gz"))

    def profiled_step(*a, **k):
        state["calls"] += 1
        if state["calls"] == args.start + args.steps and state["prof"] is not None:
            finish()
        if state["calls"] == args.start:
            activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
            sync()
            state["prof"] = torch.profiler.profile(activities=activities, record_shapes=args.shapes)
            state["prof"].__enter__()
            state["t0"] = time.perf_counter()
        if gaps is None:
            return original(*a, **k)
        gaps.enter()
        result = original(*a, **k)
        gaps.exit()
        return result

    fit.train_step = profiled_step
    if gaps is not None:
        prepare = torch_compile._prepare_layout  # each block's pre-forward hook looks it up by name

        def timed_prepare(*a, **k):
            gaps.first_block()
            return prepare(*a, **k)

        torch_compile._prepare_layout = timed_prepare
    sys.argv = [sys.argv[0]] + overrides
    from internlm.__main__ import main as program_main

    try:
        program_main()
    finally:
        if state["prof"] is not None:  # the run ended inside the window: report what was recorded
            finish()
        if gaps is not None:
            window = set(range(args.start, args.start + args.steps + 1))
            text = gaps.report(args.tag, skip=4, window=window)
            with open(os.path.join(args.out, f"gaps_{args.tag}.txt"), "w") as f:
                f.write(text + "\n")
            print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
