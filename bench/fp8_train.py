"""bf16 vs fp8 training on one GPU (issue 16): step throughput, loss parity on real text, and the
start-up time with a cold or a warm compile cache.

Builds the Transformer as bench/train_throughput.py does (same shapes, packed documents, chunked
loss, fused AdamW, grad clipping, torch.compile per block; fp32 parameters under bf16 autocast),
then converts the blocks' linear layers with internlm/runtime/float8.py (`--matmul`). The last
line is `RESULT {json}`: median step time, tokens/s, MFU, peak memory, the seconds from process
start to the end of the first step, and (with --loss-log) every step's loss.

    # throughput at the 16-layer InternLM-7B shape, random packed documents
    python bench/fp8_train.py --matmul fp8_tensorwise --layers 16 --seq 4096 --batch 4 --warmup 4 --steps 10
    # loss parity on real text (bench/fp8_corpus.py), a ~1B model, 300 steps
    python bench/fp8_train.py --matmul fp8_rowwise --shape 1b --tokens .fp8data/tokens.npy --seq 2048 \
        --batch 4 --warmup 0 --steps 300 --lr 3e-4 --loss-log $OUT/parity_fp8_rowwise.json
    # CPU smoke test: fp8 casts emulated, no compile
    python bench/fp8_train.py --device cpu --tiny --matmul fp8_tensorwise --emulate

The compile cache: inductor's FX-graph and autograd caches and Triton's kernel cache live under
TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR; a second run of the same config with the same folders
skips most compilation (`first_step_s` in the result).
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # before torch is imported: start-up includes the imports

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import train_throughput as tt  # noqa: E402  (bench/train_throughput.py: shapes, data, loss, optimizer)

from internlm.batch import IGNORE_INDEX, cu_seqlens_from_positions  # noqa: E402
from internlm.components.model.fused_ops import KernelsConfig, apply_kernels, resolve_kernels  # noqa: E402
from internlm.components.model.transformer import Transformer  # noqa: E402
from internlm.runtime import float8  # noqa: E402
from internlm.runtime.activation_checkpointing import apply_activation_checkpointing  # noqa: E402
from internlm.runtime.torch_compile import compile_blocks, compile_stats  # noqa: E402

SHAPES = {  # --shape: hidden, layers, heads, ffn, vocab (the 1B uses the 32k tokenizer of fp8_corpus.py)
    "1b": dict(hidden=2048, layers=16, heads=16, ffn=5632, vocab=32000),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # no prefix matching: --lr is not --lr-warmup
    p.add_argument("--matmul", default="bf16", choices=float8.MATMULS)
    p.add_argument("--emulate", action="store_true", help="fp8 casts with high-precision matmuls (CPU tests)")
    p.add_argument("--fast-accum", default="forward", choices=float8.FAST_ACCUM, help="model.kernels.fp8_fast_accum")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None)
    p.add_argument("--tokens", default=None, help="a .npy of real text tokens (bench/fp8_corpus.py); default: random")
    p.add_argument("--lr-warmup", type=int, default=30, help="linear lr warm-up steps (real-text runs)")
    p.add_argument("--loss-log", default=None, help="write every step's loss to this JSON file")
    mine, rest = p.parse_known_args(argv)
    # The shape's sizes go first, so that sizes given on the command line (--layers 2) win.
    shape = [f"--{key}={value}" for key, value in SHAPES[mine.shape].items()] if mine.shape else []
    args = tt.parse_args(shape + rest)
    for key, value in vars(mine).items():
        setattr(args, key, value)
    return args


class TextRows:
    """Windows of seq+1 tokens from a flat array, in a fixed shuffled order (the same for every
    run), position ids restarting after each EOS (packed documents), no loss across documents."""

    def __init__(self, path: str, args, eos: int = 2):
        import numpy as np

        self.tokens = torch.from_numpy(np.load(path).astype(np.int64))
        if int(self.tokens.max()) >= args.vocab:
            raise SystemExit(f"{path} holds token ids >= the model's vocabulary {args.vocab}")
        self.seq, self.batch, self.eos = args.seq, args.batch, eos
        windows = (self.tokens.numel() - 1) // (args.seq + 1)
        self.order = torch.randperm(windows, generator=torch.Generator().manual_seed(0))

    def __call__(self, step: int) -> dict:
        picks = [self.order[(step * self.batch + r) % len(self.order)] for r in range(self.batch)]
        rows = torch.stack([self.tokens[int(w) * (self.seq + 1) :][: self.seq + 1] for w in picks])
        input_ids, labels = rows[:, :-1], rows[:, 1:].clone()
        positions = torch.empty_like(input_ids)
        for r in range(self.batch):  # restart after every EOS
            starts = torch.zeros(self.seq, dtype=torch.long)
            ends = (input_ids[r] == self.eos).nonzero().flatten() + 1
            starts[ends[ends < self.seq]] = ends[ends < self.seq]
            positions[r] = torch.arange(self.seq) - torch.cummax(starts, 0).values
        ends = torch.zeros_like(positions, dtype=torch.bool)
        ends[:, :-1] = positions[:, 1:] == 0  # a document's last token: its label is the next document
        labels[ends] = IGNORE_INDEX
        cu_seqlens, max_seqlen = cu_seqlens_from_positions(positions)
        return dict(input_ids=input_ids, labels=labels, position_ids=positions, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)


def run(args) -> dict:
    device = torch.device(args.device)
    if not args.emulate:
        float8.check_matmul(args.matmul, float8.device_capability(device))
    torch.manual_seed(0)
    cfg = tt.model_config(args)
    with torch.device(device):
        model = Transformer(cfg)
    kernels = resolve_kernels(KernelsConfig(args.kernels, args.kernels, args.kernels), device)
    apply_kernels(model, kernels)
    converted = float8.convert_to_float8(model, args.matmul, emulate=args.emulate, fast_accum=args.fast_accum)
    apply_activation_checkpointing(model, args.ac, args.ac_every)
    if args.compile:
        compile_blocks(model)
    loss_fn = tt.build_loss(args)
    optimizer = tt.Optimizer(model, args)
    schedule = None
    if args.tokens:
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, lambda s: min(1.0, (s + 1) / max(1, args.lr_warmup)))
        rows = TextRows(args.tokens, args)
        next_batch = lambda i: {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in rows(i).items()}  # noqa: E731
        doc_lengths = []
    else:
        layouts, doc_lengths = tt.packed_layouts(args, device)
        next_batch = tt.FreshTokens(args, device, layouts)  # fresh random tokens over four cycling document layouts

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "autocast")

    def step(batch) -> torch.Tensor:
        loss = tt.forward_backward(model, loss_fn, batch, autocast)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    setup_s = time.perf_counter() - PROCESS_START
    times, losses, graphs_after_warmup, first_step_s, first_step_done = [], [], 0, None, None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            graphs_after_warmup = compile_stats()["unique_graphs"]
        tt.sync(device)
        start = time.perf_counter()
        loss = step(next_batch(i))
        tt.sync(device)
        elapsed = time.perf_counter() - start
        if i == 0:
            first_step_s, first_step_done = elapsed, time.perf_counter() - PROCESS_START
        losses.append(float(loss))
        if i >= args.warmup:
            times.append(elapsed)
        if i < args.warmup + 3 or i % 50 == 0 or i == args.warmup + args.steps - 1:
            print(f"step {i:3d}  {elapsed * 1e3:8.1f} ms  loss {losses[-1]:.4f}", flush=True)

    tokens = args.batch * args.seq
    step_s = statistics.median(times[1:] if len(times) > 20 else times)  # a long run: the first timed step may recompile
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = tt.flops.peak_flops(name, args.peak_tflops)
    ours = tt.flops.flops_per_token(cfg, args.seq, causal=True)
    stats = compile_stats()
    result = {
        "tag": args.tag,
        "matmul": args.matmul,
        "fast_accum": args.fast_accum,
        "fp8_layers": len(converted),
        "device": name,
        "layers": args.layers,
        "shape": f"h{args.hidden} L{args.layers} heads{args.heads} ffn{args.ffn} vocab{args.vocab}",
        "params": model.num_parameters(),
        "seq": args.seq,
        "batch": args.batch,
        "data": "real text" if args.tokens else "random packed documents",
        "ac": args.ac,
        "compile": args.compile,
        "loss": args.loss,
        "step_ms": step_s * 1e3,
        "step_ms_spread": [min(times) * 1e3, max(times) * 1e3],
        "tokens_per_device_per_s": tokens / step_s,
        "mfu_causal_bf16_peak": tt.flops.mfu(tokens / step_s, ours, peak),
        "flops_per_token": ours,
        "mean_attended_keys": tt.flops.mean_attended_keys(doc_lengths) if doc_lengths else None,
        "peak_alloc_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None,
        "setup_s": setup_s,
        "first_step_s": first_step_s,
        "to_first_step_done_s": first_step_done,
        "loss_first_last": [losses[0], losses[-1]],
        "loss_mean_last50": statistics.fmean(losses[-50:]),
        "graphs": stats["unique_graphs"],
        "graphs_added_after_warmup": stats["unique_graphs"] - graphs_after_warmup,
        "recompiles": stats["recompiles"],
        "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        "torch": torch.__version__,
    }
    if args.loss_log:
        with open(args.loss_log, "w") as f:
            json.dump(dict(result, losses=losses), f)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(
        f"{args.matmul}: {result['tokens_per_device_per_s']:,.0f} tok/s, step {result['step_ms']:.1f} ms, "
        f"first step done {result['to_first_step_done_s']:.1f} s after start, peak {result['peak_alloc_gib'] or 0:.1f} GiB, "
        f"loss {result['loss_first_last'][0]:.3f} -> {result['loss_first_last'][1]:.3f}"
    )
    print("RESULT " + json.dumps(result), flush=True)
    tt.append_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
