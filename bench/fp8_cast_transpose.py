"""Is inductor's fp8 cast that also writes the transposed copy at its byte floor? (issue 16)

torchao's tensorwise fp8 backward casts each output gradient dY [tokens, features] (bf16) to e5m2
twice: as is, for the input gradient, and transposed, for the weight gradient. Under compile
inductor writes both from one kernel; in the program's profile that kernel takes ~147 us for
[16384, 4096], ~2x the 268 MB it moves. This times, on the same inputs and scale:

  eager      torch: cast, then .t().contiguous()
  inductor   the same two lines under torch.compile (what the program runs)
  triton     a hand-written 2-D tiled kernel (load a tile, store it, store its transpose), over
             a few tile shapes; outputs checked bitwise against eager

    python bench/fp8_cast_transpose.py --out $OUT/ct.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

E5M2_MAX = 57344.0
SHAPES = [(16384, 4096), (16384, 11008)]
TILES = [(64, 64, 4), (64, 128, 4), (128, 64, 4), (128, 128, 8), (32, 128, 4), (128, 32, 4), (256, 64, 8), (64, 256, 8)]


def eager(x: torch.Tensor, scale: torch.Tensor):
    y = (x.float() * scale).clamp(-E5M2_MAX, E5M2_MAX).to(torch.float8_e5m2)
    return y, y.t().contiguous()


def triton_cast_transpose():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, scale_ptr, y_ptr, yt_ptr, M, N, BM: tl.constexpr, BN: tl.constexpr):
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BM + tl.arange(0, BM)
        cols = pid_n * BN + tl.arange(0, BN)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        x = tl.load(x_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr)
        y = tl.clamp(x * scale, -57344.0, 57344.0).to(tl.float8e5)
        tl.store(y_ptr + rows[:, None] * N + cols[None, :], y, mask=mask)
        tl.store(yt_ptr + cols[:, None] * M + rows[None, :], tl.trans(y), mask=tl.trans(mask))

    def run(x, scale, tile):
        bm, bn, warps = tile
        m, n = x.shape
        y = torch.empty((m, n), dtype=torch.float8_e5m2, device=x.device)
        yt = torch.empty((n, m), dtype=torch.float8_e5m2, device=x.device)
        kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](x, scale, y, yt, m, n, BM=bm, BN=bn, num_warps=warps)
        return y, yt

    return run


def timed(fn, reps: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    compiled = torch.compile(eager)
    hand = triton_cast_transpose()
    rows = []
    for m, n in SHAPES:
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        scale = (E5M2_MAX / x.abs().max().float()).reshape(())
        want = eager(x, scale)
        floor_us = (x.numel() * 4) / 4.3e12 * 1e6  # 2 B read + 2 x 1 B written per element, at the 4.3 TB/s a device copy reaches (KINDS.md)
        row = {"shape": [m, n], "floor_us_at_4.3TBps": round(floor_us, 1),
               "eager_us": round(timed(lambda: eager(x, scale)), 1),
               "inductor_us": round(timed(lambda: compiled(x, scale)), 1)}
        got = compiled(x, scale)
        row["inductor_equal"] = all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(got, want))
        for tile in TILES:
            try:
                got = hand(x, scale, tile)
                equal = all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(got, want))
                row[f"triton_{tile[0]}x{tile[1]}w{tile[2]}"] = {"us": round(timed(lambda: hand(x, scale, tile)), 1), "equal": equal}
            except Exception as exc:  # one tile that does not compile must not end the table
                row[f"triton_{tile[0]}x{tile[1]}w{tile[2]}"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
