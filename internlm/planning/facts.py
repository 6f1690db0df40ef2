"""What compile needs to know about the machine and the inputs, probed once by the program.

Compile decides from these facts alone (it never asks a device, a file or a process group), so
the same config and facts always give the same plan, and tests can state any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Facts:
    cuda_available: bool = False
    device_name: str = "cpu"  # the GPU's name, or "cpu"
    capability: tuple[int, int] | None = None  # CUDA compute capability (9, 0) = Hopper
    # accelerator ("cpu" | "cuda") -> attention backend -> None if usable there, else why not
    attention: dict[str, dict[str, str | None]] = field(default_factory=dict)
    tokenizer_vocab: int | None = None  # the configured tokenizer's vocabulary, when the task uses one
    tokenizer_chat_markers: bool | None = None  # whether it knows InternLM's chat markers; None = not probed
    device_memory_gib: dict[str, float] = field(default_factory=dict)  # accelerator -> memory of one device
