"""A static, preallocated key/value cache: one row ("slot") per running request.

Shape per layer: [slots, kv_heads, max_context + 1, head_dim] for keys and values. Nothing is
allocated while serving, so memory is known up front and decode shapes can be captured once
(CUDA graphs). A request owns one slot from its prefill until it ends or is cancelled.

The extra position (index max_context) is where a decode step writes the rows of slots that are
not decoding: nothing reads it. `spare_slot` adds one slot that is never handed out, so the
compiled decode never slices the cache whole along either axis (torch would specialise such a
slice and compile the full batch and the full length apart from the rest).
"""

from __future__ import annotations

import threading

import torch

from internlm.errors import ConfigError


class KVCache:
    def __init__(self, num_layers: int, slots: int, kv_heads: int, max_context: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, spare_slot: bool = False):
        shape = (num_layers, slots + int(spare_slot), kv_heads, max_context + 1, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.slots, self.max_context = slots, max_context
        self._free = list(range(slots))
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def acquire(self) -> int | None:
        """The lowest free slot (keeps running slots packed at the front), or None when all are taken."""
        with self._lock:
            if not self._free:
                return None
            self._free.sort()
            return self._free.pop(0)

    def release(self, slot: int) -> None:
        with self._lock:
            if slot in self._free:
                raise RuntimeError(f"slot {slot} released twice")
            self._free.append(slot)

    @property
    def free_slots(self) -> int:
        with self._lock:
            return len(self._free)


def cache_bytes(num_layers: int, slots: int, kv_heads: int, max_context: int, head_dim: int, dtype: torch.dtype,
                spare_slot: bool = False) -> int:
    elements = num_layers * (slots + int(spare_slot)) * kv_heads * (max_context + 1) * head_dim
    return 2 * elements * torch.empty((), dtype=dtype).element_size()


def check_fits(needed: int, device: torch.device, where: str) -> None:
    """Refuse a cache that cannot fit in the free GPU memory, before allocating it."""
    if device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(device)
    if needed > free:
        raise ConfigError(f"the KV cache needs {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB is free", where=where,
                          fix="lower max_batch or max_context")
