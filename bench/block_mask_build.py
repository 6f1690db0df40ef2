"""FlexAttention's per-forward block mask, two builders on the program's own layouts:
create_block_mask (the mask function on every query/key pair, compiled) against
document_block_mask.py (the tiles classified from the documents' ids at tile edges).

    python bench/block_mask_build.py            # one H200, ~1 min (the first call compiles)
    python bench/block_mask_build.py --cpu      # smoke test: CPU, small rows, no timing claims

Layouts: the first --batches batches of the README's program (batch 4 x 4096, the bundled corpus).
Per builder: host ms (wall time of the call, which the training step's host spends before it can
queue the first block) and device ms (CUDA events around it), medians over --reps calls per
layout; and whether the two masks are equal, tile by tile. One JSON line per builder.
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
from internlm.components.model import attention_backends as ab  # noqa: E402
from internlm.components.model import document_block_mask as dbm  # noqa: E402
from internlm.document_layout import DocumentLayout  # noqa: E402


def builders(device):
    from torch.nn.attention import flex_attention as flex

    compiled = device.type == "cuda"

    def create(ids):
        batch, seq = ids.shape
        return flex.create_block_mask(ab._document_mask_mod(ids), batch, None, seq, seq, device=ids.device, _compile=compiled)

    def tiles(ids):
        return dbm.document_block_mask(ids, flex.BlockMask, ab._document_mask_mod(ids))

    return {"create_block_mask": create, "document_tiles": tiles}


def time_builder(build, layouts, device, reps: int) -> dict:
    host, gpu = [], []
    for ids in layouts:
        build(ids)  # compile / warm
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            build(ids)
            host.append((time.perf_counter() - t0) * 1e3)
            if device.type == "cuda":
                end.record()
                end.synchronize()
                gpu.append(start.elapsed_time(end))
    return {"host_ms": round(statistics.median(host), 3), "device_ms": round(statistics.median(gpu), 3) if gpu else None}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.cpu:  # whole tiles (512 tokens), which program_positions' CPU rows (64) are not
        positions = [torch.tensor([list(range(300)) + list(range(212)), list(range(512))])]
    else:
        positions = program_positions(args.batches, cpu=False)
    layouts = [DocumentLayout.from_positions(pos.to(device)).document_ids for pos in positions]
    found = builders(device)
    equal = all(torch.equal(found["create_block_mask"](ids).to_dense(), found["document_tiles"](ids).to_dense())
                for ids in layouts)
    for name, build in found.items():
        row = {"builder": name, "layouts": len(layouts), "shape": list(layouts[0].shape), "equal_masks": equal}
        print(json.dumps(row | time_builder(build, layouts, device, args.reps)), flush=True)
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
