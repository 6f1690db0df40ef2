"""FlexAttention's kernel options on the program's own document layouts: which tile sizes make
forward + backward fastest for InternLM-7B's attention (32 heads x 128, batch 4 x 4096, bf16)?

    python bench/flex_options.py --out "$OUT"          # one H200, ~3 min (compiles run in parallel first)
    python bench/flex_options.py --cpu --variants default,fwd_128x128   # smoke test of this driver

Layouts: the first --batches batches of the README's program (`model=internlm_7b data.seq_len=4096
data.global_batch_size=4`, the bundled corpus; 4.5 documents per row on average, 1 to 64), so the
block masks hold the partial blocks the training step meets. q, k and v are [B, S, H, D] tensors
transposed to [B, H, S, D], as the model passes them.

1. Compile, all variants at once: one process per variant runs it once, filling inductor's cache
   (each compile is CPU work of ~20-60 s; autotuning variants benchmark their own candidates).
2. Time, one variant at a time in this process (the compiles now hit the cache): median of
   --reps forward + backward calls per layout, and forward alone; outputs and gradients are
   compared with the default variant's (bf16: differences of a few 1e-3 are rounding).
One JSON line per variant; the fastest is what attention_backends.py should ask for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from internlm.components.model import attention_backends  # noqa: E402
from internlm.document_layout import DocumentLayout  # noqa: E402
from internlm.planning.flops import document_lengths_from_positions  # noqa: E402

# name -> (torch.compile mode, flex kernel_options); fwd_/bwd_ keys reach one kernel only.
# torch's sm90 defaults for bf16, head dim 128: forward 128 x 64 tiles, 3 stages, 8 warps;
# backward BLOCK_M1/N1/M2/N2 = 64/128/128/64, 3 stages, 8 warps.
VARIANTS: dict[str, tuple[str | None, dict]] = {
    "default": (None, {}),
    "fwd_128x128": (None, {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_stages": 2, "fwd_num_warps": 8}),
    "fwd_64x128": (None, {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 128, "fwd_num_stages": 3, "fwd_num_warps": 4}),
    "fwd_tma": (None, {"fwd_USE_TMA": True}),
    "bwd_64x64": (None, {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64,
                         "bwd_num_stages": 3, "bwd_num_warps": 4}),
    "bwd_32x128": (None, {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 32,
                          "bwd_num_stages": 3, "bwd_num_warps": 4}),
    "bwd_64x128_s2": (None, {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
                             "bwd_num_stages": 2, "bwd_num_warps": 8}),
    "bwd_tma": (None, {"bwd_USE_TMA": True}),
    "autotune": ("max-autotune-no-cudagraphs", {}),
}


def program_positions(batches: int, cpu: bool) -> list[torch.Tensor]:
    """position_ids [4, 4096] of the program's first batches (the bundled corpus)."""
    if cpu:
        return [torch.tensor([list(range(40)) + list(range(24)), list(range(64))]),
                torch.tensor([list(range(10)) + list(range(30)) + list(range(24)), list(range(64))])][:batches]
    from internlm.api import compose
    from internlm import registry
    from internlm.planning import to_typed

    config = to_typed(compose(["model=internlm_7b", "data.seq_len=4096", "data.global_batch_size=4"]))
    data = registry.build(config.data, registry.build(config.tokenizer))
    loader = iter(data.train_loader(micro_batch_size=4, dp_rank=0, dp_size=1, seed=config.trainer.seed))
    return [next(loader).position_ids for _ in range(batches)]


def block_mask(positions: torch.Tensor, device):
    """The block mask the program's flex backend builds for these rows (attention_backends.py)."""
    layout = DocumentLayout.from_positions(positions.to(device))
    attention_backends.BACKENDS["flex"].prepare(layout)
    return layout.cache["flex_block_mask"]


