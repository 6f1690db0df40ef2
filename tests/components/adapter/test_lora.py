"""LoRA: zero-init leaves the model unchanged, only adapters train, merge and PEFT agree with us."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "interop"))
from interop_helpers import random_model, tiny_config  # noqa: E402

from internlm.components.adapter.lora import LoRA, LoRAConfig, adapters_disabled, lora_modules, merge, merged_state_dict  # noqa: E402
from internlm.errors import ConfigError  # noqa: E402
from internlm.interop import export_hf  # noqa: E402
from internlm.interop.peft_export import export_peft_adapter  # noqa: E402

IDS = torch.tensor([[1, 5, 9, 33, 7, 2, 11, 40]])


def lora_model(targets=("q_proj", "v_proj", "mlp.down_proj"), rank=4, alpha=8.0, trained=True):
    model = random_model(tiny_config(num_kv_heads=None))
    base = model(IDS).detach()
    LoRA(LoRAConfig(rank=rank, alpha=alpha, targets=list(targets))).apply(model)
    if trained:  # as after some steps: B no longer zero
        torch.manual_seed(3)
        with torch.no_grad():
            for _, module in lora_modules(model):
                module.lora_B.weight.normal_(std=0.05)
    return model.eval(), base


def test_zero_init_leaves_logits_identical_and_only_adapters_train():
    model, base = lora_model(trained=False)
    assert torch.equal(model(IDS), base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert "layers.0.self_attn.q_proj.lora_A.weight" in trainable
    assert "layers.1.mlp.down_proj.lora_B.weight" in trainable
    assert not any("k_proj" in n for n in trainable)
    # base names survive (checkpoints and exports see the model they know)
    assert "layers.0.self_attn.q_proj.weight" in dict(model.named_parameters())


def test_adapter_changes_output_by_hand_computed_delta_and_can_be_switched_off():
    model, base = lora_model()
    q = model.get_submodule("layers.0.self_attn.q_proj")
    x = torch.randn(3, q.in_features)
    expected = x @ q.weight.T + q.bias + (x @ q.lora_A.weight.T @ q.lora_B.weight.T) * (8.0 / 4)
    torch.testing.assert_close(q(x), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model(IDS), base)
    with adapters_disabled(model):
        assert torch.equal(model(IDS), base)


def test_merge_equals_the_unmerged_forward():
    model, _ = lora_model()
    before = model(IDS).detach()
    folded = merged_state_dict(model.state_dict(), scaling=2.0)
    merge(model)
    assert not list(lora_modules(model)) and all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith("q_proj"))
    torch.testing.assert_close(model(IDS), before, rtol=1e-5, atol=1e-5)
    assert set(folded) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(folded[name], tensor)


def test_peft_loads_the_adapter_on_the_exported_base(tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model, _ = lora_model()
    ours = model(IDS).detach()
    state = model.state_dict()
    base_state = {k: v for k, v in state.items() if ".lora_" not in k}
    export_hf(base_state, model.config, tmp_path / "base", dtype=torch.float32)
    export_peft_adapter(state, tmp_path / "adapter", rank=4, alpha=8.0, base_model=str(tmp_path / "base"))
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    config = peft_model.peft_config["default"]
    assert config.r == 4 and config.lora_alpha == 8.0 and set(config.target_modules) == {"q_proj", "v_proj", "down_proj"}
    with torch.no_grad():
        theirs = peft_model(IDS).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_a_target_that_matches_nothing_is_one_clear_error():
    model = random_model(tiny_config())
    with pytest.raises(ConfigError, match="qproj.*matches no linear") as err:
        LoRA(LoRAConfig(targets=["q_proj", "qproj"])).apply(model)
    assert err.value.where == "adapter.targets" and "q_proj" in err.value.fix
    assert not list(lora_modules(model)) and all(p.requires_grad for p in model.parameters())  # untouched


def test_exporting_an_adapter_from_a_model_without_one_refuses_and_writes_nothing(tmp_path):
    model = random_model(tiny_config())
    with pytest.raises(ConfigError, match="no LoRA adapter"):
        export_peft_adapter(model.state_dict(), tmp_path / "adapter", rank=4, alpha=8.0)
    assert not (tmp_path / "adapter").exists() and not list(tmp_path.iterdir())


def test_reinitialising_the_adapters_keeps_b_zero():
    # A meta-device model is initialised module by module (reset_parameters): B must stay zero.
    model, base = lora_model()
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module.__class__.__name__ == "ZeroInitLinear":
            module.reset_parameters()
    assert torch.equal(model(IDS), base)
