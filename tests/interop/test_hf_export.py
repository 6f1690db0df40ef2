"""Export to a Hugging Face folder that stock transformers loads and runs exactly like our model."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from interop_helpers import greedy, random_model, tiny_config
from internlm.errors import ConfigError
from internlm.interop import export_hf


def load_stock(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # no trust_remote_code


@pytest.mark.parametrize(
    "config",
    [tiny_config(), tiny_config(num_kv_heads=None, tie=True), tiny_config(bias=False), tiny_config(mlp_bias=True)],
    ids=["internlm-gqa", "tied-mha", "llama-no-bias", "mlp-bias"],
)
def test_stock_transformers_computes_our_logits_and_greedy_tokens(tmp_path, tokenizer_model, config):
    ours = random_model(config)
    export_hf(ours.state_dict(), config, tmp_path / "hf", tokenizer_model=tokenizer_model, dtype="float32")
    theirs = load_stock(tmp_path / "hf")
    assert type(theirs).__name__ == "LlamaForCausalLM"

    ids = torch.randint(0, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max() <= 1e-5

    prompt = ids[0, :8].tolist()
    expected = greedy(ours, prompt, 32)
    theirs.generation_config.eos_token_id = None  # run all 32 steps, as our loop does
    generated = theirs.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=0)
    assert generated[0, len(prompt):].tolist() == expected


def test_weights_are_written_in_the_requested_dtype_and_shards(tmp_path):
    config = tiny_config()
    state = random_model(config).state_dict()
    out = export_hf(state, config, tmp_path / "hf", dtype=torch.bfloat16, max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    loaded = {}
    for shard in shards:
        tensors = load_file(out / shard)
        assert sum(t.numel() * t.element_size() for t in tensors.values()) <= 200_000 or len(tensors) == 1
        loaded.update(tensors)
    assert set(loaded) == set(index["weight_map"]) == {("" if k == "lm_head.weight" else "model.") + k for k in state}
    for name, tensor in state.items():
        hf = loaded[name if name == "lm_head.weight" else "model." + name]
        assert hf.dtype == torch.bfloat16 and torch.equal(hf, tensor.to(torch.bfloat16))
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in state.values())
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert not any(name.startswith(".") for name in os.listdir(out))


def test_a_generator_source_streams_like_a_state_dict(tmp_path):
    config = tiny_config()
    state = random_model(config).state_dict()
    export_hf(lambda: iter(state.items()), config, tmp_path / "a", dtype="float32")
    export_hf(state, config, tmp_path / "b", dtype="float32")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_generation_config_stops_at_eos_and_eoa(tmp_path, tokenizer_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    config = tiny_config()
    out = export_hf(random_model(config).state_dict(), config, tmp_path / "hf", tokenizer_model=tokenizer_model)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": sp.bos_id(), "eos_token_id": [sp.eos_id(), sp.piece_to_id("<eoa>")]}
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["attention_bias"] is True and hf_config["architectures"] == ["LlamaForCausalLM"]
    assert hf_config["rms_norm_eps"] == 1e-5 and hf_config["rope_theta"] == 5000.0


def test_refuses_a_non_empty_folder_and_accepts_an_empty_one(tmp_path):
    config = tiny_config()
    state = random_model(config).state_dict()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        export_hf(state, config, tmp_path / "busy")
    assert os.listdir(tmp_path / "busy") == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    export_hf(state, config, tmp_path / "empty")
    assert (tmp_path / "empty" / "config.json").is_file()


def test_a_failed_export_leaves_no_folder(tmp_path):
    config = tiny_config()
    state = random_model(config).state_dict()

    def breaks_midway():
        for index, item in enumerate(state.items()):
            if index == 5:
                raise RuntimeError("disk on fire")
            yield item

    with pytest.raises(RuntimeError, match="disk on fire"):
        export_hf(breaks_midway, config, tmp_path / "hf", max_shard_bytes=10_000)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("layers.1.mlp.up_proj.weight"), "missing from the checkpoint: layers.1.mlp.up_proj.weight"),
        (lambda s: s.update({"layers.0.extra": torch.zeros(1)}),
         "'layers.0.extra', which the configured model does not"),
        (lambda s: s.update({"norm.weight": torch.ones(3)}),
         r"norm.weight has shape \[3\], the configured model expects \[64\]"),
    ],
)
def test_a_state_that_does_not_fit_the_config_is_refused(tmp_path, mutate, message):
    config = tiny_config()
    state = dict(random_model(config).state_dict())
    mutate(state)
    with pytest.raises(ConfigError, match=message):
        export_hf(state, config, tmp_path / "hf")
    assert os.listdir(tmp_path) == []


def test_a_config_llama_cannot_express_is_refused(tmp_path):
    config = tiny_config()
    config.attention.out_bias = False
    with pytest.raises(ConfigError, match="one switch"):
        export_hf(random_model(config).state_dict(), config, tmp_path / "hf")


def test_export_streams_from_a_sharded_dcp_checkpoint(tmp_path):
    """A torch.distributed.checkpoint folder (what Fabric writes for sharded runs), read tensor by tensor."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from internlm.interop.dcp_source import dcp_model_tensors

    config = tiny_config()
    model = random_model(config)
    optimizer_state = {"state": {name: {"exp_avg": torch.ones_like(p)} for name, p in model.named_parameters()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = {"model": model.state_dict(), "optimizer": optimizer_state, "step": 7}
        dcp.save(state, checkpoint_id=str(tmp_path / "state"))
    export_hf(dcp_model_tensors(tmp_path / "state"), config, tmp_path / "hf", dtype="float32")
    theirs = load_stock(tmp_path / "hf")
    ids = torch.randint(0, config.vocab_size, (1, 16))
    with torch.no_grad():
        assert (model(ids) - theirs(ids).logits).abs().max() <= 1e-5