def run_variant(name: str, layouts, shape, device, reps: int, reference: dict | None) -> dict:
    from torch.nn.attention.flex_attention import flex_attention

    mode, options = VARIANTS[name]
    torch._dynamo.reset()
    kernel = torch.compile(flex_attention, dynamic=False, mode=mode) if device.type == "cuda" else flex_attention
    batch, seq, heads, dim = shape
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, grad = (torch.randn(batch, seq, heads, dim, generator=g).to(device, dtype) for _ in range(4))
    masks = [block_mask(positions, device) for positions in layouts]

    def call(mask, backward: bool):
        qs, ks, vs = (t.detach().requires_grad_(backward) for t in (q, k, v))
        kwargs = {"kernel_options": options} if options else {}
        out = kernel(qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2), block_mask=mask, scale=dim ** -0.5, **kwargs)
        out = out.transpose(1, 2)
        if backward:
            out.backward(grad)
            return out, (qs.grad, ks.grad, vs.grad)
        return out, None

    t0 = time.time()
    out, grads = call(masks[0], device.type == "cuda")  # FlexAttention has no backward on the CPU
    grads = grads or ()
    first_s = time.time() - t0
    result = {"variant": name, "mode": mode, "options": options, "first_call_s": round(first_s, 1)}
    if reference is not None:
        result["max_abs_diff"] = max(
            (a.float() - b.float()).abs().max().item() for a, b in zip((out, *grads), reference["tensors"])
        )
    else:
        result["tensors"] = [t.detach() for t in (out, *grads)]
    if device.type != "cuda":
        return result
    fwd_bwd, fwd = [], []
    for mask in masks:
        for backward, times in ((True, fwd_bwd), (False, fwd)):
            for _ in range(2):
                call(mask, backward)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for _ in range(reps):
                start.record()
                if backward:
                    call(mask, True)
                else:
                    with torch.no_grad():
                        call(mask, False)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
    result |= {"fwd_bwd_ms": round(statistics.median(fwd_bwd), 3), "fwd_ms": round(statistics.median(fwd), 3),
               "bwd_ms": round(statistics.median(fwd_bwd) - statistics.median(fwd), 3)}
    return result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/flex_out"))
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--compile-timeout", type=float, default=240)
    p.add_argument("--one", default=None, help="(internal) compile and run one variant once, then exit")
    args = p.parse_args()
    device = torch.device("cpu" if args.cpu else "cuda")
    shape = (2, 64, 2, 16) if args.cpu else (4, 4096, 32, 128)
    names = args.variants.split(",")
    if args.one:
        run_variant(args.one, program_positions(1, args.cpu), shape, device, 1, None)
        return 0
    os.makedirs(args.out, exist_ok=True)
    layouts = program_positions(args.batches, args.cpu)
    docs = [len(document_lengths_from_positions([row])) for positions in layouts for row in positions.tolist()]
    print(json.dumps({"layouts": len(layouts), "docs_per_row": docs, "torch": torch.__version__}), flush=True)
    if not args.cpu:  # fill the compile cache, all variants at once
        procs = [(n, subprocess.Popen([sys.executable, __file__, "--one", n], cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=open(f"/tmp/flex_compile_{n}.log", "w"))) for n in names]
        t0 = time.time()
        for n, proc in procs:
            try:
                rc = proc.wait(timeout=max(5.0, args.compile_timeout - (time.time() - t0)))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "timeout"
            print(json.dumps({"compiled": n, "rc": rc, "after_s": round(time.time() - t0)}), flush=True)
    rows, reference = [], None
    with open(os.path.join(args.out, "flex_options.jsonl"), "w") as f:
        for name in names:
            try:
                result = run_variant(name, layouts, shape, device, args.reps, reference)
            except Exception as exc:  # an option set the kernel refuses: report it, go on
                result = {"variant": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if name == "default" and "tensors" in result:
                reference = {"tensors": result.pop("tensors")}
            result.pop("tensors", None)
            rows.append(result)
            print(json.dumps(result), flush=True)
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
