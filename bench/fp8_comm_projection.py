"""bench/comm_model.py at InternLM's 16k tokens per GPU per step, with fp32 and bf16 gradient
reductions (`strategy.reduce_dtype`), for bf16 and fp8 compute. A projection, NOT a measurement.

Calibration (bench/RESULTS.md): the full 7B on 2 H200s at 4 x 4096 tokens per GPU ran 12,025
tokens/GPU/s, 0.99 of the one-GPU rate, so inside one node the step is compute-bound: one GPU's
compute-only rate is taken as 12,025 in bf16, and 1.337x that (the measured fp8-tensorwise gain
at 16 layers) in fp8.

    python bench/fp8_comm_projection.py --markdown
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import comm_model as cm  # noqa: E402

BF16_TOKENS_PER_S = 12_025.0  # measured: full 7B, 2x H200, batch 4 x 4096 per GPU
FP8_GAIN = 1.337  # measured: 16-layer 7B shape, fp8_tensorwise over bf16, one H200


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    net, base = cm.PRESETS["h200"]
    base = replace(base, tokens_per_gpu_step=16_384, micro_batches=1, tokens_per_s_1gpu=BF16_TOKENS_PER_S)
    layouts = [layout for layout in cm.LAYOUTS if layout.name.startswith(("hybrid_zero shard 8, ZeRO-3", "fsdp"))]
    head = ["GPUs"] + [f"{compute} compute, {reduce} reduce, {layout.name}" for compute in ("bf16", "fp8") for reduce in ("fp32", "bf16") for layout in layouts]
    rows = []
    for gpus in cm.GPU_COUNTS:
        row = [str(gpus)]
        for compute, rate in (("bf16", BF16_TOKENS_PER_S), ("fp8", BF16_TOKENS_PER_S * FP8_GAIN)):
            for reduce_bytes in (4, 2):
                work = replace(base, tokens_per_s_1gpu=rate, reduce_bytes=reduce_bytes)
                for layout in layouts:
                    r = cm.project(layout, gpus, work, net)
                    row.append(f"{r['tokens_per_gpu_s']:,.0f} ({100 * r['efficiency']:.1f}%)")
        rows.append(row)
    print(f"PROJECTION: {base} (tokens_per_s_1gpu {BF16_TOKENS_PER_S:,.0f} bf16 / {BF16_TOKENS_PER_S * FP8_GAIN:,.0f} fp8)\n{net}\n")
    print(cm._render(head, rows, args.markdown))


if __name__ == "__main__":
    main()
