"""Decode speed of the inference engine beside transformers' `generate`, on the same weights.

    python bench/decode.py                 # internlm_7b shape, bf16, random weights, one CUDA GPU
    python bench/decode.py --smoke         # a tiny model on the CPU: checks the script end to end

Measures, for our engine (eager and CUDA-graph-compiled decode) and for transformers'
LlamaForCausalLM (attention_bias=True, the export's architecture; dynamic cache, and static cache
+ torch.compile if it runs): decode tokens/s at batch 1, 8, 32, 64 (all sequences decoding
together; prefill excluded) and the time to first token of a 1,024-token prompt. Prints a table
and the bandwidth floor: the weight bytes read per decode step over 4.24 TB/s (H200, measured).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internlm.components.model.attention import AttentionConfig  # noqa: E402
from internlm.components.model.mlp import MLPConfig  # noqa: E402
from internlm.components.model.rotary import RotaryConfig  # noqa: E402
from internlm.components.model.transformer import Transformer, TransformerConfig  # noqa: E402
from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer  # noqa: E402
from internlm.inference import Engine, SamplingParams  # noqa: E402

H200_BANDWIDTH = 4.24e12  # bytes/s, measured (bench/RESULTS.md)


class WrappingTokenizer:
    """The bundled tokenizer for a model with a larger vocabulary (random weights emit any id):
    ids fold into its range, so detokenisation costs what it costs in real use."""

    def __init__(self):
        self.inner = SentencePieceTokenizer(SentencePieceConfig())
        self.eos_id, self.bos_id = self.inner.eos_id, self.inner.bos_id

    def decode(self, ids):
        size = self.inner.vocab_size
        return self.inner.decode([i % size for i in ids])


def model_config(smoke: bool, max_position: int) -> TransformerConfig:
    if smoke:
        return TransformerConfig(vocab_size=4096, hidden_size=128, num_layers=2,
                                 attention=AttentionConfig(num_heads=4, rotary=RotaryConfig(max_position=max_position)),
                                 mlp=MLPConfig(intermediate_size=384))
    return TransformerConfig(attention=AttentionConfig(num_heads=32, rotary=RotaryConfig(max_position=max_position)))


def random_model(config: TransformerConfig, device: torch.device, dtype: torch.dtype) -> Transformer:
    with torch.device("meta"):
        model = Transformer(config).to(dtype)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.fill_(1.0)
            else:
                param.normal_(std=0.02)
    model.rotary.inv_freq = torch.empty(model.rotary.inv_freq.shape, dtype=torch.float32, device=device)
    model.rotary.reset_parameters()
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int = 1) -> float:
    """Median seconds of `fn()` over `repeats` runs."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, min(vocab, 4096), (batch, length), generator=generator).tolist()


def bench_engine(engine: Engine, batches, new_tokens, prompt_len, ttft_len, device) -> dict:
    """Decode tokens/s per batch (time of N tokens minus time of 1, so prefill cancels) and TTFT."""
    vocab = engine.model.config.vocab_size
    rows = {}
    for batch in batches:
        batch_prompts = prompts(batch, prompt_len, vocab)
        long = SamplingParams(max_new_tokens=new_tokens, temperature=0)
        one = SamplingParams(max_new_tokens=1, temperature=0)
        engine.generate(batch_prompts, long)  # warm-up: compiles / captures every shape on the way
        full = timed(lambda: engine.generate(batch_prompts, long), device)
        first = timed(lambda: engine.generate(batch_prompts, one), device, repeats=3)
        rows[batch] = batch * (new_tokens - 1) / max(full - first, 1e-9)
    ttft_prompt = prompts(1, ttft_len, vocab, seed=1)
    engine.generate(ttft_prompt, SamplingParams(max_new_tokens=1, temperature=0))
    ttft = timed(lambda: engine.generate(ttft_prompt, SamplingParams(max_new_tokens=1, temperature=0)), device, repeats=3)
    return {"decode_tokens_per_s": rows, "ttft_ms": ttft * 1000}


