"""Packed-document attention, cuDNN's ragged kernel (`model.attention.backend=cudnn`) against
FlexAttention's block mask (`flex`), on the program's own layouts: is it the same function, and
which is faster for InternLM-7B's attention (32 heads x 128, batch 4 x 4096, bf16)?

    python bench/cudnn_documents.py --out "$OUT"     # one H200, ~1-2 min
    python bench/cudnn_documents.py --out "$OUT" --per-row 4,16,64   # speed only, rows of equal short documents
    python bench/cudnn_documents.py --out "$OUT" --grid   # speed only: bucketed or exact counts, row or longest max_len
    python bench/cudnn_documents.py --cpu            # smoke test of this driver: availability only

Layouts: the first --batches batches of the README's program (the bundled corpus, 4.5 documents
per row on average) and one of many short documents (64 per row).
1. Function: out, dq, dk, dv of both backends against the eager fp32 reference (relative L2
   error); padding the document count (cudnn_documents.pad_cu_seqlens) must not change cuDNN's
   result (compared to unpadded); a compiled call (fullgraph) must equal the eager one.
2. Speed: median forward + backward and forward alone per layout (CUDA events), the per-forward
   metadata (flex: the block mask; cudnn: the padded cu_seqlens upload) timed apart, and the host
   time to queue one cuDNN forward + backward (a plan build would show here), first call of each
   document-count bucket included.
3. Repeatability: two identical calls, bitwise, with and without torch's deterministic mode.
One JSON line per measurement; summary.json in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from flex_options import program_positions  # noqa: E402
from internlm.batch import cu_seqlens_from_positions  # noqa: E402
from internlm.components.model import attention_backends as ab  # noqa: E402
from internlm.components.model import cudnn_documents  # noqa: E402
from internlm.document_layout import DocumentLayout  # noqa: E402

ROWS: list[dict] = []


def emit(row: dict) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)


def layout_of(positions: torch.Tensor, device) -> DocumentLayout:
    cu, longest = cu_seqlens_from_positions(positions)  # on the host, as the loader sends them
    return DocumentLayout.from_positions(positions.to(device), cu, longest)


def short_documents(batch: int, seq: int, per_row: int) -> torch.Tensor:
    length = seq // per_row
    row = torch.arange(seq) % length
    return row.repeat(batch, 1)


def random_inputs(shape, device, seed: int) -> tuple[torch.Tensor, ...]:
    """q, k, v and an output gradient of `shape`, bf16 on `device`, the same for a seed on any device."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g).to(device, torch.bfloat16) for _ in range(4))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))


def run(name: str, q, k, v, grad, positions, device, backward: bool = True):
    """One fresh forward (+ backward): a new layout per call, as each training step builds it."""
    layout = layout_of(positions, device)
    qs, ks, vs = (t.detach().requires_grad_(backward) for t in (q, k, v))
    ab.BACKENDS[name].prepare(layout)
    out = ab.BACKENDS[name].fn(qs, ks, vs, layout, q.shape[-1] ** -0.5)
    if backward:
        out.backward(grad)
        return out, qs.grad, ks.grad, vs.grad
    return (out,)


def function_checks(layouts, device, shape, backward: bool) -> None:
    q, k, v, grad = random_inputs(shape, device, seed=0)
    for index, positions in enumerate(layouts):
        ref = run("eager", q.float(), k.float(), v.float(), grad.float(), positions, device)
        documents = len(cu_seqlens_from_positions(positions)[0]) - 1
        row = {"check": "function", "layout": index, "documents": documents}
        for name in ("flex", "cudnn"):
            try:
                got = run(name, q, k, v, grad, positions, device, backward=backward or name != "cudnn")
            except Exception as exc:
                row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:1500]}"}
                continue
            row[name] = {part: round(rel(a, b), 5) for part, a, b in zip(("out", "dq", "dk", "dv"), got, ref)}
        del ref
        emit(row)
    # padding: the same documents with and without the empty ones
    positions = layouts[0]
    cu, _ = cu_seqlens_from_positions(positions)
    flat = [t.reshape(-1, *t.shape[2:]).contiguous() for t in (q, k, v)]
    exact = cudnn_documents.document_attention(*flat, cu.to(device), shape[1], shape[-1] ** -0.5)
    padded = cudnn_documents.document_attention(*flat, cudnn_documents.pad_cu_seqlens(cu).to(device), shape[1], shape[-1] ** -0.5)
    emit({"check": "padding", "documents": len(cu) - 1, "padded_to": cudnn_documents.padded_count(len(cu) - 1),
          "max_abs_diff": float((exact.float() - padded.float()).abs().max())})
    _, lse = cudnn_documents._forward(*flat, cudnn_documents.pad_cu_seqlens(cu).to(device), shape[1], shape[-1] ** -0.5)
    emit({"check": "lse_layout", "shape": list(lse.shape), "stride": list(lse.stride()), "dtype": str(lse.dtype)})
    try:
        compiled_check(q, k, v, layouts, device, shape)
    except Exception as exc:  # reported, so the speed rows still run
        emit({"check": "compiled", "error": f"{type(exc).__name__}: {str(exc)[:2000]}"})


