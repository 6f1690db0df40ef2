"""The inference engine: a static KV cache and one background loop that runs all requests.

Every path (batched `generate`, `stream`, `submit` from many threads) goes through one scheduler
thread, which owns the model. Each iteration it
1. gives waiting requests free cache slots (first come, first served);
2. runs ONE batched prefill of up to `prefill_chunk` prompt tokens across the requests still
   prefilling: several short prompts go in one forward, a long one is split over iterations
   (chunked prefill), so the running requests keep decoding meanwhile; a request whose prompt
   is complete samples its first token there;
3. runs ONE decode step for every request past its prompt.
A request joins and leaves the running batch at any step; a cancelled one frees its slot at the
next step. Sampling is per request (own generator, own parameters), so a request's tokens do not
depend on what else runs beside it, nor on how its prompt was chunked.

On CUDA the decode step runs from CUDA graphs over compiled blocks (gpt-fast's recipe, see
decode_runner.py); on CPU eagerly at exact shapes.
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
from internlm.inference.decode_runner import DecodeRunner
from internlm.inference.kv_cache import KVCache, cache_bytes, check_fits
from internlm.sampling import SamplingParams
from internlm.inference.request import Completion, Delta, Request, RequestHandle

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, model: torch.nn.Module, tokenizer, model_id: str, max_context: int | None = None,
                 max_batch: int = 16, compile: bool | str = "auto", cuda_graphs: bool | str = "auto",
                 prefill_chunk: int = 1024, fuse_projections: bool | str = "auto"):
        self.model, self.tokenizer, self.model_id = model.eval(), tokenizer, model_id
        config = model.config
        trained = config.attention.rotary.max_position
        self.max_context = int(max_context or trained)
        if self.max_context < 2:
            raise ConfigError(f"max_context={self.max_context} is too small", where="max_context", fix="use at least 2")
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        if not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise ConfigError(f"prefill_chunk={prefill_chunk!r} must be an integer >= 1", where="prefill_chunk",
                              fix="e.g. prefill_chunk=1024 (prompt tokens per prefill step)")
        self.prefill_chunk, self.max_batch = prefill_chunk, max_batch
        on_cuda = self.device.type == "cuda"
        # compile: "auto" (on CUDA), a bool, or a torch.compile backend name (see DecodeRunner)
        compiled = on_cuda if compile == "auto" else compile if isinstance(compile, str) else bool(compile)
        graphs = on_cuda if cuda_graphs == "auto" else bool(cuda_graphs)
        if graphs and not on_cuda:
            raise ConfigError("cuda_graphs=True needs the model on a CUDA device", where="cuda_graphs",
                              fix="use cuda_graphs=auto or False on the CPU")
        attn = model.layers["0"].self_attn
        shape = (config.num_layers, max_batch, attn.num_kv_heads, self.max_context, attn.head_dim)
        spare = bool(compiled)
        check_fits(cache_bytes(*shape, self.dtype, spare_slot=spare), self.device, where="max_batch / max_context")
        self.cache = KVCache(*shape, dtype=self.dtype, device=self.device, spare_slot=spare)
        fuse = on_cuda if fuse_projections == "auto" else bool(fuse_projections)
        self.decoder = DecodeRunner(model, self.cache, compile=compiled, graphs=graphs, fuse=fuse)
        self._waiting: deque[Request] = deque()
        self._running: dict[int, Request] = {}  # slot -> request, prefilling or decoding
        self._prefilling: list[Request] = []  # in arrival order
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._start_lock = threading.Lock()

    @property
    def compiled(self) -> bool:
        """True while decode runs through compiled blocks (False after a fallback to eager)."""
        return self.decoder.compiled

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
                    self._prefill_step()
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
        """Waiting requests take free slots; their prompts are prefilled by `_prefill_step`."""
        while True:
            with self._wakeup:
                if not self._waiting or not self.cache.free_slots:
                    return
                request = self._waiting.popleft()
            request.slot = self.cache.acquire()
            self._running[request.slot] = request
            self._prefilling.append(request)

    def _prefill_step(self) -> None:
        """One forward over up to `prefill_chunk` prompt tokens (rows x padded width) of the
        requests still prefilling, oldest first."""
        self._prefilling = [r for r in self._prefilling if self._running.get(r.slot) is r]
        if not self._prefilling:
            return
        chosen, width = [], 0
        for request in self._prefilling:
            wanted = max(width, min(request.prompt_left, self.prefill_chunk))
            if chosen and (len(chosen) + 1) * wanted > self.prefill_chunk:
                break
            chosen.append(request)
            width = wanted
        rows = [r.prompt[r.prefilled:r.prefilled + width] for r in chosen]
        starts, lengths = [r.prefilled for r in chosen], [len(row) for row in rows]
        tokens = torch.tensor([row + [0] * (width - len(row)) for row in rows], device=self.device)
        logits = cached_forward.prefill_batch(self.model, self.cache, tokens, [r.slot for r in chosen], starts, lengths)
        for index, request in enumerate(chosen):
            request.prefilled += lengths[index]
            if not request.prompt_left:
                self._prefilling.remove(request)
                self._take(request, request.choose(logits[index]))

    def _decode_step(self) -> None:
        decoding = {slot: r for slot, r in self._running.items() if not r.prompt_left}
        if not decoding:
            return
        slots = sorted(decoding)
        # Rows of slots that are not decoding (free, or mid-prefill) write their garbage key at the
        # cache's spare position, past the context: nothing reads it.
        idle = self.max_context
        batch, kv_len = self.decoder.shape(slots[-1] + 1, max(decoding[s].position for s in slots) + 1)
        positions, tokens = [idle] * batch, [0] * batch
        for slot in slots:
            request = decoding[slot]
            positions[slot], tokens[slot] = request.position, request.generated[-1]
        logits = self.decoder(tokens, positions, kv_len)
        greedy = logits.argmax(dim=-1).tolist()  # one sync for every plain-greedy row
        for slot in slots:
            request = decoding[slot]
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
