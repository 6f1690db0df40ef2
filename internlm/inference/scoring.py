"""Scoring adapters: our checkpoints (generation on the inference engine) and Hugging Face
folders, as the `LanguageModel` evaluators talk to (components/eval/causal_lm.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from internlm.components.eval.causal_lm import CausalLM, TextCodec, for_internlm_model, max_positions
from internlm.components.eval.protocol import GenerationRequest
from internlm.errors import ConfigError

__all__ = ["CausalLM", "TextCodec", "for_internlm", "for_hf", "for_hf_model", "check_hf_source", "hf_has_chat_template"]


# ---- our Transformer -----------------------------------------------------------------------------


def for_internlm(name: str, model: torch.nn.Module, tokenizer: Any, batch_tokens: int = 16384) -> CausalLM:
    """Our model and tokenizer, generation on the inference engine's KV cache."""
    engine: list[Any] = []

    def engine_generate(prompts: list[list[int]], request: GenerationRequest, stop_ids: tuple[int, ...]) -> list[str]:
        from internlm.inference.engine import Engine
        from internlm.sampling import SamplingParams

        if not engine:
            engine.append(Engine(model, tokenizer, name, max_context=min(max_positions(model), 4096), max_batch=16))
        params = SamplingParams(max_new_tokens=request.max_new_tokens, temperature=request.temperature, top_p=request.top_p,
                                seed=request.seed, stop_ids=stop_ids, stop_strings=tuple(request.stop),
                                do_sample=request.temperature > 0)
        return [completion.text for completion in engine[0].generate(prompts, params)]

    return for_internlm_model(name, model, tokenizer, batch_tokens, engine_generate)


# ---- Hugging Face ---------------------------------------------------------------------------------


def hf_location(source: str) -> tuple[Path, str | None]:
    """`hf:<dir>` or `hf:<dir>/<file>.gguf` -> (folder, gguf file name or None)."""
    path = Path(source.removeprefix("hf:")).expanduser()
    if path.suffix == ".gguf":
        return path.parent, path.name
    return path, None


def hf_has_chat_template(source: str) -> bool:
    """Read from the folder's files without loading the model (checked before any model loads)."""
    folder, gguf = hf_location(source)
    if gguf is not None:
        from gguf import GGUFReader  # the template is a metadata field of the file

        field = GGUFReader(folder / gguf).fields.get("tokenizer.chat_template")
        return field is not None
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text("utf-8")).get("chat_template"))


def check_hf_source(source: str) -> None:
    folder, gguf = hf_location(source)
    target = folder / gguf if gguf else folder / "config.json"
    if not target.is_file():
        raise ConfigError(f"no Hugging Face model at {source}", where="checkpoint / task.models",
                          fix="hf:<folder with config.json and weights> or hf:<folder>/<file>.gguf")


def for_hf(source: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
           batch_tokens: int = 16384) -> CausalLM:
    """A transformers AutoModelForCausalLM (and its tokenizer) from `hf:<dir>`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_hf_source(source)
    folder, gguf = hf_location(source)
    kwargs = {"gguf_file": gguf} if gguf else {}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    return for_hf_model(source, model, tokenizer, batch_tokens)


def for_hf_model(name: str, model: Any, tokenizer: Any, batch_tokens: int = 16384) -> CausalLM:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    # lm-eval encodes with the tokenizer's own special tokens: BOS in front where it adds one (Llama)
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos] != tokenizer("a", add_special_tokens=False)["input_ids"][:1]
    codec = TextCodec(
        encode=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
        encode_many=lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"],
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        bos_id=bos,
        eos_id=eos,
        add_bos=adds_bos,
        render_chat=(lambda messages: tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))
        if has_template else None,
        stop_ids=(eos,) if eos is not None else (),
    )
    max_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    device = next(model.parameters()).device
    from internlm.components.eval.prefix_trie import hf_tree_forward

    # The packed-trie path hands the model a custom 4D mask: only eager and SDPA attention apply it
    # as given (flash-attention and sliding-window kernels would not); others score each request alone.
    masks_as_given = getattr(model.config, "_attn_implementation", "eager") in ("eager", "sdpa") and not getattr(
        model.config, "sliding_window", None)
    return CausalLM(name, lambda ids: model(ids).logits, codec, device, min(max_length, 8192), batch_tokens,
                    tree_forward=hf_tree_forward(model) if masks_as_given else None)