def compiled_check(q, k, v, layouts, device, shape) -> None:
    """One compiled graph (fullgraph) for two layouts of different document counts equals eager."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, layout: ab.cudnn_attention(q, k, v, layout, shape[-1] ** -0.5), fullgraph=True)
    diffs = []
    for positions in (layouts[0], layouts[-1]):
        layout = layout_of(positions, device)
        ab.BACKENDS["cudnn"].prepare(layout)
        eager = ab.cudnn_attention(q, k, v, layout, shape[-1] ** -0.5)
        diffs.append(float((compiled(q, k, v, layout).float() - eager.float()).abs().max()))
    emit({"check": "compiled", "max_abs_diff": diffs})


def repeatability(layouts, device, shape) -> None:
    """Two identical forward + backward calls: bitwise equal gradients? cuDNN's default backward
    accumulates dq atomically; under torch.use_deterministic_algorithms(True) the backend builds
    cuDNN's deterministic backward instead (its cost is timed too)."""
    q, k, v, grad = random_inputs(shape, device, seed=2)
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        try:
            runs = [run("cudnn", q, k, v, grad, layouts[0], device) for _ in range(2)]
            layout = layout_of(layouts[0], device)
            ab.BACKENDS["cudnn"].prepare(layout)
            qs, ks, vs = (t.detach().requires_grad_(True) for t in (q, k, v))
            both = median_ms(lambda: ab.BACKENDS["cudnn"].fn(qs, ks, vs, layout, shape[-1] ** -0.5).backward(grad), 10)
            emit({"check": "repeatable", "deterministic": deterministic, "fwd_bwd_ms": round(both, 3),
                  **{part: bool(torch.equal(a, b)) for part, a, b in zip(("out", "dq", "dk", "dv"), *runs)}})
        except Exception as exc:
            emit({"check": "repeatable", "deterministic": deterministic, "error": f"{type(exc).__name__}: {str(exc)[:1500]}"})
        finally:
            torch.use_deterministic_algorithms(False)


def median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(2):
        fn()
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def speed(layouts, device, shape, reps: int, backward: bool, host_queue: bool = True) -> None:
    q, k, v, grad = random_inputs(shape, device, seed=1)
    scale = shape[-1] ** -0.5
    for index, positions in enumerate(layouts):
        documents = len(cu_seqlens_from_positions(positions)[0]) - 1
        row = {"check": "speed", "layout": index, "documents": documents}
        for name in ("flex", "cudnn"):
            layout = layout_of(positions, device)
            ab.BACKENDS[name].prepare(layout)  # metadata built once, outside the kernel time
            qs, ks, vs = (t.detach().requires_grad_(True) for t in (q, k, v))

            def fwd_bwd():
                out = ab.BACKENDS[name].fn(qs, ks, vs, layout, scale)
                out.backward(grad)

            def fwd():
                with torch.no_grad():
                    ab.BACKENDS[name].fn(q, k, v, layout, scale)

            def metadata():
                fresh = layout_of(positions, device)
                ab.BACKENDS[name].prepare(fresh)

            forward = median_ms(fwd, reps)
            row[name] = {"fwd_ms": round(forward, 3), "metadata_ms": round(median_ms(metadata, reps), 3)}
            if backward or name != "cudnn":  # a wrong backward may also write out of bounds: not run
                both = median_ms(fwd_bwd, reps)
                row[name] |= {"fwd_bwd_ms": round(both, 3), "bwd_ms": round(both - forward, 3)}
        row["cudnn_over_flex_fwd"] = round(row["flex"]["fwd_ms"] / row["cudnn"]["fwd_ms"], 3)
        if backward:
            row["cudnn_over_flex_fwd_bwd"] = round(row["flex"]["fwd_bwd_ms"] / row["cudnn"]["fwd_bwd_ms"], 3)
        emit(row)
    if not backward or not host_queue:
        return
    # host time to queue one cuDNN forward + backward, fresh buckets first
    qs, ks, vs = (t.detach().requires_grad_(True) for t in (q, k, v))
    for per_row in (3, 5, 9, 17, 33, 5, 9):  # the last two meet buckets already built
        positions = short_documents(shape[0], shape[1], per_row)
        layout = layout_of(positions, device)
        ab.BACKENDS["cudnn"].prepare(layout)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ab.cudnn_attention(qs, ks, vs, layout, scale).backward(grad)
        host = time.perf_counter() - t0
        torch.cuda.synchronize()
        emit({"check": "host_queue", "documents": shape[0] * per_row,
              "bucket": cudnn_documents.padded_count(len(layout.cu_seqlens) - 1), "host_ms": round(host * 1e3, 2)})


