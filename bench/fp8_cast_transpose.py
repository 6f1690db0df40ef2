"""Are inductor's fp8 casts that also write transposed copies at their byte floor? (issue 16)

torchao's tensorwise fp8 backward casts each output gradient dY [tokens, features] (bf16) to e5m2
twice: as is, for the input gradient, and transposed, for the weight gradient. Under compile
inductor writes both from one kernel; in the program's profile that kernel takes ~147 us for
[16384, 4096], ~2x the 268 MB it moves. This times, on the same inputs and scale:

  eager      torch: cast, then .t().contiguous()
  inductor   the same two lines under torch.compile (what the program runs)
  triton     a hand-written 2-D tiled kernel (load a tile, store it, store its transpose), over
             a few tile shapes; outputs checked bitwise against eager

`--swiglu` times the largest such kernel of the program instead, the SwiGLU backward's cast pass:
3 bf16 reads (gate, up and dH, [tokens, 11008]) and 5 fp8 writes: the gate and up gradients in
e5m2, each as is and transposed, and H = silu(gate) * up transposed in e4m3 (for the down
projection's weight gradient). Its scales come from an amax pass before it, not timed here. In
the program's profile inductor's kernel takes ~983 us, ~2x its 1.98 GB. The hand-written kernel
computes the same formulas in fp32; sigmoid may round differently from inductor's, so it reports
the share of fp8 bytes that differ from the compiled reference and their largest gap, not equality.

    python bench/fp8_cast_transpose.py --out $OUT/ct.json
    python bench/fp8_cast_transpose.py --swiglu --out $OUT/swiglu.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

E5M2_MAX = 57344.0
E4M3_MAX = 448.0
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


def swiglu_backward_values(gate, up, dh):
    """The pass's three results in fp32, before scaling: dGate, dUp and H = silu(gate) * up."""
    g, u, d = gate.float(), up.float(), dh.float()
    sig = torch.sigmoid(g)
    silu = g * sig
    return d * u * sig * (1 + g * (1 - sig)), d * silu, silu * u


def swiglu_backward_casts(gate, up, dh, scales):
    """The SwiGLU backward's cast pass in plain torch: (dGate, dGate^T, dUp, dUp^T) in e5m2, H^T in e4m3."""
    d_gate, d_up, h = swiglu_backward_values(gate, up, dh)
    e5 = [(t * s).clamp(-E5M2_MAX, E5M2_MAX).to(torch.float8_e5m2) for t, s in ((d_gate, scales[0]), (d_up, scales[1]))]
    ht = (h * scales[2]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).t().contiguous()
    return e5[0], e5[0].t().contiguous(), e5[1], e5[1].t().contiguous(), ht


def triton_swiglu_backward_casts():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(gate_ptr, up_ptr, dh_ptr, scale_ptr, dg_ptr, dgt_ptr, du_ptr, dut_ptr, ht_ptr, M, N,
               BM: tl.constexpr, BN: tl.constexpr):
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BM + tl.arange(0, BM)
        cols = pid_n * BN + tl.arange(0, BN)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        natural = rows[:, None] * N + cols[None, :]
        transposed = cols[:, None] * M + rows[None, :]
        g = tl.load(gate_ptr + natural, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(up_ptr + natural, mask=mask, other=0.0).to(tl.float32)
        d = tl.load(dh_ptr + natural, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        silu = g * sig
        d_gate = tl.clamp(d * u * sig * (1 + g * (1 - sig)) * tl.load(scale_ptr), -57344.0, 57344.0).to(tl.float8e5)
        d_up = tl.clamp(d * silu * tl.load(scale_ptr + 1), -57344.0, 57344.0).to(tl.float8e5)
        h = tl.clamp(silu * u * tl.load(scale_ptr + 2), -448.0, 448.0).to(tl.float8e4nv)
        tmask = tl.trans(mask)
        tl.store(dg_ptr + natural, d_gate, mask=mask)
        tl.store(du_ptr + natural, d_up, mask=mask)
        tl.store(dgt_ptr + transposed, tl.trans(d_gate), mask=tmask)
        tl.store(dut_ptr + transposed, tl.trans(d_up), mask=tmask)
        tl.store(ht_ptr + transposed, tl.trans(h), mask=tmask)

    def run(gate, up, dh, scales, tile):
        bm, bn, warps = tile
        m, n = gate.shape
        e5 = dict(dtype=torch.float8_e5m2, device=gate.device)
        dg, du = torch.empty((m, n), **e5), torch.empty((m, n), **e5)
        dgt, dut = torch.empty((n, m), **e5), torch.empty((n, m), **e5)
        ht = torch.empty((n, m), dtype=torch.float8_e4m3fn, device=gate.device)
        kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](gate, up, dh, scales, dg, dgt, du, dut, ht, m, n,
                                                         BM=bm, BN=bn, num_warps=warps)
        return dg, dgt, du, dut, ht

    return run


def tile_sweep(run, compare) -> dict:
    """{tile name: time and comparison} for every tile in TILES; `run(tile)` returns the outputs."""
    entries = {}
    for tile in TILES:
        name = f"triton_{tile[0]}x{tile[1]}w{tile[2]}"
        try:
            got = run(tile)
            entries[name] = {"us": round(timed(lambda: run(tile)), 1), **compare(got)}
        except Exception as exc:  # one tile that does not compile must not end the table
            entries[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return entries


def bitwise_equal(got, want) -> bool:
    return all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(got, want))


def fp8_gap(got, want) -> dict:
    """Share of fp8 bytes that differ, and the largest difference in units of the reference's scale."""
    differ = sum(int((a.view(torch.uint8) != b.view(torch.uint8)).sum()) for a, b in zip(got, want))
    total = sum(a.numel() for a in want)
    largest = max(float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)) for a, b in zip(got, want))
    return {"bytes_differing": round(differ / total, 6), "max_gap_rel_to_max": round(largest, 4)}


def swiglu_rows() -> list[dict]:
    compiled = torch.compile(swiglu_backward_casts)
    hand = triton_swiglu_backward_casts()
    m, n = 16384, 11008
    gate, up = (torch.randn(m, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    dh = torch.randn(m, n, device="cuda", dtype=torch.bfloat16) * 1e-3
    # each scale as torchao's tensorwise cast takes it: the format's max over the tensor's amax
    amax = torch.stack([t.abs().max() for t in swiglu_backward_values(gate, up, dh)])
    scales = (torch.tensor([E5M2_MAX, E5M2_MAX, E4M3_MAX], device="cuda") / amax).contiguous()
    want = compiled(gate, up, dh, scales)
    floor_us = gate.numel() * 11 / 4.3e12 * 1e6  # 3 x 2 B read + 5 x 1 B written per element
    row = {"shape": [m, n], "floor_us_at_4.3TBps": round(floor_us, 1),
           "inductor_us": round(timed(lambda: compiled(gate, up, dh, scales)), 1),
           "inductor_vs_eager": fp8_gap(want, swiglu_backward_casts(gate, up, dh, scales))}
    row.update(tile_sweep(lambda tile: hand(gate, up, dh, scales, tile), lambda got: fp8_gap(got, want)))
    print(json.dumps(row), flush=True)
    return [row]


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


def cast_rows() -> list[dict]:
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
        row["inductor_equal"] = bitwise_equal(got, want)
        row.update(tile_sweep(lambda tile: hand(x, scale, tile), lambda got: {"equal": bitwise_equal(got, want)}))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    p.add_argument("--swiglu", action="store_true", help="time the SwiGLU backward's cast pass instead")
    args = p.parse_args()
    rows = swiglu_rows() if args.swiglu else cast_rows()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
