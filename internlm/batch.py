"""The batch contract: the one batch format every data source produces and every model, loss,
objective and task consumes. Ground floor: it imports nothing from the project."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

IGNORE_INDEX = -100  # label value that contributes no loss (padding, prompts, InternLM's negative ids)


@dataclass
class Batch:
    """A micro batch of packed rows.

    input_ids:    [B, S] int64 token ids.
    labels:       [B, S] int64, the next-token targets already shifted (labels[:, t] is the token
                  that should follow input_ids[:, t]); IGNORE_INDEX where no loss is taken.
    position_ids: [B, S] int64, restarting at 0 at every document start; they define the document
                  layout (attention never crosses a document, rotary positions restart).
    cu_seqlens:   optional [docs + 1] int32 cumulative document lengths over the flattened B*S
                  tokens, precomputed on the host for varlen kernels (saves a device sync).
    max_seqlen:   optional int, the longest document in the batch.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int | None = None
    # Preference pairs (data=preference, objective=dpo); None for every other data source.
    sequence_pair: torch.Tensor | None = None  # [B, S] int64: the micro batch's pair index of each token, -1 on padding
    sequence_chosen: torch.Tensor | None = None  # [B, S] bool: True on the chosen answer's sequence
    pair_keys: torch.Tensor | None = None  # [P] int64: each pair's index in the dataset (reference log-prob cache)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The batch on `device`. With non_blocking, host tensors bound for a GPU are pinned first:
        a copy from pageable memory would wait for all work queued on the GPU (the previous
        optimizer step) before it starts, leaving the GPU idle while the host catches up."""
        pin = non_blocking and torch.device(device).type == "cuda"

        def move(value: torch.Tensor) -> torch.Tensor:
            if pin and value.device.type == "cpu":
                value = value.pin_memory()
            return value.to(device, non_blocking=non_blocking)

        moved = {f.name: (move(v) if isinstance(v, torch.Tensor) else v) for f in fields(self) for v in [getattr(self, f.name)]}
        return Batch(**moved)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    def loss_token_count(self) -> torch.Tensor:
        """The labelled tokens as a 0-d tensor on the batch's device: no host sync on a GPU batch."""
        return (self.labels != IGNORE_INDEX).sum()

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_token_count())

    def model_inputs(self) -> dict:
        return {
            "position_ids": self.position_ids,
            "cu_seqlens": self.cu_seqlens,
            "max_seqlen": self.max_seqlen,
        }


def cu_seqlens_on(position_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative document lengths [docs + 1] (int32) over the flattened rows, on the ids' device:
    a document starts where the position is 0, and every row starts one."""
    seq = position_ids.shape[1]
    starts = position_ids.reshape(-1) == 0
    starts[::seq] = True
    idx = torch.nonzero(starts).flatten().to(torch.int32)
    total = torch.full((1,), position_ids.numel(), dtype=torch.int32, device=position_ids.device)
    return torch.cat([idx, total])


def cu_seqlens_from_positions(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Host-side helper for loaders: cu_seqlens and the longest document."""
    cu = cu_seqlens_on(position_ids)
    return cu, int((cu[1:] - cu[:-1]).max())