def grid(layouts, device, shape, reps: int) -> None:
    """What cuDNN's launch grid costs: forward + backward of the same documents with the count
    padded to its bucket or exact, and the row length or the longest document as max_len (the
    kernels launch documents x heads x max_len / tile blocks; the empty ones exit at once)."""
    q, k, v, grad = random_inputs((shape[0] * shape[1], *shape[2:]), device, seed=3)  # flattened: [T, H, D]
    scale = shape[-1] ** -0.5
    for index, positions in enumerate(layouts):
        cu, longest = cu_seqlens_from_positions(positions)
        row = {"check": "grid", "layout": index, "documents": len(cu) - 1, "longest": int(longest)}
        for count, offsets in (("bucket", cudnn_documents.pad_cu_seqlens(cu)), ("exact", cu.to(torch.int32))):
            offsets = offsets.to(device)
            for name, max_len in (("row", shape[1]), ("longest", int(longest))):
                qs, ks, vs = (t.detach().requires_grad_(True) for t in (q, k, v))

                def fwd_bwd():
                    cudnn_documents.document_attention(qs, ks, vs, offsets, max_len, scale).backward(grad)

                row[f"{count}_{name}_ms"] = round(median_ms(fwd_bwd, reps), 3)
        emit(row)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/cudnn_documents"))
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--repeatability-only", action="store_true", help="function and repeatability checks, no speed rows")
    p.add_argument("--grid", action="store_true", help="speed rows of the launch grid only (bucketed or exact counts, row or longest max_len)")
    p.add_argument("--per-row", default="", help="comma-separated documents per row (e.g. 8,16,32): speed rows of such layouts only")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    device = torch.device("cpu" if args.cpu else "cuda")
    env = {"torch": torch.__version__, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    reason = ab.availability(device)["cudnn"]
    emit({"check": "availability", "cudnn_backend": reason or "available"} | env)
    backward = reason is None
    if device.type == "cuda" and (backward or "wrong results" in reason):  # a wrong backward: the forward is still timed
        shape = (4, 4096, 32, 128)
        if args.per_row:  # the crossover: speed rows only, rows of equal short documents
            speed([short_documents(4, 4096, int(n)) for n in args.per_row.split(",")], device, shape, args.reps, backward,
                  host_queue=False)
        else:
            layouts = program_positions(args.batches, cpu=False) + [short_documents(4, 4096, 64)]
            if args.grid:
                if backward:  # a wrong backward may also write out of bounds: not run
                    grid(layouts, device, shape, args.reps)
            else:
                function_checks(layouts, device, shape, backward)
                if backward:
                    repeatability(layouts, device, shape)
                if not args.repeatability_only:
                    speed(layouts, device, shape, args.reps, backward)
    with open(os.path.join(args.out, "cudnn_documents.json"), "w") as f:
        json.dump(ROWS, f, indent=1)
    return 0 if (reason is None or args.cpu) else 1


if __name__ == "__main__":
    sys.exit(main())
