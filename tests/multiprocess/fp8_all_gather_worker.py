"""Two gloo processes train a small Transformer with torchao's emulated fp8 linears under FSDP2,
gathering the weights in fp8 or not (tests/multiprocess/test_fp8_all_gather.py runs it).

    python fp8_all_gather_worker.py OUT.json PORT 1|0

Writes rank 0's losses (averaged over the ranks), the bytes and dtype of every FSDP2 all-gather
input, and the parameter counts a block unit gathers, so the test can hand-compute the bytes."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

WORLD = 2
STEPS = 3


def worker(rank: int, out: str, port: int, fp8_gather: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.device_mesh import init_device_mesh

    from internlm.runtime import float8, parallelize
    from tests.runtime.test_float8 import small_model  # the fp8 tests' model: hidden 64, 2 blocks

    model = small_model(ffn=128)
    converted = float8.convert_to_float8(model, "fp8_tensorwise", emulate=True, fp8_all_gather=fp8_gather)
    block = model.layers["0"]
    fp8_weights = sum(block.get_submodule(name.split(".", 2)[2]).weight.numel() for name in converted if name.startswith("layers.0."))
    block_params = sum(p.numel() for p in block.parameters())
    gathered = []
    all_gather = dist.all_gather_single  # what FSDP2's default all-gather calls

    def recording_all_gather(output, input, *args, **kwargs):
        gathered.append([str(input.dtype), input.numel() * input.element_size()])
        return all_gather(output, input, *args, **kwargs)

    dist.all_gather_single = recording_all_gather
    parallelize.apply_fsdp(model, init_device_mesh("cpu", (WORLD,)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    hook = float8.register_scale_precompute(model, optimizer)
    torch.manual_seed(100 + rank)  # each rank its own rows
    losses = []
    for _ in range(STEPS):
        ids = torch.randint(0, 256, (2, 32))
        loss = model(ids, labels=ids) / ids.numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item() / WORLD)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"losses": losses, "gathered": gathered, "scale_hook": hook is not None,
                       "block_params": block_params, "block_fp8_weights": fp8_weights}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    out, port, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    mp.spawn(worker, args=(out, port, flag), nprocs=WORLD)
