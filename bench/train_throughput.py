"""Training throughput of OUR Transformer at the InternLM-7B layer shape, on one device.

Builds internlm/components/model/transformer.py directly (no Hydra config composition: the GPU
machine's Python has no hydra unless carried), feeds packed documents (random document lengths,
position ids restarting per document), and times full optimizer steps: forward, loss, backward,
grad clipping, fused AdamW. Prints tokens/device/s, MFU (ours: 6 x matmul params + causal
attention; and torchtitan's convention: full s^2 attention), InternLM-formula TFLOPS and peak
memory, as the median over the steps after warm-up. The last line is `RESULT {json}`.

    python bench/train_throughput.py --layers 16 --batch 2 --seq 4096 --ac none --attention auto
    python bench/train_throughput.py --device cpu --tiny     # smoke test, seconds

Mixed precision (`--precision`):
  autocast  fp32 parameters, grads and AdamW state; matmuls in bf16 under torch.autocast.
            What torchtitan does on one GPU (FSDP's MixedPrecisionPolicy is the same scheme
            sharded); the default.
  bf16      bf16 parameters and grads, fp32 master weights in the optimizer (copied back after
            each step): no per-step weight casts, a bf16 residual stream.
  fp32      no mixed precision (CPU smoke tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from internlm.batch import IGNORE_INDEX, cu_seqlens_from_positions  # noqa: E402
from internlm.components.model import attention_backends  # noqa: E402
from internlm.components.model.attention import AttentionConfig  # noqa: E402
from internlm.components.model.fused_ops import KernelsConfig, apply_kernels, resolve_kernels  # noqa: E402
from internlm.components.model.mlp import MLPConfig  # noqa: E402
from internlm.components.model.rotary import RotaryConfig, RotaryEmbedding  # noqa: E402
from internlm.components.model.transformer import Transformer, TransformerConfig  # noqa: E402
from internlm.planning import flops  # noqa: E402
from internlm.runtime.activation_checkpointing import apply_activation_checkpointing  # noqa: E402
from internlm.runtime.torch_compile import compile_blocks, compile_stats  # noqa: E402

FULL_LAYERS = 32  # InternLM-7B


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--layers", type=int, default=FULL_LAYERS, help="blocks (InternLM-7B has 32; cut to fit one GPU)")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--ffn", type=int, default=11008)
    p.add_argument("--vocab", type=int, default=103168)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--batch", type=int, default=2, help="rows per step (one micro batch)")
    p.add_argument("--mean-doc", type=float, default=1024.0, help="mean document length; 0 = one document per row")
    p.add_argument("--steps", type=int, default=20, help="timed steps after warm-up")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--attention", default="auto", help="model.attention.backend")
    p.add_argument("--loss", default="chunked", choices=["cross_entropy", "chunked", "liger"])
    p.add_argument("--chunk-tokens", type=int, default=2048, help="chunked loss: tokens per chunk")
    p.add_argument("--ac", default="none", choices=["none", "full", "selective", "op"], help="activation checkpointing")
    p.add_argument("--ac-every", type=int, default=1)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument("--kernels", default="auto", help="auto | torch | liger for RMSNorm, SwiGLU and rotary alike")
    p.add_argument("--precision", default=None, choices=["autocast", "bf16", "fp32"], help="default: autocast on CUDA")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device peak for MFU")
    p.add_argument("--tiny", action="store_true", help="a tiny shape for CPU smoke tests")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--tag", default="", help="a label carried into the result")
    args = p.parse_args(argv)
    if args.tiny:
        args.layers, args.hidden, args.heads, args.ffn, args.vocab = 2, 64, 4, 128, 512
        args.seq, args.steps, args.warmup, args.mean_doc = 64, 3, 1, 16
    if args.compile is None:
        args.compile = args.device.startswith("cuda")
    if args.precision is None:
        args.precision = "autocast" if args.device.startswith("cuda") else "fp32"
    return args


def model_config(args) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        attention=AttentionConfig(
            num_heads=args.heads,
            num_kv_heads=args.kv_heads,
            qkv_bias=True,
            out_bias=True,
            backend=args.attention,
            rotary=RotaryConfig(base=10000.0, max_position=args.seq),
        ),
        mlp=MLPConfig(intermediate_size=args.ffn),
    )


def packed_batch(args, generator: torch.Generator) -> dict:
    """Rows of concatenated documents with exponential lengths (mean --mean-doc), position ids
    restarting at 0 per document, labels ignored at each document's last token."""
    rows = []
    for _ in range(args.batch):
        positions: list[int] = []
        while len(positions) < args.seq:
            if args.mean_doc <= 0:
                length = args.seq
            else:
                u = torch.rand((), generator=generator).item()
                length = max(1, int(-args.mean_doc * math.log(1.0 - u)))
            positions.extend(range(length))
        rows.append(positions[: args.seq])
    position_ids = torch.tensor(rows, dtype=torch.long)
    input_ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=generator)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq), generator=generator)
    ends = torch.zeros_like(position_ids, dtype=torch.bool)
    ends[:, :-1] = position_ids[:, 1:] == 0
    labels[ends] = IGNORE_INDEX
    cu_seqlens, max_seqlen = cu_seqlens_from_positions(position_ids)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "cu_seqlens": cu_seqlens,
        "max_seqlen": max_seqlen,
        "doc_lengths": flops.document_lengths_from_positions(rows),
    }


