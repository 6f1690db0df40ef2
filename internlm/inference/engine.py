"""The inference engine: a static KV cache and one background loop that runs all requests.

Every path (batched `generate`, `stream`, `submit` from many threads) goes through one scheduler
thread, which owns the model: each iteration it admits waiting requests into free cache slots
(one prefill each, giving their first token) and then runs ONE decode step for every running
request. A request joins and leaves the running batch at any step; a cancelled one frees its slot
at the next step. Sampling is per request (own generator, own parameters), so a request's tokens
do not depend on what else runs beside it.

On CUDA the decode step is compiled with CUDA graphs (gpt-fast's recipe: fixed shapes, a static
cache). Shapes are rounded up to buckets (batch: powers of two; attended length: powers of two
from 128) so a few recorded graphs serve every step. On CPU it runs eagerly at exact shapes.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Iterator

import torch

from internlm.components.tokenizer.chat_template import encode_chat_prompt
from internlm.errors import ConfigError
from internlm.inference import cached_forward
from internlm.inference.kv_cache import KVCache, cache_bytes, check_fits
from internlm.inference.params import SamplingParams
from internlm.inference.request import Completion, Delta, Request, RequestHandle

log = logging.getLogger(__name__)


def _bucket(n: int, smallest: int, largest: int) -> int:
    size = smallest
    while size < n:
        size *= 2
    return min(size, largest)


class Engine:
    def __init__(self, model: torch.nn.Module, tokenizer, model_id: str, max_context: int | None = None,
                 max_batch: int = 16, compile: bool | str = "auto"):
        self.model, self.tokenizer, self.model_id = model.eval(), tokenizer, model_id
        config = model.config
        trained = config.attention.rotary.max_position
        self.max_context = int(max_context or trained)
        if self.max_context < 2:
            raise ConfigError(f"max_context={self.max_context} is too small", where="max_context", fix="use at least 2")
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        attn = model.layers["0"].self_attn
        shape = (config.num_layers, max_batch, attn.num_kv_heads, self.max_context, attn.head_dim)
        check_fits(cache_bytes(*shape, self.dtype), self.device, where="max_batch / max_context")
        self.cache = KVCache(*shape, dtype=self.dtype, device=self.device)
        self.max_batch = max_batch
        self.compiled = self.device.type == "cuda" if compile == "auto" else bool(compile)
        self._decode = self._compiled_decode() if self.compiled else cached_forward.decode
        self._waiting: deque[Request] = deque()
        self._running: dict[int, Request] = {}
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._start_lock = threading.Lock()

    # --- the public interface -------------------------------------------------------------------

    def render_chat(self, messages: list[dict]) -> list[int]:
        """InternLM's chat template with ONE BOS, ending in ``<|Bot|>:`` ready for the reply."""
        return encode_chat_prompt(self.tokenizer, messages)

    def submit(self, prompt_ids: list[int], params: SamplingParams | None = None) -> RequestHandle:
        """Queue one request (thread-safe); its handle yields Deltas as the loop produces them."""
        params = (params or SamplingParams()).validate()
        prompt = self._checked_prompt(prompt_ids)
        limit = min(params.max_new_tokens, self.max_context - len(prompt))
        request = Request(prompt, params, limit, self.tokenizer, self.device)
        self._ensure_loop()
        with self._wakeup:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.append(request)
            self._wakeup.notify()
        return RequestHandle(request, self._notify)

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[Completion]:
        """Completions of many prompts, run together (each stops on its own)."""
        params = (params or SamplingParams()).validate()
        for index, prompt in enumerate(prompts):
            self._checked_prompt(prompt, where=f"prompts[{index}]")
        handles = [self.submit(prompt, params) for prompt in prompts]
        return [handle.result() for handle in handles]

    def stream(self, prompt_ids: list[int], params: SamplingParams | None = None) -> Iterator[Delta]:
        """Deltas of one completion as they come; the last carries finish_reason."""
        handle = self.submit(prompt_ids, params)
        try:
            yield from handle
        finally:
            handle.cancel()  # a consumer that stops early frees the slot (no-op when finished)

    def close(self) -> None:
        """Stop the loop (running requests end as cancelled)."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- checks ---------------------------------------------------------------------------------

    def _checked_prompt(self, prompt_ids, where: str = "prompt") -> list[int]:
        if not isinstance(prompt_ids, (list, tuple)) or not all(isinstance(i, int) for i in prompt_ids):
            raise ConfigError("a prompt must be a list of token ids", where=where, fix="encode the text with engine.tokenizer")
        if not prompt_ids:
            raise ConfigError("the prompt is empty", where=where, fix="give at least one token (a BOS will do)")
        if len(prompt_ids) >= self.max_context:
            raise ConfigError(f"the prompt has {len(prompt_ids)} tokens; the context holds {self.max_context}",
                              where=where, fix=f"shorten it below {self.max_context} tokens")
        vocab = self.model.config.vocab_size
        bad = [i for i in prompt_ids if not 0 <= i < vocab]
        if bad:
            raise ConfigError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", where=where,
                              fix="encode the text with this model's tokenizer")
        return list(prompt_ids)

    # --- the loop -------------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._wakeup:
            self._wakeup.notify()

    def _ensure_loop(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="internlm-engine", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wakeup:
                    while not self._closed and not self._waiting and not self._running:
                        self._wakeup.wait()
                    if self._closed:
                        break
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self._running:
                        self._decode_step()
                except Exception as error:  # a failed step ends the requests in it; the engine keeps serving
                    log.exception("inference step failed")
                    for request in list(self._running.values()):
                        self._release(request)
                        request.fail(error)
        for request in [*self._running.values(), *self._waiting]:
            request.end_cancelled()

    def _drop_cancelled(self) -> None:
        for request in [r for r in self._running.values() if r.cancelled]:
            self._release(request)
            request.end_cancelled()
        with self._wakeup:
            kept = [r for r in self._waiting if not r.cancelled]
            for request in self._waiting:
                if request.cancelled:
                    request.end_cancelled()
            self._waiting = deque(kept)

    def _admit(self) -> None:
        while True:
            with self._wakeup:
                if not self._waiting or not self.cache.free_slots:
                    return
                request = self._waiting.popleft()
            request.slot = self.cache.acquire()
            self._running[request.slot] = request
            tokens = torch.tensor(request.prompt, device=self.device)
            logits = cached_forward.prefill(self.model, self.cache, tokens, request.slot)
            self._take(request, request.choose(logits))

    def _decode_step(self) -> None:
        slots = sorted(self._running)
        batch = slots[-1] + 1
        positions = [0] * batch
        tokens = [0] * batch
        for slot in slots:
            request = self._running[slot]
            positions[slot], tokens[slot] = request.position, request.generated[-1]
        kv_len = max(positions) + 1
        if self.compiled:
            batch = _bucket(batch, 1, self.max_batch)
            kv_len = _bucket(kv_len, 128, self.max_context)
            positions += [0] * (batch - len(positions))
            tokens += [0] * (batch - len(tokens))
        logits = self._decode(self.model, self.cache, torch.tensor(tokens, device=self.device),
                              torch.tensor(positions, device=self.device), kv_len)
        greedy = logits.argmax(dim=-1).tolist()  # one sync for every plain-greedy row
        for slot in slots:
            request = self._running[slot]
            self._take(request, request.choose(logits[slot]) if request.needs_rows else greedy[slot])

    def _take(self, request: Request, token: int) -> None:
        request.accept(token)
        if request.finished:
            self._release(request)

    def _release(self, request: Request) -> None:
        if request.slot is not None and self._running.get(request.slot) is request:
            del self._running[request.slot]
            self.cache.release(request.slot)
        request.slot = None

    def _compiled_decode(self):
        import torch._dynamo

        # Room for a graph per (batch bucket, length bucket): 7 x 6 for 64 slots and 4,096 positions.
        for limit in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 256))
        # The cache is written in place inside the graph: static addresses let CUDA graphs keep it
        # (as gpt-fast's and transformers' static caches do) instead of skipping capture.
        torch._dynamo.mark_static_address(self.cache.keys)
        torch._dynamo.mark_static_address(self.cache.values)
        # dynamic=None: the first shape compiles static; a second batch or length size recompiles
        # once with that size symbolic, so a 7B model compiles ~3 times, not once per bucket. CUDA
        # graphs are still recorded per (bucketed) shape, which is cheap.
        compiled = torch.compile(cached_forward.decode, mode="reduce-overhead", fullgraph=True, dynamic=None)

        def run(*args):
            if not self.compiled:
                return cached_forward.decode(*args)
            try:
                return compiled(*args).clone()  # CUDA graph outputs are overwritten by the next replay
            except Exception:  # a compiler failure must not take serving down: decode eagerly from now on
                log.exception("compiled decode failed; decoding eagerly from now on")
                self.compiled = False
                return cached_forward.decode(*args)  # rewriting this step's cache entries is harmless

        return run
