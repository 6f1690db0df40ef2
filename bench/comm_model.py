"""Communication model of the data-parallel layouts, and a PROJECTION of per-GPU throughput and
scaling efficiency for InternLM-7B from 1 to 1024 GPUs. Nothing here is measured; the inputs are
parameters (defaults: measured figures where we have them, stated assumptions otherwise).

    python bench/comm_model.py                      # our H200 numbers, 4x100 Gb/s between nodes
    python bench/comm_model.py --preset a100-internlm   # InternLM's cluster, to hold against its table
    python bench/comm_model.py --markdown           # the tables for bench/RESULTS.md

Per optimizer step, m micro batches, P parameters, bf16 gathers (2 bytes), fp32 reductions (4):

  ddp              all-reduce of the fp32 gradients over all N ranks, once per step.
  hybrid_zero S    FSDP2 units (embedding, 32 blocks, root = 34): per micro batch an all-gather of
  (fsdp: S = N)    the bf16 weights in forward and, ZeRO-3 style, again in backward, and a
                   reduce-scatter of fp32 gradients inside the shard group of S ranks; once per
                   step an all-reduce of each rank's gradient shard across the N / S replicas.

Collectives (NCCL-style), a tensor of M bytes over a group with q ranks on each of k nodes:
  ring all-gather / reduce-scatter: each rank sends (n-1)/n M; inside a node at the NVLink bus
      bandwidth, across nodes each node's NICs carry (k-1)/k M; latency (n-1) hops.
  all-reduce: twice the bytes; latency of a tree, 2 log2(n) hops.
  Collectives run at once by the ranks of one node (the replicas' all-reduces, one per local
  rank) share that node's NICs.
Step time: FSDP2 prefetching overlaps communication with compute; the first gather and the last
reduction are exposed:  t_step = max(t_compute, t_comm) + t_comm / units. DDP's bucketed
all-reduce overlaps only the backward (~2/3 of the compute): t_step = max(t, t / 3 + t_comm).
`exposed` (default 0) adds that share of the overlapped communication time to the step: compute
slowed by concurrent communication kernels, stragglers, imperfect prefetch, lumped into one number
that bench/fp8_comm_projection.py fits to InternLM's measured table. Not modelled otherwise:
the optimizer step.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

GB = 1e9


@dataclass(frozen=True)
class Network:
    gpus_per_node: int = 8
    intra_busbw: float = 354 * GB  # bytes/s, NCCL bus bandwidth inside a node (all-reduce, 1 GiB, 4x H200: measured)
    node_bandwidth: float = 4 * 100e9 / 8  # bytes/s leaving a node: 4x100 Gb/s (InternLM's cluster)
    inter_efficiency: float = 0.8  # share of the line rate NCCL reaches between nodes (assumed)
    alpha_intra: float = 3e-6  # seconds per ring hop inside a node (assumed)
    alpha_inter: float = 8e-6  # seconds per ring hop between nodes (assumed)
    exposed: float = 0.0  # share of the overlapped communication that still costs step time (interference; 0 = perfect overlap; fitted in fp8_comm_projection.py)


@dataclass(frozen=True)
class Workload:
    parameters: int = 7_321_948_160  # InternLM-7B
    units: int = 34  # FSDP2 units: embedding, 32 blocks, root (norm + head)
    gather_bytes: int = 2  # bf16 weights gathered (MixedPrecisionPolicy param_dtype)
    reduce_bytes: int = 4  # fp32 gradient reduction (reduce_dtype)
    # The replicas' exchange in another format (a what-if, nothing built): bytes per gradient element
    # sent in each of two ring phases (all-to-all of quantized shards, local sum, all-gather of the
    # quantized sum), e.g. 1 + 4/256 for fp8 with one fp32 scale per 256 values. None = an
    # all-reduce at reduce_bytes.
    replica_bytes: float | None = None
    tokens_per_gpu_step: int = 8192  # per optimizer step, all micro batches (weak scaling: fixed per GPU)
    micro_batches: int = 1
    tokens_per_s_1gpu: float = 11_000.0  # compute-only throughput of one GPU on the full 7B


@dataclass(frozen=True)
class Layout:
    name: str
    shard: int | None  # ranks per shard group; None = all data-parallel ranks (fsdp); 1 = ddp-like
    reshard_after_forward: bool = True  # ZeRO-3 (True) or ZeRO-2 (False)
    ddp: bool = False


@dataclass
class Cost:
    intra_bytes: float = 0.0  # bytes each rank sends over NVLink per step
    inter_bytes: float = 0.0  # bytes each node sends over its NICs per step, divided by its GPUs
    seconds: float = 0.0


def collective(cost: Cost, kind: str, n: int, per_node: int, size: float, count: int, concurrent: int, net: Network) -> None:
    """`count` collectives moving `size` bytes in total (the unsharded tensors) over a group of n
    ranks, `per_node` of them on each node; `concurrent` such groups run at once on every node.

    kind "gather" (all-gather or reduce-scatter, ring): each link carries (n-1)/n of the data;
    kind "all_reduce": twice that, tree latency. Inside one node the NVLink bus bandwidth applies
    (NVSwitch: groups do not slow each other); across nodes the slowest link is the node's NICs,
    shared by the concurrent groups."""
    if n == 1:
        return
    nodes = n // per_node
    factor, hops = ((n - 1) / n, n - 1) if kind == "gather" else (2 * (n - 1) / n, 2 * math.ceil(math.log2(n)))
    on_wire = factor * size
    if nodes == 1:
        cost.intra_bytes += on_wire
        cost.seconds += on_wire / net.intra_busbw + count * hops * net.alpha_intra
        return
    cost.inter_bytes += on_wire * concurrent / net.gpus_per_node  # this GPU's share of its node's traffic
    bandwidth = net.node_bandwidth * net.inter_efficiency / concurrent
    cost.seconds += on_wire / bandwidth + count * hops * net.alpha_inter


def step_communication(layout: Layout, gpus: int, work: Workload, net: Network) -> Cost:
    cost = Cost()
    node = net.gpus_per_node
    grads = work.parameters * work.reduce_bytes
    if layout.ddp:
        collective(cost, "all_reduce", gpus, min(gpus, node), grads, 1, 1, net)
        return cost
    shard = gpus if layout.shard is None else min(layout.shard, gpus)
    replicas = gpus // shard
    # the shard group: `shard` consecutive ranks
    gathers = work.micro_batches * (2 if layout.reshard_after_forward and shard > 1 else 1)
    weights = work.parameters * work.gather_bytes
    in_node = min(shard, node)
    collective(cost, "gather", shard, in_node, weights * gathers, work.units * gathers, 1, net)
    collective(cost, "gather", shard, in_node, grads * work.micro_batches, work.units * work.micro_batches, 1, net)
    # the replica group: ranks `shard` apart, each all-reducing its gradient shard, once per step
    replicas_in_node = max(1, node // shard) if replicas > 1 else 1
    if work.replica_bytes is None:
        collective(cost, "all_reduce", replicas, min(replicas_in_node, replicas), grads / shard, work.units, in_node, net)
        return cost
    quantized = work.parameters * work.replica_bytes / shard
    for _ in ("all-to-all", "all-gather"):  # each: every rank sends (n-1)/n of its shard, ring latency
        collective(cost, "gather", replicas, min(replicas_in_node, replicas), quantized, work.units, in_node, net)
    return cost


def state_gib(layout: Layout, gpus: int, work: Workload) -> float:
    """Weights, gradients and AdamW moments per GPU (fp32: 16 bytes a parameter), plus the bf16
    weights ZeRO-2 keeps gathered through the step; no activations."""
    if layout.ddp:
        return 16 * work.parameters / 2**30
    shard = gpus if layout.shard is None else min(layout.shard, gpus)
    kept = 0 if layout.reshard_after_forward else work.parameters * work.gather_bytes
    return (16 * work.parameters / shard + kept) / 2**30


def project(layout: Layout, gpus: int, work: Workload, net: Network) -> dict:
    compute = work.tokens_per_gpu_step / work.tokens_per_s_1gpu
    cost = step_communication(layout, gpus, work, net)
    if layout.ddp:  # bucketed all-reduces overlap the backward, about 2/3 of the compute
        step = max(compute, compute / 3 + cost.seconds) + net.exposed * min(2 * compute / 3, cost.seconds)
    else:
        step = max(compute, cost.seconds) + cost.seconds / work.units + net.exposed * min(compute, cost.seconds)
    return {
        "tokens_per_gpu_s": work.tokens_per_gpu_step / step,
        "efficiency": compute / step,
        "comm_s": cost.seconds,
        "compute_s": compute,
        "intra_gb": cost.intra_bytes / GB,
        "inter_gb": cost.inter_bytes / GB,
        "state_gib": state_gib(layout, gpus, work),
    }


LAYOUTS = [
    Layout("ddp", 1, ddp=True),
    Layout("hybrid_zero shard 8, ZeRO-3", 8),
    Layout("hybrid_zero shard 8, ZeRO-2", 8, reshard_after_forward=False),
    Layout("fsdp (shard all), ZeRO-3", None),
]
GPU_COUNTS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]

PRESETS = {
    # Ours: one H200 trains ~22,200 tokens/s at 16 of the 32 layers (bench/NOTES.md, call 1, no
    # activation checkpointing); the full 7B is taken as half of that, rounded down.
    "h200": (Network(), Workload()),
    # InternLM's table (A100-80GB, seq 2048): 4078 tokens/GPU/s at 8 GPUs taken as compute-bound;
    # its 7B config: micro_num 4 x micro_bsz 2 x 2048 tokens per GPU per step. NVLink3 bus
    # bandwidth ~230 GB/s (NCCL all-reduce on 8x A100, typical; not measured here).
    "a100-internlm": (
        Network(intra_busbw=230 * GB),
        Workload(tokens_per_gpu_step=16384, micro_batches=4, tokens_per_s_1gpu=4078.0),
    ),
}


def table(work: Workload, net: Network, markdown: bool) -> str:
    head = ["GPUs"] + [layout.name for layout in LAYOUTS]
    rows = []
    for gpus in GPU_COUNTS:
        cells = [str(gpus)]
        for layout in LAYOUTS:
            p = project(layout, gpus, work, net)
            cells.append(f"{p['tokens_per_gpu_s']:,.0f} ({100 * p['efficiency']:.0f}%)")
        rows.append(cells)
    return _render(head, rows, markdown)


def bytes_table(work: Workload, net: Network, markdown: bool, counts=(4, 8, 1024)) -> str:
    head = ["GPUs", "layout", "NVLink GB/rank/step", "inter-node GB/GPU/step", "comm s", "compute s", "states GiB/GPU"]
    rows = []
    for gpus in counts:
        for layout in LAYOUTS:
            p = project(layout, gpus, work, net)
            rows.append([str(gpus), layout.name, f"{p['intra_gb']:.1f}", f"{p['inter_gb']:.1f}", f"{p['comm_s']:.3f}",
                         f"{p['compute_s']:.3f}", f"{p['state_gib']:.1f}"])
    return _render(head, rows, markdown)


def group_size_table(work: Workload, net: Network, markdown: bool, gpus: int = 4) -> str:
    """InternLM's group-size comparison (zero1 = 1, 2, 4, -1) on one 4-GPU machine."""
    head = ["shard_group_size", "tokens/GPU/s", "efficiency", "NVLink GB/rank/step", "states GiB/GPU"]
    rows = []
    for shard in (1, 2, 4):
        layout = Layout(f"{shard}", shard, reshard_after_forward=shard > 1)
        p = project(layout, gpus, work, net)
        name = f"{shard} (= -1)" if shard == gpus else str(shard)
        rows.append([name, f"{p['tokens_per_gpu_s']:,.0f}", f"{100 * p['efficiency']:.1f}%", f"{p['intra_gb']:.1f}", f"{p['state_gib']:.1f}"])
    return _render(head, rows, markdown)


