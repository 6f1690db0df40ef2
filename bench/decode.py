"""Decode speed of the inference engine beside transformers' `generate`, on the same weights.

    python bench/decode.py                 # internlm_7b shape, bf16, random weights, one CUDA GPU
    python bench/decode.py --smoke         # a tiny model on the CPU: checks the script end to end

Measures, for our engine in its modes (CUDA graphs over compiled blocks with fused q/k/v and
gate/up weights, the default on CUDA; the same unfused; CUDA graphs over eager kernels; plain eager) and for transformers' LlamaForCausalLM
(attention_bias=True, the export's architecture; dynamic cache, and its static cache with
generate's own compile if there is time left): decode tokens/s at batch 1, 8, 32, 64 (all
sequences decoding together; prefill excluded) and the time to first token of a 1,024-token
prompt. Then the OpenAI server on the same engine under 32 streaming clients (bench/serve_load.py
in its own process). Prints the bandwidth floor: weight bytes read per decode step over the copy
bandwidth measured in the same run.

Every phase logs when it starts and ends (seconds since start, flushed), a watchdog prints all
threads' stacks when a phase runs past --watchdog-s, and each result is written to --json as soon
as it exists: a run cut short by a time limit still tells what it measured and where it was.
Phases that would not fit in what is left of --budget-s are skipped and say so.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
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
from internlm.inference import cached_forward  # noqa: E402
from internlm.inference.kv_cache import KVCache  # noqa: E402

START = time.perf_counter()
ARGS: argparse.Namespace


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f} s] {message}", flush=True)


def left() -> float:
    return ARGS.budget_s - (time.perf_counter() - START)


def step_timeout() -> float:
    """How long one generate call may take: --step-timeout-s, or what is left of the budget."""
    return max(5.0, min(ARGS.step_timeout_s, left() - ARGS.reserve_s))


class Phase:
    """Logs start and end; arms the stack-dump watchdog for its duration."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        log(f"start: {self.name} ({left():.0f} s of budget left)")
        faulthandler.dump_traceback_later(ARGS.watchdog_s, repeat=True, file=sys.stdout)
        self.start = time.perf_counter()
        return self

    def __exit__(self, kind, exc, tb):
        faulthandler.cancel_dump_traceback_later()
        status = "ok" if kind is None else f"FAILED {kind.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        log(f"end: {self.name} in {time.perf_counter() - self.start:.1f} s, {status}")
        return False


class WrappingTokenizer:
    """The bundled tokenizer for a model with a larger vocabulary (random weights emit any id):
    ids fold into its range, so detokenisation costs what it costs in real use."""

    def __init__(self):
        self.inner = SentencePieceTokenizer(SentencePieceConfig())

    def __getattr__(self, name):
        return getattr(self.inner, name)

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
    """Built on the meta device, materialised on `device` in `dtype`, initialised there: no host copy."""
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


def copy_bandwidth(device: torch.device) -> float | None:
    """Bytes/s of a device-to-device copy of 2 GiB (read + write counted)."""
    if device.type != "cuda":
        return None
    src = torch.empty(2**30, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = timed(lambda: [dst.copy_(src) for _ in range(5)], device, repeats=3) / 5
    return 2 * 2**31 / seconds


def prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, min(vocab, 4096), (batch, length), generator=generator).tolist()


def first_prefill_probe(model, device, dtype, ttft_len: int) -> dict:
    """Prefill on the main thread, synchronised layer by layer timing overall: tells a slow
    engine thread from a slow kernel."""
    attn = model.layers["0"].self_attn
    cache = KVCache(model.config.num_layers, 1, attn.num_kv_heads, ttft_len + 8, attn.head_dim, dtype=dtype, device=device)
    out = {}
    with torch.inference_mode():
        for length in (16, ttft_len):
            tokens = torch.tensor(prompts(1, length, model.config.vocab_size)[0], device=device)
            first = timed(lambda: cached_forward.prefill(model, cache, tokens, 0), device)
            again = timed(lambda: cached_forward.prefill(model, cache, tokens, 0), device, repeats=3)
            out[f"prefill_{length}_first_ms"], out[f"prefill_{length}_ms"] = first * 1000, again * 1000
            log(f"main-thread prefill of {length} tokens: first {first * 1000:.1f} ms, then {again * 1000:.1f} ms")
    return out


