"""Print the compiled plan (parameters, FLOPs, memory, batch layout) and exit, allocating nothing."""

from __future__ import annotations

from dataclasses import dataclass

from internlm.registry import register
from internlm.tasks.base import RunContext, Task


@dataclass
class PlanConfig:
    # The DPO reference the memory estimate counts (frozen: a second model). The DPO experiments
    # set task.reference, so `task=plan +experiment=internlm_7b_dpo_1gpu` plans that run as it is.
    reference: str | None = None


def trained_note(plan) -> str:
    trainable = plan.trainable_parameters
    if trainable is None or trainable == plan.parameters:
        return ""
    return f" ({trainable:,} trainable, {100 * trainable / plan.parameters:.2f}%)"


def describe(plan) -> str:
    layout = plan.layout
    rows = [
        ("parameters", f"{plan.parameters:,}" + trained_note(plan)),
        ("FLOPs per token (train)", f"{plan.flops_per_token / 1e9:,.2f} GFLOP"),
        ("devices", f"{plan.world_size} ({plan.accelerator}, {plan.precision})"),
        ("attention kernel", plan.attention_backend),
        ("layout", f"replicate {layout.replicate} x shard {layout.shard} x tensor {layout.tensor} (data-parallel {layout.dp_size})"),
        ("global batch", f"{plan.global_batch_size} rows x {plan.seq_len} tokens = {plan.tokens_per_step:,} tokens/step"),
        ("per device", f"micro batch {plan.micro_batch_size} x {plan.grad_accumulation} accumulation steps"),
        ("warmup steps", f"{plan.warmup_steps}"),
        ("total tokens", f"{plan.total_tokens:,}"),
    ]
    memory = ", ".join(f"{k} {v:,.2f}" for k, v in plan.memory_per_device_gib.items() if k != "total")
    rows.append(("memory per device (GiB)", f"{plan.memory_per_device_gib['total']:,.2f} = {memory}"))
    rows += [("warning", note) for note in plan.warnings]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


@register("task", "plan", PlanConfig)
class PlanTask(Task):
    trains = True  # it shows the training plan: batch layout, schedule, memory
    allocates = False  # ... for any machine: one that does not fit this one is a warning, not an error

    """Show what a run would be: `python -m internlm task=plan model=internlm_7b`."""


    def run(self, ctx: RunContext) -> str:
        text = describe(ctx.plan)
        print(text)
        print(f"(plan written to {ctx.run_dir / 'plan.yaml'})")
        return text
