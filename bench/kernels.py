"""Kernel table: each fused op against plain PyTorch and its memory or compute floor, on one GPU.

    python bench/kernels.py --out results.json            # everything (a few minutes on an H200)
    python bench/kernels.py --only attention,loss         # a subset
    python bench/kernels.py --device cpu --quick          # smoke test: tiny shapes, no timing claims

Sections:
  env        torch / CUDA / device, which optional packages import, attention backend status
  ceilings   bf16 8192^3 matmul TFLOP/s and device-to-device copy bandwidth (random data)
  attention  every attention backend, forward + backward, seq 4096, 32 x 128 heads, bf16, batch 2,
             on packed documents (mean length 1024) and on one document per row; error against
             an fp32 reference; TFLOP/s over the work the document mask leaves (fwd+bwd = 3.5 x fwd)
  loss       the loss components at vocab 103,168 over 8192 tokens, hidden 4096: time, peak memory
             above the inputs, error against fp32 logits
  ops        RMSNorm, SwiGLU's silu(gate) * up and rotary: eager vs torch.compile vs liger,
             forward + backward, against the bytes-moved floor
Every measurement is the median of CUDA-event timings after warm-up; each row is independent
(a failure prints its error and the table goes on).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import sys
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from internlm.components.model import attention_backends, fused_ops  # noqa: E402
from internlm.document_layout import DocumentLayout  # noqa: E402
from internlm.planning import flops  # noqa: E402

COPY_BW = 4.3e12  # bytes/s, measured on an H200 here (KINDS.md); replaced by `ceilings` when it runs


def timed(fn, device, warmup: int = 3, reps: int = 15) -> float:
    """Median milliseconds of fn() over reps, after warmup (CUDA events; wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        import time

        samples = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1e3)
        return statistics.median(samples)
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def row(table: list, **fields) -> None:
    table.append(fields)
    print("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items()), flush=True)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def guarded(table: list, name: str, fn) -> None:
    try:
        fn()
    except Exception as exc:  # one failing variant must not end the table
        row(table, name=name, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        traceback.print_exc()
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------


def section_env(device, out):
    info = {"torch": torch.__version__, "python": sys.version.split()[0]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device=torch.cuda.get_device_name(device),
            capability=list(torch.cuda.get_device_capability(device)),
            sms=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    for pkg in ("triton", "liger_kernel", "flash_attn", "torchtitan"):
        try:
            mod = importlib.import_module(pkg)
            info[pkg] = getattr(mod, "__version__", "imported")
        except Exception as exc:
            info[pkg] = f"no ({type(exc).__name__})"
    info["attention_backends"] = attention_backends.describe(device)
    info["attention_auto"] = attention_backends.resolve("auto", device).name
    for k, v in info.items():
        print(f"  {k}: {v}")
    out["env"] = info


def section_ceilings(device, out, quick):
    global COPY_BW
    table = []
    n = 1024 if quick else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = timed(lambda: a @ b, device, warmup=3, reps=10)
    row(table, name=f"matmul bf16 {n}^3", ms=ms, tflops=2 * n**3 / ms / 1e9)
    numel = (1 << 20) if quick else (1 << 31)  # 4 GiB of bf16
    src = torch.randn(numel, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), device, warmup=2, reps=10)
    bw = 2 * src.numel() * 2 / (ms / 1e3)
    row(table, name="copy d2d", gib=src.numel() * 2 / 2**30, ms=ms, tb_per_s=bw / 1e12)
    if device.type == "cuda" and not quick:
        COPY_BW = bw
    out["ceilings"] = table


# ---------------------------------------------------------------------------------------------


def packed_positions(batch, seq, mean_doc, generator):
    rows = []
    for _ in range(batch):
        pos: list[int] = []
        while len(pos) < seq:
            length = seq if mean_doc <= 0 else max(1, int(-mean_doc * math.log(1.0 - torch.rand((), generator=generator).item())))
            pos.extend(range(length))
        rows.append(pos[:seq])
    return rows


def section_attention(device, out, quick):
    table = []
    batch, seq, heads, dim = (2, 256, 4, 64) if quick else (2, 4096, 32, 128)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    for layout_name, mean_doc in (("packed docs (mean 1024)", 1024 if not quick else 64), ("one doc per row", 0)):
        rows = packed_positions(batch, seq, mean_doc, g)
        positions = torch.tensor(rows, device=device)
        doc_lengths = flops.document_lengths_from_positions(rows)
        keys = flops.mean_attended_keys(doc_lengths)
        fwd_flops = 4 * batch * seq * heads * dim * keys  # QK^T and PV over the attended keys
        causal_fwd_flops = 4 * batch * seq * heads * dim * (seq + 1) / 2
        q, k, v = (torch.randn(batch, seq, heads, dim, device=device, dtype=dtype) for _ in range(3))
        grad_out = torch.randn_like(q)
        print(f"  layout: {layout_name}: {len(doc_lengths)} documents, mean attended keys {keys:.0f}")

        # fp32 reference (the eager backend on upcast inputs)
        ref_layout = DocumentLayout.from_positions(positions)
        qr, kr, vr = (t.detach().float().clone().requires_grad_() for t in (q, k, v))
        ref = attention_backends.eager_attention(qr, kr, vr, ref_layout, 1 / math.sqrt(dim))
        ref.backward(grad_out.float())
        ref_grads = [t.grad for t in (qr, kr, vr)]
        ref = ref.detach()
        del qr, kr, vr, ref_layout

        for name, entry in attention_backends.BACKENDS.items():
            if name == "eager":
                continue
            reason = entry.available(device)
            if reason:
                row(table, layout=layout_name, backend=name, skipped=reason)
                continue

            def measure(name=name, entry=entry):
                qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
                # Metadata is built once per forward and shared by all layers: keep it out of
                # the kernel's time (the `prepare` rows give its cost).
                layout = DocumentLayout.from_positions(positions)
                if entry.prepare is not None:
                    entry.prepare(layout)

                def fwd_bwd():
                    o = entry.fn(qs, ks, vs, layout, 1 / math.sqrt(dim))
                    o.backward(grad_out)
                    return o

                o = fwd_bwd()
                errs = {
                    "err_out": rel_err(o.detach(), ref),
                    "err_dq": rel_err(qs.grad, ref_grads[0]),
                    "err_dk": rel_err(ks.grad, ref_grads[1]),
                    "err_dv": rel_err(vs.grad, ref_grads[2]),
                }
                ms = timed(fwd_bwd, device)
                with torch.no_grad():
                    fwd_ms = timed(lambda: entry.fn(qs, ks, vs, layout, 1 / math.sqrt(dim)), device)
                row(
                    table,
                    layout=layout_name,
                    backend=name,
                    honours_docs=entry.honours_documents,
                    fwd_bwd_ms=ms,
                    fwd_ms=fwd_ms,
                    tflops_doc_work=3.5 * fwd_flops / ms / 1e9,
                    tflops_causal_work=3.5 * causal_fwd_flops / ms / 1e9,
                    **errs,
                )

            guarded(table, f"attention {name}", measure)

        # per-batch metadata cost (built once per forward, shared by all layers)
        def prep_cost():
            for name in ("flex", "varlen"):
                if attention_backends.BACKENDS[name].available(device) is None:
                    ms = timed(lambda: attention_backends.BACKENDS[name].prepare(DocumentLayout.from_positions(positions)), device)
                    row(table, layout=layout_name, backend=f"{name} prepare (per forward)", ms=ms)

        guarded(table, "prepare", prep_cost)
    out["attention"] = table


# ---------------------------------------------------------------------------------------------


def section_loss(device, out, quick):
    from internlm.components.loss.chunked import ChunkedConfig, ChunkedCrossEntropy
    from internlm.components.loss.cross_entropy import CrossEntropy

    table = []
    tokens, hidden_size, vocab = (512, 64, 1000) if quick else (8192, 4096, 103168)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    h = torch.randn(tokens, hidden_size, device=device, dtype=dtype)
    w = (torch.randn(vocab, hidden_size, device=device, dtype=dtype) * 0.02)
    labels = torch.randint(0, vocab, (tokens,), device=device)
    labels[::7] = -100
    hr, wr = h.float().clone().requires_grad_(), w.float().clone().requires_grad_()
    ref_loss = F.cross_entropy(F.linear(hr, wr), labels, reduction="sum")
    ref_loss.backward()
    ref = (ref_loss.detach(), hr.grad, wr.grad)
    del hr, wr
    if device.type == "cuda":
        torch.cuda.empty_cache()
    logits_fp32_gib = tokens * vocab * 4 / 2**30
    print(f"  {tokens} tokens x vocab {vocab}: full fp32 logits would be {logits_fp32_gib:.2f} GiB")

    variants = [
        ("cross_entropy eager", lambda: CrossEntropy()),
        ("cross_entropy compiled", lambda: torch.compile(CrossEntropy())),
        ("chunked 2048 eager", lambda: ChunkedCrossEntropy(ChunkedConfig(chunk_tokens=2048, compile=False))),
        ("chunked 2048 compiled", lambda: ChunkedCrossEntropy(ChunkedConfig(chunk_tokens=2048, compile=True))),
        ("chunked 4096 compiled", lambda: ChunkedCrossEntropy(ChunkedConfig(chunk_tokens=4096, compile=True))),
        ("chunked 1024 compiled", lambda: ChunkedCrossEntropy(ChunkedConfig(chunk_tokens=1024, compile=True))),
    ]
    if fused_ops.liger_unavailable(device) is None:
        from internlm.components.loss.liger import LigerFusedCrossEntropy

        variants.append(("liger", lambda: LigerFusedCrossEntropy()))
    else:
        row(table, variant="liger", skipped=fused_ops.liger_unavailable(device))
    if quick:
        variants = [v for v in variants if "compiled" not in v[0]]

    for name, make in variants:

        def measure(name=name, make=make):
            loss_fn = make()
            hs, ws = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()

            def fwd_bwd():
                hs.grad = ws.grad = None
                loss, count = loss_fn(hs, ws, labels)
                loss.backward()
                return loss

            loss = fwd_bwd()
            errs = {
                "err_loss": rel_err(loss.detach(), ref[0]),
                "err_dh": rel_err(hs.grad, ref[1]),
                "err_dw": rel_err(ws.grad, ref[2]),
            }
            ms = timed(fwd_bwd, device, warmup=2, reps=10)
            peak = None
            if device.type == "cuda":
                hs.grad = ws.grad = None
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                fwd_bwd()
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**30
            matmul_flops = 3 * 2 * tokens * hidden_size * vocab
            row(table, variant=name, ms=ms, tflops=matmul_flops / ms / 1e9, peak_extra_gib=peak, **errs)

        guarded(table, f"loss {name}", measure)
    out["loss"] = table


# ---------------------------------------------------------------------------------------------


def section_ops(device, out, quick):
    table = []
    tokens = 512 if quick else 8192
    hidden_size, ffn, heads, dim = (64, 128, 4, 16) if quick else (4096, 11008, 32, 128)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    eps = 1e-6

    def make_rms():
        x = torch.randn(tokens, hidden_size, device=device, dtype=dtype)
        wt = 1 + 0.1 * torch.randn(hidden_size, device=device, dtype=dtype)
        return (x, wt), 10 * x.numel() * x.element_size() // 2  # fwd r/w + bwd read x, dy, write dx ~ 5 passes

    def make_swiglu():
        g_, u_ = (torch.randn(tokens, ffn, device=device, dtype=dtype) for _ in range(2))
        return (g_, u_), 8 * g_.numel() * g_.element_size()  # fwd 3 passes, bwd 5

    def make_rope():
        batch = 2
        seq = tokens // batch
        q = torch.randn(batch, seq, heads, dim, device=device, dtype=dtype)
        k = torch.randn(batch, seq, heads, dim, device=device, dtype=dtype)
        pos = torch.arange(seq, device=device).expand(batch, seq)
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device).float() / dim))
        ang = pos.float()[..., None] * inv
        ang = torch.cat((ang, ang), -1)[:, :, None, :]
        return (q, k, ang.cos().to(dtype), ang.sin().to(dtype)), 8 * q.numel() * q.element_size()  # fwd 4, bwd 4

    ops = {
        "rms_norm": (make_rms, lambda impl: (lambda x, wt: impl(x, wt, eps))),
        "swiglu": (make_swiglu, lambda impl: impl),
        "rotary": (make_rope, lambda impl: impl),
    }
    for op, (make, adapt) in ops.items():
        inputs, floor_bytes = make()
        float_inputs = [t.detach().float().clone().requires_grad_() if i < 2 else t.float() for i, t in enumerate(inputs)]
        ref_fn = adapt(fused_ops.IMPLEMENTATIONS[op]["torch"])
        ref_out = ref_fn(*float_inputs)
        ref_outs = ref_out if isinstance(ref_out, tuple) else (ref_out,)
        grads_out = [torch.randn_like(o) for o in ref_outs]
        torch.autograd.backward(ref_outs, [g_.float() for g_ in grads_out])
        ref_grads = [t.grad for t in float_inputs[:2]]
        floor_ms = floor_bytes / COPY_BW * 1e3
        variants = {"torch eager": adapt(fused_ops.IMPLEMENTATIONS[op]["torch"])}
        if not quick:
            variants["torch compiled"] = torch.compile(adapt(fused_ops.IMPLEMENTATIONS[op]["torch"]))
        if fused_ops.liger_unavailable(device) is None:
            variants["liger"] = adapt(fused_ops.IMPLEMENTATIONS[op]["liger"])
        for name, fn in variants.items():

            def measure(name=name, fn=fn):
                args = [t.detach().clone().requires_grad_() if i < 2 else t for i, t in enumerate(inputs)]
                grads = [g_.to(dtype) for g_ in grads_out]

                def fwd_bwd():
                    for a in args[:2]:
                        a.grad = None
                    o = fn(*args)
                    torch.autograd.backward(o if isinstance(o, tuple) else (o,), grads)
                    return o

                o = fwd_bwd()
                o = o if isinstance(o, tuple) else (o,)
                err = max(rel_err(a.detach(), b) for a, b in zip(o, ref_outs))
                gerr = max(rel_err(a.grad, b) for a, b in zip(args[:2], ref_grads))
                ms = timed(fwd_bwd, device, warmup=3, reps=20)
                row(table, op=op, variant=name, fwd_bwd_ms=ms, floor_ms=floor_ms, x_floor=ms / floor_ms, err_out=err, err_grad=gerr)

            guarded(table, f"{op} {name}", measure)
    out["ops"] = table


SECTIONS = {"env": section_env, "ceilings": section_ceilings, "attention": section_attention, "loss": section_loss, "ops": section_ops}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--only", default=",".join(SECTIONS))
    p.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke test)")
    p.add_argument("--out", default=None, help="write all rows as JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    out: dict = {}
    for name in args.only.split(","):
        print(f"== {name}", flush=True)
        if name == "env":
            section_env(device, out)
        elif name == "ceilings":
            guarded(out.setdefault("errors", []), "ceilings", lambda: section_ceilings(device, out, args.quick))
        else:
            guarded(out.setdefault("errors", []), name, lambda name=name: SECTIONS[name](device, out, args.quick))
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1, default=str)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
