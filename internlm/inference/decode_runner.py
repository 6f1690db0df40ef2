"""How a decode step runs: eagerly, through compiled blocks, and/or replayed from CUDA graphs.

gpt-fast's recipe, arranged so that a 7B model compiles in seconds rather than minutes:

* **Compiled blocks** (`compile`): `torch.compile` of ONE transformer block's decode
  (`cached_forward.decode_layer`). Every layer has the same code and shapes, so dynamo reuses the
  one graph for all of them (the parameters are inputs): the cost is one block, not 32. The batch
  and the attended length are marked dynamic, so there are two compiles in all (batch 1, and any
  batch >= 2), not one per shape.
* **Fused projections** (`fuse`): q/k/v and gate/up each read as one weight (fused_weights.py).
* **CUDA graphs** (`graphs`, CUDA only): the whole step (embedding, every block, head) is captured
  once per (batch bucket, length bucket) into a `torch.cuda.CUDAGraph` and replayed: one launch
  instead of ~1,000, which is what makes batch-1 decode bandwidth-bound instead of host-bound.
  Inputs are copied into static buffers; all graphs share one memory pool.

Shapes are rounded up to buckets (batch: powers of two up to the slot count; attended length:
powers of two from 128 up to the context) whenever either is on, so a few graphs serve every step.
A failure in either path is logged and the runner decodes eagerly from then on: serving goes on.
"""

from __future__ import annotations

import logging

import torch

from internlm.inference import cached_forward
from internlm.inference.fused_weights import fuse_blocks

log = logging.getLogger(__name__)

SMALLEST_KV_BUCKET = 128


def bucket(n: int, smallest: int, largest: int) -> int:
    size = smallest
    while size < n:
        size *= 2
    return min(size, largest)


class DecodeRunner:
    def __init__(self, model, cache, compile: bool | str, graphs: bool, fuse: bool = False):
        """`compile`: False, True (inductor) or a torch.compile backend name (tests use aot_eager:
        the same trace and functionalised graph without code generation)."""
        self.model, self.cache = model, cache
        self._backend = compile if isinstance(compile, str) else "inductor"
        self._fused = fuse_blocks(model) if fuse else None
        self.device = cache.keys.device
        if graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.compiled, self.graphs = bool(compile), bool(graphs)
        self._layer = self._compile_layer() if self.compiled else cached_forward.decode_layer
        # Tokens (row 0) and positions (row 1): the graphs' static inputs, filled by one copy per step
        # from a pinned host buffer.
        self._inputs = torch.zeros(2, cache.slots, dtype=torch.long, device=self.device)
        self._staging = torch.zeros(2, cache.slots, dtype=torch.long, pin_memory=self.device.type == "cuda")
        self._staging_np = self._staging.numpy()
        self._captured: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None

    @property
    def bucketed(self) -> bool:
        return self.compiled or self.graphs

    def shape(self, batch: int, kv_len: int) -> tuple[int, int]:
        """The (batch, attended length) a step really runs at."""
        if not self.bucketed:
            return batch, kv_len
        return bucket(batch, 1, self.cache.slots), bucket(kv_len, SMALLEST_KV_BUCKET, self.cache.max_context)

    def __call__(self, tokens: list[int], positions: list[int], kv_len: int) -> torch.Tensor:
        """Logits [B, vocab] for slots 0..B-1 (B = len(tokens), already bucketed by the caller).
        Read them before the next call: with CUDA graphs the next replay overwrites them."""
        batch = len(tokens)
        self._staging_np[0, :batch] = tokens
        self._staging_np[1, :batch] = positions
        # Safe without a wait: the staging buffer is rewritten only after the caller has read these
        # logits, which waits for this step.
        self._inputs[:, :batch].copy_(self._staging[:, :batch], non_blocking=True)
        args = (self._inputs[0, :batch], self._inputs[1, :batch], kv_len)
        try:
            if self.graphs:
                graph, logits = self._graph(*args)
                graph.replay()
                return logits
            return self._step(*args)
        except Exception:  # a compiler or capture failure must not take serving down
            log.exception("compiled/graphed decode failed; decoding eagerly from now on")
            self.compiled = self.graphs = False
            self._layer, self._fused = cached_forward.decode_layer, None
            self._captured.clear()
            return self._step(*args)  # rewriting this step's cache entries is harmless

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor, kv_len: int) -> torch.Tensor:
        with cached_forward.attention_kernels(self.device):  # read when compiling, too
            return cached_forward.decode(self.model, self.cache, tokens, positions, kv_len, layer_fn=self._layer,
                                         fused=self._fused)

    def _graph(self, tokens: torch.Tensor, positions: torch.Tensor, kv_len: int):
        key = (tokens.shape[0], kv_len)
        if key not in self._captured:
            # Warm up outside the capture (compiles, cuBLAS workspaces), on a side stream as capture wants.
            # It writes this step's own keys and values, which the replay below writes again.
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._step(tokens, positions, kv_len)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                logits = self._step(tokens, positions, kv_len)
            self._captured[key] = (graph, logits)
            log.debug("captured the decode step at batch %d, length %d", *key)
        return self._captured[key]

    def _compile_layer(self):
        compiled = torch.compile(cached_forward.decode_layer, backend=self._backend, fullgraph=True, dynamic=None)

        def layer(block, x, rope, keys, values, rows, positions, mask, fused=None):
            # Mark the shapes that vary as dynamic up front: one compile for batch >= 2 (and one for
            # batch 1, which torch always specialises), whatever the attended length.
            mark = torch._dynamo.maybe_mark_dynamic
            mark(mask, 3)
            if x.shape[0] > 1:
                for tensor in (x, *rope, rows, positions, mask):
                    mark(tensor, 0)
            return compiled(block, x, rope, keys, values, rows, positions, mask, fused)

        return layer
