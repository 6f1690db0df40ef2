"""What does fp8 fast accumulation buy, gemm by gemm, and what does it cost in accuracy? (issue 16)

torchao's tensorwise fp8 linear runs three `torch._scaled_mm` per layer and step: the output
(forward), the input gradient and the weight gradient. By default only the forward's uses fast
accumulation (`use_fast_accum=True`: the tensor cores' own accumulator, never promoted to fp32
inside the K loop); the backward's two promote. This times all three gemms of every InternLM-7B
block linear at the program's 16,384 tokens a step, both ways, on the operand layouts torchao
hands cuBLAS, and measures each result's error against an fp32 matmul of the same fp8 values (so
the error is the accumulation's alone, not the fp8 rounding's).

    python bench/fp8_fast_accum.py --out $OUT/fast_accum.json
"""

from __future__ import annotations

import argparse
import json

import torch

TOKENS = 16384
HIDDEN, FFN = 4096, 11008
# (name, in_features, out_features, count per block)
LINEARS = [("wq/wk/wv/wo", HIDDEN, HIDDEN, 4), ("w1/w3 (gate, up)", HIDDEN, FFN, 2), ("w2 (down)", FFN, HIDDEN, 1)]


def to_fp8(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensorwise dynamic scaling as torchao does it: scale = max / amax; returns data, inverse scale."""
    scale = torch.finfo(dtype).max / x.abs().amax().float().clamp(min=1e-12)
    return (x.float() * scale).clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype), scale.reciprocal()


def gemms(linear_in: int, linear_out: int, device) -> dict[str, tuple]:
    """The three gemms of one linear layer, each as (a, b, a_inverse_scale, b_inverse_scale), with
    a row-major and b column-major, the layouts _scaled_mm takes (torchao's transposed copies)."""
    x, x_inv = to_fp8(torch.randn(TOKENS, linear_in, device=device), torch.float8_e4m3fn)
    w, w_inv = to_fp8(torch.randn(linear_out, linear_in, device=device) * linear_in**-0.5, torch.float8_e4m3fn)
    dy, dy_inv = to_fp8(torch.randn(TOKENS, linear_out, device=device) * 1e-3, torch.float8_e5m2)
    return {
        "output": (x, w.t(), x_inv, w_inv),  # [T, in] @ [in, out]
        "grad_input": (dy, w.t().contiguous().t(), dy_inv, w_inv),  # [T, out] @ [out, in]
        "grad_weight": (dy.t().contiguous(), x.t().contiguous().t(), dy_inv, x_inv),  # [out, T] @ [T, in]
    }


def scaled_mm(a, b, sa, sb, fast: bool) -> torch.Tensor:
    return torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=fast)


def relative_error(a, b, sa, sb, fast: bool) -> float:
    reference = (a.float() @ b.float()) * (sa * sb)
    got = scaled_mm(a, b, sa, sb, fast).float()
    return ((got - reference).norm() / reference.norm()).item()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/fast_accum.json")
    p.add_argument("--layers", type=int, default=16, help="blocks a step (the program's 16)")
    args = p.parse_args()
    from triton.testing import do_bench

    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference accumulates in fp32
    device = torch.device("cuda")
    rows = []
    for name, linear_in, linear_out, count in LINEARS:
        for gemm, (a, b, sa, sb) in gemms(linear_in, linear_out, device).items():
            flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
            row = {"linear": name, "gemm": gemm, "m_k_n": [a.shape[0], a.shape[1], b.shape[1]]}
            for fast in (False, True):
                ms = do_bench(lambda: scaled_mm(a, b, sa, sb, fast), warmup=50, rep=300)
                key = "fast" if fast else "promoted"
                row[f"{key}_us"] = round(ms * 1e3, 1)
                row[f"{key}_tflops"] = round(flops / ms / 1e9, 0)
                row[f"{key}_rel_error"] = relative_error(a, b, sa, sb, fast)
            rows.append(row)
            print(
                f"{name:18s} {gemm:12s} {str(row['m_k_n']):22s} promoted {row['promoted_us']:8.1f} us "
                f"({row['promoted_tflops']:5.0f} TF/s, err {row['promoted_rel_error']:.2e})  fast {row['fast_us']:8.1f} us "
                f"({row['fast_tflops']:5.0f} TF/s, err {row['fast_rel_error']:.2e})",
                flush=True,
            )
    backward_promoted = sum(r["promoted_us"] * c for r in rows for n, _, _, c in LINEARS if r["linear"] == n and r["gemm"] != "output")
    backward_fast = sum(r["fast_us"] * c for r in rows for n, _, _, c in LINEARS if r["linear"] == n and r["gemm"] != "output")
    summary = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "tokens": TOKENS,
        "layers": args.layers,
        "rows": rows,
        "backward_gemms_ms_per_step": {"promoted": backward_promoted * args.layers / 1e3, "fast": backward_fast * args.layers / 1e3},
    }
    print(f"backward gemms a step ({args.layers} layers): promoted {summary['backward_gemms_ms_per_step']['promoted']:.1f} ms, "
          f"fast {summary['backward_gemms_ms_per_step']['fast']:.1f} ms")
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