def wait(handles_fn, seconds: float):
    """Run `handles_fn()` in a thread; give up (raise) after `seconds` so one stuck phase does not
    eat the whole run."""
    box: dict = {}

    def target():
        try:
            box["value"] = handles_fn()
        except BaseException as exc:  # reported by the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no result after {seconds:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def bench_engine(engine: Engine, batches, new_tokens, prompt_len, ttft_len, device, record) -> dict:
    """Decode tokens/s per batch (time of N tokens minus time of 1, so prefill cancels) and TTFT."""
    vocab = engine.model.config.vocab_size
    rows: dict = {}
    out = {"decode_tokens_per_s": rows}
    long = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    one = SamplingParams(max_new_tokens=1, temperature=0)
    ttft_prompt = prompts(1, ttft_len, vocab, seed=1)
    for batch in batches:
        if left() < ARGS.reserve_s:
            rows[batch] = "skipped: out of time"
            continue
        batch_prompts = prompts(batch, prompt_len, vocab)
        start = time.perf_counter()
        wait(lambda: engine.generate(batch_prompts, long), step_timeout())  # warm-up: compiles / captures
        warm = time.perf_counter() - start
        full = timed(lambda: wait(lambda: engine.generate(batch_prompts, long), step_timeout()), device)
        first = timed(lambda: engine.generate(batch_prompts, one), device, repeats=3)
        rows[batch] = batch * (new_tokens - 1) / max(full - first, 1e-9)
        log(f"  batch {batch:>3}: {rows[batch]:,.1f} tokens/s ({(full - first) / (new_tokens - 1) * 1000:.2f} ms/step; "
            f"warm-up {warm:.1f} s)")
        record()
    if left() > ARGS.reserve_s:
        engine.generate(ttft_prompt, one)
        out["ttft_ms"] = timed(lambda: engine.generate(ttft_prompt, one), device, repeats=3) * 1000
        log(f"  TTFT of {ttft_len} tokens: {out['ttft_ms']:.1f} ms")
    return out


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


