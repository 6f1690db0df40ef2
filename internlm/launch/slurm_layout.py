"""Does the Slurm allocation this process runs in match the strategy's world size?

A pure function of the environment: compile-time code passes `os.environ`, tests pass a dict.
Inside an allocation Fabric takes ranks from Slurm (one process per task, `srun`), so
nodes x tasks per node must equal trainer.num_nodes x trainer.devices, or the processes wait for
peers that never come (or Lightning stops later with a less specific error).
"""

from __future__ import annotations

from collections.abc import Mapping

from internlm.errors import ConfigError

# Lightning ignores Slurm's variables in these jobs (salloc shells): it starts processes itself.
INTERACTIVE_JOB_NAMES = ("bash", "interactive")


def slurm_tasks(environ: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(nodes, tasks per node, tasks) of the Slurm step this process belongs to, or None outside one."""
    if "SLURM_NTASKS" not in environ or environ.get("SLURM_JOB_NAME") in INTERACTIVE_JOB_NAMES:
        return None
    tasks = int(environ["SLURM_NTASKS"])
    nodes = int(environ.get("SLURM_NNODES") or environ.get("SLURM_JOB_NUM_NODES") or 1)
    # SLURM_NTASKS_PER_NODE may read "3" or "2(x4)"; the total is what the world size must match.
    per_node = environ.get("SLURM_NTASKS_PER_NODE", "")
    per_node_count = int(per_node.split("(")[0]) if per_node.split("(")[0].isdigit() else tasks // max(nodes, 1)
    return nodes, per_node_count, tasks


def check_slurm_layout(environ: Mapping[str, str], num_nodes: int, devices: int) -> None:
    """Raise ConfigError when the Slurm step's tasks differ from num_nodes x devices processes."""
    found = slurm_tasks(environ)
    if found is None:
        return
    nodes, per_node, tasks = found
    world_size = num_nodes * devices
    if tasks == world_size and nodes == num_nodes:
        return
    raise ConfigError(
        f"Slurm started {tasks} task(s) ({nodes} node(s) x {per_node} task(s) per node), but the strategy's "
        f"world size is {world_size} (trainer.num_nodes={num_nodes} x trainer.devices={devices})",
        where="trainer.num_nodes / trainer.devices vs. sbatch --nodes / --ntasks-per-node "
        "(hydra.launcher.nodes / hydra.launcher.tasks_per_node)",
        fix=f"run one task per device: --nodes={num_nodes} --ntasks-per-node={devices}, "
        f"or set trainer.num_nodes={nodes} trainer.devices={per_node}",
    )