def packed_layouts(args, device: torch.device, count: int = 4) -> tuple[list[dict], list[int]]:
    """`count` packed batches on `device` (their document layouts cycle, a new one every step) and
    all their document lengths."""
    generator = torch.Generator().manual_seed(1)
    batches = [packed_batch(args, generator) for _ in range(count)]
    lengths = [n for b in batches for n in b.pop("doc_lengths")]
    return [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in batches], lengths


class FreshTokens:
    """Batch i: layout i % len(layouts) with new random tokens and labels (a repeated batch is
    memorised within a few steps and says nothing about training); unlabelled positions stay so."""

    def __init__(self, args, device: torch.device, layouts: list[dict]):
        self.vocab, self.layouts = args.vocab, layouts
        self.generator = torch.Generator(device=device).manual_seed(2)

    def __call__(self, i: int) -> dict:
        batch = self.layouts[i % len(self.layouts)]
        device = batch["input_ids"].device
        ids = torch.randint(0, self.vocab, batch["input_ids"].shape, device=device, generator=self.generator)
        labels = torch.randint(0, self.vocab, batch["labels"].shape, device=device, generator=self.generator)
        return dict(batch, input_ids=ids, labels=labels.masked_fill(batch["labels"] == IGNORE_INDEX, IGNORE_INDEX))


def forward_backward(model, loss_fn, batch: dict, autocast) -> torch.Tensor:
    """Mean loss over the labelled tokens, backward done; the detached loss."""
    with autocast:
        hidden = model.hidden_states(
            batch["input_ids"], batch["position_ids"], cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"]
        )
        loss_sum, count = loss_fn(hidden.flatten(0, 1), model.lm_head.weight, batch["labels"].flatten())
        loss = loss_sum / count
    loss.backward()
    return loss.detach()


def build_loss(args):
    from internlm.components.loss.chunked import ChunkedConfig, ChunkedCrossEntropy
    from internlm.components.loss.cross_entropy import CrossEntropy
    from internlm.components.loss.liger import LigerFusedCrossEntropy

    if args.loss == "chunked":
        return ChunkedCrossEntropy(ChunkedConfig(chunk_tokens=args.chunk_tokens, compile=args.compile))
    if args.loss == "liger":
        return LigerFusedCrossEntropy()
    loss = CrossEntropy()
    # As torchtitan does: the float upcast and cross-entropy compiled together.
    return torch.compile(loss) if args.compile else loss


def decay_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """The project's AdamW grouping: decay on matrices, none on biases and norm scales."""
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


class Optimizer:
    """Fused AdamW (InternLM's defaults) with grad clipping; with bf16 parameters, the update runs
    on fp32 master copies that are copied back into the bf16 parameters after each step."""

    def __init__(self, model: torch.nn.Module, args):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = None
        fused = args.device.startswith("cuda")
        targets = self.params
        if args.precision == "bf16":
            self.master = [p.detach().float() for p in self.params]
            for m in self.master:
                m.grad = torch.zeros_like(m)
            targets = self.master
        self.targets = targets
        self.optimizer = torch.optim.AdamW(
            decay_groups(targets, 0.01), lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused or None
        )

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        if self.master is not None:
            torch._foreach_copy_([m.grad for m in self.master], [p.grad for p in self.params])
        norm = torch.nn.utils.clip_grad_norm_(self.targets, 1.0, foreach=True)
        self.optimizer.step()
        if self.master is not None:
            torch._foreach_copy_(self.params, self.master)
        for p in self.params:
            p.grad = None
        return norm