def bench_hf(hf, batches, new_tokens, prompt_len, ttft_len, device, static: bool, record) -> dict:
    """transformers' generate; with static=True its static cache, which generate compiles itself
    (reduce-overhead) on CUDA."""
    vocab = hf.config.vocab_size
    kwargs = dict(do_sample=False, pad_token_id=0)
    if static:
        kwargs["cache_implementation"] = "static"

    def run(batch_prompts, n):
        ids = torch.tensor(batch_prompts, device=device)
        with torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, **kwargs)

    rows: dict = {}
    out = {"decode_tokens_per_s": rows}
    for batch in batches:
        if left() < ARGS.reserve_s:
            rows[batch] = "skipped: out of time"
            continue
        batch_prompts = prompts(batch, prompt_len, vocab)
        wait(lambda: run(batch_prompts, new_tokens), step_timeout())
        full = timed(lambda: run(batch_prompts, new_tokens), device)
        first = timed(lambda: run(batch_prompts, 1), device, repeats=3)
        rows[batch] = batch * (new_tokens - 1) / max(full - first, 1e-9)
        log(f"  batch {batch:>3}: {rows[batch]:,.1f} tokens/s")
        record()
    if left() > ARGS.reserve_s:
        ttft_prompt = prompts(1, ttft_len, vocab, seed=1)
        run(ttft_prompt, 1)
        out["ttft_ms"] = timed(lambda: run(ttft_prompt, 1), device, repeats=3) * 1000
        log(f"  TTFT of {ttft_len} tokens: {out['ttft_ms']:.1f} ms")
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_server(engine: Engine, args) -> dict:
    """The OpenAI server (this project's app under uvicorn, in a thread) on `engine`, loaded by
    bench/serve_load.py in its own process."""
    import uvicorn

    from internlm.serve.app import create_app
    from internlm.serve.config import ServeConfig

    port = free_port()
    config = ServeConfig(port=port, model_name="internlm-7b-random", max_batch=engine.max_batch,
                         max_concurrent=args.serve_concurrency, max_queued=4 * args.serve_concurrency, log_level="warning")
    server = uvicorn.Server(uvicorn.Config(create_app(engine, config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    command = [sys.executable, str(Path(__file__).with_name("serve_load.py")), "--base-url", f"http://127.0.0.1:{port}",
               "--concurrency", str(args.serve_concurrency), "--requests", str(args.serve_requests),
               "--max-tokens", str(args.serve_max_tokens), "--json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(30.0, left() - 20))
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    if done.returncode != 0:
        raise RuntimeError(f"serve_load exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU (checks the script)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32,64; smoke 1,4)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens decoded per sequence (default 128)")
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt length of the decode runs")
    parser.add_argument("--ttft-len", type=int, default=1024, help="prompt length of the time-to-first-token run")
    parser.add_argument("--modes", default="fused,graphs+compile,graphs,eager",
                        help="engine modes to run, in order: fused (graphs + compiled blocks + fused projections, "
                             "the default on CUDA), graphs+compile, graphs, compile, eager")
    parser.add_argument("--eager-batches", default="1,64", help="batches of the plain eager mode (slow on a 7B)")
    parser.add_argument("--hf", default="dynamic,static", help="transformers modes: dynamic, static ('' = none)")
    parser.add_argument("--hf-batches", default="1,64", help="batches of transformers' runs")
    parser.add_argument("--hf-new-tokens", type=int, default=32, help="tokens per sequence for transformers")
    parser.add_argument("--serve-concurrency", type=int, default=32, help="streaming clients (0 = no server run)")
    parser.add_argument("--serve-requests", type=int, default=128)
    parser.add_argument("--serve-max-tokens", type=int, default=128)
    parser.add_argument("--budget-s", type=float, default=3600, help="skip phases that would not fit in this many seconds")
    parser.add_argument("--reserve-s", type=float, default=15, help="time kept back for the report")
    parser.add_argument("--static-min-s", type=float, default=150, help="run transformers' static compile only with this much left")
    parser.add_argument("--watchdog-s", type=float, default=45, help="print every thread's stack when a phase runs this long")
    parser.add_argument("--step-timeout-s", type=float, default=240, help="give up on one generate call after this long")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here (rewritten after each result)")
    ARGS = args = parser.parse_args()

    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    batches = [int(b) for b in (args.batches or ("1,4" if args.smoke else "1,8,32,64")).split(",")]
    new_tokens = args.new_tokens or (16 if args.smoke else 128)
    ttft_len = min(args.ttft_len, 256) if args.smoke else args.ttft_len
    max_context = max(ttft_len, args.prompt_len + new_tokens, 64 + args.serve_max_tokens) + 8
    config = model_config(args.smoke, max_position=max(2048, max_context))
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "results": {}}
    results = report["results"]

    def record():
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str))

    log(f"torch {torch.__version__} on {report['device']}")
    with Phase("build the model on the device"):
        torch.manual_seed(0)
        model = random_model(config, device, dtype)
        sync(device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with Phase("copy bandwidth"):
        bandwidth = copy_bandwidth(device) or 4.24e12
    floor = bandwidth / weight_bytes
    report.update(weight_bytes=weight_bytes, bandwidth_bytes_per_s=bandwidth, floor_tokens_per_s=floor)
    log(f"{weight_bytes / 1e9:.2f} GB of weights, {bandwidth / 1e12:.2f} TB/s: floor {floor:,.0f} tokens/s at batch 1")
    record()
    with Phase("prefill on the main thread"):
        try:
            report["probe"] = wait(lambda: first_prefill_probe(model, device, dtype, ttft_len), step_timeout())
        except Exception as exc:
            report["probe"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  probe failed: {report['probe']['error']}")
    record()
    tokenizer = WrappingTokenizer()
    serving_engine = None
    flags = {"fused": (True, True, True), "graphs+compile": (True, True, False), "graphs": (False, True, False),
             "compile": (True, False, False), "eager": (False, False, False)}
    for mode in [m for m in args.modes.split(",") if m]:
        compile_, graphs, fuse = flags[mode]
        if device.type == "cpu":
            if graphs:
                continue
        name = f"engine ({mode})"
        mode_batches = [int(b) for b in args.eager_batches.split(",")] if mode == "eager" else batches
        mode_batches = [b for b in mode_batches if b in batches] or mode_batches
        with Phase(name):
            engine = Engine(model, tokenizer, model_id="bench", max_context=max_context, max_batch=max(batches),
                            compile=compile_, cuda_graphs=graphs, fuse_projections=fuse)
            try:
                results[name] = bench_engine(engine, mode_batches, new_tokens, args.prompt_len, ttft_len, device,
                                             record)
                results[name]["still_compiled"] = engine.compiled
            except Exception as exc:  # report and go on: the table shows what ran
                results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
                log(f"  {name} failed: {results[name]['error']}")
            record()
            if serving_engine is None and "error" not in results[name] and args.serve_concurrency:
                serving_engine = engine  # the first mode that worked also serves
            else:
                engine.close()
                del engine
                gc.collect()
    if serving_engine is not None:
        with Phase(f"server under {args.serve_concurrency} streaming clients"):
            try:
                results["server"] = bench_server(serving_engine, args)
                log(f"  {results['server']}")
            except Exception as exc:
                results["server"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                log(f"  server failed: {results['server']['error']}")
            serving_engine.close()
            del serving_engine
            gc.collect()
        record()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    hf_batches = [b for b in (int(b) for b in args.hf_batches.split(",")) if b in batches] or batches
    for mode in [m for m in args.hf.split(",") if m]:
        static = mode == "static"
        name = f"transformers generate ({'static cache, compiled' if static else 'dynamic cache'})"
        if static and left() < args.static_min_s:
            results[name] = {"error": f"skipped: {left():.0f} s left, under --static-min-s {args.static_min_s:.0f}"}
            log(f"{name}: {results[name]['error']}")
            continue
        with Phase(name):
            try:
                results[name] = bench_hf(hf_model(model, config, dtype), hf_batches, args.hf_new_tokens, args.prompt_len,
                                         ttft_len, device, static, record)
            except Exception as exc:
                results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
                log(f"  {name} failed: {results[name]['error']}")
            gc.collect()
        record()

    print(f"\nmodel: {'tiny (smoke)' if args.smoke else 'internlm_7b shape'}, {str(dtype).removeprefix('torch.')}, "
          f"random weights, {report['device']}; {weight_bytes / 1e9:.2f} GB of weights; "
          f"{new_tokens} new tokens after a {args.prompt_len}-token prompt (transformers: {args.hf_new_tokens})")
    print(f"bandwidth floor at batch 1 (weights / {bandwidth / 1e12:.2f} TB/s copy): {floor:,.0f} tokens/s "
          f"({1000 / floor:.2f} ms per step)\n")
    header = f"| {'implementation':44} | " + " | ".join(f"batch {b:>3} tok/s" for b in batches) + f" | TTFT {ttft_len} (ms) |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for name, row in results.items():
        if name == "server":
            continue
        if "error" in row:
            print(f"| {name:44} | failed: {row['error']} |")
            continue
        cells = " | ".join(f"{row['decode_tokens_per_s'][b]:>15,.1f}" if isinstance(row["decode_tokens_per_s"].get(b), float)
                           else f"{'-':>15}" for b in batches)
        ttft = row.get("ttft_ms")
        print(f"| {name:44} | {cells} | {ttft if ttft is None else round(ttft, 1):>15} |")
    if "server" in results:
        print(f"\nserver, {args.serve_concurrency} streaming clients: {results['server']}")
    record()
    os._exit(0)  # daemon threads (a stuck generate, uvicorn) must not hold the process


if __name__ == "__main__":
    main()