def hf_model(model: Transformer, config: TransformerConfig, dtype: torch.dtype):
    """LlamaForCausalLM sharing our weights (the export's names and architecture)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from internlm.interop.hf_config import hf_config_dict, to_hf_name

    hf_config = LlamaConfig(**hf_config_dict(config, dtype=dtype))
    with torch.device("meta"):
        hf = LlamaForCausalLM(hf_config)
    state = {to_hf_name(name): tensor for name, tensor in model.state_dict().items()}
    hf.load_state_dict(state, strict=False, assign=True)
    with torch.device(next(model.parameters()).device):  # its inv_freq buffer is not in the state dict
        hf.model.rotary_emb = type(hf.model.rotary_emb)(config=hf_config)
    return hf.eval()


def bench_hf(hf, batches, new_tokens, prompt_len, ttft_len, device, static: bool) -> dict:
    vocab = hf.config.vocab_size
    kwargs = dict(do_sample=False, pad_token_id=0)
    if static:
        kwargs["cache_implementation"] = "static"
        hf.forward = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)

    def run(batch_prompts, n):
        ids = torch.tensor(batch_prompts, device=device)
        with torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, **kwargs)

    rows = {}
    for batch in batches:
        batch_prompts = prompts(batch, prompt_len, vocab)
        run(batch_prompts, new_tokens)
        full = timed(lambda: run(batch_prompts, new_tokens), device)
        first = timed(lambda: run(batch_prompts, 1), device, repeats=3)
        rows[batch] = batch * (new_tokens - 1) / max(full - first, 1e-9)
    ttft_prompt = prompts(1, ttft_len, vocab, seed=1)
    run(ttft_prompt, 1)
    ttft = timed(lambda: run(ttft_prompt, 1), device, repeats=3)
    return {"decode_tokens_per_s": rows, "ttft_ms": ttft * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU (checks the script)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32,64; smoke 1,4)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens decoded per sequence (default 128)")
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt length of the decode runs")
    parser.add_argument("--ttft-len", type=int, default=1024, help="prompt length of the time-to-first-token run")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    parser.add_argument("--no-eager", action="store_true", help="skip our eager (uncompiled) decode on CUDA")
    parser.add_argument("--no-graphs", action="store_true", help="skip our compiled (CUDA graph) decode")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()

    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    batches = [int(b) for b in (args.batches or ("1,4" if args.smoke else "1,8,32,64")).split(",")]
    new_tokens = args.new_tokens or (16 if args.smoke else 128)
    ttft_len = min(args.ttft_len, 256) if args.smoke else args.ttft_len
    max_context = max(ttft_len, args.prompt_len + new_tokens) + 8
    config = model_config(args.smoke, max_position=max(2048, max_context))
    torch.manual_seed(0)
    model = random_model(config, device, dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    floor = H200_BANDWIDTH / weight_bytes
    tokenizer = WrappingTokenizer()
    results: dict[str, dict] = {}

    modes = [("engine (CUDA graphs)", True)] if device.type == "cuda" and not args.no_graphs else []
    if device.type == "cpu" or not args.no_eager:
        modes.append(("engine (eager)", False))
    for name, compiled in modes:
        engine = Engine(model, tokenizer, model_id="bench", max_context=max_context, max_batch=max(batches),
                        compile=compiled)
        try:
            results[name] = bench_engine(engine, batches, new_tokens, args.prompt_len, ttft_len, device)
        except Exception as exc:  # report and go on: the table shows what ran
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
        finally:
            engine.close()
            del engine
            gc.collect()
            torch.cuda.empty_cache() if device.type == "cuda" else None
    if not args.no_hf:
        for name, static in [("transformers generate (dynamic cache)", False), ("transformers generate (static + compile)", True)]:
            try:
                results[name] = bench_hf(hf_model(model, config, dtype), batches, new_tokens, args.prompt_len, ttft_len,
                                         device, static)
            except Exception as exc:
                results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
            gc.collect()

    print(f"\nmodel: {'tiny (smoke)' if args.smoke else 'internlm_7b shape'}, {str(dtype).removeprefix('torch.')}, "
          f"random weights, {device.type}; {weight_bytes / 1e9:.2f} GB of weights; "
          f"{new_tokens} new tokens after a {args.prompt_len}-token prompt")
    print(f"bandwidth floor at batch 1 (weights / 4.24 TB/s): {floor:,.0f} tokens/s "
          f"({1000 / floor:.2f} ms per step)\n")
    header = f"| {'implementation':42} | " + " | ".join(f"batch {b:>3} tok/s" for b in batches) + f" | TTFT {ttft_len} (ms) |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for name, row in results.items():
        if "error" in row:
            print(f"| {name:42} | failed: {row['error']} |")
            continue
        cells = " | ".join(f"{row['decode_tokens_per_s'][b]:>15,.1f}" for b in batches)
        print(f"| {name:42} | {cells} | {row['ttft_ms']:>15,.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"weight_bytes": weight_bytes, "floor_tokens_per_s": floor, "results": results},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