def run(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = model_config(args)
    with torch.device(device):
        model = Transformer(cfg)
    if args.precision == "bf16":
        model.to(torch.bfloat16)
        for module in model.modules():  # rotary frequencies stay fp32: bf16 would shift the angles
            if isinstance(module, RotaryEmbedding):
                module.inv_freq = torch.empty(module.inv_freq.shape, device=device, dtype=torch.float32)
                module.reset_parameters()
    kernels = resolve_kernels(KernelsConfig(args.kernels, args.kernels, args.kernels), device)
    apply_kernels(model, kernels)
    apply_activation_checkpointing(model, args.ac, args.ac_every)
    if args.compile:
        compile_blocks(model)
    loss_fn = build_loss(args)
    optimizer = Optimizer(model, args)
    backend = attention_backends.resolve(args.attention, device)

    layouts, doc_lengths = packed_layouts(args, device)
    next_batch = FreshTokens(args, device, layouts)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "autocast")

    def step(batch) -> torch.Tensor:
        loss = forward_backward(model, loss_fn, batch, autocast)
        optimizer.step()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    graphs_after_warmup = None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            graphs_after_warmup = compile_stats()["unique_graphs"]
        sync(device)
        start = time.perf_counter()
        loss = step(next_batch(i))
        sync(device)
        elapsed = time.perf_counter() - start
        losses.append(float(loss))
        if i >= args.warmup:
            times.append(elapsed)
        print(f"step {i:3d}  {elapsed * 1e3:8.1f} ms  loss {losses[-1]:.4f}", flush=True)

    tokens = args.batch * args.seq
    step_s = statistics.median(times)
    tps = tokens / step_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = flops.peak_flops(name, args.peak_tflops)
    ours = flops.flops_per_token(cfg, args.seq, causal=True)
    titan = flops.flops_per_token(cfg, args.seq, causal=False)
    doc_keys = flops.mean_attended_keys(doc_lengths)
    stats = compile_stats()
    result = {
        "tag": args.tag,
        "device": name,
        "layers": args.layers,
        "shape": f"h{args.hidden} heads{args.heads} ffn{args.ffn} vocab{args.vocab}",
        "params": model.num_parameters(),
        "seq": args.seq,
        "batch": args.batch,
        "mean_doc": args.mean_doc,
        "attention": backend.name,
        "loss": args.loss,
        "ac": args.ac if args.ac != "selective" else f"selective/{args.ac_every}",
        "compile": args.compile,
        "precision": args.precision,
        "kernels": kernels.names,
        "step_ms": step_s * 1e3,
        "step_ms_spread": [min(times) * 1e3, max(times) * 1e3],
        "tokens_per_device_per_s": tps,
        "mfu_causal": flops.mfu(tps, ours, peak),
        "mfu_full_attention": flops.mfu(tps, titan, peak),
        "mfu_doc_masked": flops.mfu(tps, flops.flops_per_token(cfg, args.seq, mean_context=doc_keys), peak),
        "internlm_tflops": flops.internlm_tflops(cfg, args.seq, tps, checkpointing=args.ac != "none"),
        "peak_alloc_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None,
        "loss_first_last": [losses[0], losses[-1]],
        "graphs": stats["unique_graphs"],
        "graphs_added_after_warmup": stats["unique_graphs"] - (graphs_after_warmup or 0),
        "recompiles": stats["recompiles"],
        "torch": torch.__version__,
    }
    return result


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report(result: dict) -> None:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    cut = "" if result["layers"] == FULL_LAYERS else f" (depth cut from {FULL_LAYERS} to fit one device)"
    print(f"model: InternLM-7B layer shape, {result['layers']} layers{cut}, {result['params'] / 1e9:.2f}B params")
    print(
        f"{result['device']}: seq {result['seq']} x batch {result['batch']}, attention {result['attention']}, "
        f"loss {result['loss']}, AC {result['ac']}, compile {result['compile']}, precision {result['precision']}"
    )
    print(
        f"tokens/device/s {result['tokens_per_device_per_s']:,.0f}  step {result['step_ms']:.1f} ms  "
        f"MFU causal {pct(result['mfu_causal'])} (full-s^2 convention {pct(result['mfu_full_attention'])})  "
        f"InternLM TFLOPS {result['internlm_tflops']:.1f}  peak alloc "
        + ("n/a" if result["peak_alloc_gib"] is None else f"{result['peak_alloc_gib']:.1f} GiB")
        + f"  graphs {result['graphs']} (+{result['graphs_added_after_warmup']} after warm-up)"
    )
    print("RESULT " + json.dumps(result), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    report(result)
    append_json(args.json, result)
    return 0


def append_json(path: str | None, result: dict) -> None:
    """One JSON line per run appended to `path` (--json), when given."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
