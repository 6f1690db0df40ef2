"""optimizer.step() of adamw_bf16, eager against fused, with torch's fused fp32 AdamW as the peer.

    python bench/adamw_bf16_step.py                        # one H200: ~1.0e9 elements, < 60 s
    python bench/adamw_bf16_step.py --cpu --elements 1e6   # smoke test: tiny shapes, no timing claims

Parameters in 7B shapes (h 4096: per layer 4 x h^2, 3 x 11008 x h, 2 norms of h; one 103168 x h
embedding), as many layers as make --elements (below ~0.9e9 the same shapes at a smaller h), bf16
weights and random bf16 gradients. Rows, one JSON line each:

* eager: StochasticAdamW(fused=False), 30 elementwise kernels per chunk (252 B per element moved)
* fused: StochasticAdamW(fused=True), one compiled kernel per chunk (14 B: the floor)
* fused_master: StochasticAdamW(fused=True, master_weights=True), bf16 weights and gradients with
  fp32 master copies and moments (28 B: read gradient 2 + 12, write 12 + the bf16 weight 2)
* torch_fused_fp32: torch.optim.AdamW(fused=True) on fp32 copies of the same size (28 B)

ms = median of --steps optimizer steps (CUDA events) after --warmup; moved_gb_per_s counts the
row's own bytes (the module docstring of adamw_bf16 counts them), floor_gb_per_s the minimum for
its layout (14 B bf16, 28 B fp32), so rows compare on it; peak_delta_gib = the step's peak
allocated memory above what the tensors and states hold; fused adds compiles (graphs compiled in
the row: one expected) and first_step_s (with the compile).

Runs with torch and this repository only: adamw_bf16.py is loaded by its path, beside a no-op
stand-in for internlm.registry (which needs hydra).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

FILE = Path(__file__).resolve().parents[1] / "internlm" / "components" / "optimizer" / "adamw_bf16.py"
BYTES_PER_ELEMENT = {"eager": 252, "fused": 14, "fused_master": 28, "torch_fused_fp32": 28}  # moved, as counted in adamw_bf16.py
FLOOR_BYTES = {"eager": 14, "fused": 14, "fused_master": 28, "torch_fused_fp32": 28}


def load_adamw_bf16(path: Path = FILE):
    if "internlm.registry" not in sys.modules:
        registry = types.ModuleType("internlm.registry")
        registry.register = lambda group, name, config: (lambda cls: cls)
        sys.modules["internlm.registry"] = registry
    spec = importlib.util.spec_from_file_location("adamw_bf16_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def shapes(elements: float) -> list[tuple[int, ...]]:
    """7B-like shapes totalling about `elements`."""
    def layer(h):
        ffn = h * 11008 // 4096
        return [(h, h)] * 4 + [(ffn, h), (h, ffn), (ffn, h)] + [(h,)] * 2

    def count(group):
        return sum(torch.Size(s).numel() for s in group)

    h = 4096 if elements >= 0.9e9 else max(64, round((elements / 61.4) ** 0.5 / 64) * 64)
    embedding = [(h * 103168 // 4096, h)]
    layers = max(1, round((elements - count(embedding)) / count(layer(h)))) if h == 4096 else 3
    return embedding + layer(h) * layers


def timed_steps(optimizer, device, warmup: int, steps: int) -> list[float]:
    """Milliseconds per step, after `warmup` untimed ones."""
    for _ in range(warmup):
        optimizer.step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            optimizer.step()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            begin = time.perf_counter()
            optimizer.step()
            times.append((time.perf_counter() - begin) * 1e3)
    return times


def run_row(name: str, module, shape_list, device, args) -> dict:
    torch.manual_seed(0)
    dtype = torch.float32 if name == "torch_fused_fp32" else torch.bfloat16
    params = [torch.nn.Parameter(torch.randn(s, device=device, dtype=dtype) * 0.02) for s in shape_list]
    for p in params:
        p.grad = (torch.randn(p.shape, device=device) * 1e-3).to(dtype)
    if name == "torch_fused_fp32":
        optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    else:
        optimizer = module.StochasticAdamW(params, lr=1e-5, fused=name.startswith("fused"), master_weights=name == "fused_master")
    graphs_before, start = _graphs(), time.perf_counter()
    optimizer.step()  # allocates the moments (and compiles): the peak below counts only a step's scratch
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
    first = time.perf_counter() - start
    times = timed_steps(optimizer, device, args.warmup - 1, args.steps)
    elements = sum(p.numel() for p in params)
    ms = statistics.median(times)
    row = {
        "row": name, "elements": elements, "params": len(params), "ms": round(ms, 3),
        "moved_gb_per_s": round(BYTES_PER_ELEMENT[name] * elements / ms / 1e6, 1),
        "floor_gb_per_s": round(FLOOR_BYTES[name] * elements / ms / 1e6, 1),
        "peak_delta_gib": round((torch.cuda.max_memory_allocated(device) - held) / 1024**3, 3) if device.type == "cuda" else None,
    }
    if name.startswith("fused"):
        row["compiles"] = _graphs() - graphs_before
        row["first_step_s"] = round(first, 2)
    del optimizer, params
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=float, default=1.0e9, help="parameters in all (7B-like shapes)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiles), at least 1")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a smoke test: no timing claims)")
    parser.add_argument("--rows", default="eager,fused,fused_master,torch_fused_fp32")
    parser.add_argument("--file", type=Path, default=FILE, help="adamw_bf16.py to time (e.g. an earlier commit's copy)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: pass --cpu for the smoke test")
    module = load_adamw_bf16(args.file)
    shape_list = shapes(args.elements)
    print(json.dumps({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
                      "shapes": sorted({str(list(s)) for s in shape_list}), "chunk": module.CHUNK, "fused_chunk": module.FUSED_CHUNK}),
          flush=True)
    for name in args.rows.split(","):
        print(json.dumps(run_row(name, module, shape_list, device, args)), flush=True)


if __name__ == "__main__":
    main()
