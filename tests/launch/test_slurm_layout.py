"""The Slurm layout check (a pure function of the environment) and the scontrol parser."""

from __future__ import annotations

import pytest

from internlm.errors import ConfigError
from internlm.launch.slurm_layout import check_slurm_layout
from internlm.launch.slurm_state import parse_scontrol


def step(nodes: int, per_node: int, **extra) -> dict[str, str]:
    return {"SLURM_NTASKS": str(nodes * per_node), "SLURM_NNODES": str(nodes), "SLURM_NTASKS_PER_NODE": str(per_node),
            "SLURM_JOB_NAME": "internlm", **extra}


def test_matching_layouts_pass():
    check_slurm_layout({}, num_nodes=4, devices=8)  # not under Slurm: nothing to compare
    check_slurm_layout(step(2, 8), num_nodes=2, devices=8)
    check_slurm_layout(step(1, 1), num_nodes=1, devices=1)
    # salloc shells: Lightning starts its own processes there, so Slurm's tasks do not count
    check_slurm_layout(step(1, 1, SLURM_JOB_NAME="interactive"), num_nodes=1, devices=2)


def test_three_tasks_for_a_world_of_two_names_both_numbers():
    with pytest.raises(ConfigError) as error:
        check_slurm_layout(step(1, 3), num_nodes=1, devices=2)
    text = error.value.render()
    assert "Slurm started 3 task(s) (1 node(s) x 3 task(s) per node)" in text
    assert "world size is 2 (trainer.num_nodes=1 x trainer.devices=2)" in text
    assert "--ntasks-per-node=2" in text


def test_same_task_count_on_other_nodes_is_refused():
    with pytest.raises(ConfigError, match="2 node"):
        check_slurm_layout(step(2, 4), num_nodes=1, devices=8)


def test_scontrol_lines_in_sacct_shape():
    text = (
        "JobId=8 ArrayJobId=7 ArrayTaskId=1 JobName=x JobState=FAILED Restarts=0 ExitCode=2:0 NodeList=vm\n"
        "JobId=9 JobName=y JobState=PENDING Reason=BeginTime Restarts=1 ExitCode=0:0 NodeList=(null)\n"
    )
    info = parse_scontrol(text)
    assert info["7_1"] == {"State": "FAILED", "NodeList": "vm", "ExitCode": "2:0", "Restarts": "0"}
    assert info["9"]["State"] == "PENDING" and info["9"]["Restarts"] == "1"
