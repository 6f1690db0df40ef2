"""Runs shared by the multi-process tests: each is launched once per session."""

from __future__ import annotations

import pytest

from launch import launch


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def reference(runs_dir):
    """One process, no parallelism: the run every layout must reproduce."""
    return launch(runs_dir / "single")


@pytest.fixture(scope="session")
def hsdp4(runs_dir):
    """4 processes, 2 replicas x shard groups of 2 (Hybrid ZeRO), 2 micro batches of 1 row per rank
    (gradients reduce-scattered each, all-reduced across replicas once); checkpoints at steps 3, 6."""
    return launch(runs_dir / "hsdp4", "strategy=hybrid_zero", "strategy.shard_group_size=2", "data.micro_batch_size=1", devices=4)
