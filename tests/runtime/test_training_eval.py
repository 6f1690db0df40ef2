"""Training-time evaluation tells a sharded model (DTensor parameters: FSDP2, tensor parallel)
from a whole one by the parameters' type."""

from __future__ import annotations

import subprocess
import sys

import torch

from internlm.runtime.training_eval import is_dtensor

SHARDED = """
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import distribute_tensor, Shard
from internlm.runtime.training_eval import is_dtensor

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
weight = torch.nn.Parameter(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)]))
assert is_dtensor(weight) and is_dtensor(weight.detach()), type(weight)
dist.destroy_process_group()
print("ok")
"""


def test_a_plain_parameter_is_not_sharded():
    assert not is_dtensor(torch.nn.Parameter(torch.ones(2)))
    assert not is_dtensor(torch.ones(2))


def test_a_dtensor_parameter_is_sharded():
    # in a child process: a process group would outlive this test in the suite's own process
    done = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