def _render(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(head))) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="h200")
    parser.add_argument("--tokens-per-s-1gpu", type=float, help="compute-only tokens/s of one GPU on the 7B")
    parser.add_argument("--tokens-per-gpu-step", type=int, help="tokens per GPU per optimizer step")
    parser.add_argument("--micro-batches", type=int, help="micro batches per optimizer step")
    parser.add_argument("--intra-busbw-gbs", type=float, help="NVLink bus bandwidth, GB/s")
    parser.add_argument("--node-gbits", type=float, help="network bandwidth per node, Gb/s")
    parser.add_argument("--alpha-inter-us", type=float, help="latency per ring hop between nodes, microseconds")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    net, work = PRESETS[args.preset]
    work = replace(
        work,
        **{k: v for k, v in {"tokens_per_s_1gpu": args.tokens_per_s_1gpu, "tokens_per_gpu_step": args.tokens_per_gpu_step,
                             "micro_batches": args.micro_batches}.items() if v is not None},
    )
    if args.intra_busbw_gbs:
        net = replace(net, intra_busbw=args.intra_busbw_gbs * GB)
    if args.node_gbits:
        net = replace(net, node_bandwidth=args.node_gbits * 1e9 / 8)
    if args.alpha_inter_us is not None:
        net = replace(net, alpha_inter=args.alpha_inter_us * 1e-6)
    print(f"PROJECTION ({args.preset}): {work}\n{net}\n")
    print("tokens/GPU/s (efficiency vs one GPU's compute), weak scaling:")
    print(table(work, net, args.markdown))
    print("\nbytes and time per optimizer step:")
    print(bytes_table(work, net, args.markdown))
    print("\ngroup sizes on one 4-GPU machine:")
    print(group_size_table(work, net, args.markdown))


if __name__ == "__main__":
    main()
