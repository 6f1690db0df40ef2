"""The registry: discoverable components and allowlisted imports."""

from __future__ import annotations

import pytest

import internlm.components  # noqa: F401
from internlm import registry
from internlm.errors import ConfigError
from internlm.tasks.components import render


def test_every_group_of_the_root_config_has_components():
    groups = registry.groups()
    for group in ("model", "tokenizer", "data", "optimizer", "scheduler", "loss", "strategy", "task"):
        assert groups.get(group), f"no component registered in group {group}"


def test_listing_shows_fields_with_types_and_defaults():
    text = render()
    assert "[optimizer]" in text and "adamw" in text
    assert "lr: float = 0.0001" in text
    assert "num_layers: int = 32" in text


def test_unknown_component_name_suggests_a_close_one():
    with pytest.raises(ConfigError) as info:
        registry.get("optimizer", "adamv")
    assert "adamw" in info.value.render()


@pytest.mark.parametrize("target", ["os.system", "subprocess.run", "builtins.eval", "torch.load"])
def test_targets_outside_the_allowlist_are_refused(target):
    with pytest.raises(ConfigError) as info:
        registry.resolve_target(target)
    assert "refusing" in info.value.render()


def test_allowlisted_target_resolves():
    import torch

    assert registry.resolve_target("torch.optim.SGD") is torch.optim.SGD
